"""The names the command line, the settings and the sweep offer, kept free of torch so that ``--help`` and
argument checking start without importing it. The modules that build things from these names
(:mod:`masked_torch.analysis.stacks`, :mod:`~masked_torch.analysis.models`, :mod:`~masked_torch.analysis.masks`)
check that they agree (tests/test_settings.py)."""

STACKS = ("conv", "pconv", "mconv")
ACTIVATION_NAMES = ("relu", "gelu", "silu", "tanh", "none")
INITS = ("default", "kaiming", "xavier")
NORMALIZE = ("image", "dataset", "none")
MODEL_NAMES = ("stack", "resnet18", "unet")
MASKS = ("padding", "holes")
