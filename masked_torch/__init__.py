"""masked_torch: masked and partial convolutions for padded batches of differently sized images."""
from . import functional, nn, utils

__version__ = "0.1.0"
__all__ = ["functional", "nn", "utils", "__version__"]
