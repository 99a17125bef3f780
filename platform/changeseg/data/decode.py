"""Decoding images and masks into arrays; how mask files become class indices."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.shards import read_shard_member

# How a mask file becomes class indices; a record's ``mask_encoding`` names one of these.
MASK_ENCODINGS = (
    "binary",  # grey > 127 (or a 0/1 file) is change: LEVIR-CD, DSIFN, AirChange, VL-CMU-CD
    "binary-inverted",  # black is change, white is not: PCD
    "index",  # stored values are class ids (255 = ignore)
    "colormap:changesim",  # RGB colours -> 5 ChangeSim classes
    "colormap:changesim:binary",  # the same, any change class -> 1
)

# ChangeSim's change_segmentation colours: rows 0-4 of its idx2color table (class k has
# colour k; the change type of an object is its semantic id // 50, in the order static, new,
# missing, rotated, replaced). White (row 255) marks pixels without a label: ignored.
CHANGESIM_CLASSES = ("static", "new", "missing", "rotated", "replaced")
CHANGESIM_COLOURS = {
    (0, 0, 0): 0,
    (81, 38, 0): 1,
    (41, 36, 132): 2,
    (25, 48, 16): 3,
    (131, 192, 13): 4,
    (255, 255, 255): 255,
}

# A binary mask may hold a few stray grey pixels (AirChange has some); more than this
# fraction outside {0, 255} means the file is not a binary mask.
MAX_STRAY_FRACTION = 0.01


# The only Pillow plugins that may parse stored or request bytes: no EPS (Ghostscript),
# no PSD, no exotic formats whose decoders see little use.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
# Pillow modes with 16 bits per sample (greyscale); scaled to 8 bits, never clipped.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the caller allows."""


class UnsupportedImage(ValueError):
    """An image this project will not turn into RGB (a mode without a faithful conversion)."""


