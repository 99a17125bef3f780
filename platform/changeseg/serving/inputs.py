"""Turning request bytes into image pairs, refusing bad input with a clear 4xx.

Everything here runs in the API replica before a model is touched, so a malformed
request costs a JSON error and never a model replica. Images are decoded by Pillow
from their encoded bytes, except TIFF and JPEG 2000 (GeoTIFF scenes: any band count,
16-bit, nodata), which are read like scene files by :mod:`changeseg.data.raster` under
the service's ``data.bands`` / ``data.scaling`` rules. Nothing from a request is ever
unpickled.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from changeseg import storage
from changeseg.config import ServeSection, StorageSection
from changeseg.data.decode import ImageTooLarge, UnsupportedImage, decode_image, image_size
from changeseg.data.raster import is_raster_bytes, read_image_bytes
from changeseg.data.transforms import resize_image


class RequestError(Exception):
    """A request the service refuses; ``status`` is the HTTP code, ``code`` a stable name."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


class BandMismatch(ValueError):
    """Images whose band count is not the model's input channel count (answered with 422)."""


def check_bands(image: np.ndarray, *, channels: int, field: str = "t0") -> None:
    """Refuse an image the model cannot take: its bands must be the model's ``in_channels``."""
    if image.shape[-1] != channels:
        raise BandMismatch(
            f"{field} has {image.shape[-1]} band(s) but the model takes {channels} "
            "(the service's data.bands picks the bands of GeoTIFF inputs)"
        )


def decode_request_image(
    data: bytes, *, field: str, max_pixels: int, min_side: int = 1, raster: dict | None = None
) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, C), with the size checked before pixels are decoded.

    TIFF and JPEG 2000 are read like scene files (:func:`_decode_raster`; C = the bands
    ``raster`` picks). Everything else becomes RGB (C = 3) through the project's one
    image decoder (:func:`changeseg.data.decode.decode_image`): only PNG, JPEG, BMP, WebP
    and GIF are parsed, the pixel limit comes from the header (a
    small file claiming a huge size is refused before any memory is spent), EXIF
    orientation is applied, 16-bit and alpha images are converted faithfully.
    """
    if not data:
        raise RequestError(422, "empty_image", f"{field}: the image is empty")
    if is_raster_bytes(data):
        return _decode_raster(data, field=field, max_pixels=max_pixels, min_side=min_side, raster=raster)[0]
    try:
        width, height = image_size(data)
        if min(width, height) < min_side:
            raise RequestError(
                422, "image_too_small", f"{field}: {width}x{height} is smaller than {min_side} pixels a side"
            )
        if width * height > max_pixels:
            raise RequestError(
                413, "image_too_large", f"{field}: {width}x{height} pixels is more than the limit of {max_pixels}"
            )
        return decode_image(data, max_pixels=max_pixels)
    except RequestError:
        raise
    except ImageTooLarge:
        raise RequestError(
            413, "image_too_large", f"{field}: the image is larger than the pixel limit of {max_pixels}"
        ) from None
    except UnsupportedImage as err:
        raise RequestError(422, "unsupported_image", f"{field}: {err}") from None
    except UnidentifiedImageError:
        raise RequestError(
            422,
            "not_an_image",
            f"{field}: the bytes are not an image format this service reads (PNG, JPEG, TIFF, BMP, WebP, GIF)",
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # Truncated or corrupt data surfaces as one of these from the decoders.
        raise RequestError(422, "corrupt_image", f"{field}: the image could not be decoded ({err})") from None


def _decode_raster(
    data: bytes, *, field: str, max_pixels: int, min_side: int, raster: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """A TIFF or JPEG 2000 (and its validity) read by the scene rules
    (:func:`changeseg.data.raster.read_image_bytes`)."""
    try:
        image, valid = read_image_bytes(data, opts=raster, name=field, max_pixels=max_pixels)
    except ImageTooLarge as err:
        raise RequestError(413, "image_too_large", str(err)) from None
    except ValueError as err:  # unreadable bytes, or bands the file lacks
        code = "bad_bands" if "data.bands" in str(err) else "corrupt_image"
        raise RequestError(422, code, str(err)) from None
    height, width = image.shape[:2]
    if min(width, height) < min_side:
        raise RequestError(
            422, "image_too_small", f"{field}: {width}x{height} is smaller than {min_side} pixels a side"
        )
    return image, valid


def decode_request_pair(
    t0: bytes, t1: bytes, *, max_pixels: int, min_side: int = 1, raster: dict | None = None, size_policy: str = "reject"
) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a request as the model will see them (t1 at t0's size). Two rasters
    are read as a scene pair is: a pixel that is nodata in either is 0 in both."""
    limits = {"max_pixels": max_pixels, "min_side": min_side, "raster": raster}
    if not (t0 and t1 and is_raster_bytes(t0) and is_raster_bytes(t1)):
        a = decode_request_image(t0, field="t0", **limits)
        return a, match_sizes(a, decode_request_image(t1, field="t1", **limits), policy=size_policy)
    a, valid0 = _decode_raster(t0, field="t0", **limits)
    b, valid1 = _decode_raster(t1, field="t1", **limits)
    resized = match_sizes(a, b, policy=size_policy)
    if resized is not b:  # t1's validity follows its pixels onto t0's size
        valid1 = resize_image(valid1.astype(np.uint8), (a.shape[1], a.shape[0]), nearest=True).astype(bool)
    invalid = ~(valid0 & valid1)
    a[invalid] = 0
    resized[invalid] = 0
    return a, resized


