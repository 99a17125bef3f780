"""Offline batch scoring of pair archives with Ray Data.

Pairs stream from storage through three stages: read + decode (Ray tasks), the model
(an actor pool, ``score.num_gpus`` per actor) and, on the driver, a writer that appends
one small result row per pair to Parquet files under ``OUTPUT/results/``. Masks (and
optionally probability maps) are written by the actors as PNGs under ``OUTPUT/masks/``
(``OUTPUT/probabilities/``) with the pair id as file name.

Nothing lost: every input pair ends as exactly one row, ``ok`` or ``error`` with the
reason. A result file is written in one piece (a local rename, or a single S3 object),
so a killed job leaves whole files only; started again with the same output, the job
skips the pair ids already in them and scores the rest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import Config
from changeseg.data.records import PairRecord

log = logging.getLogger(__name__)

__all__ = ["RESULT_SCHEMA", "ScoreSummary", "batch_score", "read_results"]

RESULT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("tiles", pa.int32()),
        ("changed_fraction", pa.float64()),
        ("changed_pixels", pa.int64()),
        ("regions_total", pa.int32()),
        ("regions", pa.string()),  # JSON list of {"class", "bbox": [x0, y0, x1, y1], "area"}
        ("mask_uri", pa.string()),
        ("probability_uri", pa.string()),
        ("decode_ms", pa.float64()),
        ("inference_ms", pa.float64()),
        ("scored_at", pa.float64()),  # Unix time the pair's model call finished
        ("has_truth", pa.bool_()),
        ("metrics_state", pa.list_(pa.float64())),  # ChangeMetrics.state() of this pair
    ]
)


@dataclass
class ScoreSummary:
    """What a scoring job did; also written to ``OUTPUT/summary.json``."""

    model: dict[str, Any]
    input: str
    output: str
    pairs_total: int
    already_done: int
    scored_now: int
    ok: int
    errors: int
    seconds: float
    pairs_per_second: float
    results: str
    masks: str
    # Pairs after the first model batch over the time from its end to the last one's:
    # the pipeline's rate once a model replica is up (start-up excluded).
    steady_pairs_per_second: float | None = None
    metrics: dict[str, float] | None = None
    error_examples: list[list[str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# --- inputs --------------------------------------------------------------------------


def load_input_records(input_uri: str, cfg: Config, *, split: str | None = None) -> tuple[list[PairRecord], list[tuple[str, str]]]:
    """Records of a manifest, shards or a dataset layout at any URI, plus incomplete pairs."""
    from changeseg.data.layouts import scan_dataset

    scan = scan_dataset(
        input_uri,
        layout=cfg.data.layout,
        split=split or "test",
        fold=cfg.data.fold,
        num_classes=cfg.model.resolved_num_classes(),
        require_masks=False,
        storage_options=cfg.storage,
    )
    records = [r for r in scan.records if split is None or r.split == split]
    problems = list(scan.problems)
    seen: set[str] = set()
    duplicated = sorted({r.pair_id for r in records if r.pair_id in seen or seen.add(r.pair_id)})
    if duplicated:
        raise ValueError(f"{input_uri}: pair ids must be unique, repeated: {', '.join(duplicated[:5])}")
    return records, problems


def read_results(output_uri: str, cfg: Config, *, columns: list[str] | None = None):
    """Yield the result tables already under ``OUTPUT/results`` (one per file)."""
    results = storage.join(output_uri, "results")
    if not storage.is_dir(results, cfg.storage):
        return
    fs, _ = storage.filesystem_for(results, cfg.storage)
    for uri in sorted(storage.list_files(results, cfg.storage)):
        if uri.endswith(".parquet"):
            path = storage.filesystem_for(uri, cfg.storage)[1]
            yield pq.read_table(path, filesystem=fs, columns=columns)


# --- the model stage ---------------------------------------------------------------


class _Decode:
    """Ray Data map: read and decode one pair; a failure becomes an error row, not a crash."""

    def __init__(self, load: dict) -> None:
        self.load = load

    def __call__(self, row: dict) -> dict:
        from changeseg.data.decode import load_pair

        start = time.perf_counter()
        empty = np.zeros((0, 0, 3), np.uint8)
        out = {"pair_id": row["pair_id"], "error": "", "t0": empty, "t1": empty,
               "mask": np.zeros((0, 0), np.uint8), "has_truth": False}
        try:
            sample = load_pair(row, **self.load)
            out.update(t0=sample["t0"], t1=sample["t1"])
            if "mask" in sample:
                out.update(mask=sample["mask"], has_truth=True)
        except Exception as err:  # unreadable, undecodable, sizes differ, bad mask values
            out["error"] = f"{type(err).__name__}: {err}"
        out["decode_ms"] = (time.perf_counter() - start) * 1000
        return out


class _Scorer:
    """Actor: one model replica. Predicts, writes mask PNGs, returns one result row per pair."""

    def __init__(self, *, checkpoint: list, info: dict, cfg_json: dict, output_uri: str) -> None:
        import ray
        import torch
        from safetensors.torch import load as load_safetensors

        from changeseg.models import model_from_config

        # The weights travel once through the object store (a ref in a list is not auto-resolved).
        checkpoint = ray.get(checkpoint[0])
        self.cfg = Config.model_validate(cfg_json)
        self.output = output_uri
        self.info = info
        self.device = torch.device("cuda" if self.cfg.score.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            # One intra-op thread per CPU the actor reserved (Ray's default is one in total).
            torch.set_num_threads(max(1, int(self.cfg.score.cpus_per_actor)))
        model_config = json.loads(checkpoint["config"])
        model = model_from_config(model_config)
        model.load_state_dict(load_safetensors(checkpoint["weights"]))
        self.model = model.to(self.device).eval()
        self.num_classes = int(getattr(model, "num_classes", model_config.get("num_classes", 2)))

    def _forward(self, a, b):
        return self.model(a.to(self.device), b.to(self.device)).softmax(1)

    def _predict(self, t0s: list[np.ndarray], t1s: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """Probabilities (C, H, W) per pair; same-size pairs share calls, large ones are tiled."""
        import torch

        from changeseg.data.decode import to_model_input
        from changeseg.inference.tiling import predict_tiled, tile_starts

        score = self.cfg.score
        results: list[Any] = [None] * len(t0s)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(t0s):
            groups.setdefault(img.shape, []).append(i)
        with torch.inference_mode():
            for shape, idx in groups.items():
                h, w = shape[:2]
                tiles = len(tile_starts(h, score.tile_size, score.tile_overlap)) * len(tile_starts(w, score.tile_size, score.tile_overlap))
                for first in range(0, len(idx), score.batch_size if tiles == 1 else 1):
                    chunk = idx[first : first + (score.batch_size if tiles == 1 else 1)]
                    a = to_model_input(torch.from_numpy(np.stack([t0s[i] for i in chunk])))
                    b = to_model_input(torch.from_numpy(np.stack([t1s[i] for i in chunk])))
                    probs = predict_tiled(self._forward, a, b, tile=score.tile_size, overlap=score.tile_overlap,
                                          batch_size=score.batch_size).float().cpu().numpy()
                    for k, i in enumerate(chunk):
                        results[i] = (probs[k], tiles)
        return results

    def __call__(self, batch: dict) -> dict:
        import torch

        from changeseg.inference.regions import summarize_mask
        from changeseg.metrics import ChangeMetrics

        score = self.cfg.score
        n = len(batch["pair_id"])
        good = [i for i in range(n) if not batch["error"][i]]
        rows: list[dict] = []
        start = time.perf_counter()
        predicted: dict[int, tuple[np.ndarray, int]] = {}
        errors = {i: str(batch["error"][i]) for i in range(n) if batch["error"][i]}
        if good:
            try:
                for i, res in zip(good, self._predict([batch["t0"][i] for i in good], [batch["t1"][i] for i in good])):
                    predicted[i] = res
            except Exception as err:  # a failed model call fails its pairs, not the job
                for i in good:
                    errors[i] = f"{type(err).__name__}: {err}"
        per_pair_ms = (time.perf_counter() - start) * 1000 / max(len(good), 1)
        scored_at = time.time()
        for i in range(n):
            pid = str(batch["pair_id"][i])
            row = {name: None for name in RESULT_SCHEMA.names}
            row.update(pair_id=pid, scored_at=scored_at, model_name=str(self.info.get("name")), model_version=str(self.info.get("version") or ""),
                       decode_ms=float(batch["decode_ms"][i]), has_truth=bool(batch["has_truth"][i]))
            if i in predicted and i not in errors:
                try:
                    probs, tiles = predicted[i]
                    pred = probs.argmax(0).astype(np.uint8)
                    summary = summarize_mask(pred, ignore_index=None, min_area=score.min_region_area, max_regions=score.max_regions)
                    mask_uri = storage.join(self.output, "masks", f"{pid}.png")
                    # 0/255 for binary change so the PNG is viewable; class ids otherwise.
                    storage.write_bytes(mask_uri, _png(pred * 255 if self.num_classes == 2 else pred), self.cfg.storage)
                    prob_uri = None
                    if score.write_probabilities:
                        change = 1.0 - probs[0]  # probability of any change
                        prob_uri = storage.join(self.output, "probabilities", f"{pid}.png")
                        storage.write_bytes(prob_uri, _png(np.round(change * 255).astype(np.uint8)), self.cfg.storage)
                    state = None
                    if row["has_truth"]:
                        metrics = ChangeMetrics(num_classes=self.num_classes, ignore_index=self.cfg.data.ignore_index)
                        metrics.update(torch.from_numpy(pred).long(), torch.from_numpy(np.asarray(batch["mask"][i])).long())
                        state = metrics.state().tolist()
                    row.update(status="ok", error="", height=pred.shape[0], width=pred.shape[1], tiles=tiles,
                               changed_fraction=summary["changed_fraction"], changed_pixels=summary["changed_pixels"],
                               regions_total=summary["regions_total"], regions=json.dumps(summary["regions"]),
                               mask_uri=mask_uri, probability_uri=prob_uri, inference_ms=per_pair_ms, metrics_state=state)
                except Exception as err:
                    errors[i] = f"{type(err).__name__}: {err}"
            if i in errors:
                row.update(status="error", error=errors[i])
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


# --- the driver ----------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    """PNG with fast compression: masks compress well anyway, and encoding sits on the model's path."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _ResultWriter:
    """Buffers result rows and writes each ``flush_rows`` of them as one new Parquet file."""

    def __init__(self, output_uri: str, cfg: Config) -> None:
        self.dir = storage.join(output_uri, "results")
        self.cfg = cfg
        self.buffer: list[dict] = []
        self.files = 0
        self.prefix = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def add(self, rows: list[dict]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= self.cfg.score.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, schema=RESULT_SCHEMA)
        uri = storage.join(self.dir, f"{self.prefix}-{self.files:05d}.parquet")
        if storage.is_remote(uri):
            fs, path = storage.filesystem_for(uri, self.cfg.storage)
            pq.write_table(table, path, filesystem=fs)  # an S3 object appears whole or not at all
        else:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(uri).parent, prefix=".tmp-", suffix=".parquet")
            os.close(fd)
            pq.write_table(table, tmp)
            os.replace(tmp, uri)  # atomic: a killed job never leaves half a file
        self.files += 1
        self.buffer = []


