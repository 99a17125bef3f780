"""Command line: ``changeseg finetune|demo``; the jobs/ scripts call the same functions."""

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


def finetune_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finetune", description="Fine-tune a change-detection model with Ray Train, tracked in MLflow."
    )
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--summary", help="also write the run summary as JSON to this path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    setup_logging()

    from changeseg.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
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


COMMANDS = {"finetune": finetune_main, "demo": demo_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: changeseg {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
