"""Per-channel activation statistics over the valid positions, streamed over any number of forward passes.

::

    from masked_torch.analysis.recorder import ActivationRecorder

    with ActivationRecorder(stack) as rec:
        for x, mask in batches:
            stack(x, mask)
    df = rec.to_frame()  # one row per (layer, channel): count, mean, var, std, min, max, zero_frac

Forward hooks on the selected layers (:mod:`masked_torch.analysis.selection`) reduce each output, per
channel, over the positions the layer's *output* mask keeps (``mask != 0``; all positions for an output
without a mask; :mod:`masked_torch.analysis.kernels`) and add the result to a float64 running
:class:`~masked_torch.analysis.moments.Moments` (count, mean, centred sum of squares ``m2``, min, max,
number of exact zeros). No activation is kept, so memory does not grow with the number of batches. The
reduction is eager PyTorch ops, the same on every machine (:mod:`~masked_torch.analysis.kernels`, whose
docstring states the precision: a worst-case bound, for float32 outputs ``var`` to 1.2e-4 relative and
``mean`` to 1.9e-5 standard deviations, whatever the CPU, its vector width or the thread count; typical errors
are about 1e-7): each batch is summed around 0 where the layer's mean is within 2 standard deviations of
it, else around the layer's running mean (and again around the batch's own mean where that is far from
either), so that ``m2`` stays a well-conditioned sum even for activations on a large mean. Counts, min, max
and zeros are exact. ``benchmarks/recorder.py`` measures the overhead in a recording's forward.

Compiled *models* cannot be recorded: PyTorch silently ignores hooks added to a model after
``torch.compile``. The recorder refuses an ``OptimizedModule`` (or a model holding compiled submodules)
with an error naming the eager model to record instead, and :meth:`ActivationRecorder.to_frame` raises
rather than return a frame that lacks layers which never fired.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from masked_torch.nn import MaskedModule, Unmasked

from .distributed import reduce_moments
from .kernels import Workspace, as_ncl, first_moments
from .moments import Moments
from .selection import Include, refuse_compiled, select_layers

__all__ = ["ActivationRecorder", "COLUMNS"]

#: Columns of :meth:`ActivationRecorder.to_frame`, in order.
COLUMNS = ("layer", "channel", "count", "mean", "var", "std", "min", "max", "zero_frac")

def _not_traced(fn: Callable) -> Callable:
    """``torch._dynamo.disable(fn)``: a hook that runs eagerly under ``torch.compile`` (dynamo breaks the
    graph there) instead of being traced into a compiled graph. The compiler is not imported for it: while
    ``torch._dynamo`` is not loaded nothing can be tracing, so ``fn`` runs as it is; once it is loaded (a
    ``torch.compile`` inside the recording block), the disabled wrapper is made once and used from then on."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and hasattr(dynamo, "disable"):
        return dynamo.disable(fn)
    disabled: Optional[Callable] = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            loaded = sys.modules.get("torch._dynamo")
            if loaded is None or not hasattr(loaded, "disable"):
                return fn(*args, **kwargs)
            disabled = loaded.disable(fn)
        return disabled(*args, **kwargs)

    return call


