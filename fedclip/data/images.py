"""Reading images from disk with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fedclip.errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncation is caught here, not mid-batch) as upright 8-bit RGB.

    Unusual but valid files work: greyscale, palette, alpha and CMYK are converted; 16- and 32-bit
    greyscale is scaled to 8 bits (PIL's own conversion would saturate it); an EXIF orientation is
    applied, as a viewer would show the photograph.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path or the dataset's metadata.csv")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} cannot be decoded ({e}); the file is corrupt or truncated — "
                        "re-export or re-download it, or remove its row from metadata.csv") from None


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """A high-bit-depth greyscale image at 8 bits, by the range its values fit (8-bit, 16-bit, or their peak)."""
    values = values.astype(np.float64)
    peak = float(values.max(initial=0))
    top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
