"""Tests for megengine/utils/network.py: a dumped program loaded as a Network, inspected, edited
(vars and operators replaced, inputs, constants and outputs added, batch size reset), dumped
again and run by GraphInference gives what numpy or torch compute for the edited program."""
import io
import logging

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace
from megengine.jit.dump import DumpError
from megengine.utils.comp_graph_tools import GraphInference
from megengine.utils.network import Network, NodeFilter, as_oprnode, as_varnode
from megengine.utils.network import set_symbolic_shape
from devices import requires_cuda
from megengine.utils.network_node import (ConvolutionForward, Elemwise, Host2DeviceCopy,
                                          ImmutableTensor, PoolingForward, VarNode)


def _dumped(fn, *args, **dump_options):
    f = trace(fn, symbolic=True, capture_as_const=True)
    f(*[mge.tensor(a) for a in args])
    file = io.BytesIO()
    f.dump(file, optimize_for_inference=False, **dump_options)
    file.seek(0)
    return file


def _run(net, *inputs):
    """Dump ``net`` and run the file: the edit as a program would see it."""
    file = io.BytesIO()
    net.dump(file)
    file.seek(0)
    return GraphInference(file).run(*inputs)


A = np.array([1.0, -2.0, 3.0], "float32")
B = np.array([4.0, 5.0, -6.0], "float32")


def _add_mul_net():
    return Network.load(_dumped(lambda a, b: (a + b) * 2, A, B, arg_names=["a", "b"],
                                output_names="o"))


def test_loaded_program_lists_its_operators_in_traced_order():
    net = _add_mul_net()
    assert [v.name for v in net.input_vars] == ["a", "b"]
    assert [v.name for v in net.output_vars] == ["o"]
    kinds = [o.params["mode"] if isinstance(o, Elemwise) else o.type for o in net.all_oprs]
    assert kinds == ["Host2DeviceCopy", "Host2DeviceCopy", "ADD", "ImmutableTensor", "MUL"]
    (const,) = net.params_filter
    assert const.numpy().tolist() == 2.0
    assert net.var_filter.name("o").as_unique().shape == (3,)
    assert net.metadata == {"user_info": None, "graph_modified": False,
                            "optimized_for_inference": False}


def test_replace_vars_inserts_an_operator_after_a_var():
    net = _add_mul_net()
    s = net.opr_filter.type(Elemwise).as_list()[0].outputs[0]  # a + b
    net.replace_vars({s: F.relu(s)})  # readers of a + b read relu(a + b); relu still reads s
    np.testing.assert_array_equal(_run(net, A, B)["o"], np.maximum(A + B, 0) * 2)


def test_a_vars_users_are_the_operators_that_read_it_also_after_edits():
    # upstream's VarNode.users: hand-checked against the program (a + b) * 2
    net = _add_mul_net()
    a, b = net.input_vars
    add, mul = net.opr_filter.type(Elemwise).as_list()
    assert a.users == [add] and b.users == [add]
    s = add.outputs[0]
    assert s.users == [mul] and net.output_vars[0].users == []
    r = F.relu(s)
    net.replace_vars({s: r})
    relu = r.owner
    assert s.users == [relu] and r.users == [mul]  # (upstream's s.users is emptied here)
    assert F.exp(a).users == []  # a var made by an op but in no network


def test_replaced_inputs_leave_the_program_and_constants_take_their_place():
    net = _add_mul_net()
    b = net.var_filter.name("b").as_unique()
    net.replace_vars({b: net.make_const(np.array([10.0, 20.0, 30.0]), name="ten")})
    assert [v.name for v in net.input_vars] == ["a"]
    assert "ten" in [p.name for p in net.params_filter]
    np.testing.assert_array_equal(_run(net, A)["o"], (A + [10, 20, 30]) * 2)


