"""Former name of ``jobs/prepare.py``, kept for existing ``ray job submit`` commands."""

import sys

from changeseg.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main())
