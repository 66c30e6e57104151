"""Tests for megengine/amp/autocast.py and the casts it drives (megengine/core/amp.py, hooked
into matmul, linear, convolutions and PyTorchModule calls): the state as upstream's tests check
it, float16 values and float32 master gradients against PyTorch, torch.autocast inside
PyTorchModule, and amp training of the guide's LeNet reaching the float32 accuracy."""

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
from module_oracle import load_guide_example


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
                                         ("high_prec_dtype", "float64"),
                                         ("low_prec_dtype", "float64"),
                                         ("low_prec_dtype", "low")])
def test_setting_a_non_float_precision_is_refused_and_changes_nothing(name, value):
    # upstream's setters assert "casted type of amp should be float" for all but float16,
    # bfloat16 and float32 (float64 too, 1.13 measured)
    with pytest.raises(TypeError, match=f"{name}="):
        setattr(amp, name, value)
    with pytest.raises(AssertionError, match=f"{name}="):  # (upstream's assertion's type too)
        setattr(amp, name, value)
    # autocast itself: upstream's C++ setter raises RuntimeError when the block is entered
    with pytest.raises(RuntimeError, match=f"{name}="):
        amp.autocast(**{name: value})
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
        assert F.matmul(mge.tensor([[1, 2]]), mge.tensor([[3], [4]])).dtype == np.int32


def test_bfloat16_is_refused_by_engine_ops_with_a_reason():
    with amp.autocast(low_prec_dtype="bfloat16"):
        with pytest.raises(TypeError, match="low_prec_dtype='bfloat16' has no engine dtype"):
            F.linear(mge.tensor(np.ones((2, 3))), mge.tensor(np.ones((4, 3))))


def test_bfloat16_high_precision_is_accepted_and_refused_by_the_ops_that_use_it():
    # upstream 1.13 accepts high_prec_dtype="bfloat16" (autocast and the setter) and computes
    # exp & co. in bfloat16; numpy has none, so those ops refuse here, the others run
    x = mge.tensor(np.ones((2, 3), "float16"))
    with amp.autocast(high_prec_dtype="bfloat16"):
        assert amp.high_prec_dtype == "bfloat16"
        assert F.matmul(x, x.T).dtype == np.float16  # low precision: not affected
        with pytest.raises(TypeError, match="high_prec_dtype='bfloat16' has no engine dtype"):
            F.exp(x)
    assert amp.high_prec_dtype == "float32"


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
    ex = load_guide_example()
    data = _digits(ex)
    fp32_acc, fp32_dtypes, _ = _train(ex, data, use_amp=False)
    amp_acc, amp_dtypes, scaler = _train(ex, data, use_amp=True)
    assert fp32_dtypes == {np.dtype("float32")} and amp_dtypes == {np.dtype("float16")}
    assert scaler.scale_factor >= 2.0 ** 10  # no overflow pushed it down for good
    # 2 epochs of Adam: 0.90-0.95 over seeds 0-2 in both precisions (measured)
    assert fp32_acc > 0.88
    assert amp_acc >= fp32_acc - 0.03, (amp_acc, fp32_acc)


