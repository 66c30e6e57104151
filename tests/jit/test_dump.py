"""Tests for megengine/jit/dump.py (with dump_format.py and dump_names.py) and
megengine/utils/comp_graph_tools.py: a dumped program, loaded in a fresh process without the
source that made it, gives the traced outputs; what cannot be dumped fails at dump time with
the op's name. (Test cases, input_data=...: test_dump_testcases.py.)"""
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import Function, GradManager
from megengine.jit import exclude_from_trace, trace
from megengine.device import canonical_device
from megengine.jit.dump import DumpError
from megengine.utils.comp_graph_tools import GraphInference

from devices import host, requires_cuda
from jit_nets import exp_trace


ROOT = Path(__file__).resolve().parents[2]


class SmallNet(M.Module):
    """Conv, batch norm (eval), pooling, a tensor index, linear and softmax: a typical model."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(4 * 4 * 4, 5)

    def forward(self, x, scale):
        x = F.relu(self.bn(self.conv(x)))
        x = F.flatten(F.max_pool2d(x, 2), 1)
        logits = self.fc(x) * scale
        return {"prob": F.softmax(logits, axis=1), "top": F.argmax(logits, axis=1),
                "picked": logits[:, mge.tensor([0, 2])]}


def _trained_net():
    net = SmallNet()
    # give batch norm non-trivial statistics, then freeze them for inference
    net.train()
    net(mge.tensor(np.random.rand(6, 1, 8, 8) * 3 + 1), mge.tensor(1.0))
    net.eval()
    return net


def test_dumped_program_runs_in_a_fresh_process(tmp_path):
    net = _trained_net()
    f = trace(lambda x, scale: net(x, scale), symbolic=True, capture_as_const=True)
    x = np.random.rand(3, 1, 8, 8).astype("float32")
    s = np.array(0.5, "float32")
    traced = f(mge.tensor(x), mge.tensor(s))
    traced = {k: v.numpy() for k, v in traced.items()}
    model = tmp_path / "model.mgf"
    info = f.dump(str(model), arg_names=["data", "scale"])
    assert info.inputs == ["data", "scale"]
    assert info.outputs == ["picked", "prob", "top"]  # a dict output: its sorted keys
    assert info.nr_opr > 5 and info.file_size == model.stat().st_size
    np.save(tmp_path / "x.npy", x)
    # the fresh process sees neither this file nor SmallNet: only the model file and megengine;
    # it has no GPU (the simulation is not installed there), so a program on an explicit GPU
    # (MGE_DEFAULT_DEVICE=gpu1) is mapped to the CPU as upstream's map_location would
    default = mge.get_default_device()
    child_device = None if default in ("xpux", "cpux", "cpu0") else "cpu0"
    script = textwrap.dedent(f"""
        import numpy as np
        from megengine.utils.comp_graph_tools import GraphInference
        net = GraphInference({str(model)!r}, device={child_device!r})
        assert net.input_names == ["data", "scale"], net.input_names
        out = net.run(np.load({str(tmp_path / 'x.npy')!r}), inp_dict={{"scale": 0.5}})
        for k, v in out.items():
            np.save({str(tmp_path)!r} + "/out_" + k + ".npy", v)
        print(sorted(out))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("MGE_SIM_CUDA", "MGE_DEFAULT_DEVICE")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['picked', 'prob', 'top']"
    on_host = canonical_device(None) == "cpu0"  # the child process has no GPU (simulated or not)
    for k, v in traced.items():
        got = np.load(tmp_path / f"out_{k}.npy")
        assert got.dtype == v.dtype and got.shape == v.shape
        if on_host:  # the same ops on the same values: bit-equal
            np.testing.assert_array_equal(got, v)
        else:  # traced on a GPU (dumped as xpux), run on the CPU: a float sum may round apart
            np.testing.assert_allclose(got, v, rtol=1e-6, atol=1e-7)


