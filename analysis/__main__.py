"""``python -m masked_torch.analysis``: the suite's command line (:mod:`masked_torch.analysis.cli`)."""
import sys

from .cli import main

sys.exit(main())
