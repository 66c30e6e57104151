"""The signatures of the public callables against upstream MegEngine 1.13's.

``upstream_signatures.json`` holds upstream 1.13's measured signatures (how it was made:
``tests/signature_walk.py``). Each one is checked against the fork's by the rules users' calls
depend on: every upstream parameter is there under its name; positional parameters stay in
upstream's positions and stay positional; a parameter with a default upstream has the same
default here (compared as values: lists and tuples alike, a named object by identity). The fork
may add parameters after upstream's, with defaults, and may give defaults to upstream's required
ones. ``DIFFERENCES`` lists the deliberate exceptions, each with its reason.
"""
import enum
import importlib
import inspect
import json
import sys
from pathlib import Path

import pytest

from signature_walk import resolve

UPSTREAM = json.loads(Path(__file__).with_name("upstream_signatures.json").read_text())
del UPSTREAM["_how"]

# entry -> why the fork's signature differs from upstream 1.13's there (docs/compatibility.rst)
DIFFERENCES = {
    "megengine.autodiff:Function.forward":
        "abstract: a user's Function defines its own forward (upstream's takes **kwargs too)",
    "megengine.module:Module.forward": "abstract: each module defines its own forward",
    **{key: "download is False by default: nothing touches the network unasked (documented)"
       for key in ("megengine.data.dataset:CIFAR10", "megengine.data.dataset:CIFAR10.__init__",
                   "megengine.data.dataset:CIFAR100", "megengine.data.dataset:MNIST",
                   "megengine.data.dataset:MNIST.__init__")},
    **{key: "backend None picks NCCL on GPUs and gloo on CPUs; torch's NCCL needs a GPU"
       for key in ("megengine.distributed:launcher", "megengine.distributed:launcher.__init__")},
    **{key: "descending is False (the k smallest) as up to upstream 1.12 (documented)"
       for key in ("megengine.functional.math:topk", "megengine.functional:topk")},
    **{key: "group None stands for WORLD: functional and module load before distributed"
       for key in ("megengine.functional.nn:sync_batch_norm",
                   "megengine.functional:sync_batch_norm", "megengine.module:SyncBatchNorm",
                   "megengine.module:SyncBatchNorm.__init__")},
    **{key: "num_worker: upstream's default is max(1, CPUs // 2), 1 where measured; the config "
            "has no effect here (no sublinear memory planner)"
       for key in ("megengine.jit:SublinearMemoryConfig",
                   "megengine.jit:SublinearMemoryConfig.__init__")},
    **{key: "symbolic_shape None: set_symbolic_shape's default, True unless changed"
       for key in ("megengine.jit:trace", "megengine.jit:trace.__init__")},
    "megengine.jit:trace.dump": "upstream's keyword-only options go through **options, which "
                                "refuses names upstream's dump does not take",
    "megengine.logger:MegEngineLogFormatter":
        "logging internals that get_logger builds: the date format get_logger gives is the "
        "default, and the colour and long layouts are switches",
    **{key: "upstream's LSTM passes *args, **kwargs on to RNNBase; its parameters are spelt out"
       for key in ("megengine.module:LSTM", "megengine.module:LSTM.__init__")},
    **{key: "made by trace_module, not by users; no QAT-specific graph state here"
       for key in ("megengine.traced_module:TracedModule",
                   "megengine.traced_module:TracedModule.__init__")},
    **{key: "graph vars are made by Network.load and the graph surgery methods, not by users"
       for key in ("megengine.utils.network:VarNode", "megengine.utils.network:VarNode.__init__",
                   "megengine.utils.network_node:VarNode")},
}
if sys.version_info >= (3, 13):  # (every Enum's: QuantMode(value, None) fails there too)
    DIFFERENCES.update({
        f"megengine.quantization{where}:QuantMode":
            "Python 3.13's Enum call defaults names to a private 'not given' sentinel, where "
            "earlier Pythons (upstream's 3.10) have None"
        for where in ("", ".fake_quant", ".observer", ".utils")})

POSITIONAL = ("PO", "PK")


def _default_matches(up, ours):
    if isinstance(up, dict):
        (form, value), = up.items()
        if form in ("tuple", "list"):
            return isinstance(ours, (tuple, list)) and list(ours) == value
        if form == "ref":
            modname, _, name = value.rpartition(".")
            return ours is getattr(importlib.import_module(modname), name)
        if form == "module":
            return inspect.ismodule(ours) and ours.__name__ == value
        if form == "enum":
            return str(ours) == value
        return repr(ours) == value
    return type(ours) is type(up) and ours == up  # True is not 1 here


