"""The inference core: load a model from the registry or a checkpoint, turn uint8 pairs
into class probabilities.

Batch scoring, serving, evaluation, the MLflow pyfunc and the branch panels all run a
model through :class:`Predictor`, so the same pair gets the same answer everywhere.
It groups same-size pairs into batches, scores pairs larger than ``tile_size`` in the
seamless windows of :mod:`changeseg.inference.tiling` (converting each window to float
on its own, so a large scene is never held as floats), applies device, precision,
channels-last and optional flip test-time augmentation, and takes the softmax in fp32.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from changeseg.config import StorageSection
from changeseg.data.decode import to_model_input
from changeseg.devices import autocast, prepare_for_device, resolve_device, resolve_precision
from changeseg.inference.tiling import Window, plan_windows
from changeseg.models.contract import input_scale_of, supports_branches
from changeseg.models.location import find_checkpoint_dir, resolve_model_dir
from changeseg.models.weights import load_checkpoint, model_from_checkpoint
from changeseg.thresholds import DEFAULT_THRESHOLD, threshold_of

__all__ = ["PairPrediction", "Predictor", "resolve_model_dir"]


@dataclass
class PairPrediction:
    """One pair's result: class ids, optionally P(change) as uint16 (x 65535)."""

    mask: np.ndarray  # (H, W) uint8 class indices
    change: np.ndarray | None  # (H, W) uint16, round(P(not class 0) * 65535), when asked for
    tiles: int
    inference_ms: float
    batch_size: int  # pairs (or windows) in the forward passes that produced it
    threshold: float | None = None  # the P(change) cut of a binary model; None: argmax (multi-class)


