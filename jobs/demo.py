"""The synthetic end-to-end demo behind ``make demo``."""

import sys

from changeseg.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