def differences(up, ours):
    """How the signature ``ours`` (a live one) breaks calls written for upstream's entry ``up``."""
    params = {p.name: p for p in ours.parameters.values()}
    kinds = {p.kind.name for p in ours.parameters.values()}
    our_positional = [p.name for p in ours.parameters.values()
                      if p.kind.name in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    up_positional = [e[0] for e in up if e[1] in POSITIONAL]
    found = []
    for i, entry in enumerate(up):
        name, kind = entry[0], entry[1]
        if kind in ("VP", "VK"):
            if ("VAR_POSITIONAL" if kind == "VP" else "VAR_KEYWORD") not in kinds:
                found.append(f"no {'*' if kind == 'VP' else '**'}{name}")
            continue
        if name.startswith("_"):
            continue  # upstream's private parameters (Tensor.to's _borrow)
        if name not in params:
            found.append(f"{name} missing")
            continue
        p = params[name]
        if p.kind.name in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            found.append(f"{name} is {'*' if p.kind.name == 'VAR_POSITIONAL' else '**'}{name}")
            continue
        if kind in POSITIONAL and not (i == 0 and name in ("self", "cls")):
            if p.kind.name == "KEYWORD_ONLY":
                found.append(f"{name} is keyword-only")
            elif kind == "PK" and p.kind.name == "POSITIONAL_ONLY":
                found.append(f"{name} is positional-only")
            elif our_positional.index(name) != up_positional.index(name):
                found.append(f"{name} is positional argument {our_positional.index(name)}, "
                             f"upstream's {up_positional.index(name)}")
        if len(entry) > 2:
            if p.default is inspect.Parameter.empty:
                found.append(f"{name} has no default (upstream's: {entry[2]!r})")
            elif not _default_matches(entry[2], p.default):
                found.append(f"{name} defaults to {p.default!r}, upstream's to {entry[2]!r}")
    up_names = {e[0] for e in up}
    for p in ours.parameters.values():
        if (p.name not in up_names and p.default is inspect.Parameter.empty
                and p.kind.name not in ("VAR_POSITIONAL", "VAR_KEYWORD")):
            found.append(f"{p.name} is required (upstream has no such parameter)")
    return found


def _live_signature(key):
    obj = resolve(key)
    if isinstance(obj, enum.EnumMeta):
        # calling an Enum class runs its metaclass's __call__ (QuantMode(value) looks a member
        # up, QuantMode(name, names) makes a new Enum): inspect reads that method up to Python
        # 3.11 (upstream's signatures were measured on 3.10), but from 3.12 on reports the
        # class's __signature__, (*values), the arguments of a member's value
        call = inspect.signature(type(obj).__call__)
        return call.replace(parameters=list(call.parameters.values())[1:])
    sig = inspect.signature(obj)
    if (inspect.isclass(obj) and [p.kind.name for p in sig.parameters.values()]
            == ["VAR_POSITIONAL", "VAR_KEYWORD"]):  # as signature_entry reads such a class
        init = inspect.signature(obj.__init__)
        sig = init.replace(parameters=list(init.parameters.values())[1:])
    return sig


@pytest.mark.parametrize("key", sorted(UPSTREAM))
def test_signature_as_upstreams(key):
    found = differences(UPSTREAM[key], _live_signature(key))
    if key in DIFFERENCES:
        assert found, f"{key} now matches upstream: drop it from DIFFERENCES"
    else:
        assert found == [], key


def test_differences_name_upstream_entries():
    assert sorted(set(DIFFERENCES) - set(UPSTREAM)) == []


def _renamed(x, weight, bias=None):
    pass


def _reordered(inp, bias=None, weight=None):
    pass


def _other_default(inp, weight, bias=0):
    pass


def _keyword_only(inp, *, weight, bias=None):
    pass


def _extra(inp, weight, bias=None, scale=1.0, *, mode="a"):
    pass


def _extra_required(inp, weight, scale, bias=None):
    pass


@pytest.mark.parametrize("func, expected", [
    (_renamed, ["inp missing", "x is required (upstream has no such parameter)"]),
    (_reordered, ["weight is positional argument 2, upstream's 1",
                  "bias is positional argument 1, upstream's 2"]),
    (_other_default, ["bias defaults to 0, upstream's to None"]),
    (_keyword_only, ["weight is keyword-only", "bias is keyword-only"]),
    (_extra, []),
    (_extra_required, ["bias is positional argument 3, upstream's 2",
                       "scale is required (upstream has no such parameter)"]),
])
def test_differences_catch_what_breaks_calls(func, expected):
    up = [["inp", "PK"], ["weight", "PK"], ["bias", "PK", None]]
    assert differences(up, inspect.signature(func)) == expected
