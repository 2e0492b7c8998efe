"""Turn an uploaded picture into a 28x28 image the way Fashion-MNIST was made.

The dataset's recipe: trim the edges that match the corner colour (5% tolerance), scale the
longest side to 28, sharpen, centre on a 28x28 canvas, make the background dark, 8-bit grayscale.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageChops, ImageFilter, ImageOps, UnidentifiedImageError

SIZE = 28
FORMATS = ("PNG", "JPEG", "WEBP")
# Fashion-MNIST trimmed edges "closer in colour to the corner pixels" than 5% of the range.
TRIM_TOLERANCE = round(0.05 * 255)
# Pictures are trimmed and scaled to 28x28 from a working copy this size (longest side, at least):
# 18 times the final size loses nothing, and a 12 MP photo then costs a few MB, not hundreds.
WORK_SIZE = 512
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class ImageRejectedError(Exception):
    """An upload that cannot be classified; `message` is for people, `status` for HTTP."""

    message: str
    status: int = 400

    def __str__(self) -> str:
        return self.message


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode a PNG, JPEG or WebP upload, refusing anything else and decompression bombs."""
    if not data:
        raise ImageRejectedError("The file is empty. Choose a PNG, JPEG or WebP picture.")
    too_big = ImageRejectedError(
        f"The picture has too many pixels to process (the limit is {max_pixels:,}). Try a smaller picture.",
        413,
    )
    try:
        # Pillow only warns between its limit and twice that; a warning must stop us too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            # The header gives the size, so a bomb is refused before any pixel is decoded.
            if image.width * image.height > max_pixels:
                raise too_big
            if image.format == "JPEG":
                # A JPEG decodes straight at 1/2, 1/4 or 1/8 scale: a big photo never exists in
                # memory at full size.
                image.draft(None, (WORK_SIZE, WORK_SIZE))
            image.load()
            working = _working_copy(image)
    except ImageRejectedError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise too_big from exc
    except UnidentifiedImageError as exc:
        raise ImageRejectedError(
            "That file is not a picture we can read. Upload a PNG, JPEG or WebP image."
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejectedError("The picture seems damaged or truncated and cannot be decoded.") from exc
    return working


def _working_copy(image: Image.Image) -> Image.Image:
    """Return the picture upright, 8-bit, and reduced to about WORK_SIZE by a fast box filter."""
    # In place: a copy of a 12 MP picture would double the peak memory for nothing.
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in SIXTEEN_BIT_MODES:
        image = _to_eight_bit(image)
    elif image.mode == "P":  # palette pictures cannot be reduced as they are
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    factor = max(image.size) // WORK_SIZE
    if factor >= 2:
        image = image.reduce(factor)
    return image


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit gray (0-65535) down to 8-bit, where converting directly would clip at 255."""
    wide = image.convert("I")
    extrema: Any = wide.getextrema()
    if image.mode == "I" and extrema[1] <= 255:  # 32-bit storage of 8-bit values: nothing to scale
        return wide.convert("L")
    # Pillow's point() on 32-bit images takes exactly this form: value * scale + offset.
    return wide.point(lambda value: value * (255 / 65535)).convert("L")


def _flatten(image: Image.Image) -> Image.Image:
    """Return the image as grayscale, transparent areas becoming white like a product photo's."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        image = canvas
    return image.convert("L")


def _background(gray: Image.Image) -> int:
    w, h = gray.size
    corners = sorted(int(gray.getpixel(xy)) for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)))  # type: ignore[arg-type]
    return (corners[1] + corners[2]) // 2  # median of the four corners


def to_fashion_mnist(image: Image.Image) -> Image.Image:
    """Convert to an 8-bit grayscale 28x28 image: object centred, dark background."""
    gray = _flatten(image)
    background = _background(gray)
    if gray.size == (SIZE, SIZE) and background < 128:
        # Already in the dataset's format (a test image, say); trimming would rescale it slightly.
        return gray
    difference = ImageChops.difference(gray, Image.new("L", gray.size, background))
    box = difference.point(lambda p: 255 if p > TRIM_TOLERANCE else 0).getbbox()
    if box is None:
        raise ImageRejectedError("The picture is a single flat colour; there is nothing to classify.")
    gray = gray.crop(box)
    scale = SIZE / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    shrinking = scale < 1
    gray = gray.resize(size, Image.Resampling.LANCZOS)
    if shrinking:
        gray = gray.filter(ImageFilter.UnsharpMask(radius=1, percent=60, threshold=2))
    if background >= 128:
        gray = ImageOps.invert(gray)
        background = 255 - background
    # Stretch so the background becomes 0, as in the dataset, and the object keeps its contrast.
    span = 255 - background
    gray = gray.point(lambda p: max(0, round((p - background) * 255 / span)) if span else 0)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(gray, ((SIZE - gray.width) // 2, (SIZE - gray.height) // 2))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
