"""Score an archive: ``python jobs/score.py --model MODEL --input INPUT --output OUTPUT [key=value ...]``
(the ``changeseg score`` command).

Runs locally or through ``ray job submit --working-dir . -- python jobs/score.py ...``.
"""

import sys

from changeseg.cli import score_main

if __name__ == "__main__":
    sys.exit(score_main())
