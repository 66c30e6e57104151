"""Tests of megengine/traced_module/graph.py: searching, printing, editing and flattening a traced graph."""
import pickle

import numpy as np
import pytest

import megengine.functional as F
import megengine.module as M
from megengine import Parameter, Tensor
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops import builtin
from megengine.traced_module import trace_module, wrap
from megengine.traced_module.expr import CallFunction, CallMethod, GetAttr
from megengine.traced_module.node import ModuleNode, TensorNode


class Block(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x)) + 1


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.b0 = Block()
        self.b1 = Block()

    def forward(self, x):
        return self.b1(self.b0(x))


def _traced():
    m = Net()
    x = Tensor(np.random.randn(1, 2, 4, 4).astype(np.float32))
    return m, trace_module(m, x), x


def _relu(x):
    return np.maximum(x, 0)


def test_search_by_type_id_and_name():
    _, tm, _ = _traced()
    g = tm.graph
    relus = g.get_function_by_type(F.relu).as_list()
    assert len(relus) == 2 and all(isinstance(e, CallFunction) for e in relus)
    assert g.get_function_by_type(F.relu, recursive=False).as_list() == []
    convs = g.get_module_by_type(M.Conv2d).as_list()
    assert len(convs) == 2 and all(isinstance(n, ModuleNode) for n in convs)
    assert len(g.get_method_by_type("__add__").as_list()) == 2
    node = g.get_node_by_name("Net_b0_conv").as_unique()  # "<graph name>_<node name>"
    assert node.owner is tm.b0.conv
    assert g.get_node_by_name("net_B0_*").as_list()  # glob, case ignored by default
    assert g.get_node_by_id(node._id).as_unique() is node
    expr = relus[0]
    assert g.get_expr_by_id([expr._id]).as_unique() is expr
    with pytest.raises(ValueError, match="2 elements"):
        g.get_function_by_type(F.relu).as_unique()


def test_users_and_producers_agree():
    _, tm, _ = _traced()
    for module in tm.modules():
        for g in getattr(module, "argdef_graph_map", {}).values():
            for expr in g._exprs:
                for n in expr.inputs:
                    assert expr in n.users
                for n in expr.outputs:
                    assert n.expr is expr and n.top_graph is g
                    for user in n.users:
                        assert n in user.inputs


def test_printing_names_each_step():
    _, tm, _ = _traced()
    text = str(tm.b0.graph)
    assert text.startswith("Net_b0.Graph (self, x) {")
    assert 'conv = getattr(self, "conv") -> (Conv2d)' in text
    assert "relu_out = nn.relu(conv_out, )" in text and "return add_out" in text


def test_insert_replace_compile():
    m, tm, x = _traced()
    g = tm.b1.graph
    relu_out = g.get_function_by_type(F.relu).as_unique().outputs[0]
    with g.insert_exprs():
        neg = F.neg(relu_out) * 2
    assert isinstance(neg, TensorNode)
    g.replace_node({relu_out: neg})
    g.compile()
    steps = [getattr(e, "method", None) or getattr(e, "func", None) or e.name
             for e in g._exprs]
    assert steps == ["conv", "__call__", F.relu, F.neg, "__mul__", "__add__"]
    h = m.b0(x).numpy()
    conv = m.b1.conv(Tensor(h)).numpy()
    np.testing.assert_allclose(tm(x).numpy(), -2 * _relu(conv) + 1, rtol=1e-5, atol=1e-6)


def test_insert_a_module_call():
    class Half(M.Module):
        def forward(self, x):
            return x / 2

    m, tm, x = _traced()
    g = tm.graph
    out = g.outputs[0]
    tm.half = Half()
    with g.insert_exprs():
        halved = g.inputs[0].half(out)
    g.replace_node({out: halved})
    g.compile()
    assert len(tm.half.graph._exprs) == 1  # became a TracedModule
    np.testing.assert_allclose(tm(x).numpy(), m(x).numpy() / 2, rtol=1e-6)


def test_an_inserted_module_keeps_the_submodules_the_inserted_code_reads():
    # upstream's test_modification.py (test_insert_module): a plain module set on the traced
    # module and called inside insert_exprs becomes a TracedModule; one of its submodules its
    # forward does not use, read through it in insert_exprs, stays (it was dropped, and the
    # traced call of ``neg.relu`` raised AttributeError)
    class Neg(M.Module):
        def __init__(self):
            super().__init__()
            self.relu = M.ReLU()
            self.spare = M.Sigmoid()

        def forward(self, x):
            return -x

    m, tm, x = _traced()
    g = tm.graph
    tm.neg = Neg()
    with g.insert_exprs():
        y = g.inputs[0].neg.relu(g.inputs[0].neg(g.outputs[0]))
    g.replace_node({g.outputs[0]: y})
    g.compile()
    assert isinstance(tm.neg.relu, M.ReLU) and not hasattr(tm.neg, "spare")
    np.testing.assert_array_equal(tm(x).numpy(), np.maximum(-m(x).numpy(), 0))
    tm = pickle.loads(pickle.dumps(tm))
    np.testing.assert_array_equal(tm(x).numpy(), np.maximum(-m(x).numpy(), 0))


class _Wrap(M.Module):
    def __init__(self):
        super().__init__()
        self.a = M.PReLU()
        self.b = M.Sigmoid()

    def forward(self, x):
        return self.a(x) * 0.5


class _Doubled(M.Module):
    def forward(self, x):
        return F.relu(x) * 2


