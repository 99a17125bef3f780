"""Rasters read with rasterio: any band count, 8/16-bit and float samples, nodata, georeference.

GeoTIFFs (and JPEG 2000) are read here instead of with Pillow, so 16-bit scenes keep
their range, bands beyond RGB are available and the grid travels with the pixels.
``data.bands`` picks bands (1-based; default the first three, a single band repeated);
``data.scaling`` maps values to [0, 1] (``dtype``: the type's maximum, ``range``:
``data.value_range``, ``percentile``: per band per scene from an overview or a
decimated read, never the whole scene). Scaled values travel as uint8 (H, W, C), the
pipeline's image type. Pixels that are nodata in any band of t0 or t1 become 0 in the
images and ``ignore_index`` in the mask, so the loss and the metrics skip them.

Alignment: when both images are georeferenced and their grids differ, t1 is read
through a ``WarpedVRT`` on t0's grid (bilinear; masks nearest) under ``data.align:
reproject``; ``reject`` refuses the pair. Footprints that do not overlap are refused.
"""

from __future__ import annotations

# rasterio, shapely and pyproj are imported in the functions that use them: GDAL is a large
# native library that only georeferenced inputs need, so image-only jobs never load it.
import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from changeseg import storage
from changeseg.data.decode import CHANGESIM_COLOURS, ImageTooLarge, _binary, _colormap, _some_values, member_bytes

__all__ = [
    "RASTER_SUFFIXES",
    "RasterOptions",
    "ScenePair",
    "is_raster_bytes",
    "is_raster_row",
    "is_raster_uri",
    "load_raster_pair",
    "open_scene_pair",
    "raster_options",
    "read_image_bytes",
]

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
# TIFF and BigTIFF (both byte orders), JPEG 2000 (JP2 box, raw codestream).
BYTES_DRIVERS = ("GTiff", "JP2OpenJPEG")
RASTER_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ")


@dataclass(frozen=True)
class RasterOptions:
    """How raster values become model input (the ``data`` section's raster fields)."""

    bands: tuple[int, ...] | None = None
    scaling: str = "dtype"
    value_range: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    align: str = "reproject"

    def to_dict(self) -> dict:
        return asdict(self)


def raster_options(data: Any) -> dict:
    """The raster options of a ``data`` config section, as a plain dict (travels to Ray workers)."""
    return RasterOptions(
        bands=tuple(data.bands) if data.bands else None,
        scaling=data.scaling,
        value_range=tuple(data.value_range) if data.value_range else None,
        percentiles=tuple(data.percentiles),
        align=data.align,
    ).to_dict()


def is_raster_uri(uri: str | None) -> bool:
    return bool(uri) and PurePosixPath(str(uri)).suffix.lower() in RASTER_SUFFIXES


def is_raster_row(row: dict) -> bool:
    """Whether a record's images are rasters for rasterio (by t0's file name)."""
    return is_raster_uri(row.get("t0"))


def is_raster_bytes(data: bytes) -> bool:
    """Whether encoded bytes are a TIFF or JPEG 2000 (read here, like ``.tif`` and ``.jp2`` files)."""
    return bytes(data[:12]).startswith(RASTER_MAGIC)


