"""Georeferenced outputs of a scored scene: COG rasters and change polygons.

Masks and probabilities are written window by window into a tiled GeoTIFF next to the
output, then turned into a Cloud-Optimized GeoTIFF by GDAL's COG driver (512-px tiles,
deflate, internal overviews), so neither step holds the scene. Polygons come from
``rasterio.features.shapes`` block by block: a region inside a block is final at once
and streamed to the GeoJSON file; pieces touching an inner block border are merged per
class with shapely at the end. Regions are 4-connected (polygons then never touch
themselves), and a polygon's pixel count is its area in pixel units, exact because its
edges are pixel edges.
"""

from __future__ import annotations

# rasterio, shapely and pyproj are imported in the functions that use them: GDAL is a large
# native library that only georeferenced inputs need, so image-only jobs never load it.
import heapq
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MASK_NODATA", "RegionWriter", "tiled_profile", "to_cog", "write_regions"]

MASK_NODATA = 255  # the mask COG's nodata: pixels that are nodata in t0 or t1
BLOCK = 512


def tiled_profile(src: Any, *, dtype: str, nodata: float | None, count: int = 1) -> dict:
    """A GeoTIFF profile on ``src``'s grid (CRS, transform, size), tiled 512 with fast deflate."""
    return {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": dtype,
        "crs": src.crs,
        "transform": src.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }


def to_cog(tmp_path: str | Path, dst_path: str | Path, *, resampling: str = "nearest") -> None:
    """Convert a tiled GeoTIFF into a COG: 512-px tiles, deflate, internal overviews."""
    # Lazy: GDAL (see the imports above).
    import rasterio
    import rasterio.shutil

    with rasterio.Env(GDAL_NUM_THREADS="1"):
        rasterio.shutil.copy(
            str(tmp_path),
            str(dst_path),
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=BLOCK,
            OVERVIEWS="AUTO",
            OVERVIEW_RESAMPLING=resampling.upper(),
            BIGTIFF="IF_SAFER",
        )


@dataclass
class _Piece:
    cls: int
    geometry: Any  # shapely geometry in pixel coordinates (of the scene)


@dataclass
class RegionWriter:
    """Turns pixel-space polygons into GeoJSON features on the scene's grid (or ``crs``)."""

    transform: Any
    src_crs: Any
    crs: str | None = None
    simplify: float = 0.0
    min_area: int = 1
    max_regions: int = 100
    count: int = 0
    largest: list = field(default_factory=list)  # heap of (pixels, n, region summary)

    def __post_init__(self) -> None:
        from pyproj import CRS, Geod, Transformer  # lazy: GDAL stack (see the imports above)

        source = CRS.from_user_input(self.src_crs.to_wkt()) if self.src_crs is not None else None
        target = CRS.from_user_input(self.crs) if self.crs else source
        self.out_crs = target
        self.reproject = None
        if source is not None and target is not None and source != target:
            self.reproject = Transformer.from_crs(source, target, always_xy=True).transform
        self.geod = Geod(ellps="WGS84") if source is not None and source.is_geographic else None
        self.to_wgs84 = None
        if self.geod is not None and not source.equals(CRS.from_epsg(4326)):
            self.to_wgs84 = Transformer.from_crs(source, CRS.from_epsg(4326), always_xy=True).transform
        self.metres = 1.0
        if source is not None and source.is_projected:
            self.metres = float(source.axis_info[0].unit_conversion_factor or 1.0)

    def feature(self, piece: _Piece) -> dict | None:
        """The GeoJSON feature of one region, or None when it is below ``min_area``."""
        # Lazy: GDAL stack (see the imports above).
        from shapely import affinity
        from shapely.geometry import mapping

        pixels = int(round(piece.geometry.area))
        if pixels < self.min_area:
            return None
        t = self.transform
        geom = affinity.affine_transform(piece.geometry, [t.a, t.b, t.d, t.e, t.c, t.f])
        if self.simplify > 0:
            geom = geom.simplify(self.simplify * abs(t.a), preserve_topology=True)
        if self.geod is not None:
            area = abs(self.geod.geometry_area_perimeter(_apply(self.to_wgs84, geom) if self.to_wgs84 else geom)[0])
        else:
            area = geom.area * self.metres**2
        if self.reproject is not None:
            geom = _apply(self.reproject, geom)
        x0, y0, x1, y1 = (int(v) for v in piece.geometry.bounds)
        self.count += 1
        summary = {"class": piece.cls, "bbox": [x0, y0, x1, y1], "area": pixels}
        item = (pixels, self.count, summary)
        if len(self.largest) < self.max_regions:
            heapq.heappush(self.largest, item)
        elif self.max_regions and item > self.largest[0]:
            heapq.heapreplace(self.largest, item)
        props = {
            "class": piece.cls,
            "pixels": pixels,
            "area_m2": round(float(area), 3),
            "bounds": [round(v, 9) for v in geom.bounds],
        }
        return {"type": "Feature", "properties": props, "geometry": mapping(geom)}

    def top(self) -> list[dict]:
        return [s for _, _, s in sorted(self.largest, key=lambda r: (-r[0], r[1]))]

    def crs_member(self) -> dict | None:
        """A named-CRS member for GeoJSON readers (QGIS, GDAL); none for EPSG:4326 (the default)."""
        if self.out_crs is None:
            return None
        code = self.out_crs.to_epsg()
        if code == 4326:
            return None
        name = f"urn:ogc:def:crs:EPSG::{code}" if code else self.out_crs.to_wkt()
        return {"type": "name", "properties": {"name": name}}