def _resolve_model(model_uri: str, cfg: Config) -> tuple[dict, dict]:
    """Checkpoint bytes (config JSON + safetensors) and registry info, resolved once on the driver."""
    from changeseg.inference.predictor import resolve_model_dir
    from changeseg.models.weights import META_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory(prefix="changeseg-score-") as tmp:
        directory, info = resolve_model_dir(model_uri, tracking_uri=cfg.tracking.tracking_uri,
                                            storage_options=cfg.storage, download_dir=tmp)
        meta = json.loads((directory / META_FILE).read_text())
        weights = (directory / WEIGHTS_FILE).read_bytes()
    return {"config": json.dumps(meta["model"]), "weights": weights}, {k: v for k, v in info.items() if k != "metadata"}


def batch_score(cfg: Config, *, model_uri: str, input_uri: str, output_uri: str, split: str | None = None) -> ScoreSummary:
    """Score every pair of ``input_uri`` with ``model_uri`` into ``output_uri``; resumable."""
    import ray
    import ray.data

    from changeseg.data.pipeline import load_options, source_dataset
    from changeseg.metrics import ChangeMetrics
    from changeseg.training.trainer import init_ray

    started = time.perf_counter()
    if not storage.is_remote(output_uri):
        output_uri = str(Path(output_uri.removeprefix("file://")).expanduser().resolve())
    checkpoint, info = _resolve_model(model_uri, cfg)
    records, problems = load_input_records(input_uri, cfg, split=split)
    total = len(records) + len(problems)
    if total == 0:
        raise ValueError(f"no pairs found in {input_uri}")

    done: set[str] = set()
    ok = errors = 0
    steady = None
    for table in read_results(output_uri, cfg, columns=["pair_id"]):
        done.update(table.column("pair_id").to_pylist())
    already = len(done)
    todo = [r for r in records if r.pair_id not in done]
    writer = _ResultWriter(output_uri, cfg)
    model_fields = {"model_name": str(info.get("name")), "model_version": str(info.get("version") or "")}
    error_examples: list[list[str]] = []
    problem_rows = [
        {**{n: None for n in RESULT_SCHEMA.names}, **model_fields, "pair_id": pid, "status": "error", "error": why, "has_truth": False}
        for pid, why in problems if pid not in done
    ]
    writer.add(problem_rows)
    errors += len(problem_rows)
    error_examples += [[r["pair_id"], r["error"]] for r in problem_rows[:5]]
    log.info("scoring %d pairs of %s with %s (%d already in %s)", len(todo), input_uri, model_uri, already, output_uri)

    if todo:
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = False
        score = cfg.score
        # Decoding runs in tasks of their own (a resource shape unlike the actors', so Ray
        # Data does not fuse the two), overlapping with the model instead of queueing behind it.
        ds = source_dataset(todo, cfg).map(_Decode(load_options(cfg)), num_cpus=0.5)
        ds = ds.map_batches(
            _Scorer,
            fn_constructor_kwargs={"checkpoint": [ray.put(checkpoint)], "info": info,
                                   "cfg_json": cfg.model_dump(mode="json"), "output_uri": output_uri},
            batch_size=score.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=score.min_actors, max_size=score.max_actors),
            num_gpus=score.num_gpus,
            num_cpus=score.cpus_per_actor,
            batch_format="numpy",
            zero_copy_batch=True,
        )
        last_report = time.perf_counter()
        scored = 0
        stamps: list[float] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            stamps += [r["scored_at"] for r in rows if r["scored_at"]]
            writer.add(rows)
            scored += len(rows)
            for row in rows:
                if row["status"] == "ok":
                    ok += 1
                else:
                    errors += 1
                    if len(error_examples) < 5:
                        error_examples.append([row["pair_id"], row["error"]])
            now = time.perf_counter()
            if now - last_report >= score.progress_seconds or scored == len(todo):
                rate = scored / max(now - started, 1e-9)
                eta = (len(todo) - scored) / rate if rate > 0 else float("inf")
                print(f"[score] {scored}/{len(todo)} pairs, {rate:.2f} pairs/s, eta {eta:.0f} s, errors {errors}", flush=True)
                last_report = now
        stamps.sort()
        first_batch = stamps.count(stamps[0]) if stamps else 0
        if len(stamps) > first_batch and stamps[-1] > stamps[0]:
            steady = (len(stamps) - first_batch) / (stamps[-1] - stamps[0])
    writer.flush()

    # Totals and metrics over every result file (previous runs included), streamed file by file.
    import torch

    metrics = None
    ok_all = err_all = rows_all = 0
    for table in read_results(output_uri, cfg, columns=["status", "metrics_state"]):
        statuses = table.column("status").to_pylist()
        ok_all += statuses.count("ok")
        err_all += len(statuses) - statuses.count("ok")
        rows_all += len(statuses)
        for state in table.column("metrics_state").to_pylist():
            if state:
                m = ChangeMetrics.from_state(torch.tensor(state, dtype=torch.float64), ignore_index=cfg.data.ignore_index)
                if metrics is None:
                    metrics = m
                else:
                    metrics.merge(m)
    seconds = time.perf_counter() - started
    scored_now = len(todo) + len(problem_rows)
    summary = ScoreSummary(
        model=info,
        input=input_uri,
        output=output_uri,
        pairs_total=total,
        already_done=already,
        scored_now=scored_now,
        ok=ok_all,
        errors=err_all,
        seconds=round(seconds, 3),
        pairs_per_second=round(scored_now / seconds, 3) if seconds > 0 else 0.0,
        results=storage.join(output_uri, "results"),
        masks=storage.join(output_uri, "masks"),
        steady_pairs_per_second=round(steady, 3) if steady else None,
        metrics=metrics.compute() if metrics is not None else None,
        error_examples=error_examples,
    )
    if rows_all != total:
        log.warning("%s holds %d result rows for %d input pairs", summary.results, rows_all, total)
    storage.write_bytes(storage.join(output_uri, "summary.json"), summary.to_json().encode(), cfg.storage)
    return summary