def test_replace_oprs_keeps_the_vars_and_changes_what_computes_them():
    net = _add_mul_net()
    a, b = net.input_vars
    add = net.opr_filter.has_input(a).as_unique()
    sub = F.sub(a, b).owner
    old_out = add.outputs[0]
    net.replace_oprs({add: sub})
    assert old_out.owner is sub and sub.outputs[0] is old_out
    np.testing.assert_array_equal(_run(net, A, B)["o"], (A - B) * 2)
    with pytest.raises(ValueError, match="can not replace"):
        net.replace_oprs({sub: F.cond_take(a > 0, a)[0].owner})


def test_new_inputs_and_outputs_are_named_and_ordered():
    net = _add_mul_net()
    c = net.make_input_node((3,), np.float32, name="c")
    o = net.var_filter.name("o").as_unique()
    extra = F.exp(o) - c
    extra.name = "extra"
    net.add_output(extra)
    net.add_output(extra)  # once only
    net.remove_output(o)
    records = []  # (megengine's loggers do not propagate to pytest's caplog)
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("megengine.utils.network").addHandler(handler)
    try:
        net.remove_output(o)  # no longer an output: upstream 1.13's warning (measured)
    finally:
        logging.getLogger("megengine.utils.network").removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        f"Failed to remove o({id(o)}). Please check whether this node is in the output list."]
    got = _run(net, A, B, B)
    assert list(got) == ["extra"]
    np.testing.assert_allclose(got["extra"], np.exp((A + B) * 2) - B, rtol=1e-6)


def test_params_are_named_by_module_path_and_their_values_can_be_set():
    conv = M.Conv2d(2, 3, 3, padding=1)

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return F.relu(self.conv(x))

    model = Net()
    x = np.random.rand(1, 2, 5, 5).astype("float32")
    net = Network.load(_dumped(model, x, arg_names=["data"]))
    assert sorted(p.name for p in net.params_filter) == ["conv.bias", "conv.weight"]
    w = net.get_var_by_name("conv.weight")
    np.testing.assert_array_equal(w.numpy(), conv.weight.numpy())
    new_w = np.random.rand(3, 2, 3, 3).astype("float32")
    w.owner.set_value(new_w)
    ref = torch.relu(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(new_w),
                                                torch.tensor(conv.bias.numpy().reshape(3)),
                                                padding=1))
    np.testing.assert_allclose(list(_run(net, x).values())[0], ref.numpy(), rtol=1e-5, atol=1e-6)


