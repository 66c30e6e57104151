"""Tests for megengine/core/tensor_megbrain_graph.py (upstream's
`megengine.core.tensor.megbrain_graph`): graphs built node by node, compiled and run against
numpy; loaded from and dumped to files; the graph options; also `megengine.core._wrap`."""
import io
from concurrent.futures import Future

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.utils.comp_graph_tools as cgtools
from megengine.core._wrap import Device, as_device
from megengine.core.ops.builtin import Elemwise
from megengine.core.tensor import megbrain_graph as G
from megengine.jit import trace
from devices import requires_cuda

X = np.array([[1.5, -2.0, 0.25], [3.0, 0.5, -1.0]], "float32")


def test_the_module_is_upstreams_path_and_nodes_are_their_own_views():
    import megengine.core.tensor.megbrain_graph as G2

    assert G2 is G and G.VarNode is G.VarNode
    g = G.Graph()
    v = g.make_const(np.arange(3))
    assert G.VarNode(v) is v and v._node is v and v.op is v.owner
    assert isinstance(v.op, G.OpNode) and v.op._node is v.op and v.graph is g
    assert v.dtype == np.int32 and v.value.tolist() == [0, 1, 2]  # int64 -> int32 as upstream
    # a constant of strings: upstream 1.13's "unsupported numpy dtype" (a RuntimeError)
    with pytest.raises(TypeError, match="make_const: a constant holds numbers") as error:
        g.make_const("abc")
    assert isinstance(error.value, RuntimeError)


def test_a_graph_of_functional_ops_runs_on_each_value_fed_to_its_input():
    g = G.Graph()
    inp = G.InputNode(device=mge.get_default_device(), dtype="float32", shape=X.shape, graph=g)
    x = inp.outputs[0]
    y = F.relu(x * g.make_const(2.0)) - F.exp(x).sum(axis=1, keepdims=True)
    assert y.graph is g and y.shape == (2, 3)  # shapes inferred before anything runs
    out = G.OutputNode(y)
    f = g.compile(out.outputs[0])
    for k in range(3):
        value = X * (k + 1)
        f.execute()
        inp.set_value(mge.tensor(value)._dev_tensor())
        got = out.get_value()
        np.testing.assert_allclose(got.numpy(), np.maximum(value * 2, 0)
                                   - np.exp(value).sum(1, keepdims=True), rtol=1e-6)
        assert got.shape == (2, 3) and got.dtype == np.float32
        f.wait()


def test_callbacks_value_and_attr_outputs_and_virtual_deps():
    g = G.Graph()
    x, dummy = G.input_callback(lambda: X, device="cpu0", dtype="float32", graph=g)
    assert dummy.graph is g
    seen = Future()
    cb = G.output_callback(seen.set_result, -x)
    value = G.ValueOutputNode(x + 1)
    attr = G.AttrOutputNode(x)
    both = G.VirtualDepNode([cb, value.outputs[0], attr.outputs[0]]).outputs[0]
    g.compile(both)()  # a call: execute() then wait()
    np.testing.assert_array_equal(seen.result().numpy(), -X)
    np.testing.assert_array_equal(value.get_value(), X + 1)
    a = attr.get_value()
    assert a.shape == X.shape and a.dtype == np.float32 and a.device == "cpu0"


def test_apply_normal_varnode_with_op_descriptors_and_cgtools_rewrites():
    # upstream's test_replace_vars / test_replace_oprs, values checked with numpy
    g = G.Graph()
    a = G.InputNode(device=mge.get_default_device(), dtype="float32", graph=g)
    c = g.make_const(1.25)
    add, mul = Elemwise(Elemwise.Mode.ADD), Elemwise(Elemwise.Mode.MUL)
    aa = G.apply_normal_varnode(add, a.outputs[0], a.outputs[0])[0]
    rst = G.apply_normal_varnode(add, G.apply_normal_varnode(mul, aa, c)[0], a.outputs[0])[0]
    (new,) = cgtools.replace_vars([rst._node], {c._node: aa._node})  # (a+a)*(a+a) + a
    a_sq = G.apply_normal_varnode(mul, a.outputs[0], a.outputs[0])[0]
    (new2,) = cgtools.replace_oprs([new], {aa.op._node: a_sq.op._node})  # a*a * a*a + a
    outs = [G.OutputNode(G.VarNode(v)) for v in (rst, new, new2)]
    g.compile([o.outputs[0] for o in outs])
    g.execute()
    a.set_value(np.array([3.0], "float32"))
    got = [o.get_value().numpy() for o in outs]
    g.wait()
    assert [v.item() for v in got] == [(3 + 3) * 1.25 + 3, (3 + 3) ** 2 + 3, 3.0 ** 4 + 3]