def read_image_bytes(
    data: bytes, *, opts: dict | RasterOptions | None = None, name: str = "image", max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) uint8 and (H, W) validity of an in-memory raster by the rules files are read
    with (bands, scaling; nodata -> 0); its size is checked against ``max_pixels`` before any
    pixel is read."""
    import rasterio  # lazy: GDAL, see the module note

    opts = opts if isinstance(opts, RasterOptions) else RasterOptions(**{**(opts or {})})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # plain TIFFs are fine here
        return _read_bytes(data, opts=opts, name=name, max_pixels=max_pixels)


def _read_bytes(
    data: bytes, *, opts: RasterOptions, name: str, max_pixels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    import rasterio  # lazy: GDAL, see the module note
    from rasterio.io import MemoryFile  # lazy: GDAL, see the module note

    try:
        # Request bytes: only the drivers of the formats recognised by their magic may parse them.
        with MemoryFile(bytes(data)) as mem, mem.open(driver=list(BYTES_DRIVERS)) as ds:
            if max_pixels is not None and ds.width * ds.height > max_pixels:
                raise ImageTooLarge(f"{name} is {ds.width}x{ds.height}, over the limit of {max_pixels} pixels")
            bands = pick_bands(ds, opts.bands, name)
            return read_scaled(ds, bands, band_ranges(ds, bands, opts))
    except rasterio.errors.RasterioIOError as err:
        raise ValueError(f"{name} is not a readable raster: {err}") from None


@contextlib.contextmanager
def open_raster(row: dict, key: str, storage_options=None) -> Iterator[Any]:
    """A rasterio dataset of member ``key``: local files and ``s3://`` objects opened in place
    (windowed reads fetch only their blocks; S3 through GDAL's ``/vsis3/`` with the
    project's endpoint settings), inline or shard bytes from memory."""
    import rasterio  # lazy: GDAL, see the module note
    from rasterio.io import MemoryFile  # lazy: GDAL, see the module note

    uri = row.get(key) or ""
    in_place = uri and row.get(f"{key}_data") is None and not row.get("shard")
    try:
        if in_place and uri.startswith("s3://"):
            with rasterio.Env(**storage.gdal_s3_options(storage_options)), rasterio.open(uri) as ds:
                yield ds
            return
        if in_place and not storage.is_remote(uri):
            with rasterio.open(uri.removeprefix("file://")) as ds:
                yield ds
            return

        data = member_bytes(row, key, storage_options)
        with MemoryFile(data) as mem, mem.open() as ds:
            yield ds
    except rasterio.errors.RasterioIOError as err:
        raise ValueError(f"{key} is not a readable raster ({uri or 'inline bytes'}): {err}") from None


def pick_bands(ds: Any, bands: tuple[int, ...] | None, name: str) -> list[int]:
    """1-based band indexes: the requested ones (checked), else the first three (one band thrice)."""
    count = ds.count
    if bands is None:
        return [1, 1, 1] if count < 3 else [1, 2, 3]
    missing = [b for b in bands if b > count]
    if missing:
        raise ValueError(f"{name} has {count} band(s); data.bands asks for band {', '.join(map(str, missing))}")
    return list(bands)


def _dtype_range(dtype: str) -> tuple[float, float]:
    if np.issubdtype(np.dtype(dtype), np.floating):
        return 0.0, 1.0  # float rasters are taken as already scaled; use range or percentile otherwise
    return 0.0, float(np.iinfo(np.dtype(dtype)).max)


def band_ranges(ds: Any, bands: list[int], opts: RasterOptions) -> np.ndarray:
    """(C, 2) low/high per band for the scaling rule; percentiles from a <= 1024-px read."""
    if opts.scaling == "range":
        return np.tile(np.asarray(opts.value_range, np.float64), (len(bands), 1))
    if opts.scaling == "dtype":
        return np.tile(np.asarray(_dtype_range(ds.dtypes[bands[0] - 1]), np.float64), (len(bands), 1))
    return _percentile_ranges(ds, tuple(bands), tuple(opts.percentiles)).copy()


@functools.lru_cache(maxsize=256)
def _cached_percentiles(
    name: str, mtime: float, bands: tuple[int, ...], percentiles: tuple[float, float]
) -> np.ndarray:
    import rasterio  # lazy: GDAL, see the module note

    with rasterio.open(name) as ds:
        return _percentile_ranges(ds, bands, percentiles, cache=False)


def _percentile_ranges(
    ds: Any, bands: tuple[int, ...], percentiles: tuple[float, float], *, cache: bool = True
) -> np.ndarray:
    """Percentiles per band from a read of at most 1024 px a side (once per local file and
    modification time: training reads many windows of one scene)."""

    if cache and os.path.isfile(ds.name):
        return _cached_percentiles(ds.name, os.path.getmtime(ds.name), bands, percentiles)
    factor = max(1, int(np.ceil(max(ds.height, ds.width) / 1024)))
    shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
    # GDAL serves a decimated read from an overview when the file has one.
    sample = ds.read(list(bands), out_shape=shape, masked=True, resampling=_resampling("nearest"))
    out = np.zeros((len(bands), 2))
    for i in range(len(bands)):
        values = sample[i].compressed()
        if values.size:
            out[i] = np.percentile(values, percentiles)
        if out[i, 1] <= out[i, 0]:
            out[i, 1] = out[i, 0] + 1.0
    return out


def _resampling(name: str):
    from rasterio.enums import Resampling  # lazy: GDAL, see the module note

    return getattr(Resampling, name)


def scale_to_uint8(data: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(C, h, w) raw values -> (h, w, C) uint8 of (v - low) / (high - low), clipped to [0, 1].

    8- and 16-bit integers go through a per-band lookup table (one gather instead of six
    float passes over the window); other types are computed directly, with the same formula."""
    out = np.empty((*data.shape[1:], data.shape[0]), np.uint8)
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 2:
        tables = _lookup_tables(data.dtype.str, tuple(map(tuple, np.asarray(ranges, np.float64))))
        offset = int(np.iinfo(data.dtype).min)
        for i in range(data.shape[0]):
            index = data[i] if offset == 0 else data[i].astype(np.int32) - offset
            out[..., i] = tables[i][index]
        return out
    out[...] = _scaled(data, np.asarray(ranges, np.float64)).transpose(1, 2, 0)
    return out


def _scaled(values: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    low = ranges[:, 0].reshape(-1, *([1] * (values.ndim - 1)))
    span = (ranges[:, 1] - ranges[:, 0]).reshape(low.shape)
    scaled = (values.astype(np.float32) - low.astype(np.float32)) / span.astype(np.float32)
    return np.rint(np.nan_to_num(np.clip(scaled, 0.0, 1.0)) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _lookup_tables(dtype: str, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """(C, 2**bits) uint8: the scaled value of every possible sample, per band."""
    info = np.iinfo(np.dtype(dtype))
    values = np.arange(info.min, info.max + 1, dtype=np.float64)
    return _scaled(np.broadcast_to(values, (len(ranges), values.size)), np.asarray(ranges, np.float64))


def _invalid(ds: Any, bands: list[int], data: np.ndarray, window=None) -> np.ndarray:
    """(h, w) True where any band is nodata (or NaN). Where a nodata value is a band's only
    mask it is compared here: GDAL's nodata mask bands would cost a second pass per band."""
    from rasterio.enums import MaskFlags  # lazy: GDAL, see the module note

    invalid = np.zeros(data.shape[1:], bool)
    if data.dtype.kind == "f":
        invalid |= np.isnan(data).any(0)
    gdal_masks = []
    for i, b in enumerate(bands):
        flags = ds.mask_flag_enums[b - 1]
        if flags == [MaskFlags.nodata]:
            nodata = ds.nodatavals[b - 1]
            invalid |= np.isnan(data[i]) if np.isnan(nodata) else data[i] == nodata
        elif flags != [MaskFlags.all_valid]:
            gdal_masks.append(b)  # an internal mask, an alpha band, a WarpedVRT's footprint
    if gdal_masks:
        invalid |= (ds.read_masks(gdal_masks, window=window) == 0).any(0)
    return invalid


def read_scaled(ds: Any, bands: list[int], ranges: np.ndarray, window=None) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, C) uint8 and (h, w) validity of a window (None = whole); nodata and masked pixels are 0."""
    data = ds.read(bands, window=window)
    invalid = _invalid(ds, bands, data, window)
    image = scale_to_uint8(data, ranges)
    image[invalid] = 0
    return image, ~invalid


# --- grids and alignment ---------------------------------------------------------


def _georeferenced(ds: Any) -> bool:
    return ds.crs is not None and not ds.transform.is_identity


def grid_difference(ds0: Any, ds1: Any) -> str | None:
    """None when both images share one grid, else what differs."""
    if ds0.crs != ds1.crs:
        return f"CRS {ds1.crs} vs t0's {ds0.crs}"
    if (ds0.height, ds0.width) != (ds1.height, ds1.width):
        return f"size {ds1.width}x{ds1.height} vs t0's {ds0.width}x{ds0.height}"
    if not ds0.transform.almost_equals(ds1.transform):
        return f"transform {tuple(ds1.transform)[:6]} vs t0's {tuple(ds0.transform)[:6]}"
    return None


def _check_overlap(ds0: Any, ds1: Any) -> None:
    from rasterio.warp import transform_bounds  # lazy: GDAL, see the module note

    left, bottom, right, top = transform_bounds(ds1.crs, ds0.crs, *ds1.bounds)
    b0 = ds0.bounds
    if left >= b0.right or right <= b0.left or bottom >= b0.top or top <= b0.bottom:
        raise ValueError(
            f"t1's footprint does not overlap t0's (t0 {tuple(round(v, 2) for v in b0)}, "
            f"t1 {tuple(round(v, 2) for v in (left, bottom, right, top))} in {ds0.crs})"
        )


def on_grid(ds0: Any, ds: Any, *, name: str, align: str, resampling: str, stack: contextlib.ExitStack) -> Any:
    """``ds`` as read on t0's grid: itself when the grids agree, else a WarpedVRT (or an error)."""
    if not (_georeferenced(ds0) and _georeferenced(ds)):
        if (ds0.height, ds0.width) != (ds.height, ds.width):
            raise ValueError(
                f"t0 is {ds0.width}x{ds0.height} but {name} is {ds.width}x{ds.height} "
                "(and they are not both georeferenced, so they cannot be aligned)"
            )
        return ds
    diff = grid_difference(ds0, ds)
    if diff is None:
        return ds
    if align == "reject":
        raise ValueError(f"{name} is not on t0's grid ({diff}) and data.align is reject")
    _check_overlap(ds0, ds)
    from rasterio.vrt import WarpedVRT  # lazy: GDAL, see the module note

    extra = {} if ds.nodata is not None else {"add_alpha": True}
    return stack.enter_context(
        WarpedVRT(
            ds,
            crs=ds0.crs,
            transform=ds0.transform,
            width=ds0.width,
            height=ds0.height,
            resampling=_resampling(resampling),
            **extra,
        )
    )


@dataclass
class ScenePair:
    """An open, aligned raster pair (and mask): what windows are read from."""

    t0: Any
    t1: Any
    mask: Any | None
    bands0: list[int]
    bands1: list[int]
    ranges0: np.ndarray
    ranges1: np.ndarray

    @property
    def height(self) -> int:
        return self.t0.height

    @property
    def width(self) -> int:
        return self.t0.width

    @property
    def georeferenced(self) -> bool:
        return _georeferenced(self.t0)

    def read(self, window=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """t0, t1 (h, w, C) uint8 and the (h, w) validity of both, for a window (None = whole)."""
        a, va = read_scaled(self.t0, self.bands0, self.ranges0, window)
        b, vb = read_scaled(self.t1, self.bands1, self.ranges1, window)
        valid = va & vb
        a[~valid] = 0
        b[~valid] = 0
        return a, b, valid

    def read_mask(self, window=None, **decode: Any) -> np.ndarray | None:
        if self.mask is None:
            return None
        return mask_classes(self.mask, window, **decode)


@contextlib.contextmanager
def open_scene_pair(row: dict, opts: dict | RasterOptions | None = None, storage_options=None) -> Iterator[ScenePair]:
    """Open a record's rasters, check bands, align t1 (and the mask) to t0; errors name the pair's problem."""
    opts = opts if isinstance(opts, RasterOptions) else RasterOptions(**{**(opts or {})})
    with contextlib.ExitStack() as stack:
        ds0 = stack.enter_context(open_raster(row, "t0", storage_options))
        raw1 = stack.enter_context(open_raster(row, "t1", storage_options))
        if opts.bands is None and ds0.count != raw1.count:
            raise ValueError(f"t0 has {ds0.count} band(s) but t1 has {raw1.count}")
        bands0, bands1 = pick_bands(ds0, opts.bands, "t0"), pick_bands(raw1, opts.bands, "t1")
        ds1 = on_grid(ds0, raw1, name="t1", align=opts.align, resampling="bilinear", stack=stack)
        mask = None
        if row.get("mask") or row.get("mask_data") is not None:
            raw_mask = stack.enter_context(open_raster(row, "mask", storage_options))
            mask = on_grid(ds0, raw_mask, name="mask", align=opts.align, resampling="nearest", stack=stack)
        yield ScenePair(ds0, ds1, mask, bands0, bands1, band_ranges(ds0, bands0, opts), band_ranges(raw1, bands1, opts))


# --- masks ---------------------------------------------------------------------------


def mask_classes(
    ds: Any, window=None, *, mask_values: str = "binary", num_classes: int | None = None, ignore_index: int = 255
) -> np.ndarray:
    """A mask raster window -> class indices (h, w) uint8 per ``mask_values``; its nodata -> ignore."""

    if mask_values.startswith("colormap:"):
        rgb = ds.read([1, 2, 3] if ds.count >= 3 else [1, 1, 1], window=window, masked=True)
        invalid = np.ma.getmaskarray(rgb).any(0)
        arr = _colormap(np.ma.filled(rgb, 255).astype(np.uint8).transpose(1, 2, 0), CHANGESIM_COLOURS)
        if mask_values.endswith(":binary"):
            arr = np.where(arr == 255, arr, (arr > 0).astype(np.uint8))
    else:
        raw = ds.read(1, window=window, masked=True)
        invalid = np.ma.getmaskarray(raw)
        values = np.ma.filled(raw, 0)
        if values.max(initial=0) > 255 or values.min(initial=0) < 0:
            raise ValueError(f"mask raster holds values outside 0..255: {_some_values(values)}")
        values = values.astype(np.uint8)
        if mask_values in ("binary", "binary-inverted"):
            arr = _binary(values, inverted=mask_values == "binary-inverted", check=num_classes is not None)
        elif mask_values == "index":
            arr = values
            if num_classes is not None:
                bad = (arr >= num_classes) & (arr != ignore_index) & ~invalid
                if bad.any():
                    raise ValueError(f"mask has class ids outside 0..{num_classes - 1}: {_some_values(arr[bad])}")
        else:
            raise ValueError(f"unknown mask encoding '{mask_values}'")
    arr = np.array(arr, np.uint8)
    arr[invalid] = ignore_index
    return arr


# --- whole pairs and training windows ------------------------------------------------


def load_raster_pair(
    row: dict,
    *,
    raster: dict | None = None,
    mask_values: str = "binary",
    storage_options=None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    max_pixels: int | None = None,
    crop: tuple[int, np.random.Generator] | None = None,
) -> dict:
    """A record of rasters as :func:`changeseg.data.decode.load_pair` returns it: whole, or
    with ``crop`` = (size, rng) one random window read from the files (training on scenes)."""
    pid = row["pair_id"]
    try:
        with open_scene_pair(row, raster, storage_options) as pair:
            if max_pixels is not None and crop is None and pair.height * pair.width > max_pixels:
                raise ImageTooLarge(f"image is {pair.width}x{pair.height}, over the limit of {max_pixels} pixels")
            window = None if crop is None else random_window(pair.height, pair.width, crop[0], crop[1])
            t0, t1, valid = pair.read(window)
            out = {"pair_id": pid, "t0": t0, "t1": t1}
            mask = pair.read_mask(
                window,
                mask_values=row.get("mask_encoding") or mask_values,
                num_classes=num_classes,
                ignore_index=ignore_index,
            )
            if mask is not None:
                mask[~valid] = ignore_index
                out["mask"] = mask
            return out
    except ValueError as err:
        raise type(err)(f"pair {pid}: {err}") from None


def count_mask_pixels(
    row: dict,
    *,
    raster: dict | None = None,
    storage_options=None,
    mask_values: str = "binary",
    num_classes: int | None = None,
    ignore_index: int = 255,
    rows: int = 1024,
    **_: Any,
) -> tuple[int, int]:
    """(changed, unchanged) labelled pixels of a raster pair, read in strips of ``rows`` (the
    screening pass: checks bands, grids and mask values without holding the scene)."""
    from rasterio.windows import Window  # lazy: GDAL, see the module note

    changed = unchanged = 0
    with open_scene_pair(row, raster, storage_options) as pair:
        for y in range(0, pair.height, rows):
            window = Window(0, y, pair.width, min(rows, pair.height - y))
            _, _, valid = pair.read(window)
            mask = pair.read_mask(
                window,
                mask_values=row.get("mask_encoding") or mask_values,
                num_classes=num_classes,
                ignore_index=ignore_index,
            )
            if mask is None:
                continue
            labelled = valid & (mask != ignore_index)
            hit = int(np.count_nonzero(labelled & (mask != 0)))
            changed += hit
            unchanged += int(np.count_nonzero(labelled)) - hit
    return changed, unchanged


def random_window(height: int, width: int, size: int, rng: np.random.Generator):
    """A random ``size`` window inside the scene (the whole side when the scene is smaller)."""
    from rasterio.windows import Window  # lazy: GDAL, see the module note

    h, w = min(size, height), min(size, width)
    y = int(rng.integers(0, height - h + 1))
    x = int(rng.integers(0, width - w + 1))
    return Window(x, y, w, h)
