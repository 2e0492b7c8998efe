"""Turn an uploaded picture into a 28x28 image the way Fashion-MNIST was made.

The dataset's recipe: trim the edges that match the corner colour (5% tolerance), scale the
longest side to 28, sharpen, centre on a 28x28 canvas, make the background dark, 8-bit grayscale.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageFilter, ImageOps, UnidentifiedImageError

SIZE = 28
FORMATS = ("PNG", "JPEG", "WEBP")
# Fashion-MNIST trimmed edges "closer in colour to the corner pixels" than 5% of the range.
TRIM_TOLERANCE = round(0.05 * 255)


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
            image.load()
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
    return image


def _flatten(image: Image.Image) -> Image.Image:
    """Return the image as grayscale, transparent areas becoming white like a product photo's."""
    image = ImageOps.exif_transpose(image) or image
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
