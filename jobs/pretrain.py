"""Pretrain on change pairs synthesised from single-date images, on Ray like fine-tuning.

    python jobs/pretrain.py --images /path/to/images --config jobs/configs/real_pairs.yaml [key=value ...]

Writes the synthetic pairs (see changeseg.data.changesynth) under
<run.storage_path>/<run.name>/pretrain-pairs, trains MTF, MSF and the head on them with
the same Ray Train job as fine-tuning, and prints the checkpoint. Fine-tune from it
with ``model.weights=<that checkpoint>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="a folder of single-date images (searched recursively)")
    parser.add_argument("--segmentations", default=None,
                        help="optional folder of instance/segmentation masks named like the images")
    parser.add_argument("--config", default=None)
    parser.add_argument("--pairs-per-image", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="crop side of each synthetic pair")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from changeseg.config import load_config
    from changeseg.data.changesynth import write_synthetic_pairs
    from changeseg.training.trainer import finetune

    cfg = load_config(args.config, args.overrides)
    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) < 2:
        print(f"error: {args.images} holds {len(images)} image(s); at least 2 are needed", file=sys.stderr)
        return 2
    segmentations = None
    if args.segmentations:
        segmentations = [next(iter(Path(args.segmentations).glob(p.stem + ".*")), None) for p in images]
    out = Path(cfg.run.storage_path) / cfg.run.name / "pretrain-pairs"
    count = write_synthetic_pairs(images, out, pairs_per_image=args.pairs_per_image, size=args.size,
                                  seed=cfg.run.seed, segmentations=segmentations)
    print(f"{count} synthetic pairs from {len(images)} images in {out}", flush=True)
    cfg = load_config(args.config, args.overrides + [f"data.train_path={out.resolve()}", "data.layout=folder"])
    result = finetune(cfg)
    print(f"pretrained checkpoint: {result.checkpoint_path}\n"
          f"fine-tune from it with: model.weights={result.checkpoint_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
