"""A model's output structure, kept apart from its tensors: a converted model returns its output and the masks
in the same structure (tensors, tuples, lists, dicts, namedtuples, dataclasses such as ``ModelOutput``)."""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor
from torch.fx.immutable_collections import immutable_dict, immutable_list

__all__ = ["flatten_output", "unflatten_output"]

#: the read-only containers torch.fx gives a graph's output as, and the containers the forward built
_PLAIN = {immutable_dict: dict, immutable_list: list}


def flatten_output(out: Any) -> tuple[list, tuple]:
    """``(leaves, spec)``: the tensors of ``out`` in order, and a picklable description of where they go."""
    leaves: list = []

    def spec_of(o):
        if isinstance(o, Tensor):
            leaves.append(o)
            return ("leaf",)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            names = [f.name for f in dataclasses.fields(o) if f.init]
            return ("dataclass", type(o), tuple(names), tuple(spec_of(getattr(o, n)) for n in names))
        if isinstance(o, tuple) and hasattr(o, "_fields"):
            return ("namedtuple", type(o), tuple(spec_of(v) for v in o))
        if isinstance(o, (tuple, list)):
            return ("seq", _PLAIN.get(type(o), type(o)), tuple(spec_of(v) for v in o))
        if isinstance(o, dict):
            keys = tuple(o.keys())
            return ("dict", _PLAIN.get(type(o), type(o)), keys, tuple(spec_of(o[k]) for k in keys))
        return ("const", o)

    spec = spec_of(out)
    return leaves, spec


def unflatten_output(leaves, spec: tuple) -> Any:
    """The inverse of :func:`flatten_output`: ``leaves`` (one per tensor, e.g. their masks) put back."""
    it = iter(leaves)

    def build(s):
        kind = s[0]
        if kind == "leaf":
            return next(it)
        if kind == "const":
            return s[1]
        if kind == "dataclass":
            return s[1](**{n: build(c) for n, c in zip(s[2], s[3])})
        if kind == "namedtuple":
            return s[1](*[build(c) for c in s[2]])
        if kind == "seq":
            return s[1](build(c) for c in s[2])
        return s[1]((k, build(c)) for k, c in zip(s[2], s[3]))

    return build(spec)
