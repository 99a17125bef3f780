"""Command line: ``changeseg finetune|demo|export|prepare|score|evaluate|serve``; the jobs/ scripts call the same functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "botocore", "urllib3", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_or_report(args: argparse.Namespace):
    """The validated config of ``--config`` plus overrides, or None after printing why not."""
    from changeseg.config import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def finetune_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finetune", description="Fine-tune a change-detection model with Ray Train, tracked in MLflow."
    )
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--summary", help="also write the run summary as JSON to this path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    setup_logging()

    cfg = _config_or_report(args)
    if cfg is None:
        return 2

    from changeseg.training.trainer import finetune

    try:
        result = finetune(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = dataclasses.asdict(result)
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(text + "\n")
        print(f"summary written to {args.summary}")
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description="Synthetic end-to-end demo: train, register, predict.")
    parser.add_argument("--config", default=None, help="YAML config (default: the built-in demo recipe)")
    parser.add_argument("--output", default="demo_output", help="folder for overlays and the summary")
    parser.add_argument("--test-pairs", type=int, default=64, help="held-out synthetic pairs to predict")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    setup_logging()

    from changeseg.config import ConfigError
    from changeseg.demo import run_demo

    try:
        run_demo(config_path=args.config, overrides=args.overrides, output=args.output, test_pairs=args.test_pairs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export", description="Export a model to ONNX (inputs t0, t1; output logits) and check it in onnxruntime."
    )
    parser.add_argument(
        "--model", required=True, help="checkpoint folder, s3:// folder, models:/name/version or models:/name@alias"
    )
    parser.add_argument("--output", required=True, help="path of the .onnx file to write")
    parser.add_argument("--height", type=int, default=256, help="tracing sample height (the graph stays dynamic)")
    parser.add_argument("--width", type=int, default=256, help="tracing sample width (the graph stays dynamic)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: changeseg.export.DEFAULT_OPSET)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="fail when the parity check differs by more")
    args = parser.parse_args(argv)
    setup_logging()

    from changeseg.export import DEFAULT_OPSET, check_onnx_parity, export_onnx
    from changeseg.inference.predictor import Predictor

    try:
        predictor = Predictor.from_uri(args.model, tracking_uri=args.tracking_uri)
        path = export_onnx(
            predictor.model, args.output, opset=args.opset or DEFAULT_OPSET, height=args.height, width=args.width
        )
    except (FileNotFoundError, LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # A size unlike the tracing sample's, so the check also exercises the dynamic axes.
    diff = check_onnx_parity(
        predictor.model, path, batch=2, height=args.height // 2 + 7, width=args.width // 2 + 3
    )
    print(f"wrote {path}")
    print(f"onnxruntime parity: max abs diff {diff:.3e}")
    if not diff <= args.tolerance:
        print(f"error: ONNX outputs differ from PyTorch's by {diff:.3e} > {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def prepare_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare",
        description="Scan a dataset in any layout (local or s3://) into a Parquet manifest and/or packed Parquet shards.",
    )
    parser.add_argument("source", help="dataset folder (or manifest) URI")
    parser.add_argument("--layout", default=None, help="auto (default: data.layout), folder, levir, dsifn, airchange, pcd, vl_cmu_cd, changesim")
    parser.add_argument("--manifest", help="write the manifest .parquet here")
    parser.add_argument("--shards", help="pack the pairs' bytes into part-*.parquet files in this folder")
    parser.add_argument("--pairs-per-shard", type=int, default=256)
    parser.add_argument("--split", default="train", help="split of pairs whose layout names none")
    parser.add_argument("--no-validate", action="store_true", help="pack without decoding every pair once")
    parser.add_argument("--strict", action="store_true", help="a bad pair is an error (default: data.strict)")
    parser.add_argument("--config", help="YAML config for storage.*, data.* and model.num_classes")
    parser.add_argument("--summary", help="also write the summary as JSON to this path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. storage.endpoint_url=http://...")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.manifest and not args.shards:
        parser.error("give --manifest and/or --shards")

    cfg = _config_or_report(args)
    if cfg is None:
        return 2
    from changeseg.data.prepare import prepare_dataset

    try:
        summary = prepare_dataset(
            args.source,
            layout=args.layout or cfg.data.layout,
            manifest=args.manifest,
            shards=args.shards,
            split=args.split,
            fold=cfg.data.fold,
            num_classes=cfg.model.resolved_num_classes(),
            mask_values=cfg.data.mask_values,
            pairs_per_shard=args.pairs_per_shard,
            validate=not args.no_validate,
            strict=args.strict or cfg.data.strict,
            storage_options=cfg.storage,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result = dataclasses.asdict(summary)
    result["skipped_count"] = len(summary.skipped)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(text + "\n")
    return 0


def score_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="batch_score",
        description="Score every pair of an archive with a registered model (Ray Data); resumable.",
    )
    parser.add_argument("--model", required=True, help="models:/name@alias, models:/name/version or a checkpoint URI")
    parser.add_argument("--input", required=True, help="manifest .parquet, shards, or a dataset layout (local or s3://)")
    parser.add_argument("--output", required=True, help="output folder (local or s3://); re-running resumes")
    parser.add_argument("--split", default=None, help="score only the records of this split (default: all)")
    parser.add_argument("--retry-errors", action="store_true", help="score again the pairs whose earlier rows are errors")
    parser.add_argument("--config", help="YAML config (score.*, storage.*, tracking.*, data.layout ...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. score.batch_size=4")
    args = parser.parse_args(argv)
    setup_logging()

    cfg = _config_or_report(args)
    if cfg is None:
        return 2

    from changeseg.inference.batch import batch_score

    try:
        summary = batch_score(cfg, model_uri=args.model, input_uri=args.input, output_uri=args.output, split=args.split,
                              retry_errors=args.retry_errors)
    except (FileNotFoundError, LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.to_json())
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate",
        description=(
            "Evaluate a model on pairs with masks against baselines (CVA + Otsu, and any models given with "
            "--baseline), in both temporal orders; writes report.html, report.json and images to --output."
        ),
    )
    parser.add_argument("--model", required=True, help="models:/name@alias, models:/name/version or a checkpoint URI")
    parser.add_argument("--input", required=True, help="dataset in any layout, manifest or shards (local or s3://)")
    parser.add_argument("--output", required=True, help="local folder for the report")
    parser.add_argument("--baseline", action="append", default=[], help="a learned baseline's model URI (repeatable), e.g. an FC-Siam-diff checkpoint")
    parser.add_argument("--split", default=None, help="only the pairs of this split (default: all)")
    parser.add_argument("--max-panels", type=int, default=16, help="pairs drawn with overlays and branch maps")
    parser.add_argument("--config", help="YAML config (data.layout, score.tile_size, storage.*, tracking.* ...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    setup_logging()
    if args.max_panels < 0:
        parser.error("--max-panels must be >= 0")
    cfg = _config_or_report(args)
    if cfg is None:
        return 2

    from changeseg.evaluation.report import evaluate

    try:
        result, html_path, json_path = evaluate(
            cfg,
            model_uri=args.model,
            input_uri=args.input,
            output_dir=args.output,
            baseline_uris=args.baseline,
            split=args.split,
            max_panels=args.max_panels,
        )
    except (FileNotFoundError, LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for m in result.methods:
        print(
            f"{m['name']:>16}: global F1 {m['global_f1']:.3f} (P {m['global_precision']:.3f}, R {m['global_recall']:.3f}, "
            f"IoU {m['global_iou']:.3f}), per-image F1 {m['per_image_f1_mean']:.3f}, swap agreement {m['swap_agreement_mean']:.4f}"
        )
    print(f"{result.info['pairs']} pairs, {result.info['skipped']} skipped")
    print(f"wrote {html_path} and {json_path}")
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    from changeseg.serving.local import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog="changeseg serve",
        description="Serve registered models over HTTP (Ray Serve) until interrupted; a private Ray "
        "instance starts with token authentication and without the dashboard (ray.dashboard=true starts it "
        "on 127.0.0.1), unless ray.address / RAY_ADDRESS names a cluster.",
    )
    parser.add_argument("--config", help="YAML config (for ray.* and storage.*; defaults when omitted)")
    parser.add_argument("--serve-config", default=str(DEFAULT_CONFIG), help="Ray Serve config file (default: %(default)s)")
    parser.add_argument("--port", type=int, help="HTTP port (default: the serve config's)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ray.dashboard=true")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = _config_or_report(args)
    if cfg is None:
        return 2
    if not Path(args.serve_config).is_file():
        print(f"error: serve config not found: {args.serve_config}", file=sys.stderr)
        return 2
    from changeseg.serving.local import run_server

    run_server(cfg, config_path=args.serve_config, port=args.port)
    return 0


COMMANDS = {
    "finetune": finetune_main,
    "demo": demo_main,
    "export": export_main,
    "prepare": prepare_main,
    "score": score_main,
    "evaluate": evaluate_main,
    "serve": serve_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: changeseg {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
