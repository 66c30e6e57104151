"""Tests for megengine/traced_module/module_tracer.py: upstream's BUILTIN_ARRAY_METHOD, the
tensor methods a trace records as one CallMethod (converters such as mgeconvert's TracedModule
frontend dispatch on ``expr.method in BUILTIN_ARRAY_METHOD``)."""
import numpy as np

import megengine as mge
import megengine.module as M
import megengine.traced_module as tm
from megengine.traced_module.expr import CallMethod
from megengine.traced_module.module_tracer import BUILTIN_ARRAY_METHOD


def test_builtin_array_method_lists_upstreams_operators_and_methods():
    # entries of upstream's list (its module_tracer.py): operators, reflected and in-place
    # forms, and the array methods that return tensors
    for name in ("__add__", "__radd__", "__iadd__", "__matmul__", "__lt__", "__neg__",
                 "__abs__", "__getitem__", "__setitem__", "reshape", "transpose", "astype",
                 "flatten", "sum", "mean", "max", "min", "prod"):
        assert name in BUILTIN_ARRAY_METHOD, name


def test_recorded_tensor_methods_are_in_builtin_array_method():
    class Net(M.Module):
        def forward(self, x):
            return (x * 2).reshape(3, 2).transpose(1, 0).sum(axis=0) + x[0]

    traced = tm.trace_module(Net(), mge.tensor(np.arange(6, dtype="float32")))
    methods = [e.method for e in traced.graph.exprs() if isinstance(e, CallMethod)]
    assert {"__mul__", "reshape", "transpose", "sum", "__getitem__", "__add__"} <= set(methods)
    assert all(m in BUILTIN_ARRAY_METHOD for m in methods)
