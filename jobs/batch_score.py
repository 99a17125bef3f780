"""Former name of ``jobs/score.py``, kept for existing ``ray job submit`` commands."""

import sys

from changeseg.cli import score_main

if __name__ == "__main__":
    sys.exit(score_main())
