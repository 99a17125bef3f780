"""Fine-tune a change-detection model: ``python jobs/finetune.py --config jobs/configs/demo.yaml [key=value ...]``.

Runs locally or through ``ray job submit --working-dir . -- python jobs/finetune.py ...``.
"""

import sys

from changeseg.cli import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
