"""Pretrain on change pairs synthesised from single-date images, on Ray like fine-tuning.

    python jobs/pretrain.py --images /path/to/images [--segmentations /path/to/masks] --config C [key=value ...]
    python jobs/pretrain.py --pairs DATASET --config C [key=value ...]

``--images``: unlabelled images (soft patches of other images pasted in, or objects from
masks named like the images). ``--pairs``: a labelled dataset (any layout, manifest or
shards): the objects that changed in its t1 images are pasted into other scenes. The
pairs are written under <run.storage_path>/<run.name>/pretrain-pairs (see
changeseg.data.changesynth), then the same Ray Train job as fine-tuning trains on them
and prints the checkpoint. Fine-tune from it with ``model.weights=<that checkpoint>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from changeseg.config import load_config
from changeseg.data.pipeline import scan_records
from changeseg.training.pretraining import find_images, pairs_from_images, pairs_from_labelled
from changeseg.training.trainer import finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of single-date images (searched recursively)")
    source.add_argument("--pairs", help="a labelled dataset whose images and change masks to use")
    parser.add_argument("--segmentations", default=None,
                        help="with --images: a folder of instance, segmentation or binary masks named like the images")
    parser.add_argument("--config", default=None)
    parser.add_argument("--pairs-per-image", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="crop side of each synthetic pair")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    out = Path(cfg.run.storage_path) / cfg.run.name / "pretrain-pairs"
    try:
        if args.images:
            images = find_images(args.images)
            count = pairs_from_images(images, out, segmentations_dir=args.segmentations,
                                      pairs_per_image=args.pairs_per_image, size=args.size, seed=cfg.run.seed)
        else:
            records = scan_records(args.pairs, cfg)
            count = pairs_from_labelled(cfg, records, out, pairs_per_image=args.pairs_per_image, size=args.size,
                                        progress=lambda line: print(line, flush=True))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{count} synthetic pairs in {out}", flush=True)
    cfg = load_config(args.config, args.overrides + [f"data.train_path={out.resolve()}", "data.layout=folder"])
    result = finetune(cfg)
    print(f"pretrained checkpoint: {result.checkpoint_path}\n"
          f"fine-tune from it with: model.weights={result.checkpoint_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