def _block_pieces(
    mask: np.ndarray, x: int, y: int, *, inner: tuple[bool, bool, bool, bool]
) -> Iterator[tuple[_Piece, bool]]:
    """(piece, touches an inner block border) for every changed region of one block."""
    # Lazy: GDAL (see the imports above).
    from rasterio import features
    from rasterio.transform import Affine
    from shapely.geometry import shape

    changed = (mask != 0) & (mask != MASK_NODATA)
    if not changed.any():
        return
    height, width = mask.shape
    left, top, right, bottom = inner
    for geojson, value in features.shapes(mask, mask=changed, connectivity=4, transform=Affine.translation(x, y)):
        geom = shape(geojson)
        bx0, by0, bx1, by1 = geom.bounds
        edge = (
            (left and bx0 <= x) or (top and by0 <= y) or (right and bx1 >= x + width) or (bottom and by1 >= y + height)
        )
        yield _Piece(int(value), geom), bool(edge)


def write_regions(
    mask_path: str | Path,
    out_path: str | Path,
    *,
    crs: str | None = None,
    simplify: float = 0.0,
    min_area: int = 1,
    max_regions: int = 100,
    block: int = 4096,
) -> RegionWriter:
    """Polygons of the changed regions of a class-mask raster into a GeoJSON file (streamed)."""
    # Lazy: GDAL (see the imports above).
    import rasterio
    from rasterio.windows import Window
    from shapely.ops import unary_union

    with rasterio.open(mask_path) as ds, open(out_path, "w") as out:
        writer = RegionWriter(ds.transform, ds.crs, crs, simplify, min_area, max_regions)
        header = {"type": "FeatureCollection"}
        member = writer.crs_member()
        if member:
            header["crs"] = member
        out.write(json.dumps(header)[:-1] + ', "features": [\n')
        first = True
        border: dict[int, list] = {}

        def emit(piece: _Piece) -> None:
            nonlocal first
            feature = writer.feature(piece)
            if feature is not None:
                out.write(("" if first else ",\n") + json.dumps(feature))
                first = False

        for y in range(0, ds.height, block):
            for x in range(0, ds.width, block):
                h, w = min(block, ds.height - y), min(block, ds.width - x)
                inner = (x > 0, y > 0, x + w < ds.width, y + h < ds.height)
                for piece, edge in _block_pieces(ds.read(1, window=Window(x, y, w, h)), x, y, inner=inner):
                    if edge:
                        border.setdefault(piece.cls, []).append(piece.geometry)
                    else:
                        emit(piece)
        for cls, geoms in sorted(border.items()):
            merged = unary_union(geoms)
            for part in getattr(merged, "geoms", [merged]):
                emit(_Piece(cls, part))
        out.write("\n]}\n")
    return writer


def _apply(transform, geom):
    """A geometry with every coordinate pair passed through a pyproj ``transform(x, y)``."""
    import shapely  # lazy: GDAL stack (see the imports above)

    return shapely.transform(geom, lambda xy: np.column_stack(transform(xy[:, 0], xy[:, 1])))


def scene_bounds(ds: Any) -> list[float]:
    b = ds.bounds
    return [float(b.left), float(b.bottom), float(b.right), float(b.top)]


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