class ActivationRecorder:
    """Context manager recording per-channel activation statistics of a model's layers.

    ``model``: any ``nn.Module`` (masked modules return ``(output, mask)``, plain ones a tensor).
    ``include``: ``None`` (every convolution, normalisation, ``Masked`` wrapper and activation; see
    :func:`select_layers`), a list of ``named_modules()`` names, or a predicate ``(name, module) -> bool``.

    Hooks are registered on ``__enter__`` and always removed on ``__exit__`` (also on an exception or
    ``KeyboardInterrupt``). Statistics accumulate over every forward pass inside the block and stay
    readable after it: :meth:`to_frame`, :meth:`moments`; :meth:`reduce` merges ``torch.distributed``
    ranks. Entering again continues to accumulate; :meth:`reset` clears. A compiled model is refused (hooks
    on it would be ignored), and :meth:`to_frame` raises rather than return a frame without the selected
    layers that never fired. While recording, the kernel keeps scratch space of up to three times the largest
    recorded output.
    """

    def __init__(self, model: nn.Module, include: Include = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ActivationRecorder: model must be an nn.Module, got {type(model).__name__}")
        refuse_compiled(model)
        self.model = model
        self.layers = select_layers(model, include)
        if not self.layers:
            raise ValueError(
                "ActivationRecorder: no layers selected (default: convolutions, normalisations, Masked "
                "wrappers and activations); pass include=[names] or include=predicate"
            )
        # per layer: the running Moments packed as a (6, C) float64 numpy array (moments.add_shifted_sums),
        # and the device of its outputs (where moments() returns them)
        self._state: dict[str, np.ndarray] = {}
        self._device: dict[str, torch.device] = {}
        self._calls: dict[str, int] = {name: 0 for name, _ in self.layers}
        self._model_calls = 0
        self._handles: list = []
        self._workspace = Workspace()  # the kernel's scratch, dropped on __exit__

    # -- hooks ------------------------------------------------------------------------------------------

    def _make_hook(self, name: str, module: nn.Module):
        masked = isinstance(module, MaskedModule)
        # a masked module's output is exactly 0 where its output mask is 0 (the project's invariant); the
        # plain baseline (Unmasked) writes into the padding
        zeroed = masked and not isinstance(module, Unmasked)
        where = f"ActivationRecorder[{name!r} ({type(module).__name__})]"

        @_not_traced
        def hook(mod, args, output):
            if masked and isinstance(output, tuple) and len(output) == 2:
                out, mask = output
            elif isinstance(output, Tensor):
                out, mask = output, None
            else:
                raise TypeError(
                    f"{where}: expected a tensor or an (output, mask) pair, got {type(output).__name__}; "
                    f"leave this layer out of include"
                )
            self._update(name, out, mask, where, zeroed)

        return hook

    def _count_model_call(self, mod, args, output) -> None:
        self._model_calls += 1

    def _update(self, name: str, output: Tensor, mask: Optional[Tensor], where: str, zeroed: bool = False) -> None:
        x, m = as_ncl(output, mask, where, self._workspace)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            # untracked, in the output's own dtype (entered only when needed: cheap)
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                self._accumulate(name, x, m, where, zeroed)
        else:
            self._accumulate(name, x, m, where, zeroed)

    def _accumulate(self, name: str, x: Tensor, m: Optional[Tensor], where: str, zeroed: bool = False) -> None:
        c = x.shape[1]
        state = self._state.get(name)
        if state is not None and state.shape[1] != c:
            raise ValueError(f"{where}: output has {c} channels, earlier batches had {state.shape[1]}")
        state = first_moments(state, x, m, self._workspace, zeroed=zeroed)
        self._state[name] = state
        self._device[name] = x.device
        self._calls[name] += 1

    # -- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> "ActivationRecorder":
        if self._handles:
            raise RuntimeError("ActivationRecorder: already recording (the block is not re-entrant)")
        refuse_compiled(self.model)  # compiled since the recorder was made?
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._make_hook(name, module)))
            self._handles.append(self.model.register_forward_hook(_not_traced(self._count_model_call)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove_hooks()
        self._workspace = Workspace()
        return False

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    @property
    def recording(self) -> bool:
        return bool(self._handles)

    def reset(self) -> None:
        """Forget every statistic (hooks stay as they are)."""
        self._state.clear()
        self._device.clear()
        self._calls = {name: 0 for name, _ in self.layers}
        self._model_calls = 0

    def reduce(self, group=None) -> "ActivationRecorder":
        """Merge the statistics of every ``torch.distributed`` rank into this recorder (on every rank), via
        :func:`masked_torch.analysis.distributed.reduce_moments`; without a process group nothing changes.

        Every rank must have recorded the same layers (each of them must have fired on every rank)."""
        self._check_fired(strict=True)
        mine = {name: Moments.from_tensor(torch.from_numpy(self._state[name]))
                for name, _ in self.layers if name in self._state}
        for name, m in reduce_moments(mine, group).items():
            self._state[name] = m.to_tensor().numpy().copy()
        return self

    # -- results ------------------------------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """How many times each selected layer fired."""
        return dict(self._calls)

    def _check_fired(self, strict: bool) -> None:
        missing = [name for name, _ in self.layers if self._calls[name] == 0]
        if not missing:
            return
        if len(missing) == len(self.layers):
            if self._model_calls == 0:
                raise RuntimeError(
                    "ActivationRecorder: nothing was recorded: no forward pass of the model reached the "
                    "recorder's hooks inside the `with` block. If the model ran under torch.compile (a "
                    "function compiled before the recorder was entered), PyTorch skipped the hooks: record "
                    "the eager model, or compile after entering the recorder"
                )
            raise RuntimeError(
                f"ActivationRecorder: the model ran {self._model_calls} forward pass(es) but none of the "
                f"{len(self.layers)} selected layers fired; was the model (or part of it) compiled with "
                f"torch.compile after the recorder was created? Hooks on compiled modules are ignored: "
                f"record the eager model (`._orig_mod`)"
            )
        if strict:
            raise RuntimeError(
                f"ActivationRecorder: selected layers {missing} never fired while "
                f"{[n for n, _ in self.layers if self._calls[n]]} did; if they are compiled "
                f"(torch.compile ignores hooks), record the eager model; if they are legitimately unused, "
                f"leave them out with include=... or pass strict=False"
            )

    def moments(self, strict: bool = True) -> dict[str, Moments]:
        """``{layer name: Moments}`` in model order (copies, on the device the outputs were on).

        Raises ``RuntimeError`` if selected layers never fired (``strict=False``: leave them out, unless
        none fired)."""
        self._check_fired(strict)
        return {name: Moments.from_tensor(torch.from_numpy(self._state[name].copy())).to(self._device[name])
                for name, _ in self.layers if name in self._state}

    def to_frame(self, strict: bool = True):
        """Tidy ``pandas.DataFrame``: one row per (layer, channel), columns :data:`COLUMNS`, model order.

        ``count`` is an integer; ``mean``/``var``/``std``/``min``/``max``/``zero_frac`` are NaN for a channel
        without any kept position. Raises ``RuntimeError`` rather than leave out layers that never fired
        (``strict=False`` leaves them out, unless none fired).
        """
        import numpy as np
        import pandas as pd

        moments = self.moments(strict)
        parts = []
        for name, mom in moments.items():
            mom = mom.to("cpu")
            has = (mom.count > 0).numpy()

            def col(t: Tensor, has=has) -> np.ndarray:
                return np.where(has, t.numpy(), np.nan)

            c = mom.channels
            parts.append(pd.DataFrame({
                "layer": [name] * c,
                "channel": np.arange(c, dtype=np.int64),
                "count": mom.count.numpy().astype(np.int64),
                "mean": col(mom.mean),
                "var": col(mom.var),
                "std": col(mom.std),
                "min": col(mom.min),
                "max": col(mom.max),
                "zero_frac": col(mom.zero_frac),
            }))
        if not parts:
            return pd.DataFrame({k: [] for k in COLUMNS})
        return pd.concat(parts, ignore_index=True)[list(COLUMNS)]

    def __repr__(self) -> str:
        names = [name for name, _ in self.layers]
        return (f"ActivationRecorder({type(self.model).__name__}, layers={names}, "
                f"recording={self.recording})")
