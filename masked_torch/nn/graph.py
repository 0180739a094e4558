"""The former home of the graph converter, kept so that models pickled before the split still load (a pickle
names ``masked_torch.nn.graph.MaskedGraphModule`` and the runtime helpers its graph calls). The converter now
lives in :mod:`.capture_fx`, :mod:`.capture_export`, :mod:`.rewrite`, :mod:`.rules`, :mod:`.build` and
:mod:`.graph_module`."""
from .build import convert_graph
from .graph_module import MaskedGraphModule, _Ref  # noqa: F401  (_Ref: a node reference in a stored graph)
from .runtime import (check_unmasked_dim, enter, field_mask, fit_mask, mask_method, refit_mask, reshape_like,
                      zero_unless_same)

__all__ = ["MaskedGraphModule", "convert_graph", "enter", "zero_unless_same", "fit_mask", "refit_mask",
           "reshape_like", "check_unmasked_dim", "field_mask", "mask_method"]
