"""Small georeferenced scene pairs written with rasterio, for the raster and scene tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CRS = "EPSG:32633"  # UTM 33N: a projected CRS in metres
ORIGIN = (500_000.0, 4_000_000.0)
PIXEL = 10.0
HEIGHT, WIDTH = 700, 900  # the default scene size
BORDER = 20  # nodata border width in pixels
NODATA = 0


def texture(height: int, width: int, bands: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth uint16 texture (C, H, W) in 1000..3000, never 0 (0 is nodata)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((bands, height, width), np.uint16)
    for b in range(bands):
        fy, fx = rng.uniform(0.01, 0.05, size=2)
        out[b] = (2000 + 800 * np.sin(yy * fy + b) * np.cos(xx * fx)).astype(np.uint16)
    return out


def write(
    path: Path, data: np.ndarray, *, transform=None, crs: str | None = CRS, nodata=NODATA, tiled: bool = True
) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    transform = transform if transform is not None else from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def change_box(height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of t0's grid that change in t1 (the default scene: rows 300-380, cols 400-520)."""
    return slice(height * 3 // 7, height * 3 // 7 + height * 8 // 70), slice(
        width * 4 // 9, width * 4 // 9 + width * 2 // 15
    )


def scene_pair(
    root: Path,
    *,
    pid: str = "scene",
    shift: tuple[int, int] = (0, 0),
    bands: int = 4,
    t1_crs: str | None = CRS,
    mask: bool = True,
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> dict:
    """t0/t1 (and mask) GeoTIFFs under ``root`` in the folder layout; t1 shifted by
    ``shift`` = (rows, cols) pixels on its own transform, showing the same ground."""
    from rasterio.transform import from_origin

    height, width = size
    rows, cols = change_box(height, width)
    base = texture(height + 40, width + 40, bands)
    t0 = base[:, 20 : 20 + height, 20 : 20 + width].copy()
    t0[:, :BORDER] = NODATA
    t0[:, :, :BORDER] = NODATA
    changed = base.copy()
    changed[:, 20 + rows.start : 20 + rows.stop, 20 + cols.start : 20 + cols.stop] = 9000
    dy, dx = shift
    t1 = changed[:, 20 + dy : 20 + dy + height, 20 + dx : 20 + dx + width].copy()
    t1_transform = from_origin(ORIGIN[0] + dx * PIXEL, ORIGIN[1] - dy * PIXEL, PIXEL, PIXEL)
    row = {
        "pair_id": pid,
        "t0": str(write(root / "t0" / f"{pid}.tif", t0)),
        "t1": str(write(root / "t1" / f"{pid}.tif", t1, transform=t1_transform, crs=t1_crs)),
    }
    if mask:
        truth = np.zeros((1, height, width), np.uint8)
        truth[0][rows, cols] = 1
        row["mask"] = str(write(root / "mask" / f"{pid}.tif", truth, nodata=None))
    return row
