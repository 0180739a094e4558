"""Pure functions behind the masked layers: partial and masked convolution, masked batch norm,
masked space-to-depth and masked spatial mean, for 1d, 2d and 3d inputs alike.

Conventions (shared by every function here and every module in :mod:`masked_torch.nn`):

* ``input`` is ``(N, C, *spatial)``; ``mask`` is ``(N, 1, *spatial)`` (one mask per sample, broadcast over
  channels) or ``(N, C, *spatial)``; float, integer or bool; ``1`` (or any non-zero value) = valid, zero =
  invalid. Partial convolution and batch norm count valid positions (``mask != 0``); masked convolution
  and the spatial mean use a float mask's values (a soft mask scales or weights).
* Values of ``input`` where the mask is zero are never read: they are selected away (``torch.where``, or
  a bit-exact bitwise AND on CPU) before any arithmetic, never multiplied by 0, so NaN or Inf under the
  mask cannot leak.
* Mask arithmetic (window sums, ratios, channel mixing) runs in float32 (float64 for float64 input) with
  autocast disabled: a window sum of 576 ones is not exact in bfloat16 and ``9 / 1e-8`` does not fit in
  float16. Returned masks are in that dtype.
* Every ``masked_*`` function that computes a layer or op returns ``(output, out_mask)`` (``out_mask`` is
  ``None`` for ``mask=None``); :func:`masked_moments` returns the statistics ``(count, mean, centred, var)``.

The functions live by topic: :mod:`.masks` (checks, zeroing), :mod:`.windows` (where a window lands on the
mask), :mod:`.conv`, :mod:`.norm`, :mod:`.pooling`, :mod:`.resample` and :mod:`.layout`; every name is
re-exported here (``import masked_torch.functional as MF; MF.masked_conv``).
"""
from __future__ import annotations

from .masks import (  # noqa: F401
    check_mask, check_broadcast_mask, check_input, zero_masked, intersect_masks, check_binary_mask, _mask_as,
    _ntuple, _zero_masked, _mask_dtype,
)
from .windows import (  # noqa: F401
    window_centre, window_mean, window_anchor, resolve_padding,
)
from .conv import (  # noqa: F401
    partial_conv, masked_conv, masked_conv_transpose, conv_transpose_mask, masked_linear, mixing_weights,
)
from .norm import (  # noqa: F401
    masked_batch_norm, masked_moments, masked_group_norm, masked_layer_norm,
)
from .pooling import (  # noqa: F401
    masked_spatial_mean, masked_max_pool, masked_avg_pool, masked_reduce, masked_var, masked_max_dim,
    adaptive_sizes, masked_adaptive_pool,
)
from .resample import (  # noqa: F401
    masked_unshuffle, check_interpolate, masked_interpolate, interpolate_per_image, interpolate_to_sizes,
    masked_pixel_shuffle, interpolate_mask, interpolate_to,
)
from .attention import masked_softmax, masked_matmul, matmul_mask  # noqa: F401
from .layout import (  # noqa: F401
    reshape_mask, masked_reshape, image_sizes, index_mask, split_masks, masked_cat, masked_pad, masked_stack,
    valid_extents,
)

__all__ = [
    "check_mask",
    "check_broadcast_mask",
    "check_input",
    "window_centre",
    "window_mean",
    "partial_conv",
    "masked_conv",
    "masked_batch_norm",
    "masked_moments",
    "masked_unshuffle",
    "masked_spatial_mean",
    "window_anchor",
    "zero_masked",
    "intersect_masks",
    "masked_max_pool",
    "masked_avg_pool",
    "masked_reduce",
    "masked_group_norm",
    "masked_layer_norm",
    "masked_conv_transpose",
    "check_interpolate",
    "masked_interpolate",
    "masked_pixel_shuffle",
    "conv_transpose_mask",
    "interpolate_mask",
    "reshape_mask",
    "masked_reshape",
    "image_sizes",
    "masked_softmax",
    "masked_matmul",
    "matmul_mask",
    "index_mask",
    "split_masks",
    "masked_cat",
    "masked_linear",
    "masked_pad",
    "interpolate_to",
    "interpolate_per_image",
    "interpolate_to_sizes",
    "masked_var",
    "masked_max_dim",
    "masked_stack",
    "valid_extents",
    "check_binary_mask",
    "adaptive_sizes",
    "masked_adaptive_pool",
]
