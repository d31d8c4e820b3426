from PIL import Image

from fedclip.synth import CohortSpec
from fedclip.synth.preview import _tiles, contact_sheet


def test_contact_sheet_has_one_titled_tile_per_condition(tmp_path):
    out = contact_sheet(tmp_path / "sheet.png", size=64, columns=6)
    n = len(_tiles(CohortSpec(size=64)))
    assert n >= 18  # normal + 4 DR grades + 7 conditions + 6 quality issues
    with Image.open(out) as img:
        rows = (n + 5) // 6
        assert img.size[0] == 6 * 64 and img.size[1] > rows * 64