def header_pixels(data: bytes) -> float:
    """Pixels an encoded image declares in its header; infinity when unreadable."""
    try:
        width, height = image_size(data)
        return width * height
    except Exception:  # any unreadable header: the full decode reports the reason
        return float("inf")


def decode_base64(text: str, *, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "bad_base64", f"{field}.data is not valid base64") from None


def _normalised(uri: str) -> str:
    """Collapse ``..`` and duplicate slashes so a prefix check cannot be walked around."""
    if storage.is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return str(Path(uri.removeprefix("file://")).resolve())


def read_uri(uri: str, *, field: str, settings: ServeSection, storage_options: StorageSection | None) -> bytes:
    """Read an image a request names by URI, only under ``settings.allowed_uri_prefixes``."""
    import pyarrow.fs as pafs  # lazy: only requests naming a URI need pyarrow's file systems

    if len(uri) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise RequestError(422, "bad_uri", f"{field}.uri holds a control character or is over 4096 characters")
    try:
        target = _normalised(uri)
    except (OSError, ValueError):
        raise RequestError(422, "bad_uri", f"{field}.uri is not a valid path or URI") from None
    allowed = [_normalised(p) for p in settings.allowed_uri_prefixes]
    if not any(target == p or target.startswith(p.rstrip("/") + "/") for p in allowed):
        raise RequestError(403, "uri_not_allowed", f"{field}.uri is not under a storage prefix this service may read")
    try:
        fs, path = storage.filesystem_for(target, storage_options)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise RequestError(404, "uri_not_found", f"{field}.uri does not name a file: {uri}")
        if info.size is not None and info.size > settings.max_body_bytes:
            raise RequestError(
                413,
                "image_too_large",
                f"{field}.uri: {info.size} bytes is more than the limit of {settings.max_body_bytes}",
            )
        return storage.read_bytes(target, storage_options)
    except RequestError:
        raise
    except (OSError, ValueError) as err:
        raise RequestError(422, "uri_unreadable", f"{field}.uri could not be read: {err}") from None


def match_sizes(t0: np.ndarray, t1: np.ndarray, *, policy: str) -> np.ndarray:
    """t1 as the model will see it: t0's size, resized (bilinear, every band) or refused."""
    if t0.shape[2:] != t1.shape[2:]:
        raise RequestError(422, "band_mismatch", f"t0 has {t0.shape[-1]} band(s) but t1 has {t1.shape[-1]}")
    if t0.shape == t1.shape:
        return t1
    if policy == "reject":
        raise RequestError(
            422,
            "size_mismatch",
            f"t0 is {t0.shape[1]}x{t0.shape[0]} but t1 is {t1.shape[1]}x{t1.shape[0]} (width x height)",
        )
    return resize_image(t1, (t0.shape[1], t0.shape[0]))


def parse_flag(value, *, field: str) -> bool:
    """A form or JSON flag: true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise RequestError(422, "bad_field", f"{field} must be true or false, got {value!r}")


def parse_threshold(value) -> float | None:
    """A form's ``threshold``: empty or absent is None (the version's stored one), else a number in [0, 1]."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise RequestError(422, "bad_field", f"threshold must be a number within [0, 1], got {value!r}")
    return number