def test_upstream_dump_and_capture_examples():
    # upstream's test_dump: two inputs named arg_0, arg_1; GraphInference.run takes them in order
    @trace(symbolic=True, capture_as_const=True)
    def f(a, b):
        return a + b

    a, b = mge.tensor([2]), mge.tensor([4])
    y = f(a, b).numpy()
    file = io.BytesIO()
    info = f.dump(file)
    assert info.inputs == ["arg_0", "arg_1"] and info.outputs == ["ADD"]  # upstream's auto name
    file.seek(0)
    result = list(GraphInference(file).run(a, b).values())[0]
    np.testing.assert_equal(result, y)

    # upstream's test_capture_dump: an external tensor is captured by value
    k = mge.tensor([2])

    @trace(symbolic=True, capture_as_const=True)
    def g(x):
        return x * k

    x = mge.tensor([3])
    y = g(x).numpy()
    file = io.BytesIO()
    g.dump(file)
    k.set_value(mge.tensor([100]))  # later changes do not reach the dumped file
    file.seek(0)
    np.testing.assert_equal(GraphInference(file).run(x)["MUL"], y)


def test_keyword_inputs_and_tuple_outputs_are_named():
    f = trace(lambda x, *, bias: (x + bias, x * bias), symbolic=True, capture_as_const=True)
    x, bias = mge.tensor([1.0, 2.0]), mge.tensor([3.0, 4.0])
    outs = f(x, bias=bias)
    file = io.BytesIO()
    info = f.dump(file, output_names=["sum", "prod"], user_info={"author": "test"})
    assert info.inputs == ["arg_0", "kwarg_bias"]
    file.seek(0)
    net = GraphInference(file, outputs=["prod"])
    assert net.metadata == {"user_info": {"author": "test"}, "graph_modified": False,
                            "optimized_for_inference": True}
    got = net.run(inp_dict={"arg_0": x.numpy(), "kwarg_bias": bias.numpy()})
    assert list(got) == ["prod"]
    np.testing.assert_array_equal(got["prod"], outs[1].numpy())


def test_dump_errors_match_upstream():
    f = trace(lambda a, b: a + b, symbolic=True)
    f(mge.tensor([1.0]), mge.tensor([2.0]))
    with pytest.raises(ValueError, match="capture_as_const=True"):
        f.dump(io.BytesIO())
    g = trace(lambda a, b: a + b, symbolic=True, capture_as_const=True)
    for error in (ValueError, RuntimeError):  # (upstream 1.13 measured: ValueError;
        # earlier versions of this fork: RuntimeError)
        with pytest.raises(error, match=r"call the traced function once .* before dump\(\)"):
            g.dump(io.BytesIO())
    g(mge.tensor([1.0]), mge.tensor([2.0]))
    with pytest.raises(ValueError, match="wrong number of arg_names, should be 2 values"):
        g.dump(io.BytesIO(), arg_names=["a"])
    with pytest.raises(ValueError, match="wrong number of output_names, should be 1 values"):
        g.dump(io.BytesIO(), output_names=["a", "b"])
    h = trace(lambda a: {"y": a * 2}, symbolic=True, capture_as_const=True)
    h(mge.tensor([1.0]))
    with pytest.raises(TypeError, match="already in dict format"):
        h.dump(io.BytesIO(), output_names=["z"])
    # upstream 1.13 measured: ValueError("unknown options: ['no_such_option']")
    with pytest.raises(ValueError, match=r"unknown options \['no_such_option'\]"):
        g.dump(io.BytesIO(), no_such_option=1)
    g.dump(io.BytesIO(), optimize_for_inference=True, keep_var_name=2)  # upstream's: accepted


def test_loaded_program_checks_its_inputs():
    # symbolic_shape=False: the file records fixed shapes (a symbolic-shape program runs at new
    # sizes, but not with another number of dims: tests/jit/test_symbolic_shapes.py)
    f = trace(lambda a: a * 2, symbolic=True, capture_as_const=True, symbolic_shape=False)
    f(mge.tensor(np.ones((2, 3), "float32")))
    file = io.BytesIO()
    f.dump(file, arg_names="data")
    file.seek(0)
    net = GraphInference(file)
    with pytest.raises(ValueError, match=r"'data' has shape \(3, 3\).*\(2, 3\)"):
        net.run(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"no value for the inputs \['data'\]"):
        net.run()
    with pytest.raises(ValueError, match=r"no inputs named \['x'\]"):
        net.run(np.ones((2, 3)), inp_dict={"x": 1})
    with pytest.raises(ValueError, match="not a program written by"):
        GraphInference(io.BytesIO(b"not a model"))


