#!/usr/bin/env python
"""What plain, partial and masked convolutions do to activations on padded batches of differently sized images.

The command line of the analysis suite, :mod:`masked_torch.analysis.cli`; installed, the same command is
``masked-torch-activations`` or ``python -m masked_torch.analysis``. See ``--help``.
"""
import sys

from masked_torch.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
