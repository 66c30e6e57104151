"""Tests for megengine/utils/naming.py: `AutoNaming`'s scope stack and renaming, and the names
`trace.dump` writes from it (module-scoped operators, numbered repeats, user names, inputs,
default outputs, operand order), checked by hand against upstream's documented names; the
linear layer dumped as MatrixMul + ADD computes what the module computes (numpy oracle)."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.utils.comp_graph_tools as cgtools
from megengine.core.tensor import megbrain_graph as G
from megengine import Tensor, jit, tensor
from megengine.jit import trace
from megengine.utils.naming import AutoNaming, auto_naming

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]], "float32")


@pytest.fixture(autouse=True)
def _fresh_scopes():
    AutoNaming.clear()
    yield
    AutoNaming.clear()


def test_scopes_join_named_modules_and_skip_unnamed_ones():
    AutoNaming.clear()
    AutoNaming.push_scope("net")
    AutoNaming.push_scope(None)  # a top module without a name adds nothing
    AutoNaming.push_scope("block.0")
    assert AutoNaming.get_scope() == "net.block.0"
    assert AutoNaming.gen_name(mge.Parameter([1.0], name="w")) == "net.block.0.w"
    assert AutoNaming.pop_scope() == "block.0"
    AutoNaming.pop_scope()
    AutoNaming.pop_scope()
    assert AutoNaming.get_scope() == ""
    with pytest.raises(RuntimeError, match="no scope is open"):
        AutoNaming.pop_scope()
    with pytest.raises(TypeError, match="module name"):
        AutoNaming.push_scope(3)


def test_remove_duplicate_names_numbers_repeats_and_multi_output_vars():
    class Var:
        def __init__(self, name):
            self.name = name

    class Opr:
        def __init__(self, name, outs):
            self.name, self.outputs = name, [Var(n) for n in outs]

    a, b, c = Opr("m.RELU", ["m.RELU"]), Opr("m.RELU", ["m.RELU"]), Opr("ADD", ["ADD"])
    t0, t1 = Opr("TopK", ["TopK:0", "TopK:1"]), Opr("TopK", ["TopK:0", "TopK:1"])
    for o in (a, b, c, t0, a, t1):  # recording one operator twice counts it once
        AutoNaming.record_opnode(o)
    AutoNaming.remove_duplicate_names()
    assert [a.name, b.name, c.name] == ["m.RELU[0]", "m.RELU[1]", "ADD"]
    assert [v.name for v in t1.outputs] == ["TopK[1]:0", "TopK[1]:1"]
    assert AutoNaming.name2ops == {}


def _ops(func, symbolic=True, **dump_kw):
    AutoNaming.clear()
    f = trace(func, symbolic=symbolic, capture_as_const=True)
    f(mge.tensor(X))
    file = io.BytesIO()
    info = f.dump(file, arg_names=dump_kw.pop("arg_names", ["x"]), **dump_kw)
    file.seek(0)
    res = G.load_graph(file)
    return cgtools.get_oprs_seq(res.output_vars_list), info, f


class Block(M.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.fc = M.Linear(3, 3)
        self.k = mge.Parameter(np.full(3, 2.0, "float32"), name="k")

    def forward(self, x):
        return F.relu(F.relu(self.fc(x)) * self.k)


class Net(M.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.blocks = [Block(), Block(name="custom")]

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        y = x + 1
        y.name = "result"
        return y


@pytest.mark.parametrize("symbolic", [False, True])
def test_dumped_operators_are_named_by_module_scope(symbolic):
    ops, info, _ = _ops(Net("net"), symbolic)
    names = [o.name for o in ops]
    # blocks.0 is found by its attribute path, blocks.1 by its own name; repeats numbered
    assert names == ["x", "net.blocks.0.fc.MatrixMul", "net.blocks.0.fc.ADD",
                     "net.blocks.0.RELU[0]", "net.blocks.0.MUL", "net.blocks.0.RELU[1]",
                     "net.custom.fc.MatrixMul", "net.custom.fc.ADD", "net.custom.RELU[0]",
                     "net.custom.MUL", "net.custom.RELU[1]", "net.ADD"]
    assert [v.name for v in ops[2].outputs] == ["net.blocks.0.fc.ADD"]  # var: its operator's
    # the user's name of a value wins; it also names the output
    assert ops[-1].outputs[0].name == "result" and info.outputs == ["result"]
    # parameters: the module path and their own name; commutative operands: older value first
    assert [v.name for v in ops[4].inputs] == ["net.blocks.0.RELU[0]", "net.blocks.0.k"]
    assert [v.name for v in ops[1].inputs] == ["x", "net.blocks.0.fc.weight"]
    assert info.nr_opr == len(ops) + 7  # and the 6 parameters and the constant 1
    assert AutoNaming.scopes == []  # every module call closed its scope


@pytest.mark.parametrize("symbolic", [False, True])
def test_checked_calls_open_no_scopes_and_the_dump_keeps_the_recorded_names(symbolic):
    # only the recording names ops: a checked call's modules push no scope (it would name
    # nothing), and a dump after checked calls writes the names the recording gave
    seen = []

    class Probe(M.Module):
        def forward(self, x):
            seen.append(AutoNaming.get_scope())
            return F.relu(x)

    class Outer(M.Module):
        def __init__(self):
            super().__init__(name="net")
            self.probe = Probe()

        def forward(self, x):
            return self.probe(x) * 2

    net = Outer()
    calls = []
    net.probe.register_forward_hook(lambda m, i, o: calls.append(len(i)))  # (hooks still run)
    AutoNaming.clear()
    f = trace(net, symbolic=symbolic, capture_as_const=True)
    for _ in range(3):
        np.testing.assert_array_equal(f(mge.tensor(X)).numpy(), np.maximum(X, 0) * 2)
    assert seen == ["net.probe", "", ""] and calls == [1, 1, 1]
    assert AutoNaming.scopes == []
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], optimize_for_inference=False)
    file.seek(0)
    ops = cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)
    assert [o.name for o in ops] == ["x", "net.probe.RELU", "net.MUL"]


@pytest.mark.parametrize("symbolic", [False, True])
def test_names_of_values_the_call_lets_go_of_name_their_vars(symbolic):
    # values of 16 KiB or more are let go of as soon as the function drops them (jit/record.py);
    # a name given to one, before or after its last use, still names its var in the file, as
    # upstream's dump names it: the last name given, an empty one leaving the one before
    import gc

    def body(x):
        h = F.exp(x)
        h.name = "named_h"  # before its use
        g = h * 2
        r = F.relu(g)
        g.name = "late_g"  # after its last use
        s = r - 1
        s.name = "kept"
        s.name = ""  # (no name given: the earlier one stays)
        u = F.sqrt(s)
        u.name = "first"
        v = u * 3
        u.name = "renamed"
        del h, g, s, u
        gc.collect()
        return v + 1

    f = trace(body, symbolic=symbolic, capture_as_const=True)
    x = np.full((64, 64), 2.0, "float32")  # (16 KiB a value)
    want = body(mge.tensor(x)).numpy()
    np.testing.assert_array_equal(f(mge.tensor(x)).numpy(), want)
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], optimize_for_inference=False)
    file.seek(0)
    ops = cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)
    assert [[v.name for v in o.outputs] for o in ops] == [
        ["x"], ["named_h"], ["late_g"], ["RELU"], ["kept"], ["renamed"], ["MUL[1]"], ["ADD"]]
    file.seek(0)
    np.testing.assert_array_equal(cgtools.GraphInference(file).run(x)["ADD"], want)


def test_a_top_module_without_a_name_and_a_plain_function_add_no_scope():
    ops, info, _ = _ops(lambda x: 2 * F.exp(x))
    assert [o.name for o in ops] == ["x", "EXP", "MUL"] and info.outputs == ["MUL"]
    assert [v.name for v in ops[-1].inputs][0] == "EXP"  # 2 * e: the traced value first
    ops, _, _ = _ops(Block())
    assert ops[-1].name == "RELU[1]" and ops[1].name == "fc.MatrixMul"


def test_input_tensor_names_and_output_defaults():
    AutoNaming.clear()
    f = trace(lambda a, b: (a - b, a - b, b), symbolic=True, capture_as_const=True)
    f(mge.tensor(X, name="data"), mge.tensor(X))
    file = io.BytesIO()
    info = f.dump(file)
    # an input takes its tensor's name (else arg_<i>); an output its var's name, a name
    # already taken falling back to output_<i>
    assert info.inputs == ["data", "arg_1"]
    assert info.outputs == ["SUB[0]", "SUB[1]", "arg_1"]
    file.seek(0)
    out = cgtools.GraphInference(file).run(X, X * 2)
    np.testing.assert_array_equal(out["SUB[1]"], X - X * 2)
    np.testing.assert_array_equal(out["arg_1"], X * 2)


def test_an_exception_inside_a_module_closes_its_scope():
    class Bad(M.Module):
        def forward(self, x):
            raise KeyError("inside")

    net = M.Sequential(Bad())
    f = trace(net, symbolic=True)
    AutoNaming.clear()
    with pytest.raises(KeyError):
        f(mge.tensor(X))
    assert AutoNaming.scopes == []


@pytest.mark.parametrize("bias", [True, False])
def test_a_dumped_linear_layer_computes_what_the_module_computes(bias):
    fc = M.Linear(3, 4, bias=bias)
    ops, _, f = _ops(fc)
    types = [o.type for o in ops]
    assert types == (["Host2DeviceCopy", "MatrixMul", "Elemwise"] if bias
                     else ["Host2DeviceCopy", "MatrixMul"])
    w = fc.weight.numpy()
    want = X @ w.T + (fc.bias.numpy() if bias else 0)
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], output_names="y")
    file.seek(0)
    np.testing.assert_allclose(cgtools.GraphInference(file).run(X)["y"], want, rtol=1e-6)


# ----- the scope stack as generated code (MegEngine/torch2mge) uses it -----

def test_scopes_nest_and_join_with_dots():
    AutoNaming.push_scope("root")
    AutoNaming.push_scope(None)  # upstream: a scope that adds no name
    AutoNaming.push_scope("layer1.0")
    assert AutoNaming.get_scope() == "root.layer1.0"
    assert AutoNaming.pop_scope() == "layer1.0"
    assert AutoNaming.get_scope() == "root"
    AutoNaming.pop_scope()
    AutoNaming.pop_scope()
    assert AutoNaming.get_scope() == ""


def test_the_instance_spelling_shares_the_class_state():
    auto_naming.push_scope("root")  # upstream's later form: a module-level instance
    assert AutoNaming.get_scope() == "root"
    AutoNaming.pop_scope()
    assert auto_naming.get_scope() == ""


def test_gen_name_and_recorded_var_names():
    x = Tensor([1.0], name="w")
    assert AutoNaming.gen_name(x) == "w"
    AutoNaming.push_scope("root")
    AutoNaming.push_scope("fc")
    assert AutoNaming.gen_name(x) == "root.fc.w"
    AutoNaming.record_var_name(id(x), "weight")
    assert AutoNaming.get_var_name(id(x)) == "weight"
    assert AutoNaming.get_var_name(id(x)) is None  # read once, as upstream's pop


def test_unbalanced_pop_and_bad_scope_say_what_is_wrong():
    with pytest.raises(RuntimeError, match="no scope is open"):
        AutoNaming.pop_scope()
    with pytest.raises(TypeError, match="a scope is a module name"):
        AutoNaming.push_scope(3)


def test_torch2mge_generated_forward_traces_and_dumps(tmp_path):
    # the shape of MegEngine/torch2mge's generated code: module calls wrapped in scopes,
    # traced with capture_as_const and dumped with upstream's naming options
    root = M.Module()
    root.conv1 = M.Conv2d(in_channels=3, out_channels=4, kernel_size=(3, 3), stride=(1, 1),
                          padding=(1, 1), dilation=(1, 1), groups=1, bias=False)
    root.fc = M.Linear(in_features=4, out_features=2, bias=True)

    def body(x):
        AutoNaming.push_scope("root")
        conv1 = root.conv1(x)
        AutoNaming.pop_scope()
        AutoNaming.push_scope("root")
        flatten_1 = F.flatten(F.mean(conv1, axis=(2, 3)), 1)
        AutoNaming.pop_scope()
        AutoNaming.push_scope("root")
        fc = root.fc(flatten_1)
        AutoNaming.pop_scope()
        return fc

    data = tensor(np.random.RandomState(0).rand(1, 3, 5, 5).astype(np.float32))
    want = body(data).numpy()
    forward = jit.trace(body, capture_as_const=True)
    for _ in range(2):  # the record and a replay
        np.testing.assert_allclose(forward(data).numpy(), want, rtol=1e-6)
    assert AutoNaming.get_scope() == ""
    forward.dump(str(tmp_path / "model.mgo"), arg_names=["data"],
                 optimize_for_inference=False, keep_var_name=2, keep_opr_name=True)
    from megengine.utils.comp_graph_tools import GraphInference

    out = GraphInference(str(tmp_path / "model.mgo")).run(data.numpy())
    np.testing.assert_allclose(list(out.values())[0], want, rtol=1e-6)
