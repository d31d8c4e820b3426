"""Reading images from disk with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fedclip.errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncation is caught here, not mid-batch) and convert it to RGB."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path or the dataset's metadata.csv")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} cannot be decoded ({e}); the file is corrupt or truncated — "
                        "re-export or re-download it, or remove its row from metadata.csv") from None