def test_run_errors_are_clear_and_an_input_error_reaches_every_read():
    g = G.Graph()
    inp = G.InputNode(dtype="float32", shape=(2,), graph=g)
    out = G.OutputNode(inp.outputs[0] * 2)
    with pytest.raises(RuntimeError, match="compile"):
        g.execute()
    g.compile(out.outputs[0])
    with pytest.raises(RuntimeError, match="execute"):
        out.get_value()
    g.execute()
    with pytest.raises(RuntimeError, match="set_value"):
        out.get_value()
    with pytest.raises(RuntimeError, match="set_value"):
        g.wait()  # the same error again, and the run is over
    g.execute()
    with pytest.raises(RuntimeError, match="not finished"):
        g.execute()
    inp.set_value(np.zeros(3, "float32"))
    with pytest.raises(ValueError, match=r"shape \(3,\) for an input made with shape \(2,\)"):
        g.wait()

    def boom():
        raise RuntimeError("QwQ")

    g2 = G.Graph()
    x, _ = G.input_callback(boom, dtype="float32", graph=g2)
    y = G.OutputNode(F.neg(x))
    g2.compile(y.outputs[0]).execute()
    with pytest.raises(RuntimeError, match="QwQ"):
        y.get_value()
    with pytest.raises(ValueError, match="another graph"):
        G.Graph().compile(g2.make_const(1))
    with pytest.raises(TypeError, match="no arguments"):
        g2.execute(1)


def _dumped(f, *args, **kw):
    f(*[mge.tensor(a) for a in args])
    file = io.BytesIO()
    f.dump(file, **kw)
    file.seek(0)
    return file


def test_load_graph_names_ids_and_runs_after_swapping_its_input():
    f = trace(lambda x: F.relu(x) * 3, symbolic=True, capture_as_const=True)
    res = G.load_graph(_dumped(f, X, arg_names=["x"]))
    (out,) = res.output_vars_list
    assert res.output_vars_dict == {"MUL": out} and res.metadata["graph_modified"] is False
    # upstream's loader numbers operators and vars from 0 in load order, an operator first
    h2d = cgtools.get_oprs_seq(res.output_vars_list)[0]
    assert (h2d.type, h2d.id, h2d.outputs[0].id, h2d.outputs[0].name) == ("Host2DeviceCopy", 0,
                                                                          1, "x")
    # a loaded program's input has no value source: swap in an InputNode and run it
    g = res.graph
    inp = G.InputNode(dtype="float32", shape=X.shape, graph=g)
    (new,) = cgtools.replace_vars([out], {h2d.outputs[0]: inp.outputs[0]})
    o = G.OutputNode(new)
    g.compile(o.outputs[0]).execute()
    inp.set_value(X)
    np.testing.assert_array_equal(o.get_value().numpy(), np.maximum(X, 0) * 3)
    g.wait()
    g.compile(out)  # the original still reads the Host2DeviceCopy
    g.execute()
    with pytest.raises(ValueError, match="Host2DeviceCopy"):
        g.wait()


def test_dump_graph_round_trip_and_its_result():
    g = G.Graph()
    x = g.make_h2d(dtype="float32", device="cpu0", shape=(3,), name="data")
    w = g.make_const(np.array([1.0, 2.0, 3.0]), name="w", device="cpu0")  # x's device
    y = F.maximum(x * w, 0.5)
    buf, info = G.dump_graph({"out": y})
    assert y.name == "out" and info.inputs == ["data"] and info.outputs == ["out"]
    assert info.params == ["w"] and info.tensor_value_bytes == 3 * 4 + 4  # w and the 0.5
    assert info.nr_opr == 5 and info.tot_bytes == len(buf)
    out = cgtools.GraphInference(io.BytesIO(buf)).run(np.array([0.1, -1.0, 2.0], "float32"))
    np.testing.assert_allclose(out["out"], np.maximum(np.array([0.1, -2.0, 6.0]), 0.5))
    # upstream's test_load_refcnt: a constant-only graph loads, its var outlives the graph
    ret = G.load_graph(io.BytesIO(G.dump_graph([G.Graph().make_const(0)])[0]))
    graph, (var,) = ret.graph, ret.output_vars_list
    del ret, graph
    assert var.owner.type == "ImmutableTensor" and var.value.item() == 0
    with pytest.raises(ValueError, match="two names"):
        G.dump_graph({"a": y, "b": y})
    inp = G.InputNode(dtype="float32", graph=g)
    with pytest.raises(ValueError, match="InputCallback"):
        G.dump_graph([inp.outputs[0] + 1])


