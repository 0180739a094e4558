"""The names the command line, the settings and the sweep offer, kept free of torch so that ``--help`` and
argument checking start without importing it. This is the one place these names are
written: the modules that build things from them (:mod:`masked_torch.analysis.stacks`,
:mod:`~masked_torch.analysis.models`, :mod:`~masked_torch.analysis.masks`) import them from here, and
tests/test_settings.py checks that each name builds."""

STACKS = ("conv", "pconv", "mconv")
ACTIVATION_NAMES = ("relu", "gelu", "silu", "tanh", "none")
INITS = ("default", "kaiming", "xavier")
NORMALIZE = ("image", "dataset", "none")
MODEL_NAMES = ("stack", "resnet18", "unet")
MASKS = ("padding", "holes")
"""The ``--mask`` choices: ``padding`` (only the padding of a batch is invalid) and ``holes`` (also seeded holes
inside each image, :mod:`masked_torch.analysis.masks`)."""