# Upstream's autocast also casts at its dispatcher (DTypePromoteTransformation): the float
# functions below compute in the high precision dtype, so a float16 operand gives float32, while
# the rest keep float16 (dtypes upstream 1.13 measured). Oracle: torch in float32 on the same
# float16 values; the float16 input's gradient stays float16.
_X16 = np.array([[0.25, -0.5, 0.75], [0.875, -0.125, 0.625]], "float16")
_LABEL = np.array([2, 0], "int32")
_TO_FLOAT32 = {
    "exp": (F.exp, torch.exp),
    "log": (lambda x: F.log(F.abs(x) + 1), lambda t: torch.log(t.abs() + 1)),
    "sqrt": (lambda x: F.sqrt(F.abs(x)), lambda t: t.abs().sqrt()),
    "sin": (F.sin, torch.sin), "cos": (F.cos, torch.cos), "tan": (F.tan, torch.tan),
    "asin": (F.asin, torch.asin), "acos": (F.acos, torch.acos), "atan": (F.atan, torch.atan),
    "sinh": (F.sinh, torch.sinh), "cosh": (F.cosh, torch.cosh), "asinh": (F.asinh, torch.asinh),
    "acosh": (lambda x: F.acosh(F.abs(x) + 1), lambda t: torch.acosh(t.abs() + 1)),
    "atanh": (F.atanh, torch.atanh), "expm1": (F.expm1, torch.expm1),
    "log1p": (lambda x: F.log1p(F.abs(x)), lambda t: torch.log1p(t.abs())),
    "softplus": (F.softplus, torch.nn.functional.softplus),
    "logsigmoid": (F.logsigmoid, torch.nn.functional.logsigmoid),
    "hsigmoid": (F.hsigmoid, torch.nn.functional.hardsigmoid),
    "truediv": (lambda x: x / 3, lambda t: t / 3),
    "rtruediv": (lambda x: 3 / (x + 2), lambda t: 3 / (t + 2)),
    "pow": (lambda x: x ** 2, lambda t: t ** 2),
    "F.pow": (lambda x: F.pow(F.abs(x), 0.5), lambda t: t.abs() ** 0.5),
    "atan2": (lambda x: F.atan2(x, x + 1), lambda t: torch.atan2(t, t + 1)),
    "logaddexp": (lambda x: F.logaddexp(x, x * 2), lambda t: torch.logaddexp(t, t * 2)),
    "logsumexp": (lambda x: F.logsumexp(x, 1), lambda t: torch.logsumexp(t, 1)),
    "logsoftmax": (lambda x: F.logsoftmax(x, 1), lambda t: torch.log_softmax(t, 1)),
    "normalize": (lambda x: F.normalize(x, axis=1),
                  lambda t: torch.nn.functional.normalize(t, dim=1)),
    "layer_norm": (lambda x: F.layer_norm(x, (3,), affine=False),
                   lambda t: torch.nn.functional.layer_norm(t, (3,))),
    "cross_entropy": (lambda x: F.nn.cross_entropy(x, mge.tensor(_LABEL)),
                      lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(_LABEL).long())),
    "bce": (lambda x: F.nn.binary_cross_entropy(x, mge.tensor(np.ones((2, 3), "float16"))),
            lambda t: torch.nn.functional.binary_cross_entropy_with_logits(t, torch.ones(2, 3))),
    "square_loss": (lambda x: F.nn.square_loss(x, x * 0.5, reduction="sum"),
                    lambda t: ((t - t * 0.5) ** 2).sum()),
}


@pytest.mark.parametrize("name", sorted(_TO_FLOAT32))
def test_float_functions_give_float32_of_float16_under_autocast(name):
    fn, torch_fn = _TO_FLOAT32[name]
    x = mge.Parameter(_X16)
    gm = GradManager().attach([x])
    with gm:
        with amp.autocast():
            y = fn(x)
        gm.backward(y.sum())
    assert y.dtype == np.float32  # upstream 1.13 measured: float32 (earlier versions: float16)
    t = torch.tensor(_X16.astype("float32"), requires_grad=True)
    ty = torch_fn(t)
    ty.sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=2e-3, atol=2e-3)
    assert x.grad.dtype == np.float16  # the gradient takes its tensor's dtype
    np.testing.assert_allclose(x.grad.numpy().astype("float32"), t.grad.numpy(),
                               rtol=4e-3, atol=4e-3)
    # the high precision dtype is what they take; upstream 1.13 measured: float32 for the ones
    # that bring the float32 input's own values back (logsumexp adds its max) and for the mean
    # of a loss (upstream's mean always gives float32)
    expected = np.float32 if name in ("bce", "cross_entropy", "logsoftmax", "logsumexp") \
        else np.float16
    with amp.autocast(high_prec_dtype="float16"):
        assert fn(mge.tensor(_X16.astype("float32"))).dtype == expected