class Predictor:
    """A loaded model plus the pre- and post-processing around it.

    ``tile_size`` None scores every pair whole; otherwise pairs larger in either side
    go through overlapping windows. ``batch_size`` bounds the images (pairs or windows)
    per forward pass and ``max_batch_pixels`` their total pixels.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        channels_last: bool = False,
        tile_size: int | None = None,
        tile_overlap: int = 64,
        batch_size: int = 8,
        max_batch_pixels: int | None = None,
        tta: bool = False,
        threshold: float | None = None,
    ):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = bool(channels_last)
        self.model = prepare_for_device(model, self.device, channels_last=self.channels_last).eval()
        self.info = info or {}
        self.tile_size, self.tile_overlap = tile_size, int(tile_overlap)
        if tile_size is not None:
            plan_windows(tile_size + 1, 1, tile=tile_size, overlap=self.tile_overlap)  # checks the pair of numbers
        self.batch_size = max(1, int(batch_size))
        self.max_batch_pixels = max_batch_pixels
        self.tta = bool(tta)
        self.threshold_override = _checked_threshold(threshold)

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def from_dir(cls, directory: str | Path, *, info: dict[str, Any] | None = None, **options: Any) -> "Predictor":
        """A local checkpoint folder (``model.json`` + ``model.safetensors``)."""
        model, metadata = load_checkpoint(find_checkpoint_dir(directory))
        return cls(model, info={**(info or {}), "metadata": metadata}, **options)

    @classmethod
    def from_bytes(
        cls, meta: bytes | str, weights: bytes, *, info: dict[str, Any] | None = None, **options: Any
    ) -> "Predictor":
        """A checkpoint held in memory: ``model.json`` text and safetensors bytes (batch actors)."""
        parsed = json.loads(meta)
        model = model_from_checkpoint(parsed, weights)
        return cls(model, info={**(info or {}), "metadata": parsed.get("metadata", {})}, **options)

    @classmethod
    def from_uri(
        cls, uri: str, *, tracking_uri: str | None = None, storage_options: StorageSection | None = None, **options: Any
    ) -> "Predictor":
        """A registry URI, an ``s3://`` or a local checkpoint folder (see :func:`resolve_model_dir`)."""
        with tempfile.TemporaryDirectory(prefix="changeseg-model-") as tmp:
            directory, info = resolve_model_dir(
                uri, tracking_uri=tracking_uri, storage_options=storage_options, download_dir=tmp
            )
            return cls.from_dir(directory, info=info, **options)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def threshold(self) -> float | None:
        """The P(change) cut a binary model uses: the constructor's, else the one stored
        with the checkpoint (its operating point), else 0.5. None for multi-class (argmax)."""
        if self.num_classes != 2:
            return None
        if self.threshold_override is not None:
            return self.threshold_override
        stored = threshold_of(self.info.get("metadata"))
        return DEFAULT_THRESHOLD if stored is None else stored

    def threshold_for(self, threshold: float | None = None) -> float | None:
        """A per-call override, else :attr:`threshold`; None for multi-class models."""
        if self.num_classes != 2:
            return None
        return _checked_threshold(threshold) if threshold is not None else self.threshold

    @staticmethod
    def classes(proba: torch.Tensor, threshold: float | None) -> torch.Tensor:
        """Class ids (N, h, w) uint8 of probabilities (N, C, h, w): change where
        P(change) >= ``threshold`` for a binary model, argmax otherwise."""
        if threshold is None or proba.shape[1] != 2:
            return proba.argmax(1).to(torch.uint8)
        return (proba[:, 1] >= threshold).to(torch.uint8)

    # --- the forward pass --------------------------------------------------------------

    @staticmethod
    def to_tensor(images: np.ndarray) -> torch.Tensor:
        """(H, W, 3) or (N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
        # Decoded images may be read-only views; torch wants writable memory.
        return to_model_input(torch.from_numpy(np.require(_batch_of(images), requirements=["C", "W"])))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, C, h, w) fp32 on the device for float inputs (N, 3, h, w) in [0, 1];
        with ``tta``, averaged with the horizontally and vertically flipped pair."""
        a, b = self._to_device(a), self._to_device(b)
        flips = ([], [3], [2]) if self.tta else ([],)
        total = None
        with torch.inference_mode():
            for dims in flips:
                x0, x1 = (a.flip(dims), b.flip(dims)) if dims else (a, b)
                with autocast(self.precision, self.device):
                    logits = self.model(x0, x1)
                proba = logits.float().softmax(1)
                proba = proba.flip(dims) if dims else proba
                total = proba if total is None else total + proba
        return total / len(flips)

    def _per_call(self, pixels_each: int) -> int:
        """Images per forward pass: batch_size, fewer when the pixel budget says so. The
        budget counts the pixels the model processes: a model with ``input_scale`` 2 works
        on four times the pixels it is given."""
        if self.max_batch_pixels is None:
            return self.batch_size
        processed = pixels_each * input_scale_of(self.model) ** 2
        return max(1, min(self.batch_size, int(self.max_batch_pixels // max(processed, 1))))

    def iter_windows(
        self, t0: np.ndarray, t1: np.ndarray, *, channels_first: bool = False
    ) -> Iterator[tuple[Window, torch.Tensor]]:
        """Yield (window, probabilities of the window's own output slice, (N, C, h, w) on the device).

        ``t0``, ``t1``: uint8 (N, H, W, 3), or with ``channels_first`` float (N, 3, H, W) in
        [0, 1]. Each window is sliced and converted on its own.
        """
        if t0.shape != t1.shape:
            raise ValueError(f"t0 and t1 differ in shape: {tuple(t0.shape)} vs {tuple(t1.shape)}")
        n = t0.shape[0]
        height, width = (t0.shape[2], t0.shape[3]) if channels_first else (t0.shape[1], t0.shape[2])
        windows = plan_windows(height, width, tile=self.tile_size, overlap=self.tile_overlap)
        step = self._window_step(n, windows[0]) if len(windows) > 1 else 1
        for first in range(0, len(windows), step):
            chunk = windows[first : first + step]
            a = torch.cat([_window(t0, w, channels_first) for w in chunk])
            b = torch.cat([_window(t1, w, channels_first) for w in chunk])
            proba = self.forward(a, b)
            for k, w in enumerate(chunk):
                yield w, proba[k * n : (k + 1) * n, :, w.y0 - w.y : w.y1 - w.y, w.x0 - w.x : w.x1 - w.x]

    def predict_proba(self, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C, H, W) float32 on the CPU for uint8 RGB (N, H, W, 3) or (H, W, 3)."""
        a, b = _batch_of(t0), _batch_of(t1)
        if a.shape != b.shape:
            raise ValueError(f"t0 and t1 differ in shape: {a.shape} vs {b.shape}")
        n, height, width = a.shape[:3]
        step = self._per_call(height * width) if self._fits(height, width) else 1
        out: np.ndarray | None = None
        for start in range(0, n, step):
            for w, proba in self.iter_windows(a[start : start + step], b[start : start + step]):
                if out is None:
                    out = np.empty((n, proba.shape[1], height, width), np.float32)
                out[start : start + step, :, w.y0 : w.y1, w.x0 : w.x1] = proba.cpu().numpy()
        assert out is not None
        return out

    def proba_from_tensors(self, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` for float (N, 3, H, W) inputs in [0, 1] (the pyfunc's contract)."""
        a, b = np.asarray(t0, np.float32), np.asarray(t1, np.float32)
        if a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"expected float images shaped (N, 3, H, W), got {a.shape}")
        out: np.ndarray | None = None
        for w, proba in self.iter_windows(a, b, channels_first=True):
            if out is None:
                out = np.empty((a.shape[0], proba.shape[1], a.shape[2], a.shape[3]), np.float32)
            out[:, :, w.y0 : w.y1, w.x0 : w.x1] = proba.cpu().numpy()
        assert out is not None
        return out

    def predict(self, t0: np.ndarray, t1: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
        """Class indices (N, H, W) uint8 (binary: at ``threshold``, default :attr:`threshold`)."""
        pairs = self.predict_pairs(list(_batch_of(t0)), list(_batch_of(t1)), threshold=threshold)
        return np.stack([p.mask for p in self._checked(pairs)])

    def _fits(self, height: int, width: int) -> bool:
        """Whether a pair of this size is scored whole (one window)."""
        return self.tile_size is None or max(height, width) <= self.tile_size

    def _window_step(self, n: int, window: Window) -> int:
        """Windows per forward pass for a batch of ``n`` images."""
        return max(1, self._per_call(window.height * window.width) // max(n, 1))

    @staticmethod
    def _checked(results: list) -> list["PairPrediction"]:
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def predict_pairs(
        self, t0s: list[np.ndarray], t1s: list[np.ndarray], *, change: bool = False, threshold: float | None = None
    ) -> list["PairPrediction | Exception"]:
        """Class masks (and P(change)) of many pairs of any sizes, in the input order.

        Same-size pairs share forward passes; larger-than-tile pairs are windowed one at a
        time. A failing group (out of memory, a model error) yields its exception in place
        of each of its pairs' results, so the other groups still get theirs.
        """
        if len(t0s) != len(t1s):
            raise ValueError(f"{len(t0s)} t0 images but {len(t1s)} t1 images")
        results: list[Any] = [None] * len(t0s)
        cut = self.threshold_for(threshold)
        groups: dict[tuple, list[int]] = {}
        for i, (a, b) in enumerate(zip(t0s, t1s)):
            if np.shape(a) != np.shape(b):
                results[i] = ValueError(f"t0 is {np.shape(a)[:2]} but t1 is {np.shape(b)[:2]}")
            else:
                groups.setdefault(tuple(np.shape(a)), []).append(i)
        for shape, indices in groups.items():
            step = self._per_call(shape[0] * shape[1]) if self._fits(shape[0], shape[1]) else 1
            for first in range(0, len(indices), step):
                chunk = indices[first : first + step]
                try:
                    done = self._predict_group(
                        np.stack([t0s[i] for i in chunk]),
                        np.stack([t1s[i] for i in chunk]),
                        change=change,
                        threshold=cut,
                    )
                except Exception as err:  # noqa: BLE001 - the group's pairs carry it
                    done = [err] * len(chunk)
                for i, res in zip(chunk, done):
                    results[i] = res
        return results

    def _predict_group(
        self, t0: np.ndarray, t1: np.ndarray, *, change: bool, threshold: float | None = None
    ) -> list[PairPrediction]:
        start = time.perf_counter()
        n, height, width = t0.shape[:3]
        masks = np.empty((n, height, width), np.uint8)
        changes = np.empty((n, height, width), np.uint16) if change else None
        windows = 0
        for w, proba in self.iter_windows(t0, t1):
            windows += 1
            masks[:, w.y0 : w.y1, w.x0 : w.x1] = self.classes(proba, threshold).cpu().numpy()
            if changes is not None:
                # P(change) = 1 - P(no change), whatever the number of change classes.
                scaled = torch.round((1.0 - proba[:, 0]).clamp_(0, 1) * 65535.0).to(torch.int32)
                changes[:, w.y0 : w.y1, w.x0 : w.x1] = scaled.cpu().numpy().astype(np.uint16)
        elapsed = 1000 * (time.perf_counter() - start) / n
        first = plan_windows(height, width, tile=self.tile_size, overlap=self.tile_overlap)[0]
        size = n if windows == 1 else min(windows, self._window_step(n, first))
        return [
            PairPrediction(masks[k], None if changes is None else changes[k], windows, elapsed, size, threshold)
            for k in range(n)
        ]

    def forward_with_branches(self, t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, Any]:
        """Class ids (H, W) and the MTF branch maps of one whole pair (for the branch panels)."""
        if not supports_branches(self.model):
            raise TypeError(f"{type(self.model).__name__} has no MTF branches (forward_with_branches)")
        a, b = self._to_device(self.to_tensor(t0)), self._to_device(self.to_tensor(t1))
        with torch.inference_mode(), autocast(self.precision, self.device):
            logits, branches = self.model.forward_with_branches(a, b)
        return logits.float().argmax(1)[0].cpu().numpy().astype(np.uint8), branches


def _checked_threshold(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {value}")
    return value


def _batch_of(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (H, W, 3) or (N, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {arr.dtype}")
    return arr


def _window(images: np.ndarray, w: Window, channels_first: bool) -> torch.Tensor:
    """One window of a batch as model input (N, 3, h, w) float; only the window is copied."""
    if channels_first:
        return torch.from_numpy(np.ascontiguousarray(images[:, :, w.y : w.y + w.height, w.x : w.x + w.width]))
    part = np.require(images[:, w.y : w.y + w.height, w.x : w.x + w.width], requirements=["C", "W"])
    return to_model_input(torch.from_numpy(part))


def score_options(score: Any) -> dict[str, Any]:
    """Predictor keyword arguments of a config's ``score`` section: batch scoring and
    evaluation predict the same way."""
    return {
        "precision": score.precision,
        "channels_last": score.channels_last,
        "tile_size": score.tile_size,
        "tile_overlap": score.tile_overlap,
        "batch_size": score.batch_size,
        "tta": score.tta,
        "threshold": score.threshold,
    }
