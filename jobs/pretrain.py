"""Pretrain on change pairs synthesised from single-date images, on Ray like fine-tuning
(the ``changeseg pretrain`` command).

    python jobs/pretrain.py --images /path/to/images [--segmentations /path/to/masks] --config C [key=value ...]
    python jobs/pretrain.py --pairs DATASET --config C [key=value ...]

``--images``: unlabelled images (soft patches of other images pasted in, or objects from
masks named like the images). ``--pairs``: a labelled dataset (any layout, manifest or
shards): the objects that changed in its t1 images are pasted into other scenes. The
pairs are written under <run.storage_path>/<run.name>/pretrain-pairs (see
changeseg.data.changesynth), then the same Ray Train job as fine-tuning trains on them
and prints the checkpoint. Fine-tune from it with ``model.weights=<that checkpoint>``.
"""

import sys

from changeseg.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
