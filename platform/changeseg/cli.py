"""Command line: ``changeseg finetune|pretrain|demo|export|prepare|score|evaluate|serve``.

One table (:data:`COMMANDS`) names each subcommand with its help, the function that
adds its own arguments and the function that runs it; :func:`run_command` is the one
skeleton around them (``--config`` + dotted overrides, logging, config errors exit 2,
expected errors exit 1). The jobs/ scripts call the same entry points, one script per
command under the command's name (``jobs/prepare.py`` runs ``changeseg prepare``).

Each run function imports its command's modules when it runs: they pull in Ray,
MLflow, torch and timm (seconds), and ``changeseg --help`` or a config error should not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from changeseg.config import Config, ConfigError, load_config

MODEL_HELP = "models:/name@alias, models:/name/version or a checkpoint URI (local or s3://)"
EXPECTED_ERRORS = (FileNotFoundError, FileExistsError, LookupError, ValueError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "botocore", "urllib3", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: ``build`` adds its arguments, ``run(args, cfg)`` returns the exit code."""

    help: str
    build: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config], int]
    config_help: str = "YAML config (defaults when omitted)"
    # Errors printed as one line with exit code 1; anything else is a traceback.
    errors: tuple[type[BaseException], ...] = EXPECTED_ERRORS
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None


def _write_summary(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"summary written to {path}")


# --- finetune ----------------------------------------------------------------------------


def _finetune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", help="also write the run summary as JSON to this path")


def _finetune(args: argparse.Namespace, cfg: Config) -> int:
    from changeseg.training.trainer import finetune  # lazy: start-up time (module docstring)

    text = json.dumps(dataclasses.asdict(finetune(cfg)), indent=2, sort_keys=True)
    print(text)
    _write_summary(args.summary, text)
    return 0


# --- pretrain ----------------------------------------------------------------------------


def _pretrain_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of single-date images (searched recursively)")
    source.add_argument("--pairs", help="a labelled dataset whose images and change masks to use")
    parser.add_argument(
        "--segmentations",
        default=None,
        help="with --images: a folder of instance, segmentation or binary masks named like the images",
    )
    parser.add_argument("--pairs-per-image", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="crop side of each synthetic pair")