class _Scale(Function):
    def forward(self, x):
        return x * 3

    def backward(self, dy):
        return dy * 3


def test_ops_that_hold_python_objects_cannot_be_dumped():
    f = trace(lambda x: _Scale()(x) + 1, symbolic=True, capture_as_const=True)
    f(mge.tensor([1.0]))
    with pytest.raises(DumpError, match=r"op #0 \(.*_Scale.*\), attribute 'fn'"):
        f.dump(io.BytesIO())


def test_pytorch_module_call_cannot_be_dumped():
    torch = pytest.importorskip("torch")
    from megengine.module.pytorch import PyTorchModule

    wrapped = PyTorchModule(torch.nn.Linear(3, 2))
    f = trace(lambda x: wrapped(x) * 2, symbolic=True, capture_as_const=True)
    f(mge.tensor(np.ones((1, 3), "float32")))
    with pytest.raises(DumpError, match=r"op #0 \(PyTorchModule\(Linear\)\).*PyTorchModule"):
        f.dump(io.BytesIO())


def test_training_steps_cannot_be_dumped():
    w = mge.Parameter([1.0, 2.0])
    gm = GradManager().attach(w)
    opt = mge.optimizer.SGD([w], lr=0.1)

    @trace(symbolic=True, capture_as_const=True)
    def step(x):
        with gm:
            loss = (w * x).sum()
            gm.backward(loss)
        opt.step().clear_grad()  # an update of a live Parameter: no file can hold it
        return loss

    step(mge.tensor([1.0, 1.0]))
    with pytest.raises(DumpError, match="SGD|Optimizer"):
        step.dump(io.BytesIO())


def test_a_value_read_to_the_host_that_no_input_reaches_is_dumped():
    # MegFlow's dump_resnet: a shape built with ops from the input's shape and a constant's
    # shape, then given to broadcast_to; the file computes the same value on every run
    m = np.arange(9, dtype=np.float32).reshape(3, 3)

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        mat = mge.tensor(m)
        shape = F.concat([x.shape[0], mat.shape])
        return F.broadcast_to(mat, shape) * x.mean()

    x = mge.tensor(np.random.RandomState(0).rand(2, 4).astype(np.float32))
    f(x)
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"])
    buf.seek(0)
    x2 = np.random.RandomState(1).rand(2, 4).astype(np.float32)  # new values, same shape
    (got,) = GraphInference(buf).run(x2).values()
    np.testing.assert_allclose(got, np.broadcast_to(m, (2, 3, 3)) * x2.mean(), rtol=1e-6)


SIZE_ARGUMENTS = {  # a function, its arguments when traced and when the file runs, the oracle
    "linspace": (F.linspace, [1, 9, 9], [2, 5, 4],
                 lambda a, b, n: np.linspace(a, b, n, dtype=np.float32)),
    "arange": (F.arange, [1, 9, 1], [2, 11, 3],
               lambda a, b, s: np.arange(a, b, s, dtype=np.float32)),
    "arange_floats": (F.arange, [9.3, 1.2, -0.5], [4.5, 1.0, -0.25],
                      lambda a, b, s: np.arange(a, b, s, dtype=np.float32)),
    "broadcast_to": (F.broadcast_to, [np.ones((10, 1), "float32"), np.array([20, 10, 20])],
                     [np.arange(10, dtype="float32").reshape(10, 1), np.array([3, 10, 4])],
                     lambda x, s: np.broadcast_to(x, tuple(s))),
    "reshape": (F.reshape, [np.arange(24, dtype="float32"), np.array([2, -1])],
                [np.arange(24, dtype="float32"), np.array([4, 3, 2])],
                lambda x, s: x.reshape(tuple(s))),
    "Tensor.reshape": (lambda x, s: x.reshape(s), [np.arange(24, dtype="float32"),
                                                   np.array([2, -1])],
                       [np.arange(12, dtype="float32"), np.array([-1, 6])],
                       lambda x, s: x.reshape(tuple(s))),
    # a Tensor among the entries of a shape: upstream's astensor1d concatenates them into the
    # operator's shape input
    "reshape(n, -1)": (lambda x, n: x.reshape(n, -1), [np.arange(24, dtype="float32"), 2],
                       [np.arange(12, dtype="float32"), 4], lambda x, n: x.reshape(n, -1)),
    "F.reshape((x.shape[0], n, -1))": (
        lambda x, n: F.reshape(x, (x.shape[0], n, -1)), [np.ones((4, 6), "float32"), 2],
        [np.arange(24, dtype="float32").reshape(6, 4), 4],
        lambda x, n: x.reshape(x.shape[0], n, -1)),
    "broadcast_to((n, None, x.shape[1]))": (
        lambda x, n: F.broadcast_to(x, (n, None, x.shape[1])), [np.ones((2, 3), "float32"), 4],
        [np.arange(5, dtype="float32").reshape(1, 5), 3],
        lambda x, n: np.broadcast_to(x, (n,) + x.shape)),
}


