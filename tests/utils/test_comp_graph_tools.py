"""Tests for megengine/utils/comp_graph_tools.py's graph functions (dependencies, operator
order, traversal maps, functional replace_vars/replace_oprs) and load_and_inference on input
lists; GraphInference and test cases stored by dump are tested in tests/jit/test_dump.py."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.utils.comp_graph_tools as cgtools
from megengine.jit import trace
from megengine.jit.dump import load
from megengine.utils.network import Network

X = np.array([1.5, -2.0, 0.5], "float32")
Y = np.array([2.0, 3.0, -1.0], "float32")


def _file():
    f = trace(lambda x, y: F.relu(x * y) - 3, symbolic=True, capture_as_const=True)
    f(mge.tensor(X), mge.tensor(Y))
    file = io.BytesIO()
    f.dump(file, arg_names=["x", "y"], output_names="o")
    file.seek(0)
    return file


def _run_vars(outputs, *inputs):
    net = Network()
    net.add_output(*outputs)
    file = io.BytesIO()
    net.dump(file)
    file.seek(0)
    return list(cgtools.GraphInference(file).run(*inputs).values())


def test_dependencies_and_order():
    net = Network.load(_file())
    (o,) = net.output_vars
    names = [v.name for v in cgtools.get_dep_vars(o)]
    assert names[0] == "o" and set(names) == {"o", "RELU", "MUL", "x", "y", "const()"}
    assert [v.name for v in cgtools.get_dep_vars(o, "Host2DeviceCopy")] == ["x", "y"]
    seq = cgtools.get_oprs_seq(o)  # constants pruned by default
    assert [cgtools.get_opr_type(op) for op in seq] == ["Host2DeviceCopy", "Host2DeviceCopy",
                                                       "Elemwise", "Elemwise", "Elemwise"]
    assert len(cgtools.get_oprs_seq(o, prune_immtensor=False)) == 6
    assert cgtools.get_owner_opr_type(o) == "Elemwise"
    assert [v.name for v in cgtools.get_owner_opr_inputs(o)] == ["RELU", "const()"]


def test_graph_traversal_maps():
    net = Network.load(_file())
    map_oprs, map_vars, var2oprs, opr2receivers, indegree2opr, opr2indegree = \
        cgtools.graph_traversal(net.output_vars)
    x, y = net.input_vars
    mul = net.opr_filter.has_input(x).as_unique()
    assert var2oprs[x.id] == [(mul.id, 0)] and var2oprs[y.id] == [(mul.id, 1)]
    assert opr2receivers[x.owner.id] == [mul.id]
    assert set(map_vars) == {v.id for op in map_oprs.values() for v in op.outputs}
    out_opr = net.output_vars[0].owner
    assert opr2indegree[out_opr.id] == 0 and out_opr.id in indegree2opr[0]


def test_replace_vars_and_oprs_return_new_vars_and_leave_the_graph():
    net = Network.load(_file())
    (o,) = net.output_vars
    x, y = net.input_vars
    (new,) = cgtools.replace_vars([o], {y: x})
    assert new is not o and o.owner.inputs[0].owner.inputs[0].owner.inputs[1] is y
    np.testing.assert_allclose(_run_vars([new], X)[0], np.maximum(X * X, 0) - 3)
    np.testing.assert_allclose(_run_vars([o], X, Y)[0], np.maximum(X * Y, 0) - 3)
    mul = net.opr_filter.has_input(x).as_unique()
    (new2,) = cgtools.replace_oprs([o], {mul: F.add(x, y).owner})
    np.testing.assert_allclose(_run_vars([new2], X, Y)[0], np.maximum(X + Y, 0) - 3)
    with pytest.raises(ValueError, match="outputs"):
        cgtools.replace_oprs([o], {mul: F.cond_take(x > 0, x)[0].owner})


def test_load_and_inference_on_a_list_of_inputs():
    results = cgtools.load_and_inference(_file(), [[X, Y], {"x": Y, "y": X}])
    np.testing.assert_allclose(results[0]["o"], np.maximum(X * Y, 0) - 3)
    np.testing.assert_allclose(results[1]["o"], np.maximum(Y * X, 0) - 3)
    with pytest.raises(ValueError, match="no test cases"):
        cgtools.load_and_inference(_file())


def test_megengine_cgtools_is_comp_graph_tools_and_loads_on_first_use():
    # upstream's megengine/__init__ exposes `cgtools` (1.0-era tests: `from megengine import
    # cgtools`); here it loads lazily, so a fresh `import megengine` does not import it
    import subprocess
    import sys

    code = ("import sys, megengine as mge; assert 'megengine.utils.comp_graph_tools' not in "
            "sys.modules; from megengine import cgtools; "
            "import megengine.utils.comp_graph_tools as c; assert cgtools is c")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- upstream's C++ graph level, what tools that read dumped models use (mgeconvert's MegEngine
# frontend: ``cgtools.get_oprs_seq``, ``cgtools.get_opr_type``, ``json.loads(opr.params)``). The
# oracle is upstream's graph: its operators' C++ type names (``ConvolutionForward``; its
# network_node classes carry the same names, their ``type`` the OpDef's ``Convolution``) and
# megdnn's parameter JSON (``stride_h``, ``pad_w``, ``window_h``, enum values upper case).
def _cnn_graph():
    import megengine.core.tensor.megbrain_graph as G
    import megengine.module as M

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 4, 3, stride=(2, 1), padding=(1, 0), groups=1, bias=False)
            self.dw = M.Conv2d(4, 4, 3, padding=1, dilation=1, groups=4, bias=False)
            self.bn = M.BatchNorm2d(4)
            self.pool = M.MaxPool2d((2, 3), stride=(1, 2), padding=(0, 1))
            self.fc = M.Linear(12, 5)

        def forward(self, x):
            y = self.pool(F.relu(self.bn(self.dw(self.conv(x)))))
            y = self.fc(F.flatten(y, 1)[:, :12])
            return F.softmax(y, axis=1), F.sum(y.T, axis=0, keepdims=True)

    net = Net()
    net.eval()
    f = trace(symbolic=True, capture_as_const=True)(net)
    x = np.random.RandomState(0).randn(2, 3, 6, 5).astype("float32")
    f(mge.tensor(x))
    file = io.BytesIO()
    f.dump(file, arg_names=["data"])
    file.seek(0)
    return G.load_graph(file).output_vars_list


def test_graph_level_type_names_are_upstreams_cpp_names():
    import json

    seq = cgtools.get_oprs_seq(_cnn_graph())
    types = [cgtools.get_opr_type(o) for o in seq]
    assert types == [o.type for o in seq]
    assert types[:8] == ["Host2DeviceCopy", "ConvolutionForward", "ConvolutionForward",
                         "BatchNormForward", "Elemwise", "PoolingForward", "Reshape",
                         "Subtensor"]
    assert {"MatrixMul", "SoftmaxForward", "Dimshuffle", "Reduce"} <= set(types)
    for o in seq:  # every operator's params is a JSON string of an object or a list
        assert isinstance(json.loads(o.params), (dict, list))
    # the node behind a view keeps megengine.utils.network's level (upstream's network_node)
    assert seq[1].opr.type == "Convolution" and isinstance(seq[1].opr.params, dict)
    conv = seq[1].opr
    assert cgtools.get_owner_opr_type(conv.outputs[0]) == "ConvolutionForward"
    assert cgtools.get_dep_vars(seq[3].outputs[0], "ConvolutionForward") == [
        seq[2].outputs[0], seq[1].outputs[0]]
    assert cgtools.get_dep_vars(seq[3].outputs[0], "Convolution") == []


def test_graph_level_params_are_megdnns_json():
    import json

    seq = cgtools.get_oprs_seq(_cnn_graph())
    by_type = collections_by_type(seq)
    conv, dw = by_type["ConvolutionForward"]
    assert json.loads(conv.params) == {
        "mode": "CROSS_CORRELATION", "pad_h": 1, "pad_w": 0, "stride_h": 2, "stride_w": 1,
        "dilate_h": 1, "dilate_w": 1, "sparse": "DENSE", "format": "NCHW",
        "compute_mode": "DEFAULT"}
    assert json.loads(dw.params)["sparse"] == "GROUP" and dw.inputs[1].shape == (4, 1, 1, 3, 3)
    (pool,) = by_type["PoolingForward"]
    assert json.loads(pool.params) == {"mode": "MAX", "pad_h": 0, "pad_w": 1, "stride_h": 1,
                                       "stride_w": 2, "window_h": 2, "window_w": 3,
                                       "format": "NCHW"}
    (bn,) = by_type["BatchNormForward"]
    bn_params = json.loads(bn.params)
    assert bn_params["fwd_mode"] == "INFERENCE" and bn_params["epsilon"] == pytest.approx(1e-5)
    # upstream's inference BatchNorm reads x, scale, bias, mean, variance (in that order)
    assert [v.name for v in bn.inputs[1:]] == ["bn.weight", "bn.bias", "bn.running_mean",
                                               "bn.running_var"]
    (mm,) = by_type["MatrixMul"]
    assert json.loads(mm.params) == {"transposeA": False, "transposeB": True,
                                     "compute_mode": "DEFAULT", "format": "DEFAULT"}
    assert json.loads(by_type["SoftmaxForward"][0].params) == {"axis": 1}
    (dimshuffle,) = by_type["Dimshuffle"]  # y.T: upstream's pattern is explicit
    assert json.loads(dimshuffle.params) == {"pattern": [1, 0], "ndim": 2}
    (reduce,) = by_type["Reduce"]
    assert json.loads(reduce.params) == {"mode": "SUM", "data_type": "DEFAULT", "axis": 0}
    elemwise = {json.loads(o.params)["mode"] for o in by_type["Elemwise"]}
    assert elemwise == {"RELU", "ADD"}


def test_graph_level_subtensor_takes_its_index_values_as_inputs():
    # upstream's Subtensor: one item per indexed axis saying which of begin/end/step/idx are
    # given, and the given values as 1-element int32 inputs after the tensor, in that order
    import json

    seq = cgtools.get_oprs_seq(_cnn_graph())
    (sub,) = collections_by_type(seq)["Subtensor"]
    assert json.loads(sub.params) == [{"axis": 1, "begin": 0, "end": 1, "step": 0, "idx": 0}]
    assert len(sub.inputs) == 2 and sub.inputs[1].value.tolist() == [12]
    assert sub.inputs[1].dtype == np.int32 and sub.inputs is sub.inputs  # made once

    x = mge.tensor(np.arange(24, dtype="float32").reshape(2, 3, 4))
    f = trace(lambda x: x[1, ::2, -3:-1], symbolic=True, capture_as_const=True)
    f(x)
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    import megengine.core.tensor.megbrain_graph as G

    (sub,) = [o for o in cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)
              if o.type == "Subtensor"]
    assert json.loads(sub.params) == [
        {"axis": 0, "begin": 0, "end": 0, "step": 0, "idx": 1},
        {"axis": 1, "begin": 0, "end": 0, "step": 1, "idx": 0},
        {"axis": 2, "begin": 1, "end": 1, "step": 0, "idx": 0}]
    assert [int(v.value[0]) for v in sub.inputs[1:]] == [1, 2, -3, -1]


def _dumped_graph(fn, *arrays, names=("x",)):
    import megengine.core.tensor.megbrain_graph as G

    f = trace(fn, symbolic=True, capture_as_const=True)
    f(*[mge.tensor(a) for a in arrays])
    file = io.BytesIO()
    f.dump(file, arg_names=list(names))
    file.seek(0)
    return file, cgtools.get_oprs_seq(G.load_graph(file).output_vars_list)


def _reductions(seq):
    """(type, params, output shape) of the Reduce and AxisAddRemove operators of ``seq``."""
    import json

    return [(o.type, json.loads(o.params), tuple(o.outputs[0].shape)) for o in seq
            if o.type in ("Reduce", "AxisAddRemove")]


def _removes(*axes):
    return {"nr_desc": len(axes), "desc": [{"method": 1, "axisnum": a} for a in axes]}


def _adds(*axes):
    return {"nr_desc": len(axes), "desc": [{"method": 0, "axisnum": a} for a in axes]}


def _reduce(mode, axis):
    return {"mode": mode, "data_type": "DEFAULT", "axis": axis}


REDUCTIONS = [
    # upstream's array_method._reduce: Reduce keeps the reduced axis and reduces one; without
    # keepdims its imperative op adds an AxisAddRemove (reduce.cpp's apply_on_var_node);
    # several axes are reduced one by one, highest first (_normalize_axis(reverse=True))
    (lambda x: x.sum(axis=1), [("Reduce", _reduce("SUM", 1), (2, 1, 4, 5)),
                               ("AxisAddRemove", _removes(1), (2, 4, 5))]),
    (lambda x: F.mean(x, axis=(2, 3)),  # global average pooling, as upstream builds F.mean
     [("Reduce", _reduce("MEAN", 3), (2, 3, 4, 1)), ("AxisAddRemove", _removes(3), (2, 3, 4)),
      ("Reduce", _reduce("MEAN", 2), (2, 3, 1)), ("AxisAddRemove", _removes(2), (2, 3))]),
    (lambda x: F.max(x, axis=(-1, 1), keepdims=True),
     [("Reduce", _reduce("MAX", 3), (2, 3, 4, 1)), ("Reduce", _reduce("MAX", 1), (2, 1, 4, 1))]),
    (lambda x: F.min(x, axis=-2, keepdims=True), [("Reduce", _reduce("MIN", -2), (2, 3, 1, 5))]),
    (lambda x: F.prod(x, axis=(0, 2)),
     [("Reduce", _reduce("PRODUCT", 2), (2, 3, 1, 5)), ("AxisAddRemove", _removes(2), (2, 3, 5)),
      ("Reduce", _reduce("PRODUCT", 0), (1, 3, 5)), ("AxisAddRemove", _removes(0), (3, 5))]),
    # over every axis: megdnn's "no axis" (INT_MAX) and a target shape as the second input
    (lambda x: F.sum(x), [("Reduce", _reduce("SUM", 2 ** 31 - 1), ())]),
]


@pytest.mark.parametrize("k", range(len(REDUCTIONS)))
def test_graph_level_reductions_are_upstreams_reduce_and_axisaddremove(k):
    fn, want = REDUCTIONS[k]
    x = np.random.RandomState(k).rand(2, 3, 4, 5).astype("float32")
    file, seq = _dumped_graph(fn, x)
    assert _reductions(seq) == want
    if want[0][1]["axis"] == 2 ** 31 - 1:
        (red,) = [o for o in seq if o.type == "Reduce"]
        assert len(red.inputs) == 2 and red.inputs[1].value.tolist() == [1]
    # the file runs as the traced program, and as fast: load fuses the chain into one engine
    # Reduce again (the eager op), so the values are eager's exactly
    file.seek(0)
    (got,) = cgtools.GraphInference(file).run(x).values()
    assert got.shape == fn(mge.tensor(x)).shape
    np.testing.assert_array_equal(got, fn(mge.tensor(x)).numpy())
    file.seek(0)
    (step,) = load(file).prog.steps
    assert type(step.template).__name__ == "Reduce"


def _elemwise(mode):
    return ("Elemwise", {"mode": mode})


VARIANCES = [
    # upstream's F.var: m = mean(x, axis, keepdims=True); mean((x - m) ** 2, axis, keepdims);
    # F.std: var ** 0.5 (functional/math.py), each mean a Reduce chain as above
    (lambda x: F.var(x, axis=1), [("Reduce", _reduce("MEAN", 1)), _elemwise("SUB"),
                                  _elemwise("POW"), ("Reduce", _reduce("MEAN", 1)),
                                  ("AxisAddRemove", _removes(1))], [2.0]),
    (lambda x: F.std(x, axis=(2, 3), keepdims=True),
     [("Reduce", _reduce("MEAN", 3)), ("Reduce", _reduce("MEAN", 2)), _elemwise("SUB"),
      _elemwise("POW"), ("Reduce", _reduce("MEAN", 3)), ("Reduce", _reduce("MEAN", 2)),
      _elemwise("POW")], [2.0, 0.5]),
    (lambda x: F.var(x), [("Reduce", _reduce("MEAN", 2 ** 31 - 1)), _elemwise("SUB"),
                          _elemwise("POW"), ("Reduce", _reduce("MEAN", 2 ** 31 - 1))], [2.0]),
]


@pytest.mark.parametrize("k", range(len(VARIANCES)))
def test_graph_level_var_and_std_are_upstreams_means_sub_and_pow(k):
    import json

    fn, want, exponents = VARIANCES[k]
    x = np.random.RandomState(k).rand(2, 3, 4, 5).astype("float32") * 10
    file, seq = _dumped_graph(fn, x)
    assert [(o.type, json.loads(o.params)) for o in seq if o.type != "Host2DeviceCopy"] == want
    pows = [o for o in seq if o.type == "Elemwise" and json.loads(o.params)["mode"] == "POW"]
    assert [float(o.inputs[1].value) for o in pows] == exponents
    file.seek(0)
    (got,) = cgtools.GraphInference(file).run(x).values()
    np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-6)


def test_a_reduction_over_no_axes_is_dumped_and_runs():
    x = np.random.RandomState(0).rand(2, 3).astype("float32")
    file, _ = _dumped_graph(lambda x: F.sum(x, axis=()) + 1, x)
    file.seek(0)
    (got,) = cgtools.GraphInference(file).run(x).values()
    np.testing.assert_array_equal(got, x + 1)


def test_a_reduction_chain_read_elsewhere_is_not_fused_on_load():
    # the sum over axis 3 (kept) is also an output: the chain stays upstream's two operators,
    # and both outputs are right
    def fn(x):
        a = F.sum(x, axis=3, keepdims=True)
        return a, F.sum(a, axis=1, keepdims=True)

    x = np.random.RandomState(0).rand(2, 3, 4, 5).astype("float32")
    file, seq = _dumped_graph(fn, x)
    assert [r[1]["axis"] for r in _reductions(seq)] == [3, 1]
    file.seek(0)
    assert len(load(file).prog.steps) == 2
    file.seek(0)
    got = list(cgtools.GraphInference(file).run(x).values())
    for g, w in zip(got, fn(mge.tensor(x))):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-6)


def test_graph_level_views_in_replace_oprs():
    net = Network.load(_file())
    (o,) = net.output_vars
    x, y = net.input_vars
    mul = cgtools.graph_traversal([o])[0][net.opr_filter.has_input(x).as_unique().id]
    assert mul.type == "Elemwise" and cgtools.get_opr_type(mul) == "Elemwise"
    # upstream 1.13 asserts (measured); an AttributeError here before
    with pytest.raises(TypeError, match="get_opr_type: expected an operator") as error:
        cgtools.get_opr_type(3)
    assert isinstance(error.value, AssertionError)
    (new,) = cgtools.replace_oprs([o], {mul: F.add(x, y).owner})
    np.testing.assert_allclose(_run_vars([new], X, Y)[0], np.maximum(X + Y, 0) - 3)


def collections_by_type(seq):
    found = {}
    for o in seq:
        found.setdefault(o.type, []).append(o)
    return found


AXES = [
    # upstream's F.expand_dims is AddAxis of the sorted positions in the result, F.squeeze
    # RemoveAxis of the sorted positions, each less the number removed before it
    # (tensor_utils.cpp's _expand_dims_cpp / _squeeze_cpp); each is one AxisAddRemove operator
    # whose descriptors add (method 0) or remove (method 1) one axis after another
    # (imperative/src/impl/ops/tensor_manip.cpp: Desc::make_add / Desc::make_remove)
    (lambda x: F.expand_dims(x, 1), (2, 3), (5, 4), [_adds(1)], [1]),
    (lambda x: F.expand_dims(x, (-1, 0)), (2, 3), (5, 4), [_adds(0, 3)], [0, 3]),
    (lambda x: F.squeeze(x, 1), (2, 1, 3), (5, 1, 4), [_removes(1)], [1]),
    (lambda x: F.squeeze(x, (3, 1)), (2, 1, 3, 1), (5, 1, 4, 1), [_removes(1, 2)], [1, 2]),
    (lambda x: F.squeeze(x) + 1, (1, 2, 1, 3, 1), (1, 5, 1, 4, 1), [_removes(0, 1, 2)],
     [0, 1, 2]),
    (lambda x: F.squeeze(F.expand_dims(x, 0), 0), (2, 3), (5, 4), [_adds(0), _removes(0)],
     [0, 0]),
]


@pytest.mark.parametrize("k", range(len(AXES)))
def test_expand_dims_and_squeeze_are_upstreams_axisaddremove(k):
    import json

    fn, shape, other, want, network_axes = AXES[k]
    x = np.random.RandomState(k).rand(*shape).astype("float32")
    file, seq = _dumped_graph(fn, x)
    assert [o.type for o in seq if o.type in ("Reshape", "AxisAddRemove")] == \
        ["AxisAddRemove"] * len(want)
    assert [json.loads(o.params) for o in seq if o.type == "AxisAddRemove"] == want
    file.seek(0)
    net = Network.load(file)  # upstream's network_node shows the axes of the descriptors
    got = [o.params["axis"] for o in net.all_oprs if o.type == "AxisAddRemove"]
    assert [a for axes in got for a in axes] == network_axes
    # the file runs at the traced shape and at another one, as the eager function
    for data in (x, np.random.RandomState(k).rand(*other).astype("float32")):
        file.seek(0)
        (out,) = cgtools.GraphInference(file).run(data).values()
        want_value = fn(mge.tensor(data)).numpy()
        assert out.shape == want_value.shape
        np.testing.assert_array_equal(out, want_value)


def _sized(x, s):
    return (x.reshape(s), F.broadcast_to(x[:1], s), F.linspace(0, 1, s[1]),
            F.arange(s[0]), F.arange(1, s[1], 2, dtype="int32"))


def test_size_input_ops_are_upstreams_reshape_broadcast_and_linspace():
    # upstream's graph takes a shape Tensor as the second input of Reshape and Broadcast,
    # and Linspace's start, stop and num as its three inputs; its arange is
    # linspace(start, start + step * (ceil((stop - start) / step) - 1), num) and a TypeCvt
    # to another dtype (imperative/python/megengine/functional/tensor.py)
    import json

    x = np.random.RandomState(0).rand(4, 3).astype("float32")
    file, seq = _dumped_graph(_sized, x, np.array([4, 3], "int32"), names=("x", "s"))
    kinds = [o.type if o.type != "Elemwise" else json.loads(o.params)["mode"] for o in seq
             if o.type not in ("Host2DeviceCopy", "ImmutableTensor", "Subtensor")]
    # (and MAX(num, 0): a count below 0 gives an empty tensor, see _upstream_arange)
    arange = ["SUB", "TRUE_DIV", "CEIL", "MAX", "SUB", "MUL", "ADD", "Linspace"]
    assert kinds == ["Reshape", "Broadcast", "Linspace"] + arange + arange + ["TypeCvt"]
    reshape, broadcast, linspace = [o for o in seq if o.type in ("Reshape", "Broadcast",
                                                                 "Linspace")][:3]
    assert [v.name for v in reshape.inputs] == ["x", "s"] and len(broadcast.inputs) == 2
    assert json.loads(reshape.params) == {"axis": 7} and json.loads(broadcast.params) == {}
    assert json.loads(linspace.params) == {"endpoint": True}
    assert [v.value.tolist() for v in linspace.inputs[:2]] == [[0.0], [1.0]]
    assert linspace.inputs[2].owner.type == "Subtensor"
    file.seek(0)
    net = Network.load(file)
    assert not [o for o in net.all_oprs if type(o).__name__.endswith(("By", "Of"))]
    assert [o.name for o in net.all_oprs if o.type in ("Reshape", "Broadcast")] == \
        ["Reshape", "Broadcast"]
    # the file follows the sizes it is given, as the eager function
    for shape in ((4, 3), (2, 6)):
        data = np.random.RandomState(1).rand(*shape).astype("float32")
        _run_both(_sized, file, data, np.array(shape, "int32"))


def _run_both(fn, file, *arrays):
    """The dumped ``file`` and eager ``fn`` give the same values, dtypes and shapes."""
    file.seek(0)
    got = list(cgtools.GraphInference(file).run(*arrays).values())
    want = fn(*[mge.tensor(a) for a in arrays])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-6)


def _filled(x, s):
    n = (x[0] > 0).astype("int32").sum()  # a size the program computes from data
    return (F.zeros(s), F.ones((x.shape[0], n), "int32"), F.full(n, True),
            F.zeros_like(x) + x, F.full((x.shape[0], 2), 7.5))


def test_creation_is_upstreams_fill_a_constant_broadcast_to_the_shape():
    # upstream's zeros/ones apply Fill to the shape as a Tensor (astensor1d), its full
    # broadcasts a Const to it, its zeros_like/full_like apply FillLike
    # (imperative/python/megengine/functional/tensor.py); Fill and FillLike enter the graph as
    # an ImmutableTensor of the value broadcast to the shape, FillLike's taken by GetVarShape
    # (imperative/src/impl/ops/fill.cpp, apply_on_var_node)
    import json

    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    s = np.array([2, 3], "int32")
    file, seq = _dumped_graph(_filled, x, s, names=("x", "s"))
    assert "Full" not in [o.type for o in seq]
    fills = [o for o in seq if o.type == "Broadcast"]
    assert len(fills) == 5 and all(json.loads(o.params) == {} for o in fills)
    for o, value, dtype in zip(fills, (0, 1, True, 0, 7.5),
                               ("float32", "int32", "bool", "float32", "float32")):
        assert len(o.inputs) == 2 and o.inputs[0].owner.type == "ImmutableTensor"
        assert o.inputs[0].value.tolist() == value and o.inputs[0].dtype == dtype
        assert o.outputs[0].dtype == dtype and o.inputs[1].dtype == np.int32
    assert fills[0].inputs[1].name == "s"  # the shape the program is given, read when it runs
    # sizes from shapes: the shape at the vars' shapes now, as the graph's other size inputs
    assert [o.inputs[1].value.tolist() for o in fills[3:]] == [[4, 3], [4, 2]]
    file.seek(0)
    net = Network.load(file)
    assert not [o for o in net.all_oprs if o.type in ("Full", "BroadcastBy")]
    # the file follows the shapes and values it is given, as the eager function
    _run_both(_filled, file, x, s)
    y = np.random.RandomState(1).randn(6, 5).astype("float32")
    _run_both(_filled, file, y, np.array([3, 1, 2], "int32"))


RESHAPES = [  # (function of x (4, 3), upstream's unspec_axis: the -1's position, 7 for none)
    (lambda x: x.reshape(x.shape[0], -1), 1),
    (lambda x: x.reshape(-1), 0),
    (lambda x: F.reshape(x, (-1, 2)), 0),
    (lambda x: x.reshape(6, 2), 7),
    (lambda x: F.reshape(x, (x.shape[0], (x[0] == x[0]).astype("int32").sum(), -1)), 2),
    (lambda x: x.reshape(F.concat([x.shape[:1], mge.tensor([-1])])), 1),
    (lambda x: x.reshape(F.concat([(x[0] == x[0]).astype("int32").sum(keepdims=True),
                                   mge.tensor([-1])])), 1),
]


@pytest.mark.parametrize("k", range(len(RESHAPES)))
def test_graph_level_reshape_params_name_the_position_of_the_minus_one(k):
    # upstream's Tensor.reshape makes builtin.Reshape(axis=unspec_axis), the index of the -1
    # in the target shape, else Reshape() (core/tensor/array_method.py, _reshape); its graph's
    # params are megdnn's OptionalAxisV1 JSON, {"axis": 7} (MAX_NDIM) for none
    import json

    fn, axis = RESHAPES[k]
    x = np.random.RandomState(k).randn(4, 3).astype("float32")
    file, seq = _dumped_graph(fn, x)
    reshapes = [o for o in seq if o.type == "Reshape"]
    assert json.loads(reshapes[-1].params) == {"axis": axis}
    file.seek(0)
    net = Network.load(file)  # upstream's network_node params are the graph's JSON
    assert [o.params for o in net.all_oprs if o.type == "Reshape"][-1] == {"axis": axis}
    _run_both(lambda x: (fn(x),), file, x)


def _aranges(x):
    return (F.arange(x.shape[1]), F.arange(x.shape[1] / 2, x.shape[0] * 2.5, 0.5, dtype="int32"),
            F.arange(x.shape[0] - 3))


def test_arange_of_sizes_from_shapes_is_upstreams_linspace_of_computed_bounds():
    # upstream's arange: num = ceil((stop - start) / step), linspace(start, start + step *
    # (num - 1), num) and a TypeCvt to another dtype (functional/tensor.py); here a bound from
    # a shape is a Sizes value (its expression at the shapes the file runs at), and the count
    # is max(num, 0): bounds the step never reaches give an empty tensor, as eager
    import json

    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    file, seq = _dumped_graph(_aranges, x)
    kinds = [o.type if o.type != "Elemwise" else json.loads(o.params)["mode"] for o in seq]
    arange = ["SUB", "TRUE_DIV", "CEIL", "MAX", "SUB", "MUL", "ADD", "Linspace"]
    assert kinds == (["Host2DeviceCopy", "Sizes"] + arange + ["Sizes", "Sizes"] + arange +
                     ["TypeCvt", "Sizes"] + arange)
    for shape in ((4, 3), (2, 6), (7, 1)):  # the last: x.shape[0] - 3 < 0 at (2, 6)
        _run_both(_aranges, file, np.zeros(shape, "float32"))


def test_a_dumped_squeeze_of_a_dim_that_is_not_one_at_run_time_says_so():
    from megengine.core.dispatch import apply
    from megengine.core.ops import RemoveAxis, ShapeError
    from megengine.jit import ShapeGuardError

    # F.squeeze checked the size when traced: the file's guard names that check
    file, _ = _dumped_graph(lambda x: F.squeeze(x, (1, 3)), np.ones((2, 1, 3, 1), "float32"))
    file.seek(0)
    with pytest.raises(ShapeGuardError, match=r"x.shape\[3\] != 1"):
        cgtools.GraphInference(file).run(np.ones((2, 1, 3, 4), "float32"))
    # the operator itself (upstream's RemoveAxis descriptors, one after another) says which
    with pytest.raises(ShapeError, match=r"squeeze: cannot remove axis 2 of shape \(2, 3, 4\)"):
        apply(RemoveAxis((1, 2)), mge.tensor(np.ones((2, 1, 3, 4), "float32")))


def _naive_bfs(outputs):
    """Breadth first over every mention of a var, skipping those seen: the definition."""
    queue, seen, out = list(outputs), set(), []
    while queue:
        v = queue.pop(0)
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
            if v.owner is not None:
                queue.extend(v.owner.inputs)
                queue.extend(v.owner._dyn_vars)
    return out


def test_dependencies_of_a_wide_split_are_each_var_once_breadth_first():
    # a split into many parts whose parts meet again: each var is reached through many paths
    # (the jit fuzzer's program 91507, a split into 512 parts, took minutes here)
    def f(x):
        parts = F.split(x, 16)
        total = parts[0]
        for i, p in enumerate(parts[1:]):
            total = total * p + parts[i]
        return total

    f = trace(f, symbolic=True, capture_as_const=True)
    f(mge.tensor(np.arange(32, dtype="float32")))
    file = io.BytesIO()
    f.dump(file, optimize_for_inference=False)
    file.seek(0)
    net = Network.load(file)
    got = cgtools.get_dep_vars(net.output_vars)
    assert [id(v) for v in got] == [id(v) for v in _naive_bfs(net.output_vars)]
    assert len({id(v) for v in got}) == len(got) > 16