def test_an_edited_conv_network_matches_torch():
    model = M.Conv2d(3, 4, 3)
    x = np.random.rand(2, 3, 8, 8).astype("float32")
    net = Network.load(_dumped(model, x, arg_names=["data"], output_names="conv"))
    conv_out = net.opr_filter.type(ConvolutionForward).as_unique().outputs[0]
    pooled = F.avg_pool2d(conv_out, 2)
    assert isinstance(pooled.owner, PoolingForward)
    pooled.name = "pooled"
    net.add_output(pooled)
    got = _run(net, x)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(model.weight.numpy()),
                                     torch.tensor(model.bias.numpy().reshape(4)))
    np.testing.assert_allclose(got["conv"], ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["pooled"], torch.nn.functional.avg_pool2d(ref, 2).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_reset_batch_size_runs_the_program_at_the_new_batch():
    model = M.Sequential(M.Conv2d(1, 2, 3), M.ReLU())
    x = np.random.rand(2, 1, 6, 6).astype("float32")
    net = Network.load(_dumped(model, x, arg_names=["data"]))
    net.reset_batch_size(5)
    assert net.data_providers_filter.as_unique().shape == (5, 1, 6, 6)
    assert net.output_vars[0].shape == (5, 2, 4, 4)  # shapes follow the new input
    x5 = np.random.rand(5, 1, 6, 6).astype("float32")
    np.testing.assert_allclose(list(_run(net, x5).values())[0], model(mge.tensor(x5)).numpy(),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unused items in blacklist"):
        net.reset_batch_size(1, blacklist=["nope"])


def test_modify_opr_names_and_outspec():
    net = Network.load(_dumped(lambda a: F.exp(a) + 1, A, arg_names=["a"]))
    net.modify_opr_names("m")
    assert net.data_providers_filter.as_unique().name == "m.a"
    with pytest.raises(TypeError, match="string"):
        net.modify_opr_names(lambda name: 3)
    file = io.BytesIO()
    net.dump(file)
    file.seek(0)
    again = Network.load(file, outspec=["EXP"])  # an internal var as the only output
    assert again.output_vars[0].owner.name == "m.EXP"  # (vars keep their own names)
    np.testing.assert_allclose(_run(again, A)["EXP"], np.exp(A), rtol=1e-6)
    file.seek(0)
    with pytest.raises(ValueError, match="can not find"):
        Network.load(file, outspec=["nope"])


def test_filters():
    net = _add_mul_net()
    a = net.get_var_by_name("a")
    assert isinstance(a, VarNode) and isinstance(as_oprnode(a), Host2DeviceCopy)
    assert as_varnode(a.owner) is a
    assert net.opr_filter.has_input(a).as_count() == 1
    assert net.opr_filter.not_type(Elemwise).as_count() == 3
    assert net.opr_filter.name("host*").as_count() == 0
    assert net.var_filter.name("A", ignorecase=True).as_count() == 1
    assert net.var_filter.name("A", ignorecase=False).as_count() == 0
    assert list(net.all_oprs_dict)[:2] == ["a", "b"]
    assert net.get_var_receive_oprs(a)[0].params["mode"] == "ADD"
    assert [o.type for o in NodeFilter(net.output_vars[0])] == [
        "Host2DeviceCopy", "Host2DeviceCopy", "Elemwise", "ImmutableTensor"]
    with pytest.raises(TypeError, match="should be"):
        net.opr_filter.check_type(ImmutableTensor).as_list()
    with pytest.raises(ValueError, match="2 operators"):
        net.get_opr_by_type(Host2DeviceCopy)
    assert len(net.get_opr_by_type(Host2DeviceCopy, unique=False)) == 2


def test_lookups_by_name_and_by_dependency():
    # upstream 1.13 measured on the same program: names, types and order as here
    net = _add_mul_net()
    add = net.get_opr_by_type(Elemwise, unique=False)[0]
    assert net.get_opr_by_name(add.name) is add
    with pytest.raises(ValueError, match="0 operators named 'nope'"):
        net.get_opr_by_name("nope")
    (out,) = net.output_vars
    order = [o.type for o in net.get_dep_oprs([out])]
    assert order == ["Host2DeviceCopy", "Host2DeviceCopy", "Elemwise", "ImmutableTensor",
                     "Elemwise"]
    assert net.get_dep_oprs([out])[-1] is out.owner  # its owner last
    assert net.get_dep_oprs(out) == net.get_dep_oprs([out])  # (upstream's wants a list)
    assert [o.type for o in NodeFilter.make_all_deps(out)] == order
    assert net.add_dep_oprs() == [out] and net.add_dep_oprs(out) == [out]
    everything = net.opr_filter.as_dict()
    assert list(everything) == [o.name for o in net.all_oprs]
    assert everything[add.name] is add
    assert [o.name for o in net.opr_filter.data_provider()] == ["a", "b"]
    assert [o.type for o in net.opr_filter.param_provider()] == ["ImmutableTensor"]


@pytest.mark.parametrize("fn, want", [
    (lambda a, b, c: c * 3 + a * b, ["c", "const", "MUL", "a", "b", "MUL", "ADD"]),
    (lambda a, b, c: F.relu(a * 2 + b) - c, ["a", "const", "MUL", "b", "ADD", "RELU", "c",
                                             "SUB"]),
])
def test_inputs_and_constants_come_where_first_used(fn, want):
    # upstream 1.13 measured, Network.load of each engine's own dump of the same function
    net = Network.load(_dumped(fn, A, B, A, arg_names=["a", "b", "c"]))
    got = [o.params["mode"] if isinstance(o, Elemwise) else o.name if isinstance(
        o, Host2DeviceCopy) else "const" for o in net.all_oprs]
    assert got == want
    assert sorted(net.all_oprs, key=lambda o: o.priority) == net.all_oprs
    s = net.output_vars[0]  # an edit's operators come after
    net.replace_vars({s: F.exp(s)})
    assert [o.params["mode"] for o in net.all_oprs[-2:]] == [want[-1], "EXP"]


def test_symbolic_shape_is_a_var_the_program_computes():
    net = _add_mul_net()
    a = net.input_vars[0]
    old = set_symbolic_shape(True)
    try:
        shape = a.shape
    finally:
        set_symbolic_shape(old)
    assert isinstance(shape, VarNode) and a.shape == a.partial_shape == (3,)
    shape.name = "shape"
    net.add_output(shape)
    net.reset_batch_size(4)
    got = _run(net, np.ones(4, "float32"), np.ones(4, "float32"))
    np.testing.assert_array_equal(got["shape"], [4])


def test_shapeof_is_a_size_the_program_computes_and_its_value_is_known():
    # upstream 1.13 measured: VarNode.shapeof(axis) is a (1,) VarNode whose value numpy()
    # gives (static inference), as the symbolic shape's; a value computed from the input's
    # values is refused; a dumped edit follows the input's new shape
    net = _add_mul_net()
    a = net.input_vars[0]
    rows = a.shapeof(0)
    assert isinstance(rows, VarNode) and rows.shape == (1,)
    assert rows.numpy().tolist() == [3] and a.shapeof(-1).numpy().tolist() == [3]
    old = set_symbolic_shape(True)
    try:
        assert a.shape.numpy().tolist() == [3]
    finally:
        set_symbolic_shape(old)
    with pytest.raises(ValueError, match="computed from the program's inputs"):
        (rows * a.sum()).numpy()
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        a.shapeof(1)
    rows.name = "rows"
    net.add_output(rows)
    net.reset_batch_size(4)
    assert rows.numpy().tolist() == [4]
    got = _run(net, np.ones(4, "float32"), np.ones(4, "float32"))
    np.testing.assert_array_equal(got["rows"], [4])


def test_metadata_of_a_network_dump():
    net = _add_mul_net()
    file = io.BytesIO()
    net.dump(file, user_info={"t": mge.tensor([1, 2]), "cls": M.Conv2d},
             enable_nchw4=True)
    file.seek(0)
    meta = Network.load(file).metadata
    assert meta["graph_modified"] is True and meta["optimized_for_inference"] is True
    assert meta["enable_nchw4"] is True and meta["user_info"]["cls"] is M.Conv2d
    np.testing.assert_array_equal(meta["user_info"]["t"].numpy(), [1, 2])
    file = io.BytesIO()
    net.dump(file, enable_metadata=False)
    file.seek(0)
    assert Network.load(file).metadata is None


def test_clear_errors():
    with pytest.raises(ValueError, match=r"nor an upstream MegEngine \.mge file"):
        Network.load(io.BytesIO(b"mgb0001" + bytes(100)))
    net = _add_mul_net()
    a = net.input_vars[0]
    with pytest.raises(ValueError, match="known only when the program runs"):
        (a + 1).numpy()
    with pytest.raises(TypeError, match="a node of a program"):
        a._data = np.zeros(3)  # a value cannot be stored into a node (x += y rebinds it)
    with pytest.raises(TypeError, match="VarNode"):
        net.add_output(mge.tensor([1.0]))
    b = net.input_vars[1]
    b.owner.name = "a"
    with pytest.raises(DumpError, match="two inputs are named 'a'"):
        net.dump(io.BytesIO())
    with pytest.raises(TypeError, match="unexpected keyword"):
        net.dump(io.BytesIO(), no_such_option=True)
    with pytest.raises(ValueError, match="one program"):
        net.dump(io.BytesIO(), append=True)
    add = net.opr_filter.has_input(a).as_unique()
    with pytest.raises(ValueError, match="cycle"):  # relu reads add's output, which it computes
        net.replace_oprs({add: F.relu(add.outputs[0]).owner})


def test_misuse_raises_what_it_is_and_upstreams_type():
    """Upstream 1.13 measured on the same calls: a file that is no program, a shape, batch size
    or file of the wrong type raise RuntimeError (its C++ loader, pybind's "Unable to cast"); a
    lookup without one match, a pattern that is no str, a modifier that is no function and
    add_dep_oprs of something that is no VarNode fail its asserts. Each is here also what the
    mistake is (ValueError, TypeError)."""
    with pytest.raises(ValueError, match=r"nor an upstream MegEngine \.mge file") as error:
        Network.load(io.BytesIO(b"junk" * 10))
    assert isinstance(error.value, RuntimeError)
    net = _add_mul_net()
    for call, kinds, words in [
        (lambda: net.make_input_node("ab", "float32", "x"), (TypeError, RuntimeError),
         "make_input_node: a shape must be ints"),
        (lambda: net.reset_batch_size("x"), (TypeError, RuntimeError),
         "reset_batch_size: batchsize must be a positive int, got str 'x'"),
        (lambda: net.dump(3), (TypeError, RuntimeError),
         "dump: file must be a path or a binary file object, got int 3"),
        (lambda: net.get_var_by_name("nope"), (ValueError, AssertionError),
         "0 vars named 'nope' found"),
        (lambda: net.get_var_by_name(["a", "b"]), (TypeError, AssertionError),
         "NodeFilter.name: bad pattern ['a', 'b']"),
        (lambda: net.modify_opr_names(3), (TypeError, AssertionError),
         "give a string prefix or a function"),
        (lambda: net.add_dep_oprs(3), (TypeError, AssertionError),
         "add_dep_oprs: expected a VarNode of a network, got int"),
        # (upstream ignores a key that is no operator: refused here, naming it)
        (lambda: net.replace_oprs({3: 4}), (TypeError,),
         "replace_oprs: expected an OpNode of a network, got int"),
    ]:
        with pytest.raises(kinds[0]) as error:
            call()
        assert all(isinstance(error.value, k) for k in kinds) and words in str(error.value)
    assert [v.name for v in net.input_vars] == ["a", "b"]  # nothing changed
    np.testing.assert_array_equal(_run(net, A, B)["o"], (A + B) * 2)


def test_constant_values_read_and_ops_on_plain_tensors_are_unchanged():
    net = _add_mul_net()
    (const,) = net.params_filter
    doubled = const.outputs[0] * 3  # a constant expression: its value is known
    assert doubled.numpy().tolist() == 6.0
    # while VarNodes exist, ops on plain tensors still compute eagerly
    assert (mge.tensor([1.0, 2.0]) * 2).numpy().tolist() == [2.0, 4.0]


def test_the_docs_page_example_runs():
    import re
    from pathlib import Path
    page = Path(__file__).resolve().parents[2] / "docs" / "api" / "network.rst"
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)",
                      page.read_text()).group(1)
    exec(compile("\n".join(line[4:] for line in block.splitlines()), str(page), "exec"), {})