@pytest.mark.parametrize("name", SIZE_ARGUMENTS)
def test_sizes_from_tensor_arguments_are_inputs_of_the_dumped_program(name):
    # upstream's graph takes them as inputs (its Linspace, Broadcast and Reshape operators have a
    # shape or count input; arange computes its count with ops), so its opr_test dumps these
    # functions with every argument a Tensor and the file follows the values it is given
    fn, traced, other, oracle = SIZE_ARGUMENTS[name]
    f = trace(fn, symbolic=True, capture_as_const=True)
    np.testing.assert_allclose(f(*map(mge.tensor, traced)).numpy(), oracle(*traced), rtol=1e-6)
    # a later call with other values follows them too (as a data-decided shape: cond_take's)
    np.testing.assert_allclose(f(*map(mge.tensor, other)).numpy(), oracle(*other), rtol=1e-6)
    buf = io.BytesIO()
    f.dump(buf, arg_names=[f"a{i}" for i in range(len(traced))])
    for args in (traced, other):
        buf.seek(0)
        inputs = {f"a{i}": np.asarray(a) for i, a in enumerate(args)}
        (got,) = GraphInference(buf).run(inp_dict=inputs).values()
        np.testing.assert_allclose(got, oracle(*args), rtol=1e-6)


def test_a_shape_tensor_input_passes_gradients_to_the_data_only():
    # the gradient of broadcast_to is the sum over the broadcast dims (torch's expand: oracle)
    import torch

    x, shape = np.random.RandomState(0).rand(3, 1).astype("float32"), np.array([2, 3, 4])
    xt = torch.tensor(x, requires_grad=True)
    (xt.expand(*shape) * torch.arange(24.0).reshape(2, 3, 4)).sum().backward()

    @trace(symbolic=True, capture_as_const=True)
    def step(x, shape):
        with GradManager().attach(x) as gm:
            y = F.reshape(F.broadcast_to(x, shape), mge.tensor([-1]))
            gm.backward((y * F.arange(24)).sum())
        return x.grad

    x_m = mge.tensor(x)
    np.testing.assert_allclose(step(x_m, mge.tensor(shape)).numpy(), xt.grad.numpy(), rtol=1e-6)


def test_values_read_to_the_host_cannot_be_dumped_but_logged_ones_can():
    # the ops were built from the read value: a file (no Python to rerun) would keep it
    f = trace(lambda x, n: F.zeros((int(n), 2)) + x, symbolic=True, capture_as_const=True)
    f(mge.tensor([1.0, 2.0]), mge.tensor(3))
    with pytest.raises(DumpError, match="read the value of the tensor argument 'arg_1'"):
        f.dump(io.BytesIO())
    g = trace(lambda x: x.reshape(int(x.sum().item()), -1), symbolic=True, capture_as_const=True)
    g(mge.tensor([1.0, 1.0]))
    with pytest.raises(DumpError, match="output 0 of op #0"):
        g.dump(io.BytesIO())

    logged = []

    @trace(symbolic=True, capture_as_const=True)
    def h(x):
        y = x * 2
        with exclude_from_trace():
            logged.append(y.numpy().tolist())
        return y

    x = mge.tensor([1.0, 2.0])
    h(x)
    file = io.BytesIO()
    h.dump(file)
    file.seek(0)
    np.testing.assert_array_equal(GraphInference(file).run(x)["MUL"], [2.0, 4.0])
    assert logged == [[2.0, 4.0]]