@requires_cuda
def test_vars_of_two_devices_meet_only_through_a_copy_operator_as_upstream():
    # megbrain infers an operator's device from its inputs and asserts they share one: a GPU
    # constant does not meet a cpu0 input unless the program copies it
    g = G.Graph()
    x = g.make_h2d(dtype="float32", device="cpu0", shape=(3,), name="data")
    w = g.make_const(np.array([1.0, 2.0, 3.0]), name="w", device="gpu0")
    with pytest.raises(ValueError, match=r"'data' on cpu0, 'w' on gpu0.*var.to\(device\)"):
        x * w
    y = F.maximum(x.to("gpu0") * w, 0.5)
    assert y.device == "gpu0"
    copies = [o for o in cgtools.get_oprs_seq([y], False, False) if o.type == "Copy"]
    assert len(copies) == 1 and copies[0].inputs[0] is x
    buf, _ = G.dump_graph({"out": y})
    out = cgtools.GraphInference(io.BytesIO(buf)).run(np.array([0.1, -1.0, 2.0], "float32"))
    np.testing.assert_allclose(out["out"], np.maximum(np.array([0.1, -2.0, 6.0]), 0.5))


def test_graph_options_keep_the_vars_and_convert_float16():
    g = G.Graph()
    v = g.make_const(np.ones(2)) + 1
    got, options = G.optimize_for_inference([v], enable_nchw4=True,
                                            enable_fuse_conv_bias_nonlinearity=True)
    assert got == [v] or got[0] is v
    assert G.deserialize_infer_option(options) == {"enable_nchw4": True,
                                                   "enable_fuse_conv_bias_nonlinearity": True,
                                                   "enable_fuse_grain": True}
    (h,), options = G.optimize_for_inference([v * 0.1], enable_io16xc32=True)
    # float16 inside (the constants stored so), the output converted back to float32
    assert h.dtype == np.float32 and h.owner.type == "TypeCvt"
    assert h.owner.inputs[0].dtype == np.float16 and options["enable_io16xc32"]
    np.testing.assert_equal(h.numpy(), np.float32(np.float16(0.1) * np.float16(2)))
    with pytest.raises(ValueError, match="exclude each other"):
        G.optimize_for_inference([v], enable_io16xc32=True, enable_ioc16=True)
    with pytest.raises(ValueError, match="unknown options"):
        G.optimize_for_inference([v], enable_magic=True)
    G.set_priority_to_id([v])
    assert all(o.opr._priority == o.id for o in cgtools.get_oprs_seq([v], False, False))
    w = v * 2
    cgtools.set_priority_to_id([w])  # upstream's cgtools name of the same function
    assert all(o.opr._priority == o.id for o in cgtools.get_oprs_seq([w], False, False))
    assert [u.owner.type for u in cgtools.get_dep_vars(w, ["ImmutableTensor"])] == [
        "ImmutableTensor"] * 3  # the ones, the 1 and the 2


def test_device_wrapper_and_dev_tensor():
    assert Device("xpux").to_c() == as_device(None) and as_device("cpu0") == "cpu0"
    t = mge.tensor([1, 2], device="cpu0")
    d = t._dev_tensor()
    assert d.comp_node == "cpu0" and d.dtype == np.int32 and d.shape == (2,)
    assert d.numpy().tolist() == [1, 2]


@requires_cuda
def test_a_graph_on_a_gpu_keeps_its_values_there():
    g = G.Graph()
    inp = G.InputNode(device="gpu0", dtype="float32", shape=X.shape, graph=g)
    w = g.make_const(np.full(3, 2.0, "float32"), device="gpu0")
    out = G.OutputNode(F.relu(inp.outputs[0]) * w)
    g.compile(out.outputs[0]).execute()
    inp.set_value(mge.tensor(X, device="gpu0")._dev_tensor())
    got = out.get_value()
    assert got.comp_node == "gpu0" and type(got._array).__module__.startswith("cupy")
    np.testing.assert_array_equal(got.numpy(), np.maximum(X, 0) * 2)
    g.wait()
    # a value from the host is copied to the GPU input, as upstream's input callback copies
    g.compile(out.outputs[0]).execute()
    inp.set_value(mge.tensor(-X, device="cpu0")._dev_tensor())
    got = out.get_value()
    assert type(got._array).__module__.startswith("cupy")
    np.testing.assert_array_equal(got.numpy(), np.maximum(-X, 0) * 2)
    g.wait()