@pytest.mark.parametrize("fn", [F.tanh, F.sigmoid, F.relu, F.abs, F.floor, F.gelu,
                                lambda x: x * 1.5, lambda x: x + 2, lambda x: F.softmax(x, 1),
                                lambda x: F.sum(x, 1), lambda x: F.max(x, 1),
                                lambda x: F.elemwise._elwise(x, mode="fast_tanh")])
def test_other_functions_keep_float16_under_autocast(fn):
    with amp.autocast():
        assert fn(mge.tensor(_X16)).dtype == np.float16  # upstream 1.13 measured


def test_the_matmul_operator_computes_in_float16_and_a_dot_product_is_left_alone():
    rng = np.random.RandomState(1)
    a, b = rng.randn(3, 4).astype("float32"), rng.randn(4, 2).astype("float32")
    u, v = rng.randn(4).astype("float32"), rng.randn(4).astype("float32")
    with amp.autocast():
        y = mge.tensor(a) @ mge.tensor(b)
        assert y.dtype == np.float16  # upstream 1.13 measured (earlier versions: float32)
        # two vectors are upstream's dot product, which autocast leaves in float32 (measured)
        assert (mge.tensor(u) @ mge.tensor(v)).dtype == np.float32
        assert F.matmul(mge.tensor(u), mge.tensor(v)).dtype == np.float32
    expected = a.astype("float16").astype("float32") @ b.astype("float16").astype("float32")
    np.testing.assert_allclose(y.numpy().astype("float32"), expected, rtol=2e-3, atol=2e-3)


_INT_OPERANDS = {
    "int32 @ float32": lambda i, f: i @ f,
    "matmul(float32, int8)": lambda i, f: F.matmul(f.T, i.astype("int8").T),
    "int16 @ int16": lambda i, f: i.astype("int16") @ i.astype("int16").T,
    "bool @ float32": lambda i, f: (i > 1) @ f,
    "linear(int32, float32, int32 bias)": lambda i, f: F.linear(i, f.T, mge.tensor([3, -1])),
    "conv2d(uint8, float32)": lambda i, f: F.conv2d(i.astype("uint8").reshape(1, 1, 2, 3),
                                                    f.reshape(1, 1, 2, 3)),
    "batch_norm(int32)": lambda i, f: F.batch_norm(
        i.reshape(1, 2, 3, 1), mge.tensor(np.zeros((1, 2, 1, 1), "float32")),
        mge.tensor(np.full((1, 2, 1, 1), 4.0, "float32")), training=False),
}


@pytest.mark.parametrize("case", sorted(_INT_OPERANDS))
def test_integer_and_bool_operands_of_low_precision_ops_compute_in_float16(case):
    # upstream's autocast casts every input of the ops it computes in low precision, integers
    # and bools too (upstream 1.13 measured: float16 out for each case here, where earlier
    # versions of this fork left them and gave float32, or int32 for int16 @ int16)
    i = mge.tensor(np.array([[1, 2, 3], [4, 0, 2]], "int32"))
    f = mge.tensor(np.array([[0.5, -1.5], [2.0, 1.0], [-0.25, 3.0]], "float32"))
    want = _INT_OPERANDS[case](i, f).astype("float32").numpy()  # exact: small integers, halves
    with amp.autocast():
        got = _INT_OPERANDS[case](i, f)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.numpy().astype("float32"), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("real_dtype", ["float32", "float16"])
