"""``python -m harness.training.trajectory write <job.yaml> --reason "..."``."""

import sys

from .writer import main

sys.exit(main())
