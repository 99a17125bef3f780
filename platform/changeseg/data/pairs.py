"""One record's files read and decoded: images through :mod:`changeseg.data.decode`,
raster scenes through :mod:`changeseg.data.raster`.

Its own module because the raster reader uses the decoders (mask encodings, member
bytes): the dispatch between the two sits above both, so neither imports the other back.
"""

from __future__ import annotations

from changeseg.config import StorageSection
from changeseg.data.decode import ImageTooLarge, decode_image, decode_mask, member_bytes
from changeseg.data.raster import is_raster_row, load_raster_pair
from changeseg.data.transforms import resize_pair

__all__ = ["load_pair"]


def load_pair(
    row: dict,
    *,
    mask_values: str = "binary",
    storage_options: StorageSection | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    resize: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    raster: dict | None = None,
    crop: tuple | None = None,
) -> dict:
    """Read and decode one record's files; sizes must agree.

    The row's own ``mask_encoding`` (set by the dataset readers) wins over ``mask_values``.
    ``resize`` = (H, W): images bilinear, mask nearest (class ids stay ids). ``max_pixels``
    refuses larger images from their header (:class:`ImageTooLarge`), before decoding.
    Rasters (``.tif``, ``.jp2``) are read with rasterio (:mod:`changeseg.data.raster`,
    options ``raster``; ``crop`` = (size, rng) reads one random window instead of the whole).
    """
    if is_raster_row(row):
        out = load_raster_pair(
            row,
            raster=raster,
            mask_values=mask_values,
            storage_options=storage_options,
            num_classes=num_classes,
            ignore_index=ignore_index,
            max_pixels=max_pixels,
            crop=crop,
        )
        if resize is not None and tuple(out["t0"].shape[:2]) != tuple(resize):
            out = resize_pair(out, (int(resize[1]), int(resize[0])))
        return out
    pid = row["pair_id"]
    try:
        t0 = decode_image(member_bytes(row, "t0", storage_options), max_pixels=max_pixels)
        t1 = decode_image(member_bytes(row, "t1", storage_options), max_pixels=max_pixels)
    except ImageTooLarge as err:
        raise ImageTooLarge(f"pair {pid}: {err}") from None
    if t0.shape != t1.shape:
        raise ValueError(f"pair {pid}: t0 is {t0.shape[:2]} but t1 is {t1.shape[:2]}")
    out = {"pair_id": pid, "t0": t0, "t1": t1}
    if row.get("mask") or row.get("mask_data") is not None:
        encoding = row.get("mask_encoding") or mask_values
        try:
            mask = decode_mask(
                member_bytes(row, "mask", storage_options),
                mask_values=encoding,
                num_classes=num_classes,
                ignore_index=ignore_index,
            )
        except ValueError as err:
            raise ValueError(f"pair {pid}: {err}") from None
        if mask.shape != t0.shape[:2]:
            raise ValueError(f"pair {pid}: mask is {mask.shape} but images are {t0.shape[:2]}")
        out["mask"] = mask
    if resize is not None and tuple(t0.shape[:2]) != tuple(resize):
        out = resize_pair(out, (int(resize[1]), int(resize[0])))
    return out
