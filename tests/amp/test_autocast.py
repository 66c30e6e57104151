"""Tests for megengine/amp/autocast.py and the casts it drives (megengine/core/amp.py, hooked
into matmul, linear, convolutions and PyTorchModule calls): the state as upstream's tests check
it, float16 values and float32 master gradients against PyTorch, torch.autocast inside
PyTorchModule, and amp training of the guide's LeNet reaching the float32 accuracy."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.amp as amp
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.core import amp as origin_amp

from devices import torch_device, torch_host


def test_state_as_upstream_checks_it():
    # upstream's newest test_autocast.py: the properties of megengine.amp and of the core state
    # module (megengine.core.tensor.amp) and its core2 getters agree
    from megengine.core._imperative_rt import core2
    from megengine.core.tensor import amp as core_amp

    def check(enabled, low, high):
        assert amp.enabled == enabled and origin_amp._enabled == enabled
        assert core_amp.enabled == enabled and core2._get_amp_dtype_autocast() == enabled
        assert amp.low_prec_dtype == low and origin_amp._get_amp_low_prec_dtype() == low
        assert amp.high_prec_dtype == high and origin_amp._get_amp_high_prec_dtype() == high
        assert core_amp.low_prec_dtype == low and core2._get_amp_high_prec_dtype() == high

    origin = amp.enabled, amp.low_prec_dtype, amp.high_prec_dtype
    assert origin == (False, "float16", "float32")
    with amp.autocast(low_prec_dtype="float16", high_prec_dtype="float32"):
        check(True, "float16", "float32")
    check(*origin)
    core_amp.enabled, amp.high_prec_dtype, amp.low_prec_dtype = True, np.float32, "bfloat16"
    check(True, "bfloat16", "float32")  # names as upstream spells them, numpy dtypes too
    amp.enabled, amp.low_prec_dtype, amp.high_prec_dtype = origin
    check(*origin)


@pytest.mark.parametrize("name, value", [("low_prec_dtype", "int8"),
                                         ("high_prec_dtype", "bfloat16"),
                                         ("low_prec_dtype", "low")])
def test_setting_a_non_float_precision_is_refused_and_changes_nothing(name, value):
    # upstream's setters assert "casted type of amp should be float"; bfloat16 is a torch
    # dtype (for PyTorchModule calls), never an engine compute dtype for the kept precision
    with pytest.raises(TypeError, match=f"{name}="):
        setattr(amp, name, value)
    assert (amp.low_prec_dtype, amp.high_prec_dtype) == ("float16", "float32")


def test_core2_reports_that_inputs_are_always_converted():
    from megengine.core._imperative_rt.core2 import _get_convert_inputs

    assert _get_convert_inputs() is True


def test_decorator_nesting_and_exceptions_restore_the_state():
    seen = []

    @amp.autocast()
    def f():
        seen.append(amp.enabled)
        with amp.autocast(enabled=False):
            seen.append(amp.enabled)
        seen.append(amp.enabled)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        f()
    assert seen == [True, False, True] and amp.enabled is False
    ctx = amp.autocast()
    with ctx:
        with ctx:  # one object entered twice restores each level
            assert amp.enabled
        assert amp.enabled
    assert not amp.enabled


@pytest.mark.parametrize("case", ["linear", "matmul", "conv2d", "conv1d", "conv_transpose2d"])
def test_covered_ops_compute_in_float16_with_float32_master_gradients(case):
    rng = np.random.RandomState(0)
    shapes = {"linear": ((4, 6), (3, 6), (3,)), "matmul": ((2, 4, 6), (6, 5), None),
              "conv2d": ((2, 3, 6, 6), (4, 3, 3, 3), (1, 4, 1, 1)),
              "conv1d": ((2, 3, 7), (4, 3, 3), (1, 4, 1)),
              "conv_transpose2d": ((2, 3, 4, 4), (3, 2, 3, 3), (1, 2, 1, 1))}[case]
    arrays = [None if s is None else rng.randn(*s).astype("float32") for s in shapes]
    mge_fn = {"linear": F.linear, "matmul": F.matmul, "conv2d": F.conv2d, "conv1d": F.conv1d,
              "conv_transpose2d": F.conv_transpose2d}[case]
    torch_fn = {"linear": torch.nn.functional.linear, "matmul": torch.matmul,
                "conv2d": lambda x, w, b: torch.nn.functional.conv2d(x, w, b.reshape(-1)),
                "conv1d": lambda x, w, b: torch.nn.functional.conv1d(x, w, b.reshape(-1)),
                "conv_transpose2d": lambda x, w, b: torch.nn.functional.conv_transpose2d(
                    x, w, b.reshape(-1))}[case]
    xs = [None if a is None else mge.Parameter(a) for a in arrays]
    gm = GradManager().attach([x for x in xs if x is not None])
    with gm:
        with amp.autocast():
            y = mge_fn(*xs) if xs[-1] is not None else mge_fn(*xs[:-1])
        dy = rng.randn(*y.shape).astype("float16")
        gm.backward(y, mge.tensor(dy))
    assert y.dtype == np.float16  # computed in low precision
    # the oracle: torch in float32 on the float16-rounded inputs
    ts = [None if a is None else torch.tensor(a.astype("float16").astype("float32"),
                                              requires_grad=True) for a in arrays]
    ty = torch_fn(*ts) if ts[-1] is not None else torch_fn(*ts[:-1])
    ty.backward(torch.tensor(dy.astype("float32")))
    np.testing.assert_allclose(y.numpy().astype("float32"), ty.detach().numpy(),
                               rtol=1e-2, atol=1e-2)
    for x, t in zip(xs, ts):
        if x is None:
            continue
        assert x.dtype == np.float32 and x.grad.dtype == np.float32  # master weights stay fp32
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=2e-2, atol=2e-2)


def test_outside_autocast_nothing_is_cast():
    x, w = mge.tensor(np.ones((2, 3), "float32")), mge.tensor(np.ones((4, 3), "float32"))
    assert F.linear(x, w).dtype == np.float32
    with amp.autocast(enabled=False):
        assert F.matmul(x, w.T).dtype == np.float32
    with amp.autocast():  # integer operands are left alone
        assert F.matmul(mge.tensor([[1, 2]]), mge.tensor([[3], [4]])).dtype == np.int32


def test_bfloat16_is_refused_by_engine_ops_with_a_reason():
    with amp.autocast(low_prec_dtype="bfloat16"):
        with pytest.raises(TypeError, match="no bfloat16"):
            F.linear(mge.tensor(np.ones((2, 3))), mge.tensor(np.ones((4, 3))))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.fc = torch.nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pytorch_module_runs_under_torch_autocast(dtype):
    from megengine.module.pytorch import PyTorchModule

    torch.manual_seed(0)
    block = _Block()
    wrapped = PyTorchModule(block)
    x = np.random.RandomState(0).randn(2, 2, 6, 6).astype("float32")
    gm = GradManager().attach(wrapped.parameters())
    with gm:
        with amp.autocast(low_prec_dtype=dtype):
            y = wrapped(mge.tensor(x))
        gm.backward(y.astype("float32").sum())
    # the oracle: the same torch module under torch.autocast with the same dtype, on the device
    # the wrapped one runs on (a GPU's float16 kernels do not round as the CPU's do)
    where = torch_device()
    ref_block = _Block().to(where)
    ref_block.load_state_dict(block.state_dict())
    with torch.autocast(torch.device(where).type, dtype=getattr(torch, dtype)):
        ty = ref_block(torch.tensor(x, device=where))
    ty.float().sum().backward()
    # bfloat16 has no numpy dtype: it crosses into megengine as float32 (exact)
    assert y.dtype == (np.float16 if dtype == "float16" else np.float32)
    assert ty.dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(y.numpy(), torch_host(ty.float()).astype(y.dtype))
    ref_params = dict(ref_block.named_parameters())
    for name, p in wrapped.named_parameters():
        tp = ref_params[name]
        assert p.grad.dtype == np.float32, name
        np.testing.assert_allclose(p.grad.numpy(), torch_host(tp.grad), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # outside autocast the module runs in float32 again
        assert wrapped(mge.tensor(x)).dtype == np.float32


# ----- the guide's LeNet, trained with amp --------------------------------------------------------
def _example():
    path = Path(__file__).resolve().parents[2] / "examples" / "lenet_pytorch.py"
    spec = importlib.util.spec_from_file_location("lenet_pytorch_example_amp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digits(ex):
    train, test, _, test_transform = ex.load_digits_datasets(0)

    def arrays(ds):
        pairs = [test_transform.apply(ds[i]) for i in range(len(ds))]
        return (np.stack([p[0] for p in pairs]).astype("float32"),
                np.array([p[1] for p in pairs], "int32"))

    return arrays(train), arrays(test)


def _train(ex, data, use_amp, epochs=2, batch=64, seed=0):
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    mge.random.seed(seed)  # the same initial weights in both precisions
    net = ex.LeNet(ex.LeNet_Extract())
    gm = GradManager().attach(net.parameters())
    opt = optim.Adam(net.parameters(), lr=0.004)
    scaler = amp.GradScaler(init_scale=2.0 ** 10, growth_interval=40)
    rng = np.random.RandomState(seed)
    dtypes = set()
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for k in range(0, len(order) - batch + 1, batch):
            idx = order[k:k + batch]
            with amp.autocast(enabled=use_amp):
                with gm:
                    logits = net(mge.tensor(xtr[idx]))
                    loss = F.loss.cross_entropy(logits, mge.tensor(ytr[idx]))
                    if use_amp:
                        scaler.backward(gm, loss)
                    else:
                        gm.backward(loss)
            dtypes.add(logits.dtype)
            opt.step().clear_grad()
    assert all(p.dtype == np.float32 for p in net.parameters())  # master weights
    net.eval()
    with amp.autocast(enabled=use_amp):
        pred = F.argmax(net(mge.tensor(xte)), axis=1).numpy()
    return float((pred == yte).mean()), dtypes, scaler


def test_amp_training_of_the_guides_lenet_reaches_float32_accuracy():
    pytest.importorskip("sklearn")
    ex = _example()
    data = _digits(ex)
    fp32_acc, fp32_dtypes, _ = _train(ex, data, use_amp=False)
    amp_acc, amp_dtypes, scaler = _train(ex, data, use_amp=True)
    assert fp32_dtypes == {np.dtype("float32")} and amp_dtypes == {np.dtype("float16")}
    assert scaler.scale_factor >= 2.0 ** 10  # no overflow pushed it down for good
    # 2 epochs of Adam: 0.90-0.95 over seeds 0-2 in both precisions (measured)
    assert fp32_acc > 0.88
    assert amp_acc >= fp32_acc - 0.03, (amp_acc, fp32_acc)
