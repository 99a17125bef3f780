"""The synthetic end-to-end demo: fine-tune on Ray, register, predict held-out pairs."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from changeseg.config import Config, load_config
from changeseg.data.synthetic import make_pair, pair_seed, write_folder
from changeseg.inference.predictor import Predictor
from changeseg.inference.score import batch_score
from changeseg.metrics import ChangeMetrics
from changeseg.serving.local import serve_one_request
from changeseg.training.trainer import FinetuneResult, finetune
from changeseg.viz import overlay_panel

log = logging.getLogger(__name__)

# Held-out pairs come from seeds far from the training and validation seeds.
TEST_SEED_OFFSET = 7_000_001


def run_demo(
    *, config_path: str | None, overrides: list[str], output: str | Path, test_pairs: int = 64, overlays: int = 6
) -> dict:
    """Run the demo and return its summary (also written to ``output/summary.json``)."""
    started = time.perf_counter()
    cfg = load_config(config_path, overrides)
    output = Path(output).resolve()
    (output / "overlays").mkdir(parents=True, exist_ok=True)

    result = finetune(cfg)
    model_uri = result.registered.get("model_uri") or result.checkpoint_path
    predictor = Predictor.from_uri(model_uri, tracking_uri=result.tracking_uri, storage_options=cfg.storage)
    test_metrics, overlay_paths = predict_held_out(
        cfg, predictor=predictor, output=output, test_pairs=test_pairs, overlays=overlays
    )
    summary = {
        "finetune": dataclasses.asdict(result),
        "model_uri": model_uri,
        "held_out": {"pairs": test_pairs, "seed_offset": TEST_SEED_OFFSET, **test_metrics},
        "overlays": overlay_paths,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if result.registered:
        score_and_serve(cfg, result=result, output=output, test_pairs=test_pairs, summary=summary, started=started)
    summary_path = output / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(
        "\n".join(
            report_lines(
                cfg, result=result, summary=summary, test_pairs=test_pairs, output=output, summary_path=summary_path
            )
        )
    )
    return summary


def predict_held_out(
    cfg: Config, *, predictor: Predictor, output: Path, test_pairs: int, overlays: int
) -> tuple[dict[str, float], list[str]]:
    """Metrics on ``test_pairs`` new synthetic pairs, and the first ``overlays`` drawn."""
    metrics = ChangeMetrics(num_classes=cfg.model.resolved_num_classes())
    syn = cfg.data.synthetic
    overlay_paths = []
    for i in range(test_pairs):
        pair = make_pair(seed=pair_seed(syn.seed + TEST_SEED_OFFSET, i), size=syn.size)
        pred = predictor.predict(pair.t0, pair.t1)[0]
        metrics.update(torch.from_numpy(pred)[None].long(), torch.from_numpy(pair.mask)[None].long())
        if i < overlays:
            path = output / "overlays" / f"test_{i:03d}.png"
            Image.fromarray(overlay_panel(pair.t0, pair.t1, pred, pair.mask)).save(path)
            overlay_paths.append(str(path))
    return metrics.compute(), overlay_paths


def score_and_serve(
    cfg: Config, *, result: FinetuneResult, output: Path, test_pairs: int, summary: dict, started: float
) -> None:
    """Batch-score the held-out pairs with the registered champion, then serve it one pair;
    both land in ``summary``."""
    syn = cfg.data.synthetic
    # Batch-score the held-out pairs, written as an archive, with the registered champion.
    archive = output / "held_out_archive"
    if not (archive / "mask").is_dir() or len(list((archive / "mask").glob("*.png"))) != test_pairs:
        write_folder(archive, count=test_pairs, seed=syn.seed + TEST_SEED_OFFSET, size=syn.size)
    champion = f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}"
    scored = batch_score(
        cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": result.tracking_uri})}),
        model_uri=champion,
        input_uri=str(archive),
        output_uri=str(output / "batch_scores"),
    )
    summary["batch_scored"] = dataclasses.asdict(scored)
    summary["seconds"] = round(time.perf_counter() - started, 1)

    # Serve the champion over HTTP, send it one held-out pair, then stop Serve.
    pair = make_pair(seed=pair_seed(syn.seed + TEST_SEED_OFFSET, 0), size=syn.size)
    summary["served"] = serve_one_request(cfg, tracking_uri=result.tracking_uri, t0=pair.t0, t1=pair.t1)
    summary["seconds"] = round(time.perf_counter() - started, 1)


def report_lines(
    cfg: Config, *, result: FinetuneResult, summary: dict, test_pairs: int, output: Path, summary_path: Path
) -> list[str]:
    """The console report of a finished demo."""
    test_metrics = summary["held_out"]
    reg = result.registered
    lines = [
        "",
        "changeseg demo: done",
        f"  data         {result.train_pairs} train / {result.val_pairs} val synthetic pairs ({result.data_source})",
        f"  training     {result.epochs} epochs on {cfg.train.num_workers} Ray Train workers (from epoch {result.start_epoch}), {result.seconds:.0f} s",
        f"  validation   global F1 {result.final_metrics.get('val_global_f1', float('nan')):.3f}",
        f"  checkpoint   {result.checkpoint_path}",
        f"  MLflow       run {result.mlflow_run_id} at {result.tracking_uri}",
    ]
    if reg:
        lines.append(
            f"  registry     {reg['model_uri']}"
            + (
                f" is now @{reg['alias']}"
                if reg["champion"]
                else f" (@{reg['alias']} stays version {reg['champion_version']})"
            )
        )
    lines += [
        f"  held-out     {test_pairs} new pairs: global F1 {test_metrics['global_f1']:.3f}, IoU {test_metrics['global_iou']:.3f}, "
        f"per-image mean F1 {test_metrics['per_image_f1_mean']:.3f}, kappa {test_metrics['kappa']:.3f}",
        f"  overlays     {output / 'overlays'} (t0 | t1 | prediction | truth | errors: green hit, red false alarm, blue miss)",
        f"  summary      {summary_path}",
        f"  total        {summary['seconds']:.0f} s",
    ]
    scored = summary.get("batch_scored")
    if scored:
        f1 = (scored["metrics"] or {}).get("global_f1", float("nan"))
        lines.insert(
            -2,
            f"  batch score  {scored['ok']} ok / {scored['errors']} errors of {scored['pairs_total']} archived pairs with "
            f"{scored['model']['uri']} (v{scored['model']['version']}): global F1 {f1:.3f}, "
            f"{scored['pairs_per_second']:.1f} pairs/s -> {scored['results']}",
        )
    served = summary.get("served")
    if served:
        model, found = served["model"], served["summary"]
        lines.insert(
            -2,
            f"  serving      POST {served['url']}: {model['name']} v{model['version']} (@{model['requested']}) found "
            f"{found['changed_fraction']:.1%} changed in {found['regions_total']} regions, {served['round_trip_ms']:.0f} ms; Serve shut down",
        )
    return lines