# what upstream 1.13 prints (measured) after each edit of _Doubled's traced graph, a _Wrap set
# on it as ``wrap``: chains of reads are one getattr of the dotted path, a user module read
# again in the edit is the same node (one getattr, its graph traced once), a tensor read
# through a module node takes two ids (upstream records it twice, compile merges the second)
_EDITS = {
    "n * s.wrap.a.weight": ["%6:\twrap_a_weight = getattr(self, \"wrap.a.weight\") -> (Tensor)",
                            "%8:\tmul_out_1 = mul_out.__mul__(wrap_a_weight, )"],
    "s.wrap(n) * s.wrap.a.weight": [
        "%4:\twrap = getattr(self, \"wrap\") -> (Module)", "%5:\twrap_out = wrap(mul_out, )",
        "%12:\twrap_a_weight = getattr(self, \"wrap.a.weight\") -> (Tensor)",
        "%14:\tmul_out_1 = wrap_out.__mul__(wrap_a_weight, )"],
    "s.wrap(n) + s.wrap(n)": [
        "%4:\twrap = getattr(self, \"wrap\") -> (Module)", "%5:\twrap_out = wrap(mul_out, )",
        "%11:\twrap_out_1 = wrap(mul_out, )", "%12:\tadd_out = wrap_out.__add__(wrap_out_1, )"],
    "s.wrap.a(n) + s.wrap.a.weight + s.wrap.a.weight": [
        "%5:\twrap_a = getattr(self, \"wrap.a\") -> (PReLU)", "%6:\twrap_a_out = wrap_a(mul_out, )",
        "%8:\twrap_a_weight = getattr(self, \"wrap.a.weight\") -> (Tensor)",
        "%10:\tadd_out = wrap_a_out.__add__(wrap_a_weight, )",
        "%14:\tadd_out_1 = add_out.__add__(wrap_a_weight, )"],
    "s.wrap.b(n) + s.wrap(n)": [
        "%4:\twrap = getattr(self, \"wrap\") -> (Module)",
        "%5:\twrap_b = getattr(self, \"wrap.b\") -> (Sigmoid)",
        "%6:\twrap_b_out = wrap_b(mul_out, )",
        "%7:\twrap_out = wrap(mul_out, )", "%13:\tadd_out = wrap_b_out.__add__(wrap_out, )"],
}


@pytest.mark.parametrize("edit", sorted(_EDITS))
def test_reads_through_an_inserted_module_are_recorded_as_upstreams(edit):
    x = Tensor(np.arange(-3, 3, dtype="float32").reshape(2, 3))
    tm = trace_module(_Doubled(), x)
    tm.wrap = _Wrap()
    g = tm.graph
    n = g.outputs[0]
    with g.insert_exprs():
        s = g.inputs[0]  # noqa: F841 (read by the edit)
        y = eval(edit)
    g.replace_node({n: y})
    g.compile()
    lines = [line.strip() for line in str(g).splitlines() if line.startswith("\t%")]
    assert lines[2:] == _EDITS[edit]
    doubled, weight = np.maximum(x.numpy(), 0) * 2, tm.wrap.a.weight.numpy()
    prelu = np.where(doubled > 0, doubled, doubled * weight)
    want = {"n * s.wrap.a.weight": doubled * weight,
            "s.wrap(n) * s.wrap.a.weight": prelu * 0.5 * weight,
            "s.wrap(n) + s.wrap(n)": prelu,
            "s.wrap.a(n) + s.wrap.a.weight + s.wrap.a.weight": prelu + 2 * weight,
            "s.wrap.b(n) + s.wrap(n)": 1 / (1 + np.exp(-doubled)) + prelu * 0.5}[edit]
    np.testing.assert_allclose(tm(x).numpy(), want, rtol=1e-6)


def test_a_module_only_read_through_keeps_what_was_read_as_upstream():
    # upstream 1.13 (measured): wrap, never called, becomes a TracedModule holding only b
    x = Tensor(np.ones((2, 3), "float32"))
    tm = trace_module(_Doubled(), x)
    tm.wrap = _Wrap()
    g = tm.graph
    with g.insert_exprs():
        y = g.inputs[0].wrap.b(g.outputs[0]) * 2.0
    g.replace_node({g.outputs[0]: y})
    g.compile()
    assert [name for name, _ in tm.named_modules()] == ["", "wrap", "wrap.b"]
    assert sorted(tm.state_dict()) == []  # (wrap.a and its weight dropped)
    np.testing.assert_allclose(tm(x).numpy(), 2 / (1 + np.exp(-2.0)), rtol=1e-6)


def test_inserted_getattrs_keep_no_value_and_read_the_attribute_later():
    # upstream's test_modification.py (test_insert_module): after insert_exprs no TensorNode
    # of the graph holds a tensor; a later insert_exprs still computes with the attribute
    m, tm, x = _traced()
    g = tm.graph
    tm.shift = Tensor([3.0])
    with g.insert_exprs():
        shifted = g.outputs[0] + g.inputs[0].shift
    g.replace_node({g.outputs[0]: shifted})
    g.compile()
    assert all(n.value is None for n in g.nodes() if isinstance(n, TensorNode))
    (shift_node,) = [n for n in g.nodes() if n.name == "shift"]
    with g.insert_exprs():  # a shape the data decides: 3 > 0 keeps one element, zeros none
        kept, _ = F.cond_take(F.greater(shift_node, 0), shift_node)
        scaled = g.outputs[0] * F.sum(kept)
    assert kept.shape == (1,)
    g.replace_node({g.outputs[0]: scaled})
    g.compile()
    np.testing.assert_allclose(tm(x).numpy(), (m(x).numpy() + 3) * 3, rtol=1e-5)