def test_an_input_returned_as_an_output_keeps_its_name_and_dump_returns_its_result():
    # upstream's test_copy: x.to(its own device) is x itself; the loaded output is a Copy of
    # the input carrying the output's name, so the input keeps its own
    x = np.array([1.0, -2.0], "float32")
    def fn(a, b):
        p = a * b
        return a.to("cpu0"), p, p

    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(x), mge.tensor(x))
    file = io.BytesIO()
    f.dump(file, arg_names=["a", "b"], output_names=["same", "p", "q"])
    file.seek(0)
    net = Network.load(file)
    assert [v.name for v in net.input_vars] == ["a", "b"]
    assert [(v.name, v.owner.type) for v in net.output_vars] == [
        ("same", "Copy"), ("p", "Elemwise"), ("q", "Copy")]
    again = io.BytesIO()
    info = net.dump(again)
    assert info.inputs == ["a", "b"] and info.outputs == ["same", "p", "q"]
    assert info.nr_opr == 5 and info.tot_bytes == len(again.getvalue())  # 2 inputs, 3 ops
    again.seek(0)
    out = GraphInference(again).run(x, x * 3)
    assert [v.tolist() for v in out.values()] == [[1.0, -2.0], [3.0, 12.0], [3.0, 12.0]]


@requires_cuda
def test_a_program_dumped_on_a_gpu_is_edited_with_its_values_there():
    # an input's sample (what shapes and edits are worked out on) lives where the program's
    # constants do: numpy zeros next to a CuPy constant made every edit raise on a GPU
    f = trace(lambda a, b: (a + b) * 2, symbolic=True, capture_as_const=True)
    f(mge.tensor(A, device="gpu0"), mge.tensor(B, device="gpu0"))
    file = io.BytesIO()
    f.dump(file, arg_names=["a", "b"], output_names="o", optimize_for_inference=False)
    file.seek(0)
    net = Network.load(file)
    a, b = net.input_vars
    assert type(a._data).__module__.startswith("cupy")
    o = net.var_filter.name("o").as_unique()
    assert o.shape == (3,) and type(o._data).__module__.startswith("cupy")
    s = net.opr_filter.type(Elemwise).as_list()[0].outputs[0]  # a + b
    net.replace_vars({s: F.relu(s) * net.make_const(np.float32(3), device="gpu0")})
    old = set_symbolic_shape(True)
    try:
        doubled = a.shape * 2  # a shape var meets a constant of its device
    finally:
        set_symbolic_shape(old)
    doubled.name = "doubled"
    net.add_output(doubled)
    got = _run(net, A, B)
    np.testing.assert_array_equal(got["o"], np.maximum(A + B, 0) * 6)
    np.testing.assert_array_equal(got["doubled"], [6])


