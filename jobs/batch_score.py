"""Batch-score an archive: ``python jobs/batch_score.py --model MODEL --input INPUT --output OUTPUT [key=value ...]``.

Runs locally or through ``ray job submit --working-dir . -- python jobs/batch_score.py ...``.
"""

import sys

from changeseg.cli import score_main

if __name__ == "__main__":
    sys.exit(score_main())