@contextlib.contextmanager
def open_image(data: bytes, *, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Pillow image of ``data`` in one of :data:`IMAGE_FORMATS`, its size checked from the
    header (``max_pixels``) before any pixel is decoded."""
    with warnings.catch_warnings():
        # The caller's max_pixels is the limit; Pillow's own bomb check still errors at 2x its limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(str(err)) from None
    with img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
        yield img


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone."""
    with open_image(data) as img:
        return img.size


def _sixteen_to_eight(raw: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8 bits over the full range (65535 -> 255, rounded), as uint8."""
    wide = np.clip(raw, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> RGB uint8; alpha composited over black; unfaithful modes refused."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG"):
        grey = _sixteen_to_eight(np.asarray(img))
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("I", "F") or mode.startswith(("I;", "F;")):
        raise UnsupportedImage(
            f"{img.format} image in mode {mode} (32-bit integer or float samples) is not supported; "
            "convert it to 8 or 16 bits per channel"
        )
    if mode in ("RGB", "L", "1", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "La", "RGBa", "P", "PA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:4]
        if (alpha == 255).all():
            return rgba[..., :3].astype(np.uint8)
        # Transparent pixels (no data) become black in both images, so they read as unchanged.
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
    raise UnsupportedImage(f"{img.format} image in mode {mode} is not supported; convert it to RGB or greyscale")


def decode_image(data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3).

    Only :data:`IMAGE_FORMATS` are opened; the EXIF orientation is applied; 16-bit
    greyscale is scaled (not clipped) to 8 bits, palette and alpha images are expanded
    (transparent pixels over black), CMYK and greyscale converted; 32-bit and float
    samples are refused (:class:`UnsupportedImage`). ``max_pixels`` is checked from the
    header before decoding (:class:`ImageTooLarge`).
    """
    with open_image(data, max_pixels=max_pixels) as img:
        img.load()
        oriented = ImageOps.exif_transpose(img)
        return _to_rgb(oriented)


def _binary(arr: np.ndarray, *, inverted: bool, check: bool) -> np.ndarray:
    if arr.max(initial=0) <= 1:
        return (1 - arr) if inverted else arr.copy()
    stray = np.count_nonzero((arr != 0) & (arr != 255)) / max(arr.size, 1)
    if check and stray > MAX_STRAY_FRACTION:
        raise ValueError(
            f"mask is not binary: {stray:.1%} of pixels are neither 0 nor 255 (values {_some_values(arr)})"
        )
    return ((arr <= 127) if inverted else (arr > 127)).astype(np.uint8)


def _some_values(arr: np.ndarray, limit: int = 8) -> str:
    values = np.unique(arr)
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (" ..." if len(values) > limit else "")


def _colormap(rgb: np.ndarray, colours: dict[tuple[int, int, int], int]) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    values, inverse = np.unique(code, return_inverse=True)
    table = {(r << 16) | (g << 8) | b: cls for (r, g, b), cls in colours.items()}
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown[:5])
        raise ValueError(f"mask has {len(unknown)} colour(s) outside the colour map: {shown}")
    lut = np.array([table[int(v)] for v in values], dtype=np.uint8)
    return lut[inverse.reshape(code.shape)]


def decode_mask(
    data: bytes,
    *,
    mask_values: str = "binary",
    num_classes: int | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """Encoded mask -> class indices uint8 (H, W); see :data:`MASK_ENCODINGS`.

    ``binary``: a 0/1 file is taken as is; otherwise grey > 127 is change, which maps 0/255
    masks and tolerates a few stray grey pixels from lossy or palettised files.
    ``binary-inverted``: the same with black as change. ``index``: the stored values are
    the class ids. ``colormap:changesim``: ChangeSim colours to classes 0-4 (``:binary``
    folds them into change / no change). Unexpected values raise ``ValueError``: an
    unknown colour always; with ``num_classes`` (the pipeline passes it) also a class id
    outside ``0..num_classes-1`` other than ``ignore_index``, and a binary mask with more
    than 1 % of its pixels neither 0 nor 255.
    """
    with open_image(data) as opened:
        img = _mask_mode(ImageOps.exif_transpose(opened))
        if mask_values.startswith("colormap:"):
            if not mask_values.startswith("colormap:changesim"):
                raise ValueError(f"unknown mask colour map '{mask_values}'")
            arr = _colormap(np.asarray(img.convert("RGB"), dtype=np.uint8), CHANGESIM_COLOURS)
            if mask_values.endswith(":binary"):
                arr = np.where(arr == 255, arr, (arr > 0).astype(np.uint8))
        elif mask_values == "index":
            # Palettised files keep their indices; anything else is read as grey levels.
            arr = np.asarray(img if img.mode in ("L", "P") else img.convert("L"), dtype=np.uint8).copy()
        elif mask_values in ("binary", "binary-inverted"):
            return _binary(
                np.asarray(img.convert("L"), dtype=np.uint8),
                inverted=mask_values == "binary-inverted",
                check=num_classes is not None,
            )
        else:
            raise ValueError(f"unknown mask encoding '{mask_values}' (known: {', '.join(MASK_ENCODINGS)})")
    if num_classes is not None:
        bad = (arr >= num_classes) & (arr != ignore_index)
        if bad.any():
            raise ValueError(
                f"mask has class ids outside 0..{num_classes - 1} (and ignore {ignore_index}): {_some_values(arr[bad])}"
            )
    return arr


def _mask_mode(img: Image.Image) -> Image.Image:
    """16-bit greyscale masks as 8-bit: values already below 256 (0/1, class ids) kept, else scaled."""
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        raw = np.asarray(img)
        if raw.max(initial=0) < 256 and raw.min(initial=0) >= 0:
            return Image.fromarray(raw.astype(np.uint8), mode="L")
        if img.mode == "I" and raw.max(initial=0) > 65535:
            raise UnsupportedImage(f"mask in mode {img.mode} holds values above 65535")
        return Image.fromarray(_sixteen_to_eight(raw), mode="L")
    return img


def encode_png(array: np.ndarray, *, compress_level: int = 6) -> bytes:
    """PNG bytes of a uint8 array; ``compress_level=1`` where encoding sits on a model's path
    (batch masks compress well anyway)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def member_bytes(row: dict, key: str, storage_options: StorageSection | None = None) -> bytes:
    """The encoded file ``key`` (t0, t1, mask) of a row: inline bytes, a shard row, or a URI."""
    inline = row.get(f"{key}_data")
    if inline is not None:
        return inline
    if row.get("shard"):
        return read_shard_member(row["shard"], int(row["shard_row"]), key, storage_options)
    return storage.read_bytes(row[key], storage_options)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float in [0, 1], the model's input contract (C = 3 for RGB)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def __getattr__(name: str):
    # load_pair lived here; scripts importing it from here still get it.
    if name == "load_pair":
        from changeseg.data.pairs import load_pair  # lazy: pairs imports this module

        return load_pair
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
