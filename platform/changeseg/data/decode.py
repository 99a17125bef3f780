"""Decoding images and masks into arrays; how mask files become class indices."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from changeseg import storage
from changeseg.config import StorageSection


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, *, mask_values: str = "binary") -> np.ndarray:
    """Encoded mask -> class indices uint8 (H, W).

    ``binary``: a mask stored as 0/1 is taken as is; otherwise a pixel is change when its
    grey value is above 127, which maps 0/255 masks and tolerates stray grey pixels from
    lossy or palettised files. ``index``: the stored values are the class ids (255 = ignore).
    """
    with Image.open(io.BytesIO(data)) as img:
        if mask_values == "index":
            # Palettised files keep their indices; anything else is read as grey levels.
            arr = np.asarray(img if img.mode in ("L", "P") else img.convert("L"), dtype=np.uint8)
            return arr
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
    if arr.max(initial=0) <= 1:
        return arr.copy()
    return (arr > 127).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def load_pair(
    row: dict,
    *,
    mask_values: str = "binary",
    storage_options: StorageSection | None = None,
) -> dict:
    """Read and decode one record's files; sizes must agree."""
    t0 = decode_image(storage.read_bytes(row["t0"], storage_options))
    t1 = decode_image(storage.read_bytes(row["t1"], storage_options))
    if t0.shape != t1.shape:
        raise ValueError(f"pair {row['pair_id']}: t0 is {t0.shape[:2]} but t1 is {t1.shape[:2]}")
    out = {"pair_id": row["pair_id"], "t0": t0, "t1": t1}
    if row.get("mask"):
        mask = decode_mask(storage.read_bytes(row["mask"], storage_options), mask_values=mask_values)
        if mask.shape != t0.shape[:2]:
            raise ValueError(f"pair {row['pair_id']}: mask is {mask.shape} but images are {t0.shape[:2]}")
        out["mask"] = mask
    return out


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1], the model's input contract."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)
