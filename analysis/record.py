"""Kept for one release so that old imports keep working; the recorder now lives in
:mod:`masked_torch.analysis.recorder`, with :mod:`~masked_torch.analysis.moments`,
:mod:`~masked_torch.analysis.kernels` and :mod:`~masked_torch.analysis.selection`. Import from those."""
from .kernels import batch_moments  # noqa: F401
from .moments import Moments, merge_moments  # noqa: F401
from .recorder import COLUMNS, ActivationRecorder  # noqa: F401
from .selection import default_selection, select_layers  # noqa: F401
