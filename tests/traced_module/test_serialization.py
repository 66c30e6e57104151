"""Tests of megengine/traced_module/serialization.py: loaders run on the exprs of an unpickled
traced module (upstream's register_*_loader), and op descriptors recorded as Apply exprs."""
import pickle

import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
import megengine.traced_module.serialization as S
from megengine import Tensor
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops.builtin import Elemwise
from megengine.traced_module import trace_module
from megengine.traced_module.expr import Apply, CallFunction, CallMethod, Constant
from megengine.traced_module.node import TensorNode


@pytest.fixture
def loaders(monkeypatch):
    """Empty loader tables for one test (the registered ones come back afterwards)."""
    for table in ("OPDEF_LOADER", "FUNCTIONAL_LOADER", "TENSORMETHOD_LOADER", "MODULE_LOADER"):
        monkeypatch.setattr(S, table, {})


def _users_agree(graph):
    reads = {}
    for e in graph._exprs:
        for n in e.inputs:
            reads.setdefault(id(n), []).append(e)
    for n in graph.nodes(False):
        assert sorted(n.users, key=lambda e: e._id) == \
            sorted(reads.get(id(n), []), key=lambda e: e._id)


def _cast_before(expr, node, dtype):
    """A new ``node.astype(dtype)`` expr (not yet in any graph); returns its output node."""
    cast = CallMethod(node, "astype")
    cast.set_args_kwargs(node, dtype)
    out = TensorNode(cast, shape=node.shape, dtype=np.dtype(dtype))
    cast.return_val = (out,)
    return out


class AddByDescriptor(M.Module):
    def forward(self, x, y):
        return apply(Elemwise("ADD"), x, y)[0]


def test_descriptor_applied_in_forward_is_one_apply_step():
    # upstream records core2.apply(descriptor, ...) as one Apply expr holding the descriptor
    x, y = Tensor([1.0, 2.0]), Tensor([3.0, 5.0])
    tm = trace_module(AddByDescriptor(), x, y)
    (expr,) = tm.graph._exprs
    assert isinstance(expr, Apply) and isinstance(expr.opdef, Elemwise)
    assert expr.opdef.mode == "ADD" and expr.opdef.mode == "add"  # modes equal their names
    np.testing.assert_equal(tm(Tensor([2.0]), Tensor([7.0])).numpy(), [9.0])
    np.testing.assert_equal(pickle.loads(pickle.dumps(tm))(x, y).numpy(), [4.0, 7.0])


def test_opdef_loader_changes_the_descriptor_and_adds_a_step(loaders):
    tm = trace_module(AddByDescriptor(), Tensor([1.0, 2.0]), Tensor([3.0, 4.0]))

    @S.register_opdef_loader(Elemwise)
    def add_to_mul(expr):
        if expr.opdef_state["mode"] == "ADD":
            expr.opdef_state["mode"] = "MUL"
            expr.inputs[1] = _cast_before(expr, expr.inputs[1], "int32")

    loaded = pickle.loads(pickle.dumps(tm))
    first, second = loaded.graph._exprs
    assert isinstance(first, CallMethod) and first.method == "astype"
    assert second.opdef.mode == "MUL"
    _users_agree(loaded.graph)
    x, y = np.array([1.5, 2.0], "float32"), np.array([3.7, 4.2], "float32")
    np.testing.assert_allclose(loaded(Tensor(x), Tensor(y)).numpy(), x * y.astype("int32"))
    ids = [n._id for n in loaded.graph.nodes()]
    assert len(set(ids)) == len(ids) and max(ids) + 1 == loaded.graph._total_ids[0]


def test_functional_loader_is_found_by_upstream_module_name(loaders):
    # F.conv2d lives in megengine.functional.conv here, in megengine.functional.nn upstream:
    # a loader registered under either name runs
    class Conv(M.Module):
        def forward(self, x, w):
            return F.conv2d(x, w)

    x = Tensor(np.random.randn(1, 2, 5, 5).astype("float32"))
    w = Tensor(np.random.randn(3, 2, 3, 3).astype("float32"))
    tm = trace_module(Conv(), x, w)

    @S.register_functional_loader(("megengine.functional.nn", "conv2d"))
    def halve_weight(expr):
        weight = expr.named_args["weight"]
        half = CallMethod(weight, "__mul__")
        half.set_args_kwargs(weight, 0.5)
        out = TensorNode(half, shape=weight.shape, dtype=weight.dtype)
        half.return_val = out
        expr.set_arg("weight", out)

    loaded = pickle.loads(pickle.dumps(tm))
    assert [type(e) for e in loaded.graph._exprs] == [CallMethod, CallFunction]
    _users_agree(loaded.graph)
    np.testing.assert_allclose(loaded(x, w).numpy(), F.conv2d(x, w * 0.5).numpy(), rtol=1e-5)


