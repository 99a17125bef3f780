"""The model deployment: ``ChangeModel`` loads registry versions on demand
(``@serve.multiplexed``, a bounded number per replica) through the safetensors checkpoint
loader and batches same-model requests (``@serve.batch``), running one forward pass per
group of same-size pairs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from changeseg.config import build_config
from changeseg.devices import resolve_device
from changeseg.serving.inputs import BandMismatch, check_bands

__all__ = ["MODEL_DEPLOYMENT", "ChangeModel"]

log = logging.getLogger(__name__)

MODEL_DEPLOYMENT = "ChangeModel"


@dataclass
class _Item:
    predictor: Any
    t0: np.ndarray
    t1: np.ndarray
    probabilities: bool
    threshold: float | None = None


def _run_batch(items: list[_Item]) -> list[dict | Exception]:
    """The inference core per model version: same-size pairs share forward passes within
    the pixel budget, large pairs are tiled. A failing group fails only its own items."""
    out: list[dict | Exception | None] = [None] * len(items)
    by_model: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):  # one group per model version and requested threshold
        try:  # a pair of another band count than the model's fails alone
            check_bands(item.t0, channels=int(getattr(item.predictor.model, "in_channels", 3)))
        except BandMismatch as err:
            out[i] = err
            continue
        by_model.setdefault((id(item.predictor), item.threshold), []).append(i)
    for indices in by_model.values():
        predictor = items[indices[0]].predictor
        change = any(items[i].probabilities for i in indices)
        try:
            results = predictor.predict_pairs(
                [items[i].t0 for i in indices],
                [items[i].t1 for i in indices],
                change=change,
                threshold=items[indices[0]].threshold,
            )
        except Exception as err:  # noqa: BLE001 - handed to each request of this model
            results = [err] * len(indices)
        for i, res in zip(indices, results):
            if isinstance(res, Exception):
                out[i] = res
                continue
            out[i] = {
                "mask": res.mask,
                "change_probability": res.change.astype(np.float32) / 65535.0 if items[i].probabilities else None,
                "inference_ms": res.inference_ms,
                "batch_size": res.batch_size,
                "threshold": res.threshold,
            }
    return out


@serve.deployment(name=MODEL_DEPLOYMENT)
class ChangeModel:
    """Registry versions loaded on demand, batched forward passes."""

    def __init__(self, config: dict[str, Any]):
        cfg = build_config(config)
        self.settings = settings = cfg.serve
        self.tracking_uri = cfg.resolved_tracking_uri()
        self.name = cfg.tracking.registered_model
        # The one device rule (auto: this replica's GPU when it has one); cuda without a GPU fails here.
        self.device = resolve_device(settings.device)
        options = dict(
            device=self.device,
            precision=settings.precision,
            channels_last=settings.channels_last,
            tile_size=settings.tile_size,
            tile_overlap=settings.tile_overlap,
            batch_size=settings.max_batch_size,
            max_batch_pixels=settings.max_batch_pixels,
        )

        async def load(model_id: str):
            # Lazy: the model stack (torchvision, timm) loads in model replicas only.
            from changeseg.inference import Predictor

            uri = f"models:/{self.name}/{model_id}"
            log.info("loading %s on %s", uri, self.device)
            return await asyncio.to_thread(Predictor.from_uri, uri, tracking_uri=self.tracking_uri, **options)

        # Built here, not as a decorated method, so the bound comes from the config.
        self.load_model = serve.multiplexed(max_num_models_per_replica=self.settings.max_models_per_replica)(load)
        self._infer.set_max_batch_size(self.settings.max_batch_size)
        self._infer.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    async def ready(self) -> bool:
        await self.load_model(serve.get_multiplexed_model_id())
        return True

    async def predict(
        self, t0: np.ndarray, t1: np.ndarray, probabilities: bool = False, threshold: float | None = None
    ) -> dict:
        predictor = await self.load_model(serve.get_multiplexed_model_id())
        result = await self._infer(_Item(predictor, t0, t1, probabilities, threshold))
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _infer(self, items: list[_Item]) -> list[dict]:
        # Off the event loop, so the replica keeps taking requests into the next batch.
        return await asyncio.to_thread(_run_batch, items)