@pytest.mark.parametrize("product", ["@", "matmul", "linear"])
def test_a_real_operand_with_a_complex_one_is_refused_as_torchs_autocast_does(product, real_dtype):
    rng = np.random.RandomState(2)
    a = rng.randn(3, 4).astype(real_dtype)
    c = (rng.randn(4, 2) + 1j * rng.randn(4, 2)).astype("complex64")
    # torch's oracle: autocast casts the real operand to float16 and leaves the complex one;
    # its matrix product then refuses the pair
    with pytest.raises(RuntimeError, match="same dtype"):
        with torch.autocast("cpu", dtype=torch.float16):
            torch.matmul(torch.from_numpy(a), torch.from_numpy(c))
    run = {"@": lambda x, y: x @ y, "matmul": F.matmul, "linear": lambda x, y: F.linear(x, y.T)}
    x, y = mge.tensor(a), mge.tensor(c)
    with amp.autocast():
        with pytest.raises(TypeError, match=f"a {real_dtype} operand with a complex64 one.*"
                           r"x.astype\('complex64'\)"):
            run[product](x, y)
        # cast as the message says, the product is torch's complex one (no float16 rounding)
        got = run[product](x.astype("complex64"), y)
    want = torch.matmul(torch.from_numpy(a).to(torch.complex64), torch.from_numpy(c))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: M.Conv3d(2, 3, 2), lambda: M.ConvTranspose3d(2, 3, 2)])
def test_3d_convolutions_are_not_autocast(make):
    # upstream's autocast covers its 2-d convolutions only: Convolution3D promotes as without
    # autocast (upstream 1.13 measured: float32 out of float32, and of float16 input too)
    m = make()
    x = np.random.RandomState(2).randn(1, 2, 3, 3, 3).astype("float32")
    expected = m(mge.tensor(x)).numpy()
    with amp.autocast():
        y = m(mge.tensor(x))
        assert m(mge.tensor(x.astype("float16"))).dtype == np.float32
    assert y.dtype == np.float32  # earlier versions of this fork: float16
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_multi_head_attention_keeps_its_inputs_dtype_under_autocast():
    # upstream runs it as one op (MultiHeadAttn) that its autocast has no rule for: float32 in,
    # float32 out (upstream 1.13 measured; earlier versions of this fork gave float16)
    m = M.MultiHeadAttention(4, 2)
    q = mge.tensor(np.random.RandomState(3).randn(3, 2, 4).astype("float32"))
    expected = m(q, q, q)[0].numpy()
    with amp.autocast():
        y = m(q, q, q)[0]
        assert amp.enabled  # still on after the call
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("symbolic", [False, True])
def test_traced_functions_cast_as_eager_ones(symbolic):
    from megengine.jit import trace

    w = mge.Parameter(np.random.RandomState(4).randn(3, 2).astype("float32"))

    @trace(symbolic=symbolic)
    @amp.autocast()
    def f(x):
        return F.matmul(x, w), F.exp(x), x / 2

    for seed in range(3):
        x = np.random.RandomState(seed).randn(2, 3).astype("float32")
        mm, e, d = f(mge.tensor(x))
        assert (mm.dtype, e.dtype, d.dtype) == (np.float16, np.float32, np.float32)
        np.testing.assert_allclose(e.numpy(), np.exp(x), rtol=1e-6)


def _recorded_function_backward_dtypes(autocast_backward):
    """The dtypes the ops of a user Function's backward give when an outer GradManager
    records that backward (its recorded path), autocast on in forward and in backward or not."""
    from megengine.autodiff import Function

    w = mge.tensor(np.random.RandomState(0).rand(3, 3).astype(np.float32))
    seen = []

    class Square(Function):  # (x * x) @ w
        def forward(self, x):
            self.x = x
            return (x * x) @ w

        def backward(self, g):
            seen.append((g.astype("float32") @ w.T).dtype)
            return (g @ w.T).astype("float32") * 2 * self.x

    x = mge.Parameter(np.random.RandomState(1).rand(2, 3).astype(np.float32))
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            with amp.autocast():
                y = Square()(x)
            with amp.autocast(enabled=autocast_backward):
                inner.backward(y.astype("float32").sum())
        assert x.grad._tracked  # (the recorded path ran)
    return seen


