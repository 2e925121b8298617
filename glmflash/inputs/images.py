"""Untrusted image input: the only place where bytes, data URLs, paths or http(s) URLs become pixels.

Limits are checked before decoding (encoded size, declared pixel count), then the image is
oriented by EXIF, converted to RGB and downscaled to the visual-token budget.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import ImageError
from .fetch import fetch_url
from .pdf import is_pdf, render_pdf

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_ASPECT_RATIO = 200  # the GLM processor refuses anything longer


ORIGINAL_SIZE = "glmflash_original_size"


@dataclass(frozen=True)
class ImagePolicy:
    """What an entry point accepts. Library callers may read local files; servers may not."""

    max_bytes: int = 20_000_000
    max_decoded_pixels: int = 64_000_000
    max_image_pixels: int = 1_048_576
    allow_urls: bool = False
    allowed_networks: tuple[str, ...] = ()
    url_timeout: float = 10.0
    allow_local_files: bool = True
    max_pdf_pages: int = 16  # a PDF becomes its pages (inputs/pdf.py), each an image
    pdf_dpi: int = 200
    pdf_timeout: float = 20.0

    @classmethod
    def from_limits(cls, limits, *, allow_local_files: bool = True) -> ImagePolicy:
        """The image limits of config.RequestLimits (local files: not for network callers)."""
        return cls(
            max_bytes=limits.max_image_bytes,
            max_decoded_pixels=limits.max_decoded_pixels,
            max_image_pixels=limits.max_image_pixels,
            allow_urls=limits.allow_image_urls,
            allowed_networks=limits.image_url_allowed_networks,
            url_timeout=limits.image_url_timeout,
            allow_local_files=allow_local_files,
            max_pdf_pages=limits.max_pdf_pages,
            pdf_dpi=limits.pdf_dpi,
            pdf_timeout=limits.pdf_render_timeout,
        )

    def pdf_limits(self):
        from .pdf import PdfLimits

        return PdfLimits(self.max_pdf_pages, self.pdf_dpi, self.pdf_timeout, self.max_image_pixels)


def load_image(source, policy: ImagePolicy) -> Image.Image:
    """Turn a PIL image, bytes, data URL, http(s) URL or (if allowed) file path into RGB pixels."""
    return _decode(read_source(source, policy), policy)


def _decode(got: Image.Image | bytes, policy: ImagePolicy) -> Image.Image:
    return _prepare(got, policy) if isinstance(got, Image.Image) else decode_bytes(got, policy)


def load_images(source, policy: ImagePolicy) -> list[Image.Image]:
    """As load_image, except that a PDF becomes its pages (each checked and downscaled the same)."""
    got = read_source(source, policy)
    if isinstance(got, bytes) and is_pdf(got):
        return [_prepare(page, policy) for page in render_pdf(got, policy.pdf_limits())]
    return [_decode(got, policy)]


def read_source(source, policy: ImagePolicy) -> Image.Image | bytes:
    """A PIL image as it is; bytes, a data URL, an http(s) URL or a file path as its bytes."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, Path):
        return _read_file(source, policy)
    if not isinstance(source, str):
        raise ImageError(
            f"Unsupported image value of type {type(source).__name__}: give a PIL image, bytes, "
            "a data: URL, or a file path."
        )
    text = source.strip()
    if text.startswith("data:"):
        return decode_data_url(text, policy.max_bytes)
    if text.lower().startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise ImageError(
                "Image URLs are disabled: send the image inline as a base64 data: URL, "
                "or enable fetching with GLMFLASH_ALLOW_IMAGE_URLS=1."
            )
        return fetch_url(
            text,
            max_bytes=policy.max_bytes,
            timeout=policy.url_timeout,
            allowed_networks=policy.allowed_networks,
        )
    if policy.allow_local_files:
        return _read_file(Path(text), policy)
    alternative = " or an http(s) URL" if policy.allow_urls else ""
    raise ImageError(f"An image must be a base64 data: URL (data:image/png;base64,...){alternative}.")


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """Decode `data:[mime];base64,...`, refusing oversize payloads before decoding them."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageError("Malformed data URL: expected data:image/<type>;base64,<data>.")
    mime = header[5:-7].lower()
    if mime and not mime.startswith("image/") and mime != "application/pdf":
        raise ImageError(f"The data URL says {mime!r}; only image/* and application/pdf are accepted.")
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageError(f"Image is larger than the {_mb(max_bytes)} limit.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("The image's base64 data is not valid base64.") from None


def decode_bytes(data: bytes, policy: ImagePolicy) -> Image.Image:
    """Decode encoded image bytes with every limit checked before pixels are materialised."""
    if not data:
        raise ImageError("The image is empty (0 bytes).")
    if len(data) > policy.max_bytes:
        raise ImageError(f"Image is {_mb(len(data))}, over the {_mb(policy.max_bytes)} limit.")
    if is_pdf(data):
        raise ImageError("This is a PDF, and one image is expected here: send its pages as images.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError("The image declares too many pixels (decompression bomb).") from None
    except Exception:
        raise ImageError(
            f"Unsupported or unreadable image: accepted formats are {', '.join(FORMATS)}."
        ) from None
    if image.format not in FORMATS:
        raise ImageError(
            f"Unsupported image format {image.format}: accepted formats are {', '.join(FORMATS)}."
        )
    width, height = image.size
    if width * height > policy.max_decoded_pixels:
        raise ImageError(
            f"The image declares {width}x{height} pixels, over the "
            f"{policy.max_decoded_pixels:,}-pixel limit (possible decompression bomb)."
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except Exception:
        raise ImageError("The image file is truncated or corrupt.") from None
    return _prepare(image, policy)


def _read_file(path: Path, policy: ImagePolicy) -> bytes:
    if not policy.allow_local_files:
        raise ImageError("Reading images from file paths is not allowed here.")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            # read no more than the limit allows, even if the file grew since its size was read
            data = f.read(policy.max_bytes + 1) if size <= policy.max_bytes else b""
        if size > policy.max_bytes or len(data) > policy.max_bytes:
            size = max(size, len(data))
            raise ImageError(f"{path.name} is {_mb(size)}, over the {_mb(policy.max_bytes)} limit.")
    except FileNotFoundError:
        raise ImageError(f"No such image file: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image file.") from None
    except OSError as exc:
        raise ImageError(f"Cannot read {path}: {exc.strerror or exc}") from None
    return data


def _prepare(image: Image.Image, policy: ImagePolicy) -> Image.Image:
    """EXIF orientation, RGB (transparency over white), aspect check, downscale to the budget."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > policy.max_decoded_pixels:
        raise ImageError(
            f"The image is {width}x{height}, over the {policy.max_decoded_pixels:,}-pixel limit."
        )
    _check_aspect(width, height)
    image = ImageOps.exif_transpose(image)
    oriented = image.size  # what the person sees: boxes are drawn back onto this size
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode != "RGB":
        image = image.convert("RGB")
    image = downscale(image, policy.max_image_pixels)
    _check_aspect(*image.size)  # rounding while shrinking can push a thin image over the line
    image.info[ORIGINAL_SIZE] = oriented
    return image


def original_size(image: Image.Image) -> tuple[int, int]:
    """The size an image had after EXIF orientation, before the downscale to the budget."""
    width, height = image.info.get(ORIGINAL_SIZE, image.size)
    return int(width), int(height)


def _check_aspect(width: int, height: int) -> None:
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"The image is {width}x{height}: its aspect ratio is over {MAX_ASPECT_RATIO}:1, "
            "which the model cannot read. Crop it first."
        )


def downscale(image: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink (never enlarge) so that width*height <= max_pixels, keeping the aspect ratio."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
