"""trace.dump's inference options (megengine/utils/network_optimize.py): the float16 graphs of
enable_io16xc32 / enable_ioc16 against float16 oracles computed with torch, and the option
checks."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.core.tensor_megbrain_graph as G
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace
from megengine.utils import comp_graph_tools as cgtools
from megengine.utils.network import Network
from tests.test_docs import run_block

F16 = np.float16


def _dump(fn, *args, **options):
    fn(*args)
    buf = io.BytesIO()
    info = fn.dump(buf, **options)
    return buf.getvalue(), info


def _run(data, *inputs):
    return list(cgtools.GraphInference(io.BytesIO(data)).run(*inputs).values())


def _oprs(data):
    outs = G.load_graph(io.BytesIO(data)).output_vars_list
    return outs, cgtools.get_oprs_seq(outs, False, False)


def _ulps16(got, want):
    """Distance of float32 ``got`` from float16-representable ``want``, in float16 ulps."""
    spacing = np.spacing(np.abs(want).astype(F16)).astype(np.float32)
    return np.max(np.abs(got - want) / spacing)


@pytest.mark.parametrize("option", ["enable_io16xc32", "enable_ioc16"])
def test_elementwise_program_is_float16_inside_and_float32_outside(option):
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.exp(x) * 0.3 + x

    x = np.linspace(-2, 2, 37).astype(np.float32)
    data, _ = _dump(f, mge.tensor(x), **{option: True})
    (out,), oprs = _oprs(data)
    # upstream's ConvertF32ToF16Pass: the input stays float32 and a TypeCvt follows it; the
    # output is converted back to float32
    assert out.dtype == np.float32 and out.owner.type == "TypeCvt"
    assert out.owner.inputs[0].dtype == F16
    assert [o.type for o in oprs[:2]] == ["Host2DeviceCopy", "TypeCvt"]
    assert oprs[1].outputs[0].dtype == F16
    assert all(o.outputs[0].dtype == F16 for o in oprs if o.type in ("Elemwise",
                                                                        "ImmutableTensor"))
    (got,) = _run(data, x)
    assert got.dtype == np.float32
    # oracle: torch in half precision, each op rounded to float16
    t = torch.from_numpy(x).half()
    want = (torch.exp(t) * torch.tensor(0.3).half() + t).float().numpy()
    assert _ulps16(got, want) <= 1
    # and it is not the float32 program
    assert np.abs(got - (np.exp(x) * np.float32(0.3) + x)).max() > 1e-4


def test_io16xc32_computes_matmul_and_reduce_in_float32_between_float16_values():
    lin = M.Linear(48, 6)

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.sum(F.relu(lin(x)), axis=1)

    x = np.random.RandomState(0).randn(5, 48).astype(np.float32)
    data, info = _dump(f, mge.tensor(x), enable_io16xc32=True)
    outs, oprs = _oprs(data)
    by_type = {o.type: o for o in oprs}
    # the matrix product and the reduction run on float32 (widened inputs), their results are
    # rounded to float16; the parameters are stored as float16
    assert by_type["MatrixMul"].outputs[0].dtype == np.float32
    assert all(v.dtype == np.float32 for v in by_type["MatrixMul"].inputs)
    assert by_type["Elemwise"].outputs[0].dtype == F16
    assert {o.name: o.outputs[0].dtype for o in oprs if o.type == "ImmutableTensor"} == {
        "weight": F16, "bias": F16}
    assert info.tensor_value_bytes == (48 * 6 + 6) * 2
    (got,) = _run(data, x)
    # oracle: torch, float16 values, float32 arithmetic, a rounding after each op
    h = lambda t: t.half().float()  # noqa: E731
    xt, w, b = (h(torch.from_numpy(a)) for a in (x, lin.weight.numpy(), lin.bias.numpy()))
    y = h(h(xt @ w.T) + b)
    want = h(torch.relu(y).sum(1)).numpy()
    assert got.dtype == np.float32 and _ulps16(got, want) <= 1
    assert np.abs(got - f(mge.tensor(x)).numpy()).max() > 1e-5  # not the float32 program


def test_ioc16_runs_the_ops_on_float16():
    lin = M.Linear(8, 3)

    @trace(symbolic=True, capture_as_const=True)
    def f(x, idx):
        y = lin(x).astype("float32")  # upstream turns a conversion to float32 into float16
        return y[idx], F.arange(3)  # an int input is left alone; arange's floats become f16

    x = np.random.RandomState(1).randn(4, 8).astype(np.float32)
    idx = np.array([2, 0], np.int32)
    data, _ = _dump(f, mge.tensor(x), mge.tensor(idx), enable_ioc16=True)
    outs, oprs = _oprs(data)
    inner = [o for o in oprs if o.type != "Host2DeviceCopy"
             and not any(o.outputs[0] is u for u in outs)]
    assert inner and all(o.outputs[0].dtype != np.float32 for o in inner)
    assert [o.type for o in oprs].count("Host2DeviceCopy") == 2
    got_y, got_r = _run(data, x, idx)
    h = lambda a: torch.from_numpy(np.asarray(a)).half()  # noqa: E731
    want = torch.nn.functional.linear(h(x).float(), h(lin.weight.numpy()).float(),
                                      h(lin.bias.numpy()).float())
    want = want.half().float().numpy()[idx]  # (float16 matmul rounds once per dot product)
    assert got_y.dtype == np.float32 and _ulps16(got_y, want) <= 2
    np.testing.assert_equal(got_r, np.arange(3, dtype=np.float32))


def test_float16_dump_keeps_symbolic_shapes_and_test_cases():
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.softmax(x.reshape(x.shape[0], -1), axis=1)

    x = np.random.RandomState(2).randn(2, 3, 4).astype(np.float32)
    f(mge.tensor(x))
    buf = io.BytesIO()
    f.dump(buf, enable_io16xc32=True, input_data=[x])
    data = buf.getvalue()
    assert cgtools.load_and_inference(io.BytesIO(data))  # the stored case reruns and matches
    x5 = np.random.RandomState(3).randn(5, 3, 4).astype(np.float32)
    (got,) = _run(data, x5)
    want = torch.softmax(torch.from_numpy(x5).half().float().reshape(5, -1), 1).numpy()
    assert got.shape == (5, 12) and np.abs(got - want).max() < 2e-3
    meta = cgtools.GraphInference(io.BytesIO(data)).metadata
    assert meta["enable_io16xc32"] is True and meta["graph_modified"] is False


def test_network_dump_with_float16_leaves_the_network_unchanged():
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return x * 3

    data, _ = _dump(f, mge.tensor(np.ones(3, np.float32)))
    net = Network.load(io.BytesIO(data))
    before = [o.type for o in net.all_oprs]
    buf = io.BytesIO()
    net.dump(buf, enable_ioc16=True)
    assert [o.type for o in net.all_oprs] == before
    _, oprs = _oprs(buf.getvalue())
    assert [o.type for o in oprs] == ["Host2DeviceCopy", "TypeCvt", "ImmutableTensor",
                                      "Elemwise", "TypeCvt"]
    (got,) = _run(buf.getvalue(), np.array([1.1, 2.0, 3.3], np.float32))
    np.testing.assert_equal(got, (np.array([1.1, 2.0, 3.3], F16) * F16(3)).astype(np.float32))


def test_network_optimize_for_inference_gives_new_vars():
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.matmul(x, x.T)

    x = np.random.RandomState(4).randn(3, 40).astype(np.float32)
    data, _ = _dump(f, mge.tensor(x))
    net = Network.load(io.BytesIO(data))
    (v,) = net.optimize_for_inference(net.output_vars, enable_io16xc32=True)
    assert v.dtype == np.float32 and v.owner.inputs[0].dtype == np.float16
    assert net.output_vars[0].owner.type == "MatrixMul"  # the network itself is unchanged
    net2 = Network()
    net2.add_output(v)
    buf = io.BytesIO()
    net2.dump(buf)
    (got,) = _run(buf.getvalue(), x)
    t = torch.from_numpy(x).half().float()
    want = (t @ t.T).half().float().numpy()
    assert _ulps16(got, want) <= 1


def test_options_without_value_changes_are_recorded_and_unknown_ones_raise():
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.relu(x)

    x = np.array([-1.0, 2.0], np.float32)
    data, _ = _dump(f, mge.tensor(x), enable_nchw44=True, enable_fuse_conv_bias_nonlinearity=True)
    meta = cgtools.GraphInference(io.BytesIO(data)).metadata
    assert meta["enable_nchw44"] and meta["enable_fuse_conv_bias_nonlinearity"]
    np.testing.assert_equal(_run(data, x)[0], [0.0, 2.0])
    # the message lists the options; a ValueError, as upstream 1.13's (measured)
    with pytest.raises(ValueError, match="enable_io16xc32"):
        f.dump(io.BytesIO(), enable_fp16=True)
    with pytest.raises(ValueError, match="one layout at a time"):
        f.dump(io.BytesIO(), enable_nchw4=True, enable_nchw88=True)
    with pytest.raises(ValueError, match="unknown options.*enable_ioc16"):
        G.optimize_for_inference([], enable_magic=True)
    # upstream applies the options only with optimize_for_inference
    data = io.BytesIO()
    f.dump(data, optimize_for_inference=False, enable_ioc16=True)
    _, oprs = _oprs(data.getvalue())
    assert [o.type for o in oprs] == ["Host2DeviceCopy", "Elemwise"]


def test_the_jit_page_float16_example_runs():
    # (the docs page's code-block on dump's inference options)
    run_block(Path(__file__).resolve().parents[2] / "docs" / "api" / "jit.rst",
              "f.dump(buf, enable_io16xc32=True)")