def test_a_user_functions_recorded_backward_is_cast_by_autocast_as_upstream():
    # upstream 1.13 measured: in a Function's backward under autocast, the float32 product
    # g @ w.T gives float16 (its backward is user code, whose ops autocast covers), unlike a
    # built-in op's recorded gradient (matinv's: float32, tests/functional/test_math.py)
    assert _recorded_function_backward_dtypes(True) == [np.float16]
    assert _recorded_function_backward_dtypes(False) == [np.float32]


def test_upstreams_import_path_of_the_state_module():
    import megengine.core.tensor.amp as core_amp  # upstream's path (a module here, not a package)

    assert core_amp is origin_amp
    with amp.autocast():
        assert core_amp.enabled and core_amp._get_amp_dtype_autocast()


def test_entering_gives_none_and_a_disabled_autocast_leaves_the_dtypes():
    # upstream 1.13 measured: ``with autocast() as a`` binds None, and a disabled autocast
    # leaves high/low_prec_dtype as they are (earlier versions of this fork bound the autocast
    # object and set the dtypes of a disabled one)
    with amp.autocast() as entered:
        assert entered is None and amp.enabled
        assert mge.config._compute_mode == "float32"  # (upstream sets it; earlier: "default")
    assert mge.config._compute_mode == "default"
    with amp.autocast(enabled=False, high_prec_dtype="float16", low_prec_dtype="float32"):
        assert (amp.enabled, amp.high_prec_dtype, amp.low_prec_dtype) == \
            (False, "float32", "float16")
    with amp.autocast():
        with amp.autocast(high_prec_dtype="float16"):
            assert (amp.enabled, amp.high_prec_dtype) == (True, "float16")
        assert (amp.enabled, amp.high_prec_dtype) == (True, "float32")
    assert (amp.enabled, amp.high_prec_dtype, amp.low_prec_dtype) == \
        (False, "float32", "float16")


_LOSS_X = np.array([[0.5, -1.25, 2.0], [1.5, 0.25, -0.75]], "float32")
_LOSS_Y01 = np.array([[1, 0, 1], [1, 1, 0]], "float32")
_LOSSES = {
    "ce": lambda x, red: F.nn.cross_entropy(x, mge.tensor([2, 0]), reduction=red),
    "ce_smooth": lambda x, red: F.nn.cross_entropy(x, mge.tensor([2, 0]), label_smooth=0.1,
                                                   reduction=red),
    "ce_probs": lambda x, red: F.nn.cross_entropy(F.softmax(x, axis=1), mge.tensor([2, 0]),
                                                  with_logits=False, reduction=red),
    "bce": lambda x, red: F.nn.binary_cross_entropy(x, mge.tensor(_LOSS_Y01), reduction=red),
    "bce_label16": lambda x, red: F.nn.binary_cross_entropy(
        x, mge.tensor(_LOSS_Y01.astype("float16")), reduction=red),
    "square": lambda x, red: F.nn.square_loss(x, mge.tensor(_LOSS_Y01), reduction=red),
}
# upstream 1.13 measured under autocast(high_prec_dtype="float16") on _LOSS_X (float32, or
# cast to float16 first: "16"): the loss's dtype and value, and the float32 gradient of the
# loss (its sum for "none") with respect to _LOSS_X
_LOSSES_UPSTREAM = {
    ("ce", "mean", "32"): ("float32", 0.281738, [[0.08844, 0.015366, -0.10376],
                                                 [-0.140869, 0.102905, 0.037842]]),
    ("ce", "sum", "32"): ("float32", 0.563477, [[0.17688, 0.030731, -0.20752],
                                                [-0.281738, 0.205811, 0.075684]]),
    ("ce", "sum", "16"): ("float16", 0.563477, [[0.17688, 0.030731, -0.20752],
                                                [-0.281738, 0.205811, 0.075684]]),
    ("ce", "none", "32"): ("float32", [0.232422, 0.331055], None),
    ("ce", "none", "16"): ("float16", [0.232422, 0.331055], None),
    ("ce_smooth", "mean", "16"): ("float32", 0.419531, [[0.071777, -0.001297, -0.070312],
                                                        [-0.107422, 0.086243, 0.021179]]),
    ("ce_smooth", "none", "32"): ("float32", [0.390755, 0.447721], None),
    ("ce_probs", "mean", "32"): ("float32", 0.281677, None),
    ("ce_probs", "none", "32"): ("float16", [0.232544, 0.330811], None),
    ("bce", "mean", "32"): ("float32", 0.336263, [[-0.062927, 0.037109, -0.019867],
                                                  [-0.030396, -0.072937, 0.053467]]),
    ("bce", "sum", "16"): ("float32", 2.017578, None),
    ("bce", "none", "32"): ("float32", [[0.474121, 0.251953, 0.126953],
                                        [0.201416, 0.576172, 0.386963]], None),
    ("bce_label16", "sum", "32"): ("float16", 2.017578, None),
    ("bce_label16", "mean", "16"): ("float32", 0.336263, None),
    ("square", "mean", "32"): ("float32", 0.697917, [[-0.166626, -0.416565, 0.333252],
                                                     [0.166626, -0.249939, -0.249939]]),
    ("square", "sum", "32"): ("float16", 4.1875, [[-1.0, -2.5, 2.0], [1.0, -1.5, -1.5]]),
    ("square", "none", "16"): ("float16", [[0.25, 1.5625, 1.0], [0.25, 0.5625, 0.5625]],
                               None),
}