def test_tensor_method_and_module_loaders(loaders):
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.relu = M.ReLU()

        def forward(self, x):
            return self.relu(x + 1)

    tm = trace_module(Net(), Tensor([1.0]))
    calls = []

    @S.register_tensor_method_loader("__add__")
    def add_a_constant_step(expr):
        const = Constant(Tensor([10.0]), "ten").outputs[0]
        expr.set_args_kwargs(expr.inputs[0], const)

    @S.register_module_loader(("megengine.module.activation", "ReLU"))
    def see_relu(expr):
        calls.append(type(expr.inputs[0].owner))

    loaded = pickle.loads(pickle.dumps(tm))
    assert calls == [M.ReLU]
    assert isinstance(loaded.graph._exprs[1], Constant)  # (after relu's getattr, read first)
    _users_agree(loaded.graph)
    np.testing.assert_equal(loaded(Tensor([-20.0, 1.0])).numpy(), [0.0, 11.0])


def test_a_second_loader_for_one_key_is_refused(loaders):
    @S.register_tensor_method_loader("__mul__")
    def first(expr):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @S.register_tensor_method_loader("__sub__", "__mul__")
        def second(expr):
            pass

    assert S.TENSORMETHOD_LOADER == {"__mul__": first}  # nothing half-registered


class AddsOne(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 1, 1)
        self.bn = M.BatchNorm2d(1)

    def forward(self, x):
        return self.bn(self.conv(x)) + 1


def test_loaders_run_when_a_pickle_loads_not_on_copies(loaders):
    # upstream runs the loaders in TracedModule.__setstate__ (pickle) only: its __deepcopy__
    # copies the state, so a loaded module copied (optimize copies it) is not loaded again
    import copy

    from megengine.traced_module import optimize

    net = AddsOne()
    net.eval()
    x = Tensor(np.random.rand(2, 1, 3, 3).astype(np.float32))
    tm = trace_module(net, x)
    calls = []

    @S.register_tensor_method_loader("__add__")
    def add_ten_more(expr):  # a change that shows if it runs twice: + 1 becomes + 11
        calls.append(expr)
        const = Constant(Tensor([10.0]), "ten").outputs[0]
        add = CallMethod(expr.inputs[0], "__add__")
        add.set_args_kwargs(expr.inputs[0], const)
        out = TensorNode(add, shape=expr.outputs[0].shape, dtype=expr.outputs[0].dtype)
        add.return_val = (out,)
        expr.set_args_kwargs(out, *expr.args[1:])

    loaded = pickle.loads(pickle.dumps(tm))
    assert len(calls) == 1
    expected = net(x).numpy() + 10  # the oracle: the module's output, plus the loader's 10
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5)
    for copied in (copy.deepcopy(loaded), optimize(loaded, "FuseConvBn")):
        assert len(calls) == 1
        np.testing.assert_allclose(copied(x).numpy(), expected, rtol=1e-5, atol=1e-6)
        _users_agree(copied.graph)
    copied.graph.compile()
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5)  # the original is left


def test_a_load_numbers_exprs_and_nodes_again_in_graph_order_as_upstream():
    # an expr inserted by graph surgery takes the next free id; upstream's load numbers every
    # expr and node again, in the graph's order (measured with upstream 1.13)
    class Net(M.Module):
        def forward(self, x):
            return F.relu(x) * 2

    x = Tensor(np.array([-1.0, 2.0], dtype=np.float32))
    tm = trace_module(Net(), x)
    graph = tm.graph
    relu = graph.get_function_by_type(F.relu).as_unique()
    with graph.insert_exprs():
        neg = F.neg(relu.outputs[0])
    graph.replace_node({relu.outputs[0]: neg})
    graph.compile()
    assert [e._id for e in graph.exprs()] == [0, 1, 2, 4, 3]
    back = pickle.loads(pickle.dumps(tm))
    assert [e._id for e in back.graph.exprs()] == [0, 1, 2, 3, 4]
    assert [n._id for n in back.graph.nodes()] == [0, 1, 2, 3, 4]
    assert "%3:\tneg_out = elemwise.neg(relu_out, )" in str(back.graph)
    np.testing.assert_allclose(back(x).numpy(), [0.0, -4.0])
