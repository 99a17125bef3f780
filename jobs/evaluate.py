"""Evaluate a model against baselines: ``python jobs/evaluate.py --model MODEL --input DATASET --output DIR [--baseline MODEL ...]``.

Writes report.html (tables, overlays, error maps, MTF branch maps) and report.json.
"""

import sys

from changeseg.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
