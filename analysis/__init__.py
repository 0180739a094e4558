"""Activation-statistics suite: what conv, pconv and mconv do to activations on padded batches.

Installed as ``masked_torch.analysis`` (the source folder is the top-level ``analysis/``); it needs the
``analysis`` extra (``pip install '.[analysis]'`` in a clone). Importing this package imports nothing else
(no torch, no pandas), so that the command line's ``--help`` starts at once; the submodules import what they use.
"""
