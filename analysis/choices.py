"""The names the command line and the sweep offer (stacks, activations, inits, normalisations), kept free of
torch so that ``visualize_activations_2d.py --help`` and argument checking start without importing it.
:mod:`masked_torch.analysis.stacks` builds its layers from these names."""

STACKS = ("conv", "pconv", "mconv")
ACTIVATION_NAMES = ("relu", "gelu", "silu", "tanh", "none")
INITS = ("default", "kaiming", "xavier")
NORMALIZE = ("image", "dataset", "none")
