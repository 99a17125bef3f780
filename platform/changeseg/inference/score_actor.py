"""The model stage of batch scoring: decoding tasks and the scoring actor.

Decoding runs in Ray tasks, the model in an actor pool (``score.num_gpus`` per actor).
Each actor writes its pairs' mask (and probability) PNGs under ``OUTPUT/masks/``
(``OUTPUT/probabilities/``) and returns one result row per pair; a failure becomes an
``error`` row, never a crashed job.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import ray
import torch

from changeseg import storage
from changeseg.config import Config
from changeseg.data.decode import encode_png
from changeseg.data.pairs import load_pair
from changeseg.inference.naming import pair_file_name
from changeseg.inference.predictor import Predictor, score_options
from changeseg.inference.regions import summarize_mask
from changeseg.inference.scene import SceneOptions, is_scene, score_scene
from changeseg.inference.score_results import RESULT_SCHEMA
from changeseg.metrics import ChangeMetrics

__all__ = ["Decode", "Scorer"]


class Decode:
    """Ray Data map: read and decode one pair; a failure becomes an error row, not a crash."""

    def __init__(self, load: dict) -> None:
        self.load = load

    def __call__(self, row: dict) -> dict:
        start = time.perf_counter()
        empty = np.zeros((0, 0, 3), np.uint8)
        out = {
            "pair_id": row["pair_id"],
            "error": "",
            "t0": empty,
            "t1": empty,
            "mask": np.zeros((0, 0), np.uint8),
            "has_truth": False,
            "scene": "",
        }
        try:
            if _scene_row(row, self.load, out):  # read window by window by the scorer
                out["decode_ms"] = (time.perf_counter() - start) * 1000
                return out
            sample = load_pair(row, **self.load)
            out.update(t0=sample["t0"], t1=sample["t1"])
            if "mask" in sample:
                out.update(mask=sample["mask"], has_truth=True)
        except Exception as err:  # unreadable, undecodable, sizes differ, bad mask values
            out["error"] = f"{type(err).__name__}: {err}"
        out["decode_ms"] = (time.perf_counter() - start) * 1000
        return out


def _scene_row(row: dict, load: dict, out: dict) -> bool:
    """Mark a georeferenced raster pair for window-by-window scoring (its record as JSON)."""
    if not is_scene(row, load.get("storage_options")):
        return False
    keep = ("pair_id", "t0", "t1", "mask", "mask_encoding", "shard", "shard_row")
    out["scene"] = json.dumps({k: row.get(k) for k in keep})
    out["has_truth"] = bool(row.get("mask"))
    return True


class Scorer:
    """Actor: one model replica. Predicts, writes mask PNGs, returns one result row per pair."""

    def __init__(self, *, checkpoint: list, info: dict, cfg_json: dict, output_uri: str) -> None:
        # The weights travel once through the object store (a ref in a list is not auto-resolved);
        # the driver holds that ref for the whole job, so actors started later still find it.
        weights = ray.get(checkpoint[0])
        self.cfg = Config.model_validate(cfg_json)
        self.output = output_uri
        self.info = info
        score = self.cfg.score
        device = "cuda" if score.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # One intra-op thread per CPU the actor reserved (Ray's default is one in total).
            torch.set_num_threads(max(1, int(score.cpus_per_actor)))
        self.predictor = Predictor.from_bytes(
            weights["meta"],
            weights["weights"],
            info=info,
            device=device,
            **score_options(score),
        )
        self.num_classes = self.predictor.num_classes

    def __call__(self, batch: dict) -> pa.Table:
        n = len(batch["pair_id"])
        good = [i for i in range(n) if not batch["error"][i] and not batch["scene"][i]]
        errors = {i: str(batch["error"][i]) for i in range(n) if batch["error"][i]}
        start = time.perf_counter()
        predicted = self.predictor.predict_pairs(
            [batch["t0"][i] for i in good], [batch["t1"][i] for i in good], change=self.cfg.score.write_probabilities
        )
        per_pair_ms = (time.perf_counter() - start) * 1000 / max(len(good), 1)
        results = dict(zip(good, predicted))
        scored_at = time.time()
        rows: list[dict] = []
        for i in range(n):
            row = {name: None for name in RESULT_SCHEMA.names}
            row.update(
                pair_id=str(batch["pair_id"][i]),
                scored_at=scored_at,
                model_name=str(self.info.get("name")),
                model_version=str(self.info.get("version") or ""),
                decode_ms=float(batch["decode_ms"][i]),
                has_truth=bool(batch["has_truth"][i]),
            )
            result = results.get(i)
            if isinstance(result, Exception):  # a failed model call fails its pairs, not the job
                errors[i] = f"{type(result).__name__}: {result}"
            if i not in errors:
                try:
                    if batch["scene"][i]:
                        row.update(self._scene(str(batch["scene"][i])))
                    else:
                        row.update(
                            self._outputs(row["pair_id"], result, batch["mask"][i] if row["has_truth"] else None)
                        )
                        row["inference_ms"] = per_pair_ms
                except Exception as err:
                    errors[i] = f"{type(err).__name__}: {err}"
            if i in errors:
                row.update(status="error", error=errors[i])
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def _scene(self, scene_json: str) -> dict:
        """Score a georeferenced pair window by window into COGs and GeoJSON regions."""
        started = time.perf_counter()
        fields = score_scene(
            self.predictor,
            json.loads(scene_json),
            output_uri=self.output,
            opts=SceneOptions.from_config(self.cfg),
            storage_options=self.cfg.storage,
        )
        fields.pop("stats", None)
        return {**fields, "inference_ms": (time.perf_counter() - started) * 1000}

    def _outputs(self, pid: str, result, truth) -> dict:
        """Write the pair's mask (and probability) PNGs; the row's fields for an ok pair."""
        score = self.cfg.score
        pred = result.mask
        summary = summarize_mask(pred, ignore_index=None, min_area=score.min_region_area, max_regions=score.max_regions)
        mask_uri = storage.join(self.output, "masks", pair_file_name(pid, ".png"))
        # 0/255 for binary change so the PNG is viewable; class ids otherwise.
        storage.write_bytes(
            mask_uri, encode_png(pred * 255 if self.num_classes == 2 else pred, compress_level=1), self.cfg.storage
        )
        prob_uri = None
        if result.change is not None:
            prob_uri = storage.join(self.output, "probabilities", pair_file_name(pid, ".png"))
            change8 = ((result.change.astype(np.uint32) + 128) // 257).astype(np.uint8)  # P(any change) x 255
            storage.write_bytes(prob_uri, encode_png(change8, compress_level=1), self.cfg.storage)
        state = None
        if truth is not None:
            metrics = ChangeMetrics(num_classes=self.num_classes, ignore_index=self.cfg.data.ignore_index)
            metrics.update(torch.from_numpy(pred).long(), torch.from_numpy(np.asarray(truth)).long())
            state = metrics.state().tolist()
        return dict(
            status="ok",
            error="",
            height=pred.shape[0],
            width=pred.shape[1],
            tiles=result.tiles,
            changed_fraction=summary["changed_fraction"],
            changed_pixels=summary["changed_pixels"],
            regions_total=summary["regions_total"],
            regions=json.dumps(summary["regions"]),
            mask_uri=mask_uri,
            probability_uri=prob_uri,
            metrics_state=state,
            threshold=result.threshold,
        )