_LABEL = np.array([0, 2], "int32")
OP_FAMILIES = {
    "elemwise": lambda x: F.exp(x) + F.log(x + 1) * F.tanh(x) - F.sigmoid(x) / 2 + F.sqrt(x) ** 2,
    "reduce": lambda x: (F.sum(x, axis=1), F.mean(x), F.max(x, axis=(2, 3)), F.min(x, 0)),
    "softmax_ce": lambda x: (F.softmax(x.reshape(2, -1), axis=1),
                             F.loss.cross_entropy(x.reshape(2, -1)[:, :5], mge.tensor(_LABEL))),
    "shape": lambda x: (F.concat([x, x], axis=1), F.stack([x, x]), x.transpose(0, 2, 3, 1),
                        x[:, 1:, ::2], F.broadcast_to(x[:, :1], (2, 3, 8, 8))),
    "index_compare": lambda x: (x[mge.tensor([1, 0])], F.where(x > 0.5, x, 0 * x),
                                F.one_hot(mge.tensor(_LABEL), 4), F.topk(x.reshape(-1), 3)),
    "pool_interp": lambda x: (F.avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 2),
                              F.vision.interpolate(x, scale_factor=2)),
    "misc": lambda x: (F.leaky_relu(x), F.gelu(x), F.maximum(x, 0.5), F.logsumexp(x, 1),
                       F.matmul(x, x.transpose(0, 1, 3, 2))),
}


@pytest.mark.parametrize("family", sorted(OP_FAMILIES))
def test_op_families_round_trip_bit_equal(family):
    x = mge.tensor(np.random.rand(2, 3, 8, 8).astype("float32"))
    f = trace(OP_FAMILIES[family], symbolic=True, capture_as_const=True)
    out = f(x)
    flat = []
    for o in (out if isinstance(out, tuple) else (out,)):
        flat.extend(o if isinstance(o, (tuple, list)) else [o])
    file = io.BytesIO()
    info = f.dump(file)
    file.seek(0)
    got = GraphInference(file).run(x)
    # outputs are named after their operators (upstream's auto-naming), each name once
    assert list(got) == info.outputs and len(set(info.outputs)) == len(flat)
    for g, o in zip(got.values(), flat):
        assert g.dtype == o.dtype
        np.testing.assert_array_equal(g, o.numpy())


# the logical functions and operators on bool tensors, with numpy's as the oracle
LOGICAL = {
    "logical_and": (lambda a, b: F.logical_and(a > 0, b > 0), lambda a, b: (a > 0) & (b > 0)),
    "logical_or": (lambda a, b: F.logical_or(a > 0, b > 0), lambda a, b: (a > 0) | (b > 0)),
    "logical_xor": (lambda a, b: F.logical_xor(a > 0, b > 0), lambda a, b: (a > 0) ^ (b > 0)),
    "logical_not": (lambda a, b: F.logical_not(a > 0), lambda a, b: ~(a > 0)),
    "&": (lambda a, b: (a > 0) & (b > 0), lambda a, b: (a > 0) & (b > 0)),
    "|": (lambda a, b: (a > 0) | (b > 0), lambda a, b: (a > 0) | (b > 0)),
    "^": (lambda a, b: (a > 0) ^ (b > 0), lambda a, b: (a > 0) ^ (b > 0)),
    "~": (lambda a, b: ~(a > 0), lambda a, b: ~(a > 0)),
}


@pytest.mark.parametrize("name", list(LOGICAL))
def test_logical_ops_are_dumped_and_loaded(name):
    # (earlier, F.logical_* made op classes inside a function, which dump could not name)
    fn, oracle = LOGICAL[name]
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 5)).astype("float32") for _ in range(2))
    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(a), mge.tensor(b))
    file = io.BytesIO()
    f.dump(file, arg_names=["a", "b"])
    a, b = (rng.standard_normal((3, 5)).astype("float32") for _ in range(2))  # another batch
    file.seek(0)
    got, = GraphInference(file).run(a, b).values()
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, oracle(a, b))


