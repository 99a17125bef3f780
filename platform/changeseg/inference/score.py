"""Offline batch scoring of pair archives with Ray Data (``changeseg score``).

Pairs stream from storage through three stages: read + decode (Ray tasks), the model
(an actor pool, :mod:`changeseg.inference.score_actor`) and, on the driver, the result
store (:mod:`changeseg.inference.score_results`) that appends one small row per pair to
Parquet files under ``OUTPUT/results/``.

Nothing lost: every input pair ends as exactly one row, ``ok`` or ``error`` with the
reason; started again with the same output, the job skips the pair ids already scored.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.data

from changeseg import storage
from changeseg.config import Config
from changeseg.data.pipeline import load_options, source_dataset
from changeseg.data.records import PairRecord
from changeseg.inference.input_records import load_input_records
from changeseg.inference.score_actor import Decode, Scorer
from changeseg.inference.score_results import (
    RESULT_SCHEMA,
    ResultWriter,
    drop_error_rows,
    read_results,
    result_totals,
)
from changeseg.models.location import META_FILE, WEIGHTS_FILE, resolve_model_dir
from changeseg.progress import Progress
from changeseg.runtime import init_ray

log = logging.getLogger(__name__)

__all__ = ["RESULT_SCHEMA", "ScoreSummary", "batch_score", "load_input_records", "read_results"]


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


def checkpoint_bytes(model_uri: str, cfg: Config) -> tuple[dict, dict]:
    """Checkpoint bytes (model.json + safetensors) and registry info, resolved once on the driver."""
    with tempfile.TemporaryDirectory(prefix="changeseg-score-") as tmp:
        directory, info = resolve_model_dir(
            model_uri, tracking_uri=cfg.tracking.tracking_uri, storage_options=cfg.storage, download_dir=tmp
        )
        meta = (directory / META_FILE).read_text()
        weights = (directory / WEIGHTS_FILE).read_bytes()
    return {"meta": meta, "weights": weights}, {k: v for k, v in info.items() if k != "metadata"}


def batch_score(
    cfg: Config,
    *,
    model_uri: str,
    input_uri: str,
    output_uri: str,
    split: str | None = None,
    retry_errors: bool = False,
) -> ScoreSummary:
    """Score every pair of ``input_uri`` with ``model_uri`` into ``output_uri``; resumable.

    ``retry_errors``: first remove the ``error`` rows of earlier runs (transient failures:
    storage timeouts, a lost actor) from the result files, so those pairs are scored again.
    """
    started = time.perf_counter()
    output_uri = absolute_output(output_uri)
    checkpoint, info = checkpoint_bytes(model_uri, cfg)
    records, problems = load_input_records(input_uri, cfg, split=split)
    total = len(records) + len(problems)
    if total == 0:
        raise ValueError(f"no pairs found in {input_uri}")
    if retry_errors:
        log.info("retrying: %d error rows removed from %s", drop_error_rows(output_uri, cfg), output_uri)

    done = scored_pair_ids(output_uri, cfg)
    todo = [r for r in records if r.pair_id not in done]
    writer = ResultWriter(output_uri, cfg)
    problem_rows = problem_result_rows(problems, done=done, info=info)
    writer.add(problem_rows)
    log.info(
        "scoring %d pairs of %s with %s (%d already in %s)", len(todo), input_uri, model_uri, len(done), output_uri
    )
    error_examples = [[r["pair_id"], r["error"]] for r in problem_rows[:5]]
    steady = _run_pipeline(cfg, todo, checkpoint, info, output_uri, writer, error_examples, started) if todo else None
    writer.flush()

    summary = summarise(
        cfg,
        info=info,
        input_uri=input_uri,
        output_uri=output_uri,
        pairs_total=total,
        already_done=len(done),
        scored_now=len(todo) + len(problem_rows),
        started=started,
        steady=steady,
        error_examples=error_examples,
    )
    storage.write_bytes(storage.join(output_uri, "summary.json"), summary.to_json().encode(), cfg.storage)
    return summary


def absolute_output(output_uri: str) -> str:
    """A local output folder as an absolute path (Ray workers run elsewhere); remote URIs as given."""
    if storage.is_remote(output_uri):
        return output_uri
    return str(Path(output_uri.removeprefix("file://")).expanduser().resolve())


def scored_pair_ids(output_uri: str, cfg: Config) -> set[str]:
    """Pair ids already in the result files: a re-run skips them."""
    done: set[str] = set()
    for table in read_results(output_uri, cfg, columns=["pair_id"]):
        done.update(table.column("pair_id").to_pylist())
    return done


def problem_result_rows(problems: list[tuple[str, str]], *, done: set[str], info: dict) -> list[dict]:
    """One ``error`` row per incomplete input pair not already in the results."""
    model_fields = {"model_name": str(info.get("name")), "model_version": str(info.get("version") or "")}
    return [
        {
            **{n: None for n in RESULT_SCHEMA.names},
            **model_fields,
            "pair_id": pid,
            "status": "error",
            "error": why,
            "has_truth": False,
        }
        for pid, why in problems
        if pid not in done
    ]


def summarise(
    cfg: Config,
    *,
    info: dict,
    input_uri: str,
    output_uri: str,
    pairs_total: int,
    already_done: int,
    scored_now: int,
    started: float,
    steady: float | None,
    error_examples: list,
) -> ScoreSummary:
    """The job's summary, its totals and metrics read back from every result file (resumed runs too)."""
    ok_all, err_all, rows_all, metrics = result_totals(output_uri, cfg)
    seconds = time.perf_counter() - started
    summary = ScoreSummary(
        model=info,
        input=input_uri,
        output=output_uri,
        pairs_total=pairs_total,
        already_done=already_done,
        scored_now=scored_now,
        ok=ok_all,
        errors=err_all,
        seconds=round(seconds, 3),
        pairs_per_second=round(scored_now / seconds, 3) if seconds > 0 else 0.0,
        results=storage.join(output_uri, "results"),
        masks=storage.join(output_uri, "masks"),
        steady_pairs_per_second=round(steady, 3) if steady else None,
        metrics=metrics.compute() if metrics is not None else None,
        error_examples=error_examples[:5],
    )
    if rows_all != pairs_total:
        log.warning("%s holds %d result rows for %d input pairs", summary.results, rows_all, pairs_total)
    return summary


