"""Scan a dataset (any layout, local or s3://) into a Parquet manifest and/or packed shards
(the ``changeseg prepare`` command).

    python jobs/prepare.py s3://bucket/LEVIR-CD --manifest s3://bucket/levir/manifest.parquet \
        --shards s3://bucket/levir/shards [--layout auto] [--strict] [storage.endpoint_url=...]
"""

import sys

from changeseg.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main())