def test_delete_by_replacing_with_the_input():
    m, tm, x = _traced()
    g = tm.b0.graph
    relu = g.get_function_by_type(F.relu).as_unique()
    g.replace_node({relu.outputs[0]: relu.inputs[0]})
    g.compile()
    h = m.b0.conv(x).numpy() + 1  # no relu in b0 any more
    expect = _relu(m.b1.conv(Tensor(h)).numpy()) + 1
    np.testing.assert_allclose(tm(x).numpy(), expect, rtol=1e-5, atol=1e-6)


def test_inputs_and_outputs_of_the_top_graph():
    m, tm, x = _traced()
    g = tm.graph
    extra = g.add_input_node(shape=(1, 2, 4, 4), name="extra")
    g.add_output_node(extra)
    assert g.inputs[-1] is extra and extra.name == "extra"
    y, e = tm(x, x * 3)
    np.testing.assert_allclose(y.numpy(), m(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(e.numpy(), x.numpy() * 3)
    g.reset_outputs({"main": g.outputs[0]})
    assert list(tm(x, x)) == ["main"]
    with pytest.raises(ValueError, match="top graph"):
        tm.b0.graph.add_output_node(extra)
    # upstream 1.13 asserts for an output that is no node (measured); this graph kept 3 as a
    # constant output before
    for bad in (3, (g.outputs[0], "s")):
        with pytest.raises(TypeError, match="reset_outputs: doesn't support") as error:
            g.reset_outputs(bad)
        assert isinstance(error.value, AssertionError)
    with pytest.raises(TypeError, match="add_output_node: doesn.t support int 3"):
        g.add_output_node(3)
    assert list(tm(x, x)) == ["main"]  # unchanged
    # a call with another number of inputs: upstream's eval asserts
    with pytest.raises(TypeError, match="takes 3 inputs") as error:
        g.eval(x)
    assert isinstance(error.value, AssertionError)


def test_reset_inputs_gives_the_top_graph_new_arguments():
    # upstream 1.13 measured: new input nodes named args, args_1 from example tensors, which
    # the graph's exprs read once the old input is replaced; the call takes the new arguments
    m, tm, x = _traced()
    g = tm.graph
    old = g.inputs[1]
    a, b = g.reset_inputs(x, x * 2)
    assert [str(n) for n in g.inputs[1:]] == ["args", "args_1"] and a.shape == x.shape
    with g.insert_exprs():
        total = a + b
    g.replace_node({old: total})
    g.compile()
    u, v = Tensor(np.random.rand(*x.shape).astype("float32")), x * 0.5
    np.testing.assert_allclose(tm(u, v).numpy(), m(u + v).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="example Tensors"):
        g.reset_inputs(x, 3)
    with pytest.raises(ValueError, match="top graph"):
        tm.b0.graph.reset_inputs(x)


def test_rename_refuses_a_used_name():
    _, tm, _ = _traced()
    out = tm.graph.outputs[0]
    with pytest.raises(AssertionError, match="already used"):
        out.name = "b0_out"
    out.name = "result"
    assert str(tm.graph.outputs[0]) == "result"
    tm.graph.name = "Top"
    assert tm.graph.get_node_by_name("Top_result").as_unique() is out


def test_names_given_to_tensors_in_forward_name_their_nodes():
    # upstream's test_modification.py (test_set_node_name): ``x.name = ...`` inside a
    # module's forward, traced or called in insert_exprs, is the name of x's node
    class Named(M.Module):
        def forward(self, x):
            x = x + 1
            x.name = "plus_one"
            return x * 2

    class Top(M.Module):
        def __init__(self):
            super().__init__()
            self.inner = Named()

        def forward(self, x):
            x.name = "not_an_argument_name"  # arguments keep the names of the parameters
            y = self.inner(x)
            y.name = "doubled"
            return y

    x = Tensor([1.0, 2.0])
    tm = trace_module(Top(), x)
    assert "doubled" in tm.graph._namespace.used_names
    assert tm.graph.outputs[0].name == "doubled" and tm.graph.inputs[1].name == "x"
    (plus_one,) = [n for n in tm.inner.graph.nodes() if n.name == "plus_one"]
    assert plus_one.expr.method == "__add__"
    g = tm.graph
    tm.again = Named()
    with g.insert_exprs():
        out = g.inputs[0].again(g.outputs[0])
    g.replace_node({g.outputs[0]: out})
    g.compile()
    assert "plus_one" in tm.again.graph._namespace.used_names
    np.testing.assert_allclose(tm(x).numpy(), ((x.numpy() + 1) * 2 + 1) * 2)


def test_flatten_inlines_submodules():
    m, tm, x = _traced()
    flat = tm.flatten()
    exprs = flat.graph._exprs
    assert [type(e) for e in exprs] == [GetAttr, CallMethod, CallFunction, CallMethod] * 2
    assert [e.name for e in exprs if isinstance(e, GetAttr)] == ["b0.conv", "b1.conv"]
    np.testing.assert_allclose(flat(x).numpy(), m(x).numpy(), rtol=1e-6)
    assert len(tm.graph._exprs) == 4  # the original is untouched
    names = [n._name for n in flat.graph.nodes()]
    assert len(set(names)) == len(names)


def test_ids_stay_consistent_through_edits_and_pickle():
    def check(tm):
        nodes = [n._id for n in tm.graph.nodes()]
        exprs = [e._id for e in tm.graph.exprs()]
        assert len(set(nodes)) == len(nodes) and max(nodes) + 1 == tm.graph._total_ids[0]
        assert len(set(exprs)) == len(exprs) and max(exprs) + 1 == tm.graph._total_ids[1]

    _, tm, _ = _traced()
    check(tm)
    tm = pickle.loads(pickle.dumps(tm))
    g = tm.b0.graph
    relu_out = g.get_function_by_type(F.relu).as_unique().outputs[0]
    with g.insert_exprs():
        neg = F.neg(relu_out)
    g.replace_node({relu_out: neg})
    g.compile()
    check(tm)
    check(tm.flatten())


def test_nodes_outside_insert_exprs_hold_no_value():
    _, tm, _ = _traced()
    node = tm.graph.outputs[0]
    with pytest.raises(TypeError, match="insert_exprs"):
        node + 1
    with pytest.raises(TypeError, match="not callable"):
        tm.graph.inputs[0](node)


class _Block(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y += x
        return F.relu(y)


class _Net(M.Module):
    def __init__(self):
        super().__init__()
        self.layer = M.Sequential(_Block(), _Block())
        self.fc = M.Linear(2, 3)

    def forward(self, x):
        x = F.avg_pool2d(self.layer(x), 4)
        return self.fc(F.flatten(x, 1))


def _traced_net():
    return trace_module(_Net(), Tensor(np.random.rand(1, 2, 4, 4).astype("float32")))


def test_ids_number_as_upstream():
    # upstream's guide (traced_module/api-example): a graph's Input exprs take the first ids,
    # a node has the id of the expr that makes it, and a called submodule's graph is numbered
    # right after its call (resnet18's avg_pool2d is %179 on input %136 there)
    tm = _traced_net()
    g = tm.graph
    top = g.exprs(recursive=False).as_list()
    # self %0, x %1; layer %2 and its call %3, whose graph takes %4-%21 (inputs %4, %5;
    # each block: getattr, call, then its own graph of 2 inputs and 4 exprs); then the rest;
    # as upstream, exprs() lists a graph's Input exprs first
    assert [e._id for e in top] == [0, 1, 2, 3, 22, 23, 24, 25]
    assert max(e._id for e in g.exprs()) + 1 == g._total_ids[1]
    for e in g.exprs().as_list():
        assert all(n._id == e._id for n in e.outputs)
    assert [n._id for n in g._inputs] == [0, 1]
    sub = top[3].graph  # the Sequential's graph: its inputs are %4, %5
    assert [n._id for n in sub._inputs] == [4, 5]
    pool = g.get_function_by_type(F.avg_pool2d, False).as_unique()
    assert pool._id == 22 and pool.inputs[0]._id == 3
    assert g.get_node_by_id(22).as_unique() is pool.outputs[0]


def test_node_repr_is_its_name_and_ids_print_everywhere():
    tm = _traced_net()
    g = tm.graph
    fc_call = g.exprs(False).as_list()[-1]
    assert repr(fc_call.inputs) == "[fc, flatten_out]"  # upstream prints node lists by name
    text = "{:i}".format(g)
    # with ids, every node of every expr carries its id (outputs, callees and arguments)
    # (self.fc(F.flatten(...)) reads fc before flatten runs: its getattr comes first)
    assert '%23_fc = getattr(%0_self, "fc")' in text
    assert "%25_fc_out = %23_fc(%24_flatten_out" in text
    assert "return %25_fc_out" in text


def test_functional_calls_record_every_argument_as_upstream():
    class Bn(M.Module):
        def __init__(self):
            super().__init__()
            self.weight = Tensor(np.ones(3, "float32"))

        def forward(self, x):
            return F.batch_norm(x, weight=self.weight, training=True)

    x = Tensor(np.random.rand(2, 3, 2, 2).astype("float32"))
    tm = trace_module(Bn(), x)
    expr = tm.graph.get_function_by_type(F.batch_norm).as_unique()
    # upstream's guide: parameters before `*` positional, after it by keyword (sorted),
    # defaults filled in
    assert [str(a) for a in expr.args] == ["x", "None", "None", "weight", "None"]
    assert list(expr.kwargs) == sorted(expr.kwargs)
    assert expr.kwargs["training"] is True and expr.kwargs["eps"] == 1e-5
    np.testing.assert_allclose(tm(x).numpy(), F.batch_norm(x, weight=tm.weight,
                                                           training=True).numpy(), rtol=1e-6)


def test_comparisons_on_nodes_inside_insert_exprs_are_recorded():
    # upstream's insert_exprs records every Tensor operator on a TensorNode, comparisons
    # included; outside it nodes compare by identity (dict keys, ``in`` of lists)
    class ReluNet(M.Module):
        def forward(self, x):
            return F.relu(x) * 2

    x = Tensor(np.random.randn(4, 5).astype(np.float32) * 3)
    tm = trace_module(ReluNet(), x)
    g = tm.graph
    relu_out = g.get_function_by_type(F.relu).as_unique().outputs[0]
    with g.insert_exprs():
        kept = F.where(relu_out > 1, relu_out, +relu_out * 0)
        same = (relu_out == relu_out).astype("float32") + (relu_out != relu_out)
        low = (relu_out <= 1) & (relu_out < 2) | (relu_out >= 3) & (relu_out != 0)
        out = kept * same + low.astype("float32")
    g.replace_node({relu_out: out})
    g.compile()
    assert {"__gt__", "__eq__", "__ne__", "__le__", "__lt__", "__ge__", "__pos__"} <= {
        e.method for e in g.exprs() if isinstance(e, CallMethod)}
    r = np.maximum(x.numpy(), 0)  # the oracle: the same steps on the values, in numpy
    low = ((r <= 1) & (r < 2)) | ((r >= 3) & (r != 0))
    expected = np.where(r > 1, r, 0) * 1.0 + low
    np.testing.assert_allclose(tm(x).numpy(), expected * 2, rtol=1e-6)
    assert relu_out == relu_out and relu_out != out and relu_out in [out, relu_out]
    assert len({relu_out: 1, out: 2}) == 2


def test_in_place_operators_transpose_and_broadcast_on_nodes_inside_insert_exprs():
    class ReluNet(M.Module):
        def forward(self, x):
            return F.relu(x) * 2

    x = Tensor(np.random.randn(4, 5).astype(np.float32))
    tm = trace_module(ReluNet(), x)
    g = tm.graph
    relu_out = g.get_function_by_type(F.relu).as_unique().outputs[0]
    with g.insert_exprs():
        y = relu_out.T
        y += 1
        y *= 3
        out = y.T * relu_out - relu_out[0:1]._broadcast(4, 5)
    g.replace_node({relu_out: out})
    g.compile()
    assert {"__iadd__", "__imul__", "transpose", "_broadcast"} <= {
        e.method for e in g.exprs() if isinstance(e, CallMethod)}
    r = np.maximum(x.numpy(), 0)  # the oracle: the same steps in numpy
    expected = ((r.T + 1) * 3).T * r - np.broadcast_to(r[0:1], (4, 5))
    np.testing.assert_allclose(tm(x).numpy(), expected * 2, rtol=1e-6)
    with pytest.raises(TypeError, match="inside `with graph.insert_exprs"):
        relu_out.T


class _Chain(M.Module):
    def forward(self, x):
        for _ in range(300):
            x = x * 0.5 + 1.0
        return x


def _links(graph):
    """Each node's producing expr and users, as positions (the graph's structure)."""
    exprs = list(graph._exprs)
    nodes = list(graph._inputs) + [n for e in exprs for n in e.outputs]
    where = {id(e): i for i, e in enumerate(exprs)}
    return [(where.get(id(n.expr), type(n.expr).__name__), [where[id(u)] for u in n.users])
            for n in nodes]


def test_a_long_traced_forward_pickles_at_pythons_default_recursion_limit():
    # 600 exprs in a chain: the nodes' links to their exprs and users were pickled, one chain
    # through the whole graph, and a 60-op forward passed Python's recursion limit
    # (RecursionError in mge.save or copy.deepcopy; basedet's traced Faster R-CNN needed 1500)
    import copy
    import sys

    assert sys.getrecursionlimit() <= 1000
    x = Tensor(np.arange(3, dtype=np.float32))
    tm = trace_module(_Chain(), x)
    for loaded in (pickle.loads(pickle.dumps(tm)), copy.deepcopy(tm)):
        np.testing.assert_array_equal(loaded(x).numpy(), _Chain()(x).numpy())
        assert _links(loaded.graph) == _links(tm.graph)
    # the links are rebuilt, so graph edits still work on the loaded module
    loaded = pickle.loads(pickle.dumps(tm))
    out = loaded.graph.outputs[0]
    with loaded.graph.insert_exprs():
        neg = F.neg(out)
    loaded.graph.replace_node({out: neg})
    loaded.graph.compile()
    np.testing.assert_array_equal(loaded(x).numpy(), -_Chain()(x).numpy())


def test_pickles_that_hold_the_links_still_load(monkeypatch):
    # what earlier versions of this fork wrote: every node's expr and users in the pickle
    from megengine.traced_module.graph import InternalGraph
    from megengine.traced_module.node import Node

    _, tm, x = _traced()
    expected = tm(x).numpy()
    monkeypatch.setattr(Node, "__getstate__", lambda self: dict(self.__dict__))
    monkeypatch.setattr(TensorNode, "__getstate__", lambda self: dict(self.__dict__, value=None))
    monkeypatch.setattr(ModuleNode, "__getstate__", lambda self: dict(self.__dict__))
    monkeypatch.setattr(InternalGraph, "__getstate__", lambda self: dict(self.__dict__))
    data = pickle.dumps(tm)
    monkeypatch.undo()
    loaded = pickle.loads(data)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)
    for g in (loaded.graph, loaded.b0.graph):
        assert _links(g) == _links(tm.graph if g is loaded.graph else tm.b0.graph)


class _Builtins(M.Module):
    def __init__(self):
        super().__init__()
        self.input = M.Linear(3, 3)
        self.filter = M.ReLU()
        self.layer_1 = M.Linear(3, 3)

    def forward(self, x):
        y = self.filter(self.input(x))
        y = self.layer_1(y) + self.layer_1(y) + self.layer_1(y)
        return F.relu(y) + F.relu(y)


def test_names_and_qualnames_follow_upstreams_namespace():
    # upstream 1.13 measured (``[n.name for n in tm.graph.nodes()]`` and ``.qualname``):
    # builtin names take a suffix, a taken ``layer_1`` counts on to ``layer_2``, steps are
    # qualified as ``[method_add]`` / ``[func_relu]``
    tm = trace_module(_Builtins(), Tensor(np.ones((2, 3), "float32")))
    nodes = tm.graph.nodes().as_list()
    assert [n.name for n in nodes] == [
        "self", "x", "filter_1", "input_1", "input_1_out", "filter_1_out", "layer_1",
        "layer_1_out", "layer_2_out", "add_out", "layer_3_out", "add_out_1", "relu_out",
        "relu_out_1", "add_out_2"]
    assert [n.qualname for n in nodes][8:] == [
        "_Builtins.layer_1.[out]", "_Builtins.[method_add]", "_Builtins.layer_1.[out]",
        "_Builtins.[method_add]", "_Builtins.[func_relu]", "_Builtins.[func_relu]",
        "_Builtins.[method_add]"]


# ----- printing, as upstream 1.13 prints (upstream 1.13 measured: the expected texts are
# upstream's print of these very modules) -----

@wrap
def scaled(x, k):
    return x * k


class _ResBlock(M.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = M.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn1 = M.BatchNorm2d(2)
        self.conv2 = M.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn2 = M.BatchNorm2d(2)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.nn.relu(self.bn2(self.conv2(y)) + x)
        y = F.adaptive_avg_pool2d(F.max_pool2d(y, 2), 1)
        return F.flatten(y, 1)


class _Pair(M.Module):
    def forward(self, x):
        return {"a": x, "b": [x + 1, x - 1]}


class _Steps(M.Module):
    def __init__(self):
        super().__init__()
        self.w = Parameter(np.ones((3, 3), "float32"))
        self.pair = _Pair()
        self.fc = M.Linear(3, 3)
        self.heads = [M.Linear(3, 3), M.Linear(3, 3)]

    def forward(self, x):
        (s,) = apply(builtin.Elemwise(mode="ADD"), x, Tensor([1.0, 2.0, 3.0]))
        d = self.pair(scaled(s, 3))
        top, idx = F.topk(d["a"], 2, descending=True)
        parts = F.split(x.T @ self.w.T, 3, axis=1)
        y = self.fc(self.fc(F.concat(d["b"], axis=0)))
        for head in self.heads:
            y = head(y)
        return top, idx, parts[0], y.astype("float16").reshape(-1)


_RESBLOCK_REPR = """TracedModule(
  (bn1): BatchNorm2d(2, eps=1e-05, momentum=0.9, affine=True, track_running_stats=True)
  (conv1): Conv2d(2, 2, kernel_size=(3, 3), padding=(1, 1), bias=False)
  (bn2): BatchNorm2d(2, eps=1e-05, momentum=0.9, affine=True, track_running_stats=True)
  (conv2): Conv2d(2, 2, kernel_size=(3, 3), padding=(1, 1), bias=False)
)"""

_RESBLOCK_GRAPH = """_ResBlock.Graph (self, x) {
	%2:	bn1 = getattr(self, "bn1") -> (BatchNorm2d)
	%3:	conv1 = getattr(self, "conv1") -> (Conv2d)
	%4:	conv1_out = conv1(x, )
	%5:	bn1_out = bn1(conv1_out, )
	%6:	relu_out = nn.relu(bn1_out, )
	%7:	bn2 = getattr(self, "bn2") -> (BatchNorm2d)
	%8:	conv2 = getattr(self, "conv2") -> (Conv2d)
	%9:	conv2_out = conv2(relu_out, )
	%10:	bn2_out = bn2(conv2_out, )
	%11:	add_out = bn2_out.__add__(x, )
	%12:	relu_out_1 = nn.relu(add_out, )
	%13:	max_pool2d_out = nn.max_pool2d(relu_out_1, 2, None, 0, )
	%14:	adaptive_avg_pool2d_out = nn.adaptive_avg_pool2d(max_pool2d_out, 1, )
	%15:	flatten_out = tensor.flatten(adaptive_avg_pool2d_out, 1, -1, )
	return flatten_out
}"""

_STEPS_REPR = """TracedModule(
  (pair): TracedModule()
  (fc): Linear(in_features=3, out_features=3, bias=True)
  (heads): TracedModule(
    (0): Linear(in_features=3, out_features=3, bias=True)
    (1): Linear(in_features=3, out_features=3, bias=True)
  )
)"""

_STEPS_GRAPH = """_Steps.Graph (self, x) {
	%2:	const_tensor = Constant() -> (Tensor)
	%3:	add_out = ADD(x, const_tensor)
	%4:	pair = getattr(self, "pair") -> (Module)
	%5:	scaled_out = test_graph.scaled(add_out, 3, )
	%6:	{'a': pair_out, 'b': [pair_out_1, pair_out_2]} = pair(scaled_out, )
	%11:	(topk_out, topk_out_1) = math.topk(pair_out, 2, True, False, False, )
	%12:	transpose_out = x.transpose(, )
	%13:	w = getattr(self, "w") -> (Tensor)
	%14:	transpose_out_1 = w.transpose(, )
	%15:	matmul_out = transpose_out.__matmul__(transpose_out_1, )
	%16:	(split_out, split_out_1, split_out_2) = tensor.split(matmul_out, 3, 1, )
	%17:	fc = getattr(self, "fc") -> (Linear)
	%18:	concat_out = tensor.concat([pair_out_1, pair_out_2], 0, None, )
	%19:	fc_1_out = fc(concat_out, )
	%20:	fc_1_out_1 = fc(fc_1_out, )
	%21:	heads_0 = getattr(self, "heads.0") -> (Linear)
	%22:	heads_0_out = heads_0(fc_1_out_1, )
	%23:	heads_1 = getattr(self, "heads.1") -> (Linear)
	%24:	heads_1_out = heads_1(heads_0_out, )
	%25:	astype_out = heads_1_out.astype(float16, )
	%26:	reshape_out = astype_out.reshape(-1, )
	return topk_out, topk_out_1, split_out, reshape_out
}"""

_PAIR_GRAPH_IP = """_Steps_pair.Graph (%9__Steps_pair_self, %10__Steps_pair_x) {
	%9:	%11__Steps_pair_add_out = %10__Steps_pair_x.__add__(1, )
	%10:	%12__Steps_pair_sub_out = %10__Steps_pair_x.__sub__(1, )
	return %10__Steps_pair_x, %11__Steps_pair_add_out, %12__Steps_pair_sub_out
}"""


def test_a_resnet_block_prints_as_upstream():
    # earlier versions of this fork left out the trailing ", " of a call, named F.max_pool2d
    # after its file here (pooling.max_pool2d) and listed the submodules as defined
    tm = trace_module(_ResBlock(), Tensor(np.random.rand(1, 2, 4, 4).astype("float32")))
    assert repr(tm) == _RESBLOCK_REPR
    assert str(tm.graph) == _RESBLOCK_GRAPH
    with_ids = "{:i}".format(tm.graph).split("\n")
    assert with_ids[0] == "_ResBlock.Graph (%0_self, %1_x) {"
    assert with_ids[2] == "\t%3:\t%3_conv1 = getattr(%0_self, \"conv1\") -> (Conv2d)"
    assert with_ids[12] == \
        "\t%13:\t%13_max_pool2d_out = nn.max_pool2d(%12_relu_out_1, 2, None, 0, )"
    assert with_ids[-2] == "\treturn %15_flatten_out"
    exprs = tm.graph._exprs
    assert str(exprs[3]) == repr(exprs[3]) == "%5:\tbn1_out = bn1(conv1_out, )"
    node = exprs[3].outputs[0]
    assert (str(node), repr(node), "{:i}".format(node), "{:p}".format(node),
            "{:ip}".format(node)) == ("bn1_out", "bn1_out", "%5_bn1_out", "_ResBlock_bn1_out",
                                      "%5__ResBlock_bn1_out")


def test_steps_of_every_kind_print_as_upstream():
    # several results in parentheses (a dict as a dict), an Apply by its op (an Elemwise by its
    # mode), a Constant by its name and kind, a traced submodule's kind Module, a container of
    # modules as a TracedModule, strings unquoted; earlier versions of this fork printed
    # "a, b = ...", "apply(Elemwise, x, c)", "Constant(Tensor(3,) float32)", "-> (_Pair)",
    # "astype('float16')" and "_ModuleList("
    tm = trace_module(_Steps(), Tensor(np.random.rand(3, 3).astype("float32")))
    assert repr(tm) == _STEPS_REPR
    assert str(tm.graph) == _STEPS_GRAPH
    assert "{:ip}".format(tm.pair.graph) == _PAIR_GRAPH_IP
    assert str(tm.graph._exprs[0]) == "%2:\tconst_tensor = Constant() -> (Tensor)"
    inputs = [n.expr for n in tm.pair.graph.inputs]
    assert [str(e) for e in inputs] == ["%7:\tself = Input()", "%8:\tx = Input()"]


def test_a_graph_without_steps_prints_its_empty_line_as_upstream():
    class Same(M.Module):
        def forward(self, x):
            return x

    tm = trace_module(Same(), Tensor(np.ones(2, "float32")))
    assert str(tm.graph) == "Same.Graph (self, x) {\n\t\n\treturn x\n}"


class _FunctionalSteps(M.Module):
    def __init__(self):
        super().__init__()
        self.rm = Tensor(np.zeros((1, 3, 1, 1), "float32"))
        self.rv = Tensor(np.ones((1, 3, 1, 1), "float32"))

    def forward(self, x):
        y = F.batch_norm(x, self.rm, self.rv, training=False)
        z = F.matmul(y.reshape(2, -1), y.reshape(2, -1), transpose_b=True)
        p = F.nn.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        s, i = F.sort(z)
        return z, p, s, i


def test_parameters_upstream_lacks_are_not_printed_at_their_defaults():
    # upstream 1.13 measured: its print of this graph's calls (keyword arguments sorted);
    # earlier versions of this fork also printed compute_mode= and param_dim= of batch_norm,
    # matmul's format, pad's pad_witdth= and sort's axis, which upstream's functions lack
    tm = trace_module(_FunctionalSteps(), Tensor(np.random.rand(2, 3, 2, 2).astype("float32")))
    lines = str(tm.graph).split("\n")
    assert lines[3] == "\t%4:\tbatch_norm_out = nn.batch_norm(x, rm, rv, None, None, " \
        "eps=1e-05, inplace=True, momentum=0.9, training=False)"
    assert lines[6:9] == [
        "\t%7:\tmatmul_out = math.matmul(reshape_out, reshape_out_1, False, True, default, )",
        "\t%8:\tpad_out = nn.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant, 0.0, )",
        "\t%9:\t(sort_out, sort_out_1) = math.sort(matmul_out, False, )"]
    expr = tm.graph._exprs[5]  # the graph itself keeps them
    assert expr.args[-1] == "default" and len(expr.args) == 6


class _Made(M.Module):
    def forward(self, x):
        a = F.zeros(x.shape, dtype="int32")
        b = F.full((2, 3), 0.5)
        c = F.linspace(0, 1, 3)
        d = F.arange(0, 6, 2)
        e = F.eye(3, 2)
        f = F.ones((2, 3), dtype="float16")
        return x + a + b + f, c + d, e


def test_dtype_and_device_print_by_keyword_as_upstream_takes_them():
    # upstream 1.13 measured: its F.zeros, full, linspace, arange, eye and ones take dtype and
    # device by keyword only, and print them sorted (earlier versions of this fork printed
    # them by position: "tensor.zeros(getvarshape_out, int32, None, )")
    tm = trace_module(_Made(), Tensor(np.random.rand(2, 3).astype("float32")))
    assert str(tm.graph).split("\n")[2:8] == [
        "\t%3:\tzeros_out = tensor.zeros(getvarshape_out, device=None, dtype=int32)",
        "\t%4:\tfull_out = tensor.full((2, 3), 0.5, device=None, dtype=None)",
        "\t%5:\tlinspace_out = tensor.linspace(0, 1, 3, device=None, dtype=float32)",
        "\t%6:\tarange_out = tensor.arange(0, 6, 2, device=None, dtype=float32)",
        "\t%7:\teye_out = tensor.eye(3, 2, device=None, dtype=float32)",
        "\t%8:\tones_out = tensor.ones((2, 3), device=None, dtype=float16)"]


class _Counts(M.Module):
    """Writes its own state each call, read by nothing in that call."""

    def __init__(self):
        super().__init__()
        self.calls = Tensor(np.zeros((), np.float32))

    def forward(self, x):
        self.calls += 1
        return x


class _CountsCalls(M.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Counts()
        self.seen = Tensor(np.zeros((2,), np.float32))

    def forward(self, x):
        self.inner(x)                         # called for its write alone
        y = x * 2.0
        self.seen.set_value(x.sum(axis=0))    # the last input's column sums, for the next call
        local = y * 3
        local += 1                            # a write into a value of this call: dead
        return y


def test_compile_keeps_the_writes_a_call_leaves_behind():
    # compile() deleted every expr the outputs did not depend on, so `self.calls += 1` and
    # `set_value` went and the state stopped changing (optimize compiles too)
    from megengine.traced_module import optimize

    tm = trace_module(_CountsCalls(), Tensor(np.ones((3, 2), np.float32)))
    graph = tm.graph
    graph.compile()
    methods = [e.method for e in graph._exprs if isinstance(e, CallMethod)]
    assert "__iadd__" not in methods  # the dead local write went
    for module in (tm, optimize(tm, ["FuseAddMul"]), pickle.loads(pickle.dumps(tm))):
        before = float(module.inner.calls)
        module(Tensor(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)))
        assert float(module.inner.calls) == before + 1
        np.testing.assert_array_equal(module.seen.numpy(), [4.0, 6.0])


class _AddsOneToX(M.Module):
    def forward(self, x, y):
        h = x
        h += 1  # a write into the caller's tensor
        return y * 2


class _PassesTemporaries(M.Module):
    def __init__(self):
        super().__init__()
        self.k = _AddsOneToX()
        self.j = _AddsOneToX()

    def forward(self, x):
        self.k(x * 2, x)  # writes into a temporary nobody reads: dead, as upstream's compile
        u = x * 3
        self.j(u, x)      # writes into one read after the call: kept
        return u + 0


def test_compile_drops_a_call_that_writes_only_into_a_dead_temporary():
    # the call of a traced submodule that wrote into any of its inputs stayed, also where the
    # caller passed a temporary nobody reads again (upstream 1.13 drops it; it cannot trace
    # the second call, whose write its checker sees as a mismatch)
    x = Tensor(np.array([1.0, 2.0], np.float32))
    tm = trace_module(_PassesTemporaries(), x)
    tm.graph.compile()
    calls = [e.inputs[0]._name for e in tm.graph._exprs
             if isinstance(e, CallMethod) and e.method == "__call__"]
    assert calls == ["j"]
    np.testing.assert_array_equal(tm(x).numpy(), [4.0, 7.0])  # (eager: 3x + 1)
    np.testing.assert_array_equal(_PassesTemporaries()(x).numpy(), [4.0, 7.0])


class _SeqTwice(M.Module):
    def __init__(self):
        super().__init__()
        self.s = M.Sequential(M.ReLU(), M.Identity())

    def forward(self, x):
        return self.s(x) * 2, x


def test_flatten_leaves_out_what_no_output_needs_as_upstream():
    # upstream's flatten compiles the inlined graph (measured with upstream 1.13)
    x = Tensor(np.array([-1.0, 2.0], dtype=np.float32))
    tm = trace_module(_SeqTwice(), x)
    tm.graph.reset_outputs(tm.graph.outputs[1])
    assert str(tm.flatten().graph) == "_SeqTwice.Graph (self, x) {\n\t\n\treturn x\n}"
    flat = trace_module(_SeqTwice(), x).flatten()
    np.testing.assert_allclose(flat(x)[0].numpy(), [0.0, 4.0])
    assert len(list(flat.graph.exprs(False))) == 7  # self, x, two getattrs, two calls, mul


class _Summed(M.Module):
    def forward(self, x):
        return x.sum() * 2


def test_insert_exprs_records_steps_on_a_0d_node_and_an_error_in_it_leaves_nothing_on():
    # upstream 1.13 fails on steps of a 0-d node there (ret.ndim > 0) and, after any error
    # inside insert_exprs, leaves its tracing on
    x = Tensor(np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32))
    tm = trace_module(_Summed(), x)
    graph = tm.graph
    total = graph.get_method_by_type("sum").as_unique().outputs[0]
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        with graph.insert_exprs():
            total.mean(axis=1)
    assert len(list(graph.exprs(False))) == 4  # (nothing of the failed block went in)
    np.testing.assert_allclose(F.relu(x).numpy(), [[1.0, 0.0], [3.0, 4.0]])  # (not traced)
    with graph.insert_exprs():
        y = F.abs(total) + total
    graph.replace_node({total: y})
    graph.compile()
    np.testing.assert_allclose(tm(x).numpy(), 24.0)
    np.testing.assert_allclose(tm(-x).numpy(), 0.0)


class _PoolToShape(M.Module):
    def __init__(self):
        super().__init__()
        self.r = M.ReLU()

    def forward(self, x):
        h = self.r(x)
        return F.adaptive_avg_pool2d(h, (h.shape[2], h.shape[3]))


def test_get_dep_exprs_lists_in_upstreams_order():
    # measured with upstream 1.13: nodes are taken from the end of a queue that holds each
    # once (this fork's stack took r_out again before the first size's steps)
    tm = trace_module(_PoolToShape(), Tensor(np.ones((1, 2, 4, 4), dtype=np.float32)))
    ids = [e._id for e in tm.graph.get_dep_exprs(tm.graph.outputs)]
    assert ids == [8, 7, 6, 5, 4, 3, 1, 2, 0]