def _run_pipeline(
    cfg: Config,
    todo: list,
    checkpoint: dict,
    info: dict,
    output_uri: str,
    writer: "ResultWriter",
    error_examples: list,
    started: float,
) -> float | None:
    """Stream ``todo`` through decoding and the actor pool into ``writer``; returns the steady rate."""
    init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Held here for the whole job: actors the pool starts late (scaling up, restarts)
    # resolve it after the first ones, and the object must still exist then.
    weights_ref = ray.put(checkpoint)
    ds = scoring_dataset(cfg, todo=todo, weights_ref=weights_ref, info=info, output_uri=output_uri)
    clock = Progress(cfg.score.progress_seconds, started=started)
    scored = errors = 0
    stamps: list[float] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        stamps += [r["scored_at"] for r in rows if r["scored_at"]]
        writer.add(rows)
        scored += len(rows)
        for row in rows:
            if row["status"] != "ok":
                errors += 1
                error_examples.append([row["pair_id"], row["error"]])
        if clock.due(final=scored == len(todo)):
            rate = scored / max(clock.elapsed, 1e-9)
            eta = clock.eta(scored, len(todo))
            print(
                f"[score] {scored}/{len(todo)} pairs, {rate:.2f} pairs/s, eta {eta:.0f} s, errors {errors}", flush=True
            )
    del weights_ref  # the job is over; the object store may free the weights
    return steady_rate(stamps)


def scoring_dataset(
    cfg: Config, *, todo: list[PairRecord], weights_ref: ray.ObjectRef, info: dict, output_uri: str
) -> ray.data.Dataset:
    """Records -> decode tasks -> the scoring actor pool, as one lazy Ray Data dataset."""
    score = cfg.score
    # Decoding runs in tasks of their own (a resource shape unlike the actors', so Ray
    # Data does not fuse the two), overlapping with the model instead of queueing behind it.
    load = {**load_options(cfg), "max_pixels": score.max_pixels}
    ds = source_dataset(todo, cfg).map(Decode(load), num_cpus=0.5)
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "checkpoint": [weights_ref],
            "info": info,
            "cfg_json": cfg.model_dump(mode="json"),
            "output_uri": output_uri,
        },
        batch_size=score.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=score.min_actors, max_size=score.max_actors),
        num_gpus=score.num_gpus,
        num_cpus=score.cpus_per_actor,
        batch_format="numpy",
        zero_copy_batch=True,
    )


def steady_rate(stamps: list[float]) -> float | None:
    """Pairs after the first model batch over the time from its end to the last one's."""
    stamps = sorted(stamps)
    first_batch = stamps.count(stamps[0]) if stamps else 0
    if len(stamps) > first_batch and stamps[-1] > stamps[0]:
        return (len(stamps) - first_batch) / (stamps[-1] - stamps[0])
    return None