@pytest.mark.parametrize("case", sorted(_LOSSES_UPSTREAM))
def test_losses_under_a_float16_high_precision_give_upstreams_dtypes(case):
    # upstream composes its losses of float functions (in high_prec_dtype), the inputs' own
    # values and a mean that always gives float32; earlier versions of this fork gave float16
    # for all of them. Values: within 2 float16 ulps of upstream's (which rounds each step).
    name, reduction, in_dtype = case
    dtype, value, grad = _LOSSES_UPSTREAM[case]
    x = mge.Parameter(_LOSS_X)
    gm = GradManager().attach([x])
    with gm:
        inp = x if in_dtype == "32" else x.astype("float16")
        with amp.autocast(high_prec_dtype="float16"):
            loss = _LOSSES[name](inp, reduction)
        gm.backward(loss.sum() if reduction == "none" else loss)
    assert loss.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss.numpy().astype("float32"), value, rtol=2e-3, atol=1e-3)
    assert x.grad.dtype == np.float32
    if grad is not None:
        np.testing.assert_allclose(x.grad.numpy(), grad, rtol=2e-3, atol=5e-4)


@pytest.mark.parametrize("kwargs", [{"low_prec_dtype": "bogus"}, {"low_prec_dtype": "int8"},
                                    {"high_prec_dtype": "bogus"}, {"high_prec_dtype": "float64"},
                                    {"low_prec_dtype": "float64"}])
def test_autocast_refuses_a_non_float_dtype_at_construction(kwargs):
    # upstream 1.13 measured: autocast(low_prec_dtype="bogus") constructs and the first covered
    # op raises RuntimeError ("casted type of amp should be float, but you give bogus"); it
    # accepts "float16", "bfloat16" and "float32" only (its setters refuse float64 too). Here
    # the constructor refuses, naming those (earlier versions of this fork also refused at the
    # first op only, and accepted float64)
    with pytest.raises(TypeError, match=r"prec_dtype='.*'float16', 'bfloat16' and 'float32'"):
        amp.autocast(**kwargs)
    assert not amp.enabled
    assert (amp.low_prec_dtype, amp.high_prec_dtype) == ("float16", "float32")