def test_a_new_input_node_takes_over_the_shape_guards_of_the_one_it_replaces():
    # upstream's check_pygraph_dump: load, replace each input with make_input_node, dump. The
    # guards read the old input, which no operator reads any more: dumping it too gave two
    # inputs of one name; dropping the guard would run the traced branch at any batch
    from megengine.jit import ShapeGuardError

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return x * 2 if x.shape[0] > 1 else x  # a Python branch on a size: a guard

    f(mge.tensor(np.ones((2, 3), "float32")))
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    buf.seek(0)
    net = Network.load(buf)
    (old,) = net.input_vars
    net.replace_vars({old: net.make_input_node(shape=old.shape, dtype=old.dtype, name="x")})
    out = io.BytesIO()
    net.dump(out)
    out.seek(0)
    g = GraphInference(out)
    (y,) = g.run(np.full((4, 3), 3.0, "float32")).values()
    np.testing.assert_array_equal(y, np.full((4, 3), 6.0))
    with pytest.raises(ShapeGuardError, match=r"x.shape\[0\] > 1"):
        g.run(np.ones((1, 3), "float32"))


def test_unnamed_constants_of_one_shape_have_distinct_names():
    # upstream's graph names every var apart (tools such as converters name tensors by it);
    # constants a file leaves unnamed take "[k]" when several share a shape, as outputs do
    def fn(x):
        return ((x * 2 + 3) / 4).reshape(3, 1) - x.reshape(3, 1) * np.ones((1, 2), "float32")

    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(np.array([1.0, 2.0, 3.0], "float32")))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    names = [o.name for o in Network.load(file).all_oprs if o.type == "ImmutableTensor"]
    assert sorted(names) == ["const()[0]", "const()[1]", "const()[2]", "const(1, 2)"]