def _pretrain(args: argparse.Namespace, cfg: Config) -> int:
    # Lazy: start-up time (module docstring).
    from changeseg.data.pipeline import scan_records
    from changeseg.training.pretraining import find_images, pairs_folder, pairs_from_images, pairs_from_labelled
    from changeseg.training.trainer import finetune

    out = pairs_folder(cfg)
    try:
        if args.images:
            count = pairs_from_images(
                find_images(args.images),
                out,
                segmentations_dir=args.segmentations,
                pairs_per_image=args.pairs_per_image,
                size=args.size,
                seed=cfg.run.seed,
            )
        else:
            count = pairs_from_labelled(
                cfg,
                scan_records(args.pairs, cfg),
                out,
                pairs_per_image=args.pairs_per_image,
                size=args.size,
                progress=lambda line: print(line, flush=True),
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{count} synthetic pairs in {out}", flush=True)
    # The training config validates like any other: the same file and overrides, on the pairs' folder.
    # A pretrained model is a starting point, not a registry version: it must never take the
    # champion alias from a fine-tuned one (tracking.register_model=true overrides this).
    overrides = [
        "tracking.register_model=false",
        *args.overrides,
        f"data.train_path={out.resolve()}",
        "data.layout=folder",
    ]
    result = finetune(load_config(args.config, overrides))
    print(
        f"pretrained checkpoint: {result.checkpoint_path}\n"
        f"fine-tune from it with: model.weights={result.checkpoint_path}"
    )
    return 0


# --- demo --------------------------------------------------------------------------------


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_output", help="folder for overlays and the summary")
    parser.add_argument("--test-pairs", type=int, default=64, help="held-out synthetic pairs to predict")


def _demo(args: argparse.Namespace, cfg: Config) -> int:
    from changeseg.demo import run_demo  # lazy: start-up time (module docstring)

    run_demo(config_path=args.config, overrides=args.overrides, output=args.output, test_pairs=args.test_pairs)
    return 0


# --- export ------------------------------------------------------------------------------


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--output", required=True, help="path of the .onnx file to write")
    parser.add_argument("--height", type=int, default=256, help="tracing sample height (the graph stays dynamic)")
    parser.add_argument("--width", type=int, default=256, help="tracing sample width (the graph stays dynamic)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: changeseg.export.DEFAULT_OPSET)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs (default: tracking.*)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-3, help="fail when the parity check differs by more")


def _export(args: argparse.Namespace, cfg: Config) -> int:
    # Lazy: start-up time (module docstring).
    from changeseg.export import DEFAULT_OPSET, check_onnx_parity, export_onnx
    from changeseg.inference.predictor import Predictor

    predictor = Predictor.from_uri(
        args.model, tracking_uri=args.tracking_uri or cfg.tracking.tracking_uri, storage_options=cfg.storage
    )
    path = export_onnx(
        predictor.model, args.output, opset=args.opset or DEFAULT_OPSET, height=args.height, width=args.width
    )
    # A size unlike the tracing sample's, so the check also exercises the dynamic axes.
    diff = check_onnx_parity(predictor.model, path, batch=2, height=args.height // 2 + 7, width=args.width // 2 + 3)
    print(f"wrote {path}")
    print(f"onnxruntime parity: max abs diff {diff:.3e}")
    if not diff <= args.tolerance:
        print(f"error: ONNX outputs differ from PyTorch's by {diff:.3e} > {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


# --- prepare -----------------------------------------------------------------------------


def _prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="dataset folder (or manifest) URI")
    parser.add_argument(
        "--layout",
        default=None,
        help="auto (default: data.layout), folder, levir, dsifn, airchange, pcd, vl_cmu_cd, changesim",
    )
    parser.add_argument("--manifest", help="write the manifest .parquet here")
    parser.add_argument("--shards", help="pack the pairs' bytes into part-*.parquet files in this folder")
    parser.add_argument("--pairs-per-shard", type=int, default=256)
    parser.add_argument("--split", default="train", help="split of pairs whose layout names none")
    parser.add_argument("--no-validate", action="store_true", help="pack without decoding every pair once")
    parser.add_argument("--strict", action="store_true", help="a bad pair is an error (default: data.strict)")
    parser.add_argument("--summary", help="also write the summary as JSON to this path")


def _prepare_check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.manifest and not args.shards:
        parser.error("give --manifest and/or --shards")


def _prepare(args: argparse.Namespace, cfg: Config) -> int:
    from changeseg.data.prepare import prepare_dataset  # lazy: start-up time (module docstring)

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
    result = {**dataclasses.asdict(summary), "skipped_count": len(summary.skipped)}
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(text + "\n")
    return 0


# --- score -------------------------------------------------------------------------------


def _score_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument(
        "--input", required=True, help="manifest .parquet, shards, or a dataset layout (local or s3://)"
    )
    parser.add_argument("--output", required=True, help="output folder (local or s3://); re-running resumes")
    parser.add_argument("--split", default=None, help="score only the records of this split (default: all)")
    parser.add_argument(
        "--retry-errors", action="store_true", help="score again the pairs whose earlier rows are errors"
    )


def _score(args: argparse.Namespace, cfg: Config) -> int:
    from changeseg.inference.score import batch_score  # lazy: start-up time (module docstring)

    summary = batch_score(
        cfg,
        model_uri=args.model,
        input_uri=args.input,
        output_uri=args.output,
        split=args.split,
        retry_errors=args.retry_errors,
    )
    print(summary.to_json())
    return 0


# --- evaluate ----------------------------------------------------------------------------


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--input", required=True, help="dataset in any layout, manifest or shards (local or s3://)")
    parser.add_argument("--output", required=True, help="local folder for the report")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a learned baseline's model URI (repeatable), e.g. an FC-Siam-diff checkpoint",
    )
    parser.add_argument("--split", default=None, help="only the pairs of this split (default: all)")
    parser.add_argument("--max-panels", type=int, default=16, help="pairs drawn with overlays and branch maps")


def _evaluate_check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_panels < 0:
        parser.error("--max-panels must be >= 0")


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from changeseg.evaluation.report import evaluate  # lazy: start-up time (module docstring)

    result, html_path, json_path = evaluate(
        cfg,
        model_uri=args.model,
        input_uri=args.input,
        output_dir=args.output,
        baseline_uris=args.baseline,
        split=args.split,
        max_panels=args.max_panels,
    )
    for m in result.methods:
        print(
            f"{m['name']:>16}: global F1 {m['global_f1']:.3f} (P {m['global_precision']:.3f}, R {m['global_recall']:.3f}, "
            f"IoU {m['global_iou']:.3f}), per-image F1 {m['per_image_f1_mean']:.3f}, swap agreement {m['swap_agreement_mean']:.4f}"
        )
    print(f"{result.info['pairs']} pairs, {result.info['skipped']} skipped")
    print(f"wrote {html_path} and {json_path}")
    return 0


# --- serve -------------------------------------------------------------------------------


def _serve_args(parser: argparse.ArgumentParser) -> None:
    from changeseg.serving.local import DEFAULT_CONFIG  # lazy: start-up time (module docstring)

    parser.add_argument(
        "--serve-config", default=str(DEFAULT_CONFIG), help="Ray Serve config file (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, help="HTTP port (default: the serve config's)")


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    if not Path(args.serve_config).is_file():
        print(f"error: serve config not found: {args.serve_config}", file=sys.stderr)
        return 2
    from changeseg.serving.local import run_server  # lazy: start-up time (module docstring)

    run_server(cfg, config_path=args.serve_config, port=args.port)
    return 0


COMMANDS: dict[str, Command] = {
    "finetune": Command(
        "Fine-tune a change-detection model with Ray Train, tracked in MLflow.", _finetune_args, _finetune
    ),
    "pretrain": Command(
        "Pretrain on change pairs synthesised from single-date images or labelled pairs, with "
        "the fine-tuning job; prints the checkpoint to fine-tune from (model.weights=...).",
        _pretrain_args,
        _pretrain,
    ),
    "demo": Command(
        "Synthetic end-to-end demo: train, register, predict.",
        _demo_args,
        _demo,
        config_help="YAML config (default: the built-in demo recipe)",
        errors=(),
    ),
    "export": Command(
        "Export a model to ONNX (inputs t0, t1; output logits) and check it in onnxruntime.",
        _export_args,
        _export,
        config_help="YAML config (storage.*, tracking.*)",
    ),
    "prepare": Command(
        "Scan a dataset in any layout (local or s3://) into a Parquet manifest and/or packed Parquet shards.",
        _prepare_args,
        _prepare,
        config_help="YAML config for storage.*, data.* and model.num_classes",
        check=_prepare_check,
    ),
    "score": Command(
        "Score every pair of an archive with a registered model (Ray Data); resumable.",
        _score_args,
        _score,
        config_help="YAML config (score.*, storage.*, tracking.*, data.layout ...)",
    ),
    "evaluate": Command(
        "Evaluate a model on pairs with masks against baselines (CVA + Otsu, and any models given with "
        "--baseline), in both temporal orders; writes report.html, report.json and images to --output.",
        _evaluate_args,
        _evaluate,
        config_help="YAML config (data.layout, score.tile_size, storage.*, tracking.* ...)",
        check=_evaluate_check,
    ),
    "serve": Command(
        "Serve registered models over HTTP (Ray Serve) until interrupted; a private Ray instance starts with token "
        "authentication and without the dashboard (ray.dashboard=true starts it on 127.0.0.1), unless "
        "ray.address / RAY_ADDRESS names a cluster.",
        _serve_args,
        _serve,
        config_help="YAML config (for ray.* and storage.*; defaults when omitted)",
        errors=(),
    ),
}


def build_parser(name: str) -> argparse.ArgumentParser:
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"changeseg {name}", description=command.help)
    parser.add_argument("--config", help=command.config_help)
    command.build(parser)
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    return parser


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Parse, set up logging, load the config (+ overrides) and run ``name``."""
    command = COMMANDS[name]
    parser = build_parser(name)
    args = parser.parse_args(argv)
    setup_logging()
    if command.check is not None:
        command.check(parser, args)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return command.run(args, cfg)
    except command.errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def entry_point(name: str) -> Callable[..., int]:
    """``main(argv=None)`` of one subcommand, for the jobs/ scripts."""

    def main(argv: list[str] | None = None) -> int:
        return run_command(name, argv)

    main.__name__ = f"{name}_main"
    return main


finetune_main = entry_point("finetune")
pretrain_main = entry_point("pretrain")
demo_main = entry_point("demo")
export_main = entry_point("export")
prepare_main = entry_point("prepare")
score_main = entry_point("score")
evaluate_main = entry_point("evaluate")
serve_main = entry_point("serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: changeseg {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
