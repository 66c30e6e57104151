"""Tests for megengine/utils/network_node.py: operators carry upstream's type names and
parameters, a program of many op families survives Network.load -> dump bit-equal, and the
dispatcher hook that turns ops on VarNodes into nodes exists only while VarNodes do."""
import gc
import functools
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.utils.network_node as N
from megengine.core import dispatch
from megengine.jit import trace
from megengine.utils.comp_graph_tools import GraphInference
from megengine.utils.network import Network


class Many(M.Module):
    """Conv, batch norm (eval), pooling, linear, reshape, transpose, indexing, casts, top-k."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(16, 3)

    def forward(self, x, idx):
        x = F.max_pool2d(self.bn(self.conv(x)), 2)
        x = self.fc(x.reshape(x.shape[0], -1))
        y = x.transpose(1, 0)[:, idx]
        top, _ = F.topk(x.sum(axis=0), 2)
        return F.sigmoid(y).astype("float16"), top


def _many():
    model = Many()
    model.train()
    model(mge.tensor(np.random.rand(4, 2, 4, 4) * 2 + 1), mge.tensor([0, 1]))
    model.eval()
    return model


def test_operators_have_upstream_types_and_params():
    model = _many()
    x, idx = np.random.rand(2, 2, 4, 4).astype("float32"), np.array([1, 0], "int32")
    f = trace(model, symbolic=True, capture_as_const=True)
    f(mge.tensor(x), mge.tensor(idx))
    file = io.BytesIO()
    f.dump(file, arg_names=["x", "idx"])
    file.seek(0)
    net = Network.load(file)
    types = [o.type for o in net.all_oprs]
    for t in ("Host2DeviceCopy", "ImmutableTensor", "Convolution", "BatchNorm", "Pooling",
              "MatrixMul", "Reshape", "Dimshuffle", "IndexingMultiAxisVec", "Reduce", "TopK",
              "Elemwise", "TypeCvt"):
        assert t in types, t
    conv = net.opr_filter.type(N.ConvolutionForward).as_unique()
    assert conv.params["stride"] == (1, 1) and conv.params["padding"] == (1, 1)
    assert conv.params["sparse"] == "DENSE"
    assert net.opr_filter.type(N.PoolingForward).as_unique().params["mode"] == "MAX"
    assert net.opr_filter.type(N.Reduce).as_unique().params == {"mode": "SUM", "axis": 0}
    assert net.opr_filter.type(N.Dimshuffle).as_unique().params == {"pattern": (1, 0)}
    assert net.opr_filter.type(N.TypeCvt).as_unique().params["dtype"] == np.float16
    # this engine's fused linear layer is dumped as upstream's MatrixMul and bias ADD
    matmul = net.opr_filter.type(N.MatrixMul).as_unique()
    assert matmul.params == {"transposeA": False, "transposeB": True}
    assert net.get_var_receive_oprs(matmul.outputs[0])[0].params["mode"] == "ADD"
    # and a convolution with a bias as upstream's Convolution and bias ADD
    assert len(conv.inputs) == 2
    assert net.get_var_receive_oprs(conv.outputs[0])[0].params["mode"] == "ADD"
    modes = [o.params["mode"] for o in net.opr_filter.type(N.Elemwise)]
    assert modes == ["ADD", "ADD", "SIGMOID"]
    # Network.load -> dump -> run: the same values as the model, bit for bit on the CPU (on a
    # GPU the model's linear layer is one addmm kernel, its product and bias rounded once,
    # where the dumped MatrixMul and ADD round twice: the last bit may differ)
    again = io.BytesIO()
    net.dump(again)
    again.seek(0)
    got = GraphInference(again).run(x, idx)
    want = model(mge.tensor(x), mge.tensor(idx))
    same = np.testing.assert_array_equal if str(want[0].device).startswith("cpu") \
        else functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    same(list(got.values())[0], want[0].numpy())
    same(list(got.values())[1], want[1].numpy())


def test_str_to_mge_class_and_engine_ops_without_an_upstream_type():
    assert N.str_to_mge_class("Convolution") is N.ConvolutionForward
    assert N.str_to_mge_class("BatchedMatmul") is N.BatchedMatrixMul
    assert N.str_to_mge_class("NoSuchOperator") is N.ReadOnlyOpNode
    f = trace(lambda x: F.cumsum(x, axis=0), symbolic=True, capture_as_const=True)
    f(mge.tensor([1.0, 2.0, 3.0]))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    net = Network.load(file)
    op = net.output_vars[0].owner
    assert isinstance(op, N.ReadOnlyOpNode) and op.type == "Cumsum"
    assert op.params == {"axis": 0}


def test_ops_on_varnodes_make_nodes_with_sample_shapes():
    net = Network()
    x = net.make_input_node((2, 3), np.float32, name="x")
    y = F.matmul(x, net.make_const(np.ones((3, 4), "float32"), name="w"))
    assert isinstance(y, N.VarNode) and isinstance(y.owner, N.MatrixMul)
    assert y.shape == (2, 4) and y.dtype == np.float32
    z = y.reshape(-1) + 1  # a Python number becomes a constant node
    assert isinstance(z.owner.inputs[1].owner, N.ImmutableTensor)
    z.name = "z"
    net.add_output(z)
    file = io.BytesIO()
    net.dump(file)
    file.seek(0)
    xv = np.random.rand(2, 3).astype("float32")
    np.testing.assert_allclose(GraphInference(file).run(xv)["z"],
                               (xv @ np.ones((3, 4))).reshape(-1) + 1, rtol=1e-6)


def test_the_dispatcher_hook_lives_with_the_varnodes():
    gc.collect()
    assert dispatch._symbolic_hook is None
    net = Network()
    v = net.make_input_node((1,), np.float32, name="v")
    assert dispatch._symbolic_hook is not None
    assert isinstance(v * 2, N.VarNode)
    del net, v
    gc.collect()
    assert dispatch._symbolic_hook is None


def test_immutable_tensor_set_value_follows_tensor_dtype_rules():
    c = N.ImmutableTensor(np.arange(3), name="c")
    assert c.dtype == np.int32 and c.shape == (3,)
    c.set_value(1.5)
    assert c.dtype == np.float32 and c.numpy().tolist() == 1.5
    with pytest.raises(TypeError, match="a number, a sequence of numbers or a numpy array"):
        c.set_value("no")
    # upstream accepts any sequence (a shape list), with the same dtype rules as numpy's array
    c.set_value([1, -1, 3])
    assert c.dtype == np.int32 and c.numpy().tolist() == [1, -1, 3]
    c.set_value((0.5, 2))
    assert c.dtype == np.float32 and c.numpy().tolist() == [0.5, 2.0]


def test_network_constants_run_in_the_networks_graph():
    """Upstream's Network owns a megbrain_graph.Graph: vars made from its constants compile and
    run there (the way upstream's tests read a VarNode's value), checked against numpy."""
    import megengine.core.tensor.megbrain_graph as G

    net = Network()
    x = np.arange(25, dtype="int32").reshape(5, 5)
    xx = net.make_const(x)
    shape = net.make_const([5, -1])  # a list, as upstream's make_tensor passes shapes
    assert xx.graph is net.graph and shape.graph is net.graph
    for var, expect in [(xx[(0, 4, 2), 1:3], x[(0, 4, 2), 1:3]),
                        (F.reshape(xx, shape) * 2, x.reshape(5, -1) * 2)]:
        assert var.graph is net.graph
        out = G.OutputNode(var)
        var.graph.compile(out.outputs).execute()
        np.testing.assert_array_equal(out.get_value().numpy(), expect)


def test_in_place_writes_rebind_the_varnode_and_spare_earlier_readers():
    """Upstream's ``x[idx] = v`` / ``x += y`` on a VarNode make the Python object the result's
    var, while operators made before keep reading the old value (checked against numpy)."""
    import megengine.core.tensor.megbrain_graph as G

    def value(var):
        out = G.OutputNode(var)
        var.graph.compile(out.outputs).execute()
        return out.get_value().numpy()

    net = Network()
    x = np.arange(25, dtype="int32").reshape(5, 5)
    d = np.arange(15, dtype="int32").reshape(3, 5)
    xx = net.make_const(x)
    before = xx * 2  # reads the value before the writes
    xx[(0, 4, 2), :] = d
    expect = x.copy()
    expect[(0, 4, 2), :] = d
    np.testing.assert_array_equal(value(xx), expect)
    xx += 1
    np.testing.assert_array_equal(value(xx), expect + 1)
    np.testing.assert_array_equal(value(before), x * 2)
    assert before.owner.inputs[0] is not xx
    xx[...] = d[:1]  # a whole write (upstream's test_set_value) broadcasts into the var
    np.testing.assert_array_equal(value(xx), np.broadcast_to(d[:1], (5, 5)))
    xx[...] = 7
    np.testing.assert_array_equal(value(xx), np.full((5, 5), 7))
    np.testing.assert_array_equal(value(before), x * 2)


@pytest.mark.parametrize("layer, shape", [
    (lambda: M.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 7, 5)),
    (lambda: M.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 3, 5)),
    (lambda: M.Conv3d(2, 3, 2, padding=1), (1, 2, 3, 4, 3)),
])
def test_convolution_with_bias_is_dumped_as_convolution_and_add(layer, shape):
    # upstream's F.conv2d / conv_transpose2d / conv3d apply the convolution, then `output +=
    # bias`: its graph (what converters read) has the operator without a bias and an ADD. The
    # engine's op takes the bias as a third input; a dump writes upstream's two operators
    m = layer()
    m.eval()
    x = np.random.RandomState(0).randn(*shape).astype("float32")
    f = trace(m, symbolic=True, capture_as_const=True)
    want = f(mge.tensor(x)).numpy()
    file = io.BytesIO()
    f.dump(file, arg_names=["x"])
    file.seek(0)
    net = Network.load(file)
    conv = next(o for o in net.all_oprs if o.type in ("Convolution", "ConvTranspose",
                                                      "Convolution3D"))
    assert [v.name for v in conv.inputs[1:]] == ["weight"]
    (add,) = net.get_var_receive_oprs(conv.outputs[0])
    assert add.type == "Elemwise" and add.params["mode"] == "ADD"
    assert {v.name for v in add.inputs} == {conv.outputs[0].name, "bias"}
    assert net.output_vars[0].owner is add and tuple(conv.outputs[0].shape) == want.shape
    file.seek(0)
    got = list(GraphInference(file).run(x).values())[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_adaptive_pooling_is_upstreams_adaptive_pooling_operator():
    # upstream 1.13 measured (Network.load, then megbrain_graph.load_graph + get_oprs_seq):
    # AdaptivePooling / AdaptivePoolingForward with params {format, mode} and, at the graph
    # level, an int32 second input of shape (2,), the output size; earlier versions of this fork
    # wrote it as a PoolingForward of its windows
    import json

    import megengine.core.tensor.megbrain_graph as G
    import megengine.utils.comp_graph_tools as cgtools

    @trace(symbolic=True, capture_as_const=True)
    def fwd(x):
        return F.adaptive_avg_pool2d(x, (2, 3)), F.adaptive_max_pool2d(x, 2), F.avg_pool2d(x, 2)

    x = np.random.rand(1, 2, 6, 6).astype("float32")
    fwd(mge.tensor(x))
    file = io.BytesIO()
    fwd.dump(file, arg_names=["x"], optimize_for_inference=False)
    file.seek(0)
    net = Network.load(file)
    adaptive = net.opr_filter.type(N.AdaptivePoolingForward).as_list()
    assert [(o.type, o.params["mode"], o.params["format"]) for o in adaptive] == [
        ("AdaptivePooling", "AVERAGE", "NCHW"), ("AdaptivePooling", "MAX", "NCHW")]
    assert net.opr_filter.type(N.PoolingForward).as_count() == 1
    file.seek(0)
    seq = cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)
    graph_level = [o for o in seq if o.type == "AdaptivePoolingForward"]
    assert [json.loads(o.params) for o in graph_level] == [
        {"format": "NCHW", "mode": "AVERAGE"}, {"format": "NCHW", "mode": "MAX"}]
    assert [o.inputs[1].owner.numpy().tolist() for o in graph_level] == [[2, 3], [2, 2]]
    assert [o.inputs[1].dtype for o in graph_level] == [np.int32, np.int32]
    # the program still computes the pools (torch's adaptive pooling agrees on these windows)
    import torch

    file.seek(0)
    got = list(GraphInference(file).run(x).values())
    t = torch.tensor(x)
    np.testing.assert_allclose(got[0], torch.nn.functional.adaptive_avg_pool2d(t, (2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(got[1], torch.nn.functional.adaptive_max_pool2d(t, 2))


def test_graph_params_of_convolutions_of_every_rank_are_upstreams():
    # upstream 1.13's Network.load of its own dumps (op.params), measured: F.conv1d(x, w,
    # stride=2, padding=1) is a Convolution of the input with an axis added; conv_transpose3d
    # (stride 2, padding 1) is Convolution3DBackwardData
    rng = np.random.RandomState(0)
    w1, w3 = rng.randn(3, 4, 3).astype("float32"), rng.randn(2, 3, 2, 2, 2).astype("float32")
    cases = [
        (lambda x: F.conv1d(x, mge.tensor(w1), stride=2, padding=1), (2, 4, 8),
         "ConvolutionForward",
         {"compute_mode": "DEFAULT", "format": "NCHW", "sparse": "DENSE", "stride_w": 1,
          "stride_h": 2, "pad_w": 0, "dilate_w": 1, "dilate_h": 1, "pad_h": 1,
          "mode": "CROSS_CORRELATION"}),
        (lambda x: F.conv_transpose3d(x, mge.tensor(w3), stride=2, padding=1), (1, 2, 4, 6, 6),
         "Convolution3DBackwardData",
         {"format": "NCDHW", "data_type": "FLOAT", "stride_h": 2, "dilate_h": 1, "dilate_d": 1,
          "stride_d": 2, "stride_w": 2, "pad_w": 1, "sparse": "DENSE", "pad_h": 1,
          "dilate_w": 1, "pad_d": 1, "mode": "CROSS_CORRELATION"})]
    for fn, shape, t, want in cases:
        f = trace(fn, symbolic=True, capture_as_const=True)
        f(mge.tensor(rng.randn(*shape).astype("float32")))
        file = io.BytesIO()
        f.dump(file, arg_names=["x"])
        file.seek(0)
        net = Network.load(file)
        (conv,) = [o for o in net.all_oprs if o.type in ("Convolution", "ConvTranspose")]
        assert N.graph_type(conv) == t
        assert N.graph_params(conv) == want