def test_a_program_handed_over_in_memory_is_the_file_read_back():
    # (what the reader of upstream .mge files uses instead of writing and reading a zip)
    from megengine.core.tensor import dtype as qdtype
    from megengine.jit.dump import in_memory, program_json, read_file, write_file

    # (quantized tensors live on the CPU only)
    q = mge.tensor([0.5, -1.0, 2.0], device="cpu0").astype(qdtype.qint8(0.25))
    f = trace(lambda x: (F.logical_not(x > 0), x.reshape(x.shape[0], -1) + q.astype("float32")),
              symbolic=True, capture_as_const=True)
    f(mge.tensor(np.ones((2, 3), "float32"), device="cpu0"))
    options = dict(arg_names=["x"], user_info={"k": (1, 2.5)}, input_data=[np.ones((4, 3))])
    graph, arrays = in_memory(*program_json(f._dumped_program(), **options))
    file_graph, file_arrays = read_file(io.BytesIO(write_file(*program_json(
        f._dumped_program(), **options), None)))
    assert graph == file_graph and "quantized_arrays" in graph and "testcases" in graph
    assert sorted(arrays) == sorted(file_arrays)
    for i, a in arrays.items():
        assert a.dtype == file_arrays[i].dtype and a.dtype.metadata == file_arrays[i].dtype.metadata
        np.testing.assert_array_equal(a, file_arrays[i], strict=True)


def test_scalar_constants_keep_their_shape_in_the_file():
    # a 0-d constant (x.sum() * 2) stays 0-d: written 1-d, the output became shape (1,)
    f = trace(lambda x: (x.sum() * 2, x * mge.tensor(3.0)), symbolic=True,
              capture_as_const=True)
    f(mge.tensor([1.0, 2.0]))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    out = GraphInference(file).run(np.array([4.0, 5.0], "float32"))
    assert list(out) == ["MUL[0]", "MUL[1]"]  # one name twice: numbered, as upstream's
    assert out["MUL[0]"].shape == () and out["MUL[0]"] == 18.0
    np.testing.assert_array_equal(out["MUL[1]"], [12.0, 15.0])


def _dumped_linear(device):
    w = mge.Parameter(np.random.randn(2, 3).astype("float32"), device=device)
    b = mge.Parameter(np.random.randn(2).astype("float32"), device=device)
    f = trace(lambda x: F.relu(F.linear(x, w, b)) + mge.tensor(1.5, device=device),
              symbolic=True, capture_as_const=True)
    x = mge.tensor(np.random.rand(2, 3).astype("float32"), device=device)
    expected = host(f(x))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    return file, host(x), expected


def test_loaded_constants_live_on_the_canonical_device():
    # a CPU name other than cpu0 ("cpux") still gives the constants the inputs' device
    file, x, expected = _dumped_linear("cpu0")
    prog = mge.jit.dump.load(file, device="cpux")
    assert prog.prog.consts and {d for _, _, d in prog.prog.consts} == {"cpu0"}
    out = prog.run({prog.inputs[0][0]: x})
    (got,) = out.values()
    np.testing.assert_array_equal(host(got), expected)
    assert got.device == "cpu0"


@requires_cuda
@pytest.mark.parametrize("device", [None, "gpu0", "cpu0"])
def test_program_traced_on_a_gpu_runs_where_it_is_loaded(device):
    # the file holds host arrays: loaded for a GPU, the constants must become CuPy arrays
    # (the replay hands them to the ops next to CuPy inputs)
    file, x, expected = _dumped_linear("gpu0")
    net = GraphInference(file, device=device)
    kinds = {type(a).__module__.split(".")[0] for _, a, _ in net._program.prog.consts}
    assert kinds == {"numpy" if device == "cpu0" else "cupy"}
    np.testing.assert_allclose(list(net.run(x).values())[0], expected, rtol=1e-6)


def test_file_overwritten_by_a_shorter_program_loads_the_new_one():
    big = exp_trace((50, 50))
    small = trace(lambda x: x + 1, symbolic=True, capture_as_const=True)
    small(mge.tensor([1.0]))
    file = io.BytesIO()
    big.dump(file)
    file.seek(0)
    small.dump(file)  # no truncate: the old bytes stay behind the new program
    file.seek(0)
    np.testing.assert_array_equal(GraphInference(file).run(np.array([2.0]))["ADD"], [3.0])


def test_programs_indexed_by_a_traced_tensor_and_random_ops_load():
    f = trace(lambda x, i: x[i] * 2, symbolic=True, capture_as_const=True)
    x, i = np.arange(6, dtype="float32").reshape(3, 2), np.array([2, 0], "int32")
    f(mge.tensor(x), mge.tensor(i))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    np.testing.assert_array_equal(GraphInference(file).run(x, np.array([1, 1], "int32"))
                                  ["MUL"], x[[1, 1]] * 2)
    rng = mge.random.RNG(seed=3)
    g = trace(lambda x: x + rng.uniform(size=(2,)), symbolic=True, capture_as_const=True)
    traced = g(mge.tensor([0.0, 0.0])).numpy()
    file = io.BytesIO()
    g.dump(file)
    expected = mge.random.RNG(seed=3)._gen()
    # as upstream's RNG operator, which keeps its seed: a loaded file's first run draws what
    # the traced call drew, and each further run goes on along the same sequence
    first = expected.uniform(size=(2,))
    np.testing.assert_allclose(traced, first, rtol=1e-6)
    file.seek(0)
    loaded = GraphInference(file)
    np.testing.assert_allclose(loaded.run(np.zeros(2, "float32"))["ADD"], first, rtol=1e-6)
    np.testing.assert_allclose(loaded.run(np.zeros(2, "float32"))["ADD"],
                               expected.uniform(size=(2,)), rtol=1e-6)
    # the global generator too: the file starts where the traced call's draw started
    h = trace(lambda: mge.random.normal(size=(3,)), symbolic=True, capture_as_const=True)
    drawn = h().numpy()
    file = io.BytesIO()
    h.dump(file)
    file.seek(0)
    mge.random.normal(size=(3,))  # the live generator moves on; the file does not follow it
    (out,) = GraphInference(file).run().values()
    np.testing.assert_array_equal(out, drawn)


def test_a_shape_entry_tensor_that_is_not_one_integer_is_refused_in_a_dumpable_trace():
    f = trace(lambda x, n: x.reshape(n, -1), symbolic=True, capture_as_const=True)
    with pytest.raises(TypeError, match="shape entry Tensor must hold one integer.*float32"):
        f(mge.tensor(np.ones(4, "float32")), mge.tensor(2.0))


def test_a_tensor_made_from_a_traced_tensor_follows_it_in_the_dumped_program():
    # upstream's Tensor(x) shares x's value, so the traced program computes it from x; a new
    # tensor made outside the ops was captured as a constant (earlier versions of this fork
    # dumped a program that returned the traced value, [2, 2, 2], for any x)
    @trace(capture_as_const=True)
    def f(x):
        return mge.Tensor(x) * 2

    f(mge.tensor(np.ones(3, np.float32)))
    f(mge.tensor(np.ones(3, np.float32)))  # a checked call
    buf = io.BytesIO()
    f.dump(buf, arg_names=("x",))
    buf.seek(0)
    x = np.arange(3, dtype=np.float32)
    (out,) = GraphInference(buf).run(inp_dict={"x": x}).values()
    np.testing.assert_array_equal(out, x * 2)


def test_a_tensor_made_from_a_traced_tensor_passes_the_gradient_as_in_eager_code():
    # (Tensor(w) is w under a new name for autodiff, traced or not: d sum(w * w) / dw = 2 w)
    def step(w):
        with GradManager().attach(w) as gm:
            gm.backward((mge.Tensor(w) * w).sum())
        return w.grad

    eager = step(mge.Parameter([1.0, 2.0])).numpy()
    traced = trace(step, symbolic=False)
    for _ in range(2):
        got = traced(mge.Parameter([1.0, 2.0])).numpy()
        np.testing.assert_array_equal(got, eager)
    np.testing.assert_array_equal(eager, [2.0, 4.0])
