"""Tests of megengine/functional/loss.py: values and gradients against torch.nn.functional."""
import contextlib
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.functional import _aten
from megengine.functional import loss as loss_module
from megengine.functional.loss import _CrossEntropy

from devices import (host, host_default_device, requires_cuda,  # noqa: F401  (a fixture)
                     requires_torch_cuda, skip_unless_aten_serves_the_default_device)
from cuda_kernels import emulate
from oracle import (check_against_torch, check_float16_against_torch, within_a_float16_step,
                    raises_as_upstream)
from oracle import check_second_order_against_torch as check_second_order

REDUCTIONS = ["none", "mean", "sum"]


def rand(*shape, low=-2.0, high=2.0):
    return np.asarray(np.random.uniform(low, high, shape), dtype=np.float32)


check = partial(check_against_torch, atol=1e-6, check_dtype=True)


def labels(n, classes, *extra):
    return np.random.randint(0, classes, (n,) + extra).astype(np.int32)


# ----- cross entropy -----
# Every cross-entropy test runs on each of the op's paths: the default (on the CPU, (N, C)
# logits take ATen's log_softmax with numpy around it, the rest the array code), the array code
# alone (what runs without torch, and what CuPy runs when torch has no CUDA), and ATen's general
# kernels (what CUDA arrays take), forced here onto numpy arrays so that the GPU's code is
# checked on the CPU. On a GPU the "default" and "aten" runs take the ATen path.


@pytest.fixture(params=["default", "arrays", "aten"])
def ce_path(request, monkeypatch):
    """Run the test on one path; on "aten", fail if the ATen forward never ran."""
    if request.param == "default":
        yield request.param
        return
    if request.param == "arrays":
        with _aten.avoided("cross_entropy"):
            yield request.param
        return
    skip_unless_aten_serves_the_default_device()
    calls = []
    forward = _CrossEntropy._forward_aten

    def spy(self, *args):
        calls.append(self)
        return forward(self, *args)

    monkeypatch.setattr(_CrossEntropy, "_forward_aten", spy)
    with _aten.forced("cross_entropy"):
        yield request.param
    assert calls, "the ATen path of cross_entropy did not run"

@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_logits(reduction):
    pred, label = rand(16, 10, low=-5, high=5), labels(16, 10)
    check(lambda p, y: F.nn.cross_entropy(p, y, reduction=reduction),
          lambda p, y: TF.cross_entropy(p, y.long(), reduction=reduction), pred, label)


@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("ls", [0.1, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_label_smoothing_matches_torch(ls, reduction):
    pred, label = rand(8, 6, low=-4, high=4), labels(8, 6)
    check(lambda p, y: F.nn.cross_entropy(p, y, label_smooth=ls, reduction=reduction),
          lambda p, y: TF.cross_entropy(p, y.long(), label_smoothing=ls, reduction=reduction),
          pred, label)


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_spatial_axis_1():
    pred, label = rand(2, 5, 3, 4), labels(2, 5, 3, 4)
    check(lambda p, y: F.nn.cross_entropy(p, y, label_smooth=0.2),
          lambda p, y: TF.cross_entropy(p, y.long(), label_smoothing=0.2), pred, label)


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_last_axis():
    pred, label = rand(3, 4, 7), labels(3, 7, 4)
    check(lambda p, y: F.nn.cross_entropy(p, y, axis=-1),
          lambda p, y: TF.cross_entropy(p.permute(0, 2, 1), y.long()), pred, label)


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_large_logits_are_stable():
    pred = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 0.0]], np.float32)
    label = np.array([2, 1], np.int32)
    check(lambda p, y: F.nn.cross_entropy(p, y),
          lambda p, y: TF.cross_entropy(p, y.long()), pred, label, rtol=1e-5, atol=1e-4)


@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("ls", [0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(ls, reduction):
    pred = torch.softmax(torch.tensor(rand(6, 5)), 1).numpy()
    label = labels(6, 5)

    def expected(p, y):  # upstream's formula: -(1 - ls) log p_y - ls * mean(log p)
        logp = torch.log(p)
        loss = -(1 - ls) * logp.gather(1, y.long()[:, None])[:, 0] - ls * logp.mean(1)
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    check(lambda p, y: F.nn.cross_entropy(p, y, with_logits=False, label_smooth=ls,
                                          reduction=reduction), expected, pred, label)


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_accepts_float_class_ids():
    # upstream's documented example: float labels, value 0.57976407 (doctest-skipped upstream)
    pred = np.array([[0.0, 1.0], [0.3, 0.7], [0.7, 0.3]], np.float32)
    loss = F.nn.cross_entropy(mge.tensor(pred), mge.tensor([1.0, 1.0, 1.0]))
    expect = TF.cross_entropy(torch.tensor(pred), torch.tensor([1, 1, 1]))
    np.testing.assert_allclose(loss.numpy(), expect.numpy(), rtol=1e-6)


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_with_softmax_is_the_mean_loss():
    pred, label = rand(5, 4), labels(5, 4)
    a = F.cross_entropy_with_softmax(mge.tensor(pred), mge.tensor(label), label_smooth=0.1)
    b = F.nn.cross_entropy(mge.tensor(pred), mge.tensor(label), label_smooth=0.1)
    np.testing.assert_allclose(a.numpy(), b.numpy())



@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", ">i4"])
def test_cross_entropy_label_dtypes_match_torch_and_are_range_checked(dtype):
    # the CPU (N, C) path checks the range through the label lookup (labels seen as unsigned);
    # big-endian labels have no unsigned twin and take the explicit check
    pred = rand(4, 3)
    good = np.array([0, 2, 1, 2]).astype(dtype)
    got = F.nn.cross_entropy(mge.tensor(pred), mge.tensor(good))
    want = TF.cross_entropy(torch.from_numpy(pred), torch.from_numpy(good.astype(np.int64)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 3\]"):
        F.nn.cross_entropy(mge.tensor(pred), mge.tensor(np.array([0, 3, 1, 2]).astype(dtype)))
    if np.dtype(dtype).kind == "i":
        with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
            F.nn.cross_entropy(mge.tensor(pred), mge.tensor(np.array([0, -1, 1, 2]).astype(dtype)))

@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_errors():
    pred = mge.tensor(rand(4, 3))
    # each both the ValueError it is and upstream's type (RuntimeError, AssertionError)
    for upstream_type in (ValueError, RuntimeError):
        with pytest.raises(upstream_type, match=r"cross_entropy: label of shape \(5,\).*\(4, 3\)"):
            F.nn.cross_entropy(pred, mge.tensor(labels(5, 3)))
    for upstream_type in (ValueError, AssertionError):
        with pytest.raises(upstream_type, match="one dim less"):
            F.nn.cross_entropy(pred, mge.tensor(labels(4, 3, 2)))
    for upstream_type in (ValueError, RuntimeError):
        with pytest.raises(upstream_type, match=r"labels must be in \[0, 3\)"):
            F.nn.cross_entropy(pred, mge.tensor([0, 1, 2, 3]))
        with pytest.raises(upstream_type, match=r"labels must be in \[0, 3\), got values in "
                                                r"\[-1, 2\]"):
            F.nn.cross_entropy(pred, mge.tensor([0, -1, 2, 1]))  # negatives, not wrapped around
        with pytest.raises(upstream_type, match=r"labels must be in \[0, 3\), got values in "
                                                r"\[3, 3\]"):  # (a class per pixel)
            F.nn.cross_entropy(mge.tensor(rand(2, 3, 2, 2)), mge.tensor(np.full((2, 2, 2), 3)),
                               axis=1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.nn.cross_entropy(pred, mge.tensor(labels(4, 3)), reduction="avg")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 3\]"):
        F.nn.cross_entropy(pred, mge.tensor(np.array([0, 3, 2, 1], np.uint8)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 3\]"):
        F.nn.cross_entropy(pred, mge.tensor(np.array([[0, 1], [3, 1]], np.int32)).reshape(4),
                           with_logits=False, label_smooth=0.1)
    # the checks come first and leave nothing behind: a valid call after them works
    ok = F.nn.cross_entropy(pred, mge.tensor(np.array([2, 0, 1, 2], np.uint8)))
    np.testing.assert_allclose(ok.numpy(), TF.cross_entropy(
        torch.tensor(pred.numpy()), torch.tensor([2, 0, 1, 2])).numpy(), rtol=1e-6)


@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_first_axis_of_3d_input(reduction):
    # classes on axis 0: the ATen path sees (1, C, B, 1), nll_loss2d's layout
    pred, label = rand(5, 3, 4), labels(3, 5, 4)
    check(lambda p, y: F.nn.cross_entropy(p, y, axis=0, label_smooth=0.1, reduction=reduction),
          lambda p, y: TF.cross_entropy(p[None], y.long()[None], label_smoothing=0.1,
                                        reduction=reduction)[0 if reduction == "none" else ...],
          pred, label)


@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("with_logits", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_cross_entropy_keeps_float16_and_float64(dtype, with_logits):
    # value and gradient in pred's dtype, against torch in float64 on the same (rounded) input
    logits = rand(6, 5).astype(dtype)
    pred = logits if with_logits else (np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    pred = pred.astype(dtype)
    label = labels(6, 5)
    p = mge.tensor(pred, dtype=dtype)  # float64 input is stored as float32 unless asked
    with GradManager().attach(p) as gm:
        loss = F.nn.cross_entropy(p, mge.tensor(label), with_logits=with_logits,
                                  label_smooth=0.2, reduction="sum")
        gm.backward(loss)
    pt = torch.tensor(pred.astype(np.float64), requires_grad=True)
    logp = torch.log_softmax(pt, 1) if with_logits else torch.log(pt)
    expect = (-(0.8 * logp.gather(1, torch.tensor(label).long()[:, None])[:, 0]
                + 0.2 * logp.mean(1))).sum()
    expect.backward()
    tol = 2e-3 if dtype == "float16" else 1e-10
    assert loss.dtype == np.dtype(dtype) and p.grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss.numpy(), expect.item(), rtol=tol)
    np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=tol,
                               atol=tol * np.abs(pt.grad.numpy()).max())


@pytest.mark.usefixtures("ce_path")
@pytest.mark.parametrize("ls", [0.0, 0.3])
@pytest.mark.parametrize("axis", [1, -1])
def test_cross_entropy_second_order_matches_torch(ls, axis):
    # a gradient penalty: d/dx <dL/dx, v>, the gradient graph recorded by an outer manager
    pred, v = rand(3, 4, 5), rand(3, 4, 5)
    label = labels(3, 4, 5) if axis == 1 else labels(3, 5, 4)
    x = mge.Parameter(pred)
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            inner.backward(F.nn.cross_entropy(x * x, mge.tensor(label), axis=axis,
                                              label_smooth=ls))
        first = x.grad
        x.grad = None
        outer.backward((first * mge.tensor(v)).sum())
    xt = torch.tensor(pred, requires_grad=True)
    logits = (xt * xt).movedim(axis, 1)
    (gt,) = torch.autograd.grad(TF.cross_entropy(logits, torch.tensor(label).long(),
                                                 label_smoothing=ls), xt, create_graph=True)
    (hv,) = torch.autograd.grad((gt * torch.tensor(v)).sum(), xt)
    np.testing.assert_allclose(first.numpy(), gt.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), hv.numpy(), rtol=1e-4, atol=1e-5)


def _loss_and_grad_on(device, pred, label, **kwargs):
    p = mge.tensor(pred, device=device)
    with GradManager().attach(p) as gm:
        loss = F.nn.cross_entropy(p, mge.tensor(label, device=device), **kwargs)
        gm.backward(loss, mge.tensor(np.ones(loss.shape, np.float32), device=device))
    return host(loss), host(p.grad)


@requires_torch_cuda
@pytest.mark.parametrize("kwargs", [{}, dict(label_smooth=0.1, reduction="none"),
                                    dict(axis=0, with_logits=False, reduction="sum")])
def test_cross_entropy_on_a_gpu_runs_aten_and_matches_the_cpu(monkeypatch, kwargs):
    calls = []
    forward = _CrossEntropy._forward_aten
    monkeypatch.setattr(_CrossEntropy, "_forward_aten",
                        lambda self, *a: calls.append(1) or forward(self, *a))
    pred = rand(6, 5, 4, low=0.05, high=1)
    label = labels(5, 6, 4) if kwargs.get("axis") == 0 else labels(6, 5, 4)[:, 0]
    if kwargs.get("axis") != 0:
        pred = pred[:, :, 0].copy()
    on_gpu = _loss_and_grad_on("gpu0", pred, label, **kwargs)
    assert calls, "cross_entropy did not take ATen's kernels on the GPU"
    on_cpu = _loss_and_grad_on("cpu0", pred, label, **kwargs)  # the array code
    for got, want in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a bad label is a ValueError before any kernel runs (no device-side assert), and the
    # device still works afterwards
    with pytest.raises(ValueError, match="labels must be in"):
        _loss_and_grad_on("gpu0", pred, label + 10, **kwargs)
    np.testing.assert_allclose(_loss_and_grad_on("gpu0", pred, label, **kwargs)[0], on_cpu[0],
                               rtol=1e-5, atol=1e-6)


@requires_cuda
def test_cross_entropy_on_a_gpu_without_torch_cuda_keeps_cupys_array_code(monkeypatch):
    monkeypatch.setattr(_aten, "_torch_cuda", False)  # as with a CPU-only torch
    pred, label = rand(8, 5), labels(8, 5)
    on_gpu = _loss_and_grad_on("gpu0", pred, label, label_smooth=0.2)
    on_cpu = _loss_and_grad_on("cpu0", pred, label, label_smooth=0.2)
    for got, want in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----- binary cross entropy -----

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_logits(reduction):
    pred, label = rand(6, 5, low=-30, high=30), rand(6, 5, low=0, high=1)
    check(lambda p, y: F.nn.binary_cross_entropy(p, y, reduction=reduction),
          lambda p, y: TF.binary_cross_entropy_with_logits(p, y, reduction=reduction),
          pred, label, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("aten_from", [0, None], ids=["aten", "default"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shapes", [((4, 5), (4, 5)), ((1, 5), (4, 5)), ((4, 5), (1, 5))],
                         ids=str)
@pytest.mark.parametrize("label_grad", [False, True])
def test_binary_cross_entropy_logits_gradient_at_extreme_logits(monkeypatch, label_grad, shapes,
                                                                 dtype, aten_from):
    # logits far past exp's float32/float64 range on both sides (the sigmoid of the backward
    # goes through exp(-x) = inf there) and broadcasting either way; torch in float64 on the
    # same values is the oracle. "aten": operands of one shape take ATen's fused loss and
    # sigmoid at any size (by default from 1024 values)
    if aten_from is not None:
        monkeypatch.setattr(loss_module._BinaryCrossEntropy, "aten_forward_min", aten_from)
    rs = np.random.RandomState(2)
    pred = rs.choice([-1e4, -800.0, -90.0, -3.0, 0.0, 2.5, 95.0, 900.0, 1e4], shapes[0])
    pred, label = pred.astype(dtype), rs.uniform(0, 1, shapes[1]).astype(dtype)
    p, y = mge.tensor(pred, dtype=dtype), mge.tensor(label, dtype=dtype)
    with GradManager().attach([p, y] if label_grad else [p]) as gm:
        loss = F.nn.binary_cross_entropy(p, y, reduction="sum")
        gm.backward(loss, mge.tensor(np.asarray(1.5, dtype), dtype=dtype))
    pt = torch.tensor(pred.astype(np.float64), requires_grad=True)
    yt = torch.tensor(label.astype(np.float64), requires_grad=label_grad)
    x_b, y_b = torch.broadcast_tensors(pt, yt)
    want = TF.binary_cross_entropy_with_logits(x_b, y_b, reduction="sum")
    (want * 1.5).backward()
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(loss.numpy(), want.item(), rtol=tol)
    np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=tol, atol=tol)
    assert np.isfinite(p.grad.numpy()).all()
    if label_grad:
        np.testing.assert_allclose(y.grad.numpy(), yt.grad.numpy(), rtol=tol, atol=tol)
    else:
        assert y.grad is None


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("aten_from", [0, None], ids=["aten", "default"])
@pytest.mark.parametrize("graph", [False, True], ids=["raw", "recorded"])
def test_binary_cross_entropy_logits_gradient_of_confident_predictions(monkeypatch, graph,
                                                                      aten_from):
    # a confident prediction that meets its label (x = 15 for label 1, -15 for 0): the
    # gradient, -sigmoid(-x) or sigmoid(x), is about 3e-7, and sigmoid(x) - y computed in
    # float32 cancels to a multiple of 6e-8 (-2.38e-7 for -2.40e-7 at x = 15, 0 at x = 20:
    # rounding noise that Adam and Adagrad turn into whole steps). Oracle: the derivative
    # (1 - y) sigmoid(x) - y sigmoid(-x) in float64 by hand, to float32's relative precision
    # (torch's kernel computes sigmoid(x) - y and cancels too). "recorded": under an outer
    # GradManager the gradient is computed with recorded ops (graph_grads).
    if aten_from is not None:
        monkeypatch.setattr(loss_module._BinaryCrossEntropy, "aten_forward_min", aten_from)
    pred = np.array([15.0, 17.3, 20.0, 30.0, -15.0, -20.0, 4.0, -16.0], "float32")
    label = np.array([1, 1, 1, 1, 0, 0, 0.25, 0.75], "float32")
    x, y = pred.astype(np.float64), label.astype(np.float64)
    want = ((1 - y) / (1 + np.exp(-x)) - y / (1 + np.exp(x))) * 1.5
    p = mge.tensor(pred)
    outer = GradManager().attach([p])
    with outer if graph else contextlib.nullcontext():
        with GradManager().attach([p]) as gm:
            loss = F.nn.binary_cross_entropy(p, mge.tensor(label), reduction="sum")
            gm.backward(loss * 1.5)
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=2e-6, atol=0)


@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("aten_from", [0, None], ids=["aten", "default"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((1, 4), (3, 4)), ((3, 4), (1, 4))], ids=str)
def test_binary_cross_entropy_logits_kernel_body_gives_the_array_codes_values(
        tmp_path, monkeypatch, shapes, dtype, aten_from):
    """On CUDA the gradient with logits is one kernel (`_logits_grad_kernel`): its body,
    compiled as C++ in the kernel's place, gives the array code's values (exp from the C++
    library, numpy's or ATen's there: within an ulp or two), past exp's range and broadcast
    either way included."""
    if aten_from is not None:
        monkeypatch.setattr(loss_module._BinaryCrossEntropy, "aten_forward_min", aten_from)
    rs = np.random.RandomState(3)
    pred = rs.choice([-1e4, -90.0, -15.0, -3.0, 0.0, 2.5, 15.0, 95.0, 1e4], shapes[0])
    pred, label = pred.astype(dtype), rs.uniform(0, 1, shapes[1]).astype(dtype)
    label.flat[0] = 1.0

    def run():
        p = mge.tensor(pred, dtype=dtype)
        with GradManager().attach([p]) as gm:
            loss = F.nn.binary_cross_entropy(p, mge.tensor(label, dtype=dtype), reduction="sum")
            gm.backward(loss, mge.tensor(np.asarray(1.5, dtype), dtype=dtype))
        return p.grad.numpy()

    expected = run()
    kernel = emulate(loss_module._logits_grad_kernel, tmp_path)
    used = []
    monkeypatch.setattr(loss_module, "_logits_grad_kernel", lambda: (used.append(1), kernel)[1])
    monkeypatch.setattr(loss_module, "_use_logits_kernel", lambda *arrays: True)
    got = run()
    assert used == [1]
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-14, atol=0)


def test_binary_cross_entropy_logits_of_infinite_logits_is_upstreams():
    # upstream 1.13 measured: -(y logsigmoid(x) + (1 - y) logsigmoid(-x)) gives inf where an
    # infinite logit meets the other label (the limit; torch's fused loss: inf and NaN), NaN
    # where it meets its own (0 * inf) or a label is infinite; max(x, 0) - x y gave NaN at
    # x = inf, y = 0 (inf - inf)
    xs, ys = [np.inf, -np.inf, np.inf, -np.inf, 3.0], [0.0, 1.0, 1.0, 0.0, np.inf]
    for n in (1, 300):  # (300 x 5 values: ATen's fused loss, whose NaN is recomputed)
        x = mge.tensor(np.tile(np.array(xs, np.float32), n))
        y = mge.tensor(np.tile(np.array(ys, np.float32), n))
        got = F.nn.binary_cross_entropy(x, y, with_logits=True, reduction="none").numpy()
        want = [np.inf, np.inf, np.nan, np.nan, np.nan]
        if "gpu" in str(x.device):  # (a GPU keeps torch's fused loss: no check waits there)
            want = torch.nn.functional.binary_cross_entropy_with_logits(
                torch.tensor(xs), torch.tensor(ys), reduction="none").numpy()
        np.testing.assert_array_equal(got, np.tile(want, n))
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([np.inf, 20.0, -20.0]), torch.tensor([0.0, 0.25, 1.0]), reduction="none")
    got = F.nn.binary_cross_entropy(mge.tensor(np.array([np.inf, 20.0, -20.0], np.float32)),
                                    mge.tensor(np.array([0.0, 0.25, 1.0], np.float32)),
                                    with_logits=True, reduction="none").numpy()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_probabilities(reduction):
    pred, label = rand(6, 5, low=0.05, high=0.95), rand(6, 5, low=0, high=1)

    def expected(p, y):  # written out, so torch differentiates the label too
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    check(lambda p, y: F.nn.binary_cross_entropy(p, y, with_logits=False, reduction=reduction),
          expected, pred, label, rtol=1e-5, atol=1e-5)


def test_binary_cross_entropy_upstream_doc_example():
    # upstream's documented value for logits [0.9, 0.7, 0.3] and labels 1
    loss = F.nn.binary_cross_entropy(mge.tensor([0.9, 0.7, 0.3]), mge.tensor([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(loss.numpy(), 0.4328984, rtol=1e-6)


# ----- regression losses -----

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss(reduction):
    check(lambda p, y: F.nn.l1_loss(p, y, reduction=reduction),
          lambda p, y: TF.l1_loss(p, y, reduction=reduction), rand(4, 5), rand(4, 5))


def test_l1_loss_where_prediction_equals_label_has_torchs_zero_gradient():
    # as torch's sign(0); upstream 1.13 measured -1 there (documented in docs/compatibility.rst)
    pred, label = np.array([1.0, 2.5, 3.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    check(lambda p, y: F.nn.l1_loss(p, y, reduction="none"),
          lambda p, y: TF.l1_loss(p, y, reduction="none"), pred, label)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_square_loss(reduction):
    check(lambda p, y: F.nn.square_loss(p, y, reduction=reduction),
          lambda p, y: TF.mse_loss(p, y, reduction=reduction), rand(4, 5), rand(4, 5))
    assert F.loss.mse_loss is F.loss.square_loss


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1_loss(beta, reduction):
    check(lambda p, y: F.nn.smooth_l1_loss(p, y, beta=beta, reduction=reduction),
          lambda p, y: TF.smooth_l1_loss(p, y, beta=beta, reduction=reduction),
          rand(6, 5), rand(6, 5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("beta", [1.0, 0.25, 0.0])
def test_smooth_l1_loss_at_and_around_beta_matches_torch(dtype, beta):
    # the branch-free formula: differences exactly at +-beta, 0, just inside and outside, far
    # out; a broadcast label; float64 against torch in float64
    d = np.array([beta, -beta, 0.0, beta * 0.999, -beta * 1.001, 3.0, -7.5, 1e-4],
                 dtype=dtype)
    label = np.random.RandomState(0).uniform(-1, 1, (3, 1)).astype(dtype)
    pred = (label + d).astype(dtype)
    p, y = mge.tensor(pred, dtype=dtype), mge.tensor(label, dtype=dtype)
    with GradManager().attach([p, y]) as gm:
        loss = F.nn.smooth_l1_loss(p, y, beta=beta, reduction="none")
        gm.backward(loss, mge.tensor(np.full(loss.shape, 0.5, dtype), dtype=dtype))
    pt = torch.tensor(pred, requires_grad=True)
    yt = torch.tensor(label, requires_grad=True)
    want = TF.smooth_l1_loss(pt, yt.expand(3, 8), beta=beta, reduction="none")
    want.backward(torch.full(want.shape, 0.5, dtype=want.dtype))
    assert loss.dtype == np.dtype(dtype) and p.grad.dtype == np.dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(y.grad.numpy(), yt.grad.numpy(), rtol=tol, atol=tol * 10)


_PAIR_LOSSES = {
    "square": (lambda p, y, r: F.nn.square_loss(p, y, reduction=r),
               lambda p, y, r: TF.mse_loss(p, y, reduction=r)),
    "smooth_l1": (lambda p, y, r: F.nn.smooth_l1_loss(p, y, beta=0.5, reduction=r),
                  lambda p, y, r: TF.smooth_l1_loss(p, y, beta=0.5, reduction=r)),
    "smooth_l1_beta0": (lambda p, y, r: F.nn.smooth_l1_loss(p, y, beta=0.0, reduction=r),
                        lambda p, y, r: TF.smooth_l1_loss(p, y, beta=0.0, reduction=r)),
    "bce_logits": (lambda p, y, r: F.nn.binary_cross_entropy(p, y, reduction=r),
                   lambda p, y, r: TF.binary_cross_entropy_with_logits(p, y, reduction=r)),
}


@pytest.mark.usefixtures("host_default_device")  # the ATen path is the one of numpy arrays
@pytest.mark.parametrize("path", ["aten", "default", "arrays"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", sorted(_PAIR_LOSSES))
def test_pair_losses_on_aten_and_array_code_match_torch(monkeypatch, loss, reduction, dtype,
                                                        transposed, path):
    # same-shape float inputs take ATen's fused loss on the CPU from some size on ("aten": from
    # any size, forward and backward; "default": these few values, smooth L1's forward only),
    # "arrays" the numpy code (what runs without torch and on CuPy); odd sizes, a transposed
    # pred, both gradients, an output gradient other than one; torch in float64 is the oracle
    ran = []
    view = _aten.view
    monkeypatch.setattr(_aten, "view", lambda a: ran.append(1) or view(a))
    if path == "aten":
        for cls in (loss_module._Square, loss_module._SmoothL1, loss_module._BinaryCrossEntropy):
            monkeypatch.setattr(cls, "aten_forward_min", 0)
            monkeypatch.setattr(cls, "aten_backward_min", 0)
    ours, theirs = _PAIR_LOSSES[loss]
    rs = np.random.RandomState(3)
    stored = rs.uniform(-2, 2, (5, 7)).astype(dtype)
    label = rs.uniform(-2, 2, (7, 5) if transposed else (5, 7)).astype(dtype)
    p, y = mge.tensor(stored, dtype=dtype), mge.tensor(label, dtype=dtype)
    with contextlib.ExitStack() as stack:
        if path == "arrays":
            stack.enter_context(_aten.avoided("pair_loss"))
        with GradManager().attach([p, y]) as gm:
            out = ours(p.T if transposed else p, y, reduction)
            dy = np.asarray(rs.randn(*out.shape), dtype=dtype)
            gm.backward(out, mge.tensor(dy, dtype=dtype))
    assert bool(ran) == (path == "aten" or path == "default" and loss.startswith("smooth"))
    pt = torch.tensor(stored.astype(np.float64), requires_grad=True)
    yt = torch.tensor(label.astype(np.float64), requires_grad=True)
    want = theirs(pt.T if transposed else pt, yt, reduction)
    want.backward(torch.tensor(dy.astype(np.float64)))
    tol = 1e-6 if dtype == "float32" else 1e-13
    assert out.dtype == np.dtype(dtype) and out.shape == tuple(want.shape)
    np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(y.grad.numpy(), yt.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "bool"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1_loss_of_integers_is_float32(dtype, reduction):
    # a float function: integers compute in float32, as square_loss's (earlier versions of this
    # fork gave float64)
    pred, label = ([1, 0, 1, 0, 1], [0, 0, 1, 1, 1]) if dtype == "bool" else \
        ([3, 0, 2, 5, 1], [2, 0, 1, 5, 0])
    pred, label = np.array(pred, dtype), np.array(label, dtype)
    got = F.nn.smooth_l1_loss(mge.tensor(pred), mge.tensor(label), beta=1.5,
                              reduction=reduction)
    want = TF.smooth_l1_loss(torch.tensor(pred, dtype=torch.float32),
                             torch.tensor(label, dtype=torch.float32), beta=1.5,
                             reduction=reduction)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_regression_losses_broadcast_label():
    check(lambda p, y: F.nn.square_loss(p, y), lambda p, y: TF.mse_loss(p, y.expand(4, 5)),
          rand(4, 5), rand(1, 5))


def test_upstream_doc_examples_for_integer_inputs():
    pred, label = mge.tensor([3, 3, 3, 3]), mge.tensor([2, 8, 6, 1])
    assert F.nn.l1_loss(pred, label).item() == pytest.approx(2.75)
    none = F.nn.l1_loss(pred, label, reduction="none")
    assert none.dtype == np.int32 and none.numpy().tolist() == [1, 5, 3, 2]
    assert F.nn.square_loss(pred, label).item() == pytest.approx(9.75)


@pytest.mark.parametrize("loss", [F.nn.l1_loss, F.nn.square_loss, F.nn.binary_cross_entropy])
@pytest.mark.parametrize("error", [ValueError, RuntimeError])  # ours, upstream's shape check's
def test_pair_loss_shape_mismatch_is_both_error_types(loss, error):
    with pytest.raises(error, match=rf"{loss.__name__}: pred of shape \(3,\) and label of shape "
                                    r"\(4,\) do not broadcast"):
        loss(mge.tensor(rand(3)), mge.tensor(rand(4)))


def test_pair_loss_errors():
    with pytest.raises(ValueError, match="square_loss: reduction"):
        F.nn.square_loss(mge.tensor(rand(3)), mge.tensor(rand(3)), reduction="max")


# ----- hinge -----

@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2, 2)])  # upstream sums axis 1 of any N-d
@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_loss(norm, reduction, shape):
    pred = rand(*shape)
    label = np.where(rand(*shape) > 0, 1, -1).astype(np.float32)

    def expected(p, y):
        m = torch.clamp(1 - p * y, min=0)
        loss = (m if norm == "L1" else m * m).sum(1)
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    check(lambda p, y: F.nn.hinge_loss(p, y, norm, reduction), expected, pred, label, diff=[0])


def test_hinge_loss_upstream_doc_example():
    pred = mge.tensor([[0.5, -0.5, 0.1], [-0.6, 0.7, 0.8]])
    label = mge.tensor([[1, -1, -1], [-1, 1, 1]])
    np.testing.assert_allclose(F.nn.hinge_loss(pred, label).numpy(), 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match="hinge_loss: norm"):
        F.nn.hinge_loss(pred, label, norm="L3")
    with pytest.raises(RuntimeError, match=r"same shape \(N, C, ...\), got \(2, 3\) and \(2, 2\)"):
        F.nn.hinge_loss(pred, label[:, :2])  # upstream's elementwise shape check's type


@pytest.mark.usefixtures("ce_path")
def test_cross_entropy_mean_of_logits_scales_by_the_output_gradient():
    # the fused (N, C) mean path: repeated labels, an output gradient other than one
    pred, label = rand(6, 4), np.array([3, 3, 0, 1, 3, 2], np.int32)
    p = mge.tensor(pred)
    with GradManager().attach(p) as gm:
        loss = F.nn.cross_entropy(p, mge.tensor(label))
        gm.backward(loss, mge.tensor(np.float32(2.5)))
    pt = torch.tensor(pred, requires_grad=True)
    expect = TF.cross_entropy(pt, torch.tensor(label).long())
    (expect * 2.5).backward()
    np.testing.assert_allclose(loss.numpy(), expect.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_losses_keep_their_upstream_1_0_names_at_the_top_of_F():
    # upstream 1.0-1.1 programs call F.cross_entropy / F.square_loss (later F.nn.<name> only)
    for name in ("l1_loss", "square_loss", "cross_entropy", "binary_cross_entropy",
                 "hinge_loss"):
        assert getattr(F, name) is getattr(F.nn, name)
    rng = np.random.RandomState(0)
    logits = rng.randn(5, 3).astype(np.float32)
    label = np.array([0, 2, 1, 1, 0], dtype=np.int32)
    want = TF.cross_entropy(torch.from_numpy(logits), torch.from_numpy(label).long())
    got = F.cross_entropy(mge.tensor(logits), mge.tensor(label))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_square_loss_of_integer_tensors_is_float32_as_upstream_documents():
    # upstream's F.nn.square_loss example: pred [3, 3, 3, 3], label [2, 8, 6, 1]
    pred, label = mge.Tensor([3, 3, 3, 3]), mge.Tensor([2, 8, 6, 1])
    none = F.nn.square_loss(pred, label, reduction="none")
    assert none.dtype == np.float32 and none.numpy().tolist() == [1.0, 25.0, 9.0, 4.0]
    total = F.nn.square_loss(pred, label, reduction="sum")
    assert total.dtype == np.float32 and total.item() == 39.0
    assert F.nn.square_loss(pred, label).item() == 9.75
    # l1_loss keeps the integer dtype (upstream prints int32 for it)
    assert F.nn.l1_loss(pred, label, reduction="sum").dtype == np.int32


def test_uint8_losses_l1_subtracts_in_the_dtype_square_loss_in_float32():
    # l1_loss is upstream's abs(pred - label): uint8 1 - 2 wraps to 255 there too;
    # square_loss converts first (upstream squares the wrapped difference: 65025)
    pred, label = np.array([1, 5, 0], np.uint8), np.array([2, 3, 0], np.uint8)
    got = F.nn.l1_loss(mge.tensor(pred), mge.tensor(label), reduction="none")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got.numpy(), np.abs(pred - label))
    got = F.nn.square_loss(mge.tensor(pred), mge.tensor(label), reduction="none")
    want = TF.mse_loss(torch.tensor(pred, dtype=torch.float32),
                       torch.tensor(label, dtype=torch.float32), reduction="none")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_l1_loss_of_bools_says_to_convert():
    # upstream's pred - label refuses bools; earlier versions of this fork raised numpy's
    # "boolean subtract" error
    pred, label = mge.tensor([True, False]), mge.tensor([True, True])
    with pytest.raises(TypeError, match=r"l1_loss: pred and label are bool.*"
                                        r"\.astype\('float32'\)"):
        F.nn.l1_loss(pred, label)
    assert F.nn.l1_loss(pred.astype("float32"), label.astype("float32")).item() == 0.5


# ----- second order: the losses' gradients differentiated again -----

def _reduce_torch(t, reduction):
    return t if reduction == "none" else (t.mean() if reduction == "mean" else t.sum())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_square_l1_smooth_l1_second_order(reduction):
    # MAML on regression (the sine-wave task) differentiates the inner step's squared-error
    # gradient; tanh(pred) makes the second derivative depend on every term. The label
    # broadcasts against pred and is differentiated too.
    pred, label = rand(4, 3), rand(1, 3)
    w = rand(4, 3)
    r = lambda t: (t * torch.tensor(w)).sum() if reduction == "none" else t
    m = lambda t: (t * mge.tensor(w)).sum() if reduction == "none" else t
    check_second_order(
        lambda a, b: m(F.nn.square_loss(F.tanh(a), b * b, reduction=reduction)),
        lambda a, b: r(_reduce_torch((torch.tanh(a) - b * b) ** 2, reduction)), pred, label)
    check_second_order(
        lambda a, b: m(F.nn.l1_loss(F.tanh(a) * b, b, reduction=reduction)),
        lambda a, b: r(_reduce_torch((torch.tanh(a) * b - b).abs(), reduction)), pred, label)
    check_second_order(
        lambda a, b: m(F.nn.smooth_l1_loss(F.tanh(a) * 2, b, beta=0.7, reduction=reduction)),
        lambda a, b: r(TF.smooth_l1_loss(torch.tanh(a) * 2, b.expand(4, 3), beta=0.7,
                                         reduction=reduction)),
        pred, label)


@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_square_and_smooth_l1_second_order_of_same_shapes(reduction):
    # same shapes: the first-order pass ran on ATen's fused loss, the recorded gradient graph is
    # built from Tensor arithmetic as on the array code
    pred, label = rand(4, 3), rand(4, 3)
    check_second_order(
        lambda a, b: F.nn.square_loss(F.tanh(a), b * b, reduction=reduction),
        lambda a, b: _reduce_torch((torch.tanh(a) - b * b) ** 2, reduction), pred, label)
    check_second_order(
        lambda a, b: F.nn.smooth_l1_loss(F.tanh(a) * 2, b, beta=0.7, reduction=reduction),
        lambda a, b: TF.smooth_l1_loss(torch.tanh(a) * 2, b, beta=0.7, reduction=reduction),
        pred, label)


@pytest.mark.parametrize("with_logits", [True, False])
def test_binary_cross_entropy_second_order(with_logits):
    # a discriminator's BCE loss whose gradient is penalised (R1 / WGAN-GP style training)
    x, y = rand(3, 4), rand(3, 4, low=0.1, high=0.9)
    if with_logits:
        check_second_order(lambda a, b: F.nn.binary_cross_entropy(a * a, b),
                           lambda a, b: TF.binary_cross_entropy_with_logits(a * a, b), x, y)
    else:
        check_second_order(
            lambda a, b: F.nn.binary_cross_entropy(F.sigmoid(a), b, with_logits=False),
            lambda a, b: TF.binary_cross_entropy(torch.sigmoid(a), b), x, y)


# ----- regressions found by the differential fuzzer (tests/fuzz) -----

def test_cross_entropy_gradient_of_a_transposed_pred():
    # (N, C) logits that are a transposed view: the fused training path lost the -1 at the
    # labels (its flat index went into a copy)
    from megengine.autodiff import GradManager

    rs = np.random.RandomState(0)
    logits_t = rs.randn(4, 3).astype(np.float32)  # stored (C, N), used as (N, C)
    label = np.array([3, 2, 0], np.int32)
    x = mge.tensor(logits_t)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.nn.cross_entropy(F.transpose(x, (1, 0)), mge.tensor(label)))
    t = torch.tensor(logits_t.T.copy(), requires_grad=True)
    torch.nn.functional.cross_entropy(t, torch.tensor(label).long()).backward()
    np.testing.assert_allclose(x.grad.numpy().T, t.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_logits", [False, True])
def test_cross_entropy_aten_path_with_a_strided_pred(with_logits):
    # the CUDA path (ATen's nll_loss, forced here on numpy arrays) refused a transposed pred of
    # probabilities: "grad_input must be contiguous"
    rs = np.random.RandomState(1)
    p = rs.rand(3, 3, 2).astype(np.float32) + 0.1
    p = p / p.sum(1, keepdims=True) if not with_logits else p
    label = rs.randint(0, 3, size=(3, 2)).astype(np.int32)
    x = mge.tensor(p.transpose(2, 1, 0).copy())  # stored (2, 3, 3), used as (3, 3, 2)
    gm = GradManager().attach([x])
    with _aten.forced("cross_entropy"), gm:
        loss = F.nn.cross_entropy(F.transpose(x, (2, 1, 0)), mge.tensor(label),
                                  with_logits=with_logits)
        gm.backward(loss)
    t = torch.tensor(p, requires_grad=True)
    logp = torch.log_softmax(t, 1) if with_logits else torch.log(t)
    ref = TF.nll_loss(logp, torch.tensor(label).long())
    ref.backward()
    np.testing.assert_allclose(loss.numpy(), ref.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy().transpose(2, 1, 0), t.grad.numpy(), rtol=1e-5,
                               atol=1e-6)


# ----- the CPU's (N, C) path: ATen's log_softmax, numpy around it -----

def _spy(monkeypatch, name):
    """Count calls of _CrossEntropy.<name>."""
    calls = []
    method = getattr(_CrossEntropy, name)
    monkeypatch.setattr(_CrossEntropy, name,
                        lambda self, *a: calls.append(1) or method(self, *a))
    return calls


def _rows_case(dtype, layout, n=7, c=17, seed=0):
    """A stored array, the (N, C) logits made of it in ``layout`` ("c": the array itself; "t":
    a transposed (C, N) array; "s": every other column of an (N, 2C) array), and labels."""
    rs = np.random.RandomState(seed)
    shape = {"c": (n, c), "t": (c, n), "s": (n, 2 * c)}[layout]
    stored = rs.randn(*shape).astype(dtype)
    view = {"c": lambda a: a, "t": lambda a: a.T, "s": lambda a: a[:, ::2]}[layout]
    return stored, view, rs.randint(0, c, n).astype(np.int32)


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("layout", ["c", "t", "s"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ls", [0.0, 0.25])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_rows_path_matches_torch(monkeypatch, reduction, ls, dtype, layout):
    # odd sizes, strided and transposed logits, an output gradient other than one; the oracle
    # is torch in float64 on the same values
    calls = _spy(monkeypatch, "_forward_rows_aten")
    stored, view, label = _rows_case(dtype, layout)
    x = mge.tensor(stored, dtype=dtype)
    rs = np.random.RandomState(5)
    with GradManager().attach(x) as gm:
        loss = F.nn.cross_entropy(view(x), mge.tensor(label), label_smooth=ls,
                                  reduction=reduction)
        dy = np.asarray(rs.randn(*loss.shape), dtype=dtype)
        gm.backward(loss, mge.tensor(dy, dtype=dtype))
    assert calls, "the (N, C) ATen path did not run"
    st = torch.tensor(stored.astype(np.float64), requires_grad=True)
    want = TF.cross_entropy(view(st), torch.tensor(label).long(), label_smoothing=ls,
                            reduction=reduction)
    want.backward(torch.tensor(dy.astype(np.float64)))
    tol = 1e-6 if dtype == "float32" else 1e-12
    assert loss.dtype == np.dtype(dtype) and x.grad.dtype == np.dtype(dtype)
    assert loss.shape == tuple(want.shape)
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), st.grad.numpy(), rtol=tol * 10, atol=tol)


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
def test_cross_entropy_of_fewer_than_16_classes_stays_on_numpy(monkeypatch):
    # ATen's log_softmax is slow on rows narrower than its vector width, unless there are few
    calls = _spy(monkeypatch, "_forward_rows_aten")
    for rows, classes, expect in ((32, 15, False), (32, 16, True), (8, 10, True)):
        calls.clear()
        x = mge.tensor(rand(rows, classes))
        with GradManager().attach(x) as gm:
            gm.backward(F.nn.cross_entropy(x, mge.tensor(labels(rows, classes)),
                                           label_smooth=0.1))
        assert bool(calls) == expect


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("label_dtype", ["int8", "uint8", "int16", "int32", "uint32", "int64"])
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_rows_path_without_gradient_is_one_fused_call(monkeypatch, reduction, ls,
                                                                    label_dtype):
    # nothing attached (evaluation): labels of up to 32 bits take ATen's fused cross entropy
    # (without label smoothing), int64 ones log_softmax and the lookup; the same values
    fused = _spy(monkeypatch, "_loss_rows_aten")
    pred, _, label = _rows_case("float32", "c", n=9, c=19, seed=2)
    loss = F.nn.cross_entropy(mge.tensor(pred), mge.tensor(label, dtype=label_dtype),
                              label_smooth=ls, reduction=reduction)
    assert bool(fused) == (label_dtype != "int64" and not ls)
    want = TF.cross_entropy(torch.tensor(pred), torch.tensor(label).long(), label_smoothing=ls,
                            reduction=reduction)
    assert loss.dtype == np.float32 and loss.shape == tuple(want.shape)
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("rows,classes", [(64, 10), (300, 2), (40, 15)], ids=str)
def test_cross_entropy_of_narrow_rows_without_gradient_is_one_fused_call(monkeypatch, reduction,
                                                                        rows, classes):
    # narrow rows of more than 320 values: evaluation takes ATen's fused call, a training step
    # the bridge's kernel; both give torch's values, and an out-of-range label raises on both
    fused = _spy(monkeypatch, "_loss_rows_aten")
    bridge = _spy(monkeypatch, "_forward_rows_bridge")
    pred, label = rand(rows, classes), labels(rows, classes)
    want = TF.cross_entropy(torch.tensor(pred.astype(np.float64)), torch.tensor(label).long(),
                            reduction=reduction)
    loss = F.nn.cross_entropy(mge.tensor(pred), mge.tensor(label), reduction=reduction)
    assert fused and not bridge
    assert loss.dtype == np.float32 and loss.shape == tuple(want.shape)
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    fused.clear()
    x = mge.tensor(pred)
    with GradManager().attach(x) as gm:
        loss = F.nn.cross_entropy(x, mge.tensor(label))
        gm.backward(loss)
    assert not fused and bridge
    np.testing.assert_allclose(loss.numpy(), TF.cross_entropy(
        torch.tensor(pred.astype(np.float64)), torch.tensor(label).long()).numpy(), rtol=1e-6)
    label[rows // 2] = classes
    for attached in ([], [x]):  # (training: the kernel declines, the array code raises)
        with GradManager().attach(attached):
            with pytest.raises(ValueError, match=rf"labels must be in \[0, {classes}\)") as info:
                F.nn.cross_entropy(x, mge.tensor(label), reduction=reduction)
        assert info.value.__cause__ is None and info.value.__context__ is None


def _torch_ce(pred, label, dy):
    """torch's mean cross entropy of ``pred`` in float64, and its gradient for output gradient
    ``dy``."""
    x = torch.tensor(pred.astype(np.float64), requires_grad=True)
    loss = TF.cross_entropy(x, torch.tensor(label.astype(np.int64)))
    loss.backward(torch.tensor(float(dy), dtype=torch.float64))
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("label_dtype", ["int32", "int64", "uint8"])
@pytest.mark.parametrize("layout", ["c", "t", "s"])
@pytest.mark.parametrize("rows,classes", [(8, 10), (1, 1), (5, 2), (333, 15), (2000, 3)], ids=str)
def test_cross_entropy_training_on_narrow_rows_takes_the_bridges_kernel(
        monkeypatch, rows, classes, layout, label_dtype, dtype):
    # (N, C) logits of fewer than 16 classes, the mean, a gradient wanted: one call of the
    # bridge's ce_rows forward and one of ce_rows_grad backward, for C-contiguous float32 /
    # float64 logits and int32 / int64 labels; other logits and labels take the array code.
    # Either way torch's values in float64, for an output gradient other than one.
    calls = _spy(monkeypatch, "_forward_rows_bridge")
    taken = []
    forward = _CrossEntropy._forward_rows_bridge
    monkeypatch.setattr(_CrossEntropy, "_forward_rows_bridge",
                        lambda self, *a: taken.append(forward(self, *a)) or taken[-1])
    rs = np.random.RandomState(rows * 100 + classes)
    stored, view, _ = _rows_case(dtype, layout, n=rows, c=classes, seed=rows)
    label = rs.randint(0, classes, rows).astype(label_dtype)
    dy = rs.uniform(0.5, 2.0)
    x = mge.tensor(stored, dtype=dtype)
    with GradManager().attach(x) as gm:
        loss = F.nn.cross_entropy(view(x), mge.tensor(label))
        gm.backward(loss, mge.tensor(dy, dtype=dtype))
    kernel = view(stored).flags.c_contiguous and label_dtype != "uint8"  # (1 x 1: any layout)
    assert [t is not None for t in taken] == ([True] if kernel else [False] if calls else [])
    want, grad = _torch_ce(view(stored), label, dy)
    tol = 1e-6 if dtype == "float32" else 1e-12
    assert loss.dtype == np.dtype(dtype) and loss.shape == () and x.grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss.numpy(), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(view(x.grad.numpy()), grad, rtol=tol * 10, atol=tol)


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
def test_cross_entropy_bridge_kernel_at_nan_inf_and_large_logits(monkeypatch):
    # rows holding NaN or +inf give NaN loss and NaN gradients in their rows, as torch's; large
    # and -inf logits stay finite; the other rows' gradients are torch's
    calls = _spy(monkeypatch, "_forward_rows_bridge")
    pred = np.random.RandomState(3).randn(6, 4).astype(np.float32)
    pred[1, 2], pred[3, 0], pred[4] = np.nan, np.inf, [3e4, -3e4, 1e4, -np.inf]
    label = np.array([0, 1, 2, 3, 0, 1], dtype=np.int32)
    for rows in ([0, 1, 2, 3, 4, 5], [0, 2, 4, 5]):
        x = mge.tensor(pred[rows])
        with GradManager().attach(x) as gm:
            loss = F.nn.cross_entropy(x, mge.tensor(label[rows]))
            gm.backward(loss)
        want, grad = _torch_ce(pred[rows], label[rows], 1.0)
        np.testing.assert_allclose(loss.numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-5, atol=1e-7)
        assert np.isnan(loss.numpy()) == (len(rows) == 6)
    assert len(calls) == 2


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
def test_cross_entropy_bridge_kernel_gradient_of_another_dtype(monkeypatch):
    # an output gradient of another dtype than the loss's: ce_rows_grad leaves it to the array
    # code, which gives the same gradient (float32, as the logits)
    pred, label = rand(8, 10), labels(8, 10)
    grads = []
    for dy in (mge.tensor(1.5, dtype="float64"), mge.tensor(1.5, dtype="float32")):
        x = mge.tensor(pred)
        with GradManager().attach(x) as gm:
            gm.backward(F.nn.cross_entropy(x, mge.tensor(label)), dy)
        assert x.grad.dtype == np.float32
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], _torch_ce(pred, label, 1.5)[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("attach", [False, True])
@pytest.mark.parametrize("classes", [5, 20])  # numpy's rows and ATen's
@pytest.mark.parametrize("bad", [[0, 20, 1], [0, -1, 1], [0, -100, 1]])
def test_cross_entropy_rows_path_range_checks_labels(attach, bad, classes):
    # -100 is torch's default ignore_index: here it is out of range like any negative label
    x = mge.tensor(rand(3, classes))
    for dtype in ("int32", "int64"):
        with GradManager().attach(x if attach else []):
            with pytest.raises(ValueError, match=rf"labels must be in \[0, {classes}\)") as info:
                F.nn.cross_entropy(x, mge.tensor(bad, dtype=dtype), reduction="sum")
        assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ls", [0.0, 0.3])
def test_cross_entropy_rows_path_second_order_matches_torch(monkeypatch, ls, reduction):
    # a gradient penalty through (N, C) logits on the default path: d/dx <dL/dx, v>
    calls = _spy(monkeypatch, "_forward_rows_aten")
    pred, v, label, w = rand(5, 17), rand(5, 17), labels(5, 17), rand(5)
    x = mge.Parameter(pred)
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            loss = F.nn.cross_entropy(x * x, mge.tensor(label), label_smooth=ls,
                                      reduction=reduction)
            inner.backward((loss * mge.tensor(w)).sum() if reduction == "none" else loss)
        first = x.grad
        x.grad = None
        outer.backward((first * mge.tensor(v)).sum())
    assert calls
    xt = torch.tensor(pred, requires_grad=True)
    lt = TF.cross_entropy(xt * xt, torch.tensor(label).long(), label_smoothing=ls,
                          reduction=reduction)
    lt = (lt * torch.tensor(w)).sum() if reduction == "none" else lt
    (gt,) = torch.autograd.grad(lt, xt, create_graph=True)
    (hv,) = torch.autograd.grad((gt * torch.tensor(v)).sum(), xt)
    np.testing.assert_allclose(first.numpy(), gt.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), hv.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("host_default_device")  # the path of numpy arrays
def test_cross_entropy_without_torch_keeps_the_array_code(monkeypatch):
    # torch that cannot be imported: use_aten answers False and numpy's code serves
    rows = _spy(monkeypatch, "_forward_rows_aten")
    monkeypatch.setattr(_aten, "_torch_cpu", False)
    pred, label = rand(6, 20), labels(6, 20)
    check(lambda p, y: F.nn.cross_entropy(p, y, label_smooth=0.1),
          lambda p, y: TF.cross_entropy(p, y.long(), label_smoothing=0.1), pred, label)
    assert not rows



_REDUCED_PAIR = {"l1": (F.nn.l1_loss, TF.l1_loss), "square": (F.nn.square_loss, TF.mse_loss),
                 "smooth_l1": (F.nn.smooth_l1_loss, TF.smooth_l1_loss)}


@pytest.mark.parametrize("broadcast", ["pred", "label"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", sorted(_REDUCED_PAIR))
def test_reduced_pair_loss_gradients_of_a_broadcast_operand_match_torch(loss, reduction,
                                                                        broadcast):
    # a reduced loss's 0-d gradient is multiplied straight into the loss's shape (no broadcast
    # view first): each operand's gradient still has its own shape, dtype and torch's values
    ours, theirs = _REDUCED_PAIR[loss]
    rs = np.random.RandomState(5)
    shapes = [(6, 1), (6, 9)] if broadcast == "pred" else [(6, 9), (9,)]
    arrays = [rs.uniform(-2, 2, s).astype(np.float32) for s in shapes]
    p, y = (mge.tensor(a) for a in arrays)
    with GradManager().attach([p, y]) as gm:
        out = ours(p, y, reduction=reduction)
        gm.backward(out, mge.tensor(np.float32(0.75)))
    pt, yt = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays)
    want = theirs(pt.expand(6, 9), yt.expand(6, 9), reduction=reduction)
    want.backward(torch.tensor(0.75, dtype=torch.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=1e-6)
    for t, tt in ((p, pt), (y, yt)):
        assert t.grad.dtype == np.float32 and t.grad.shape == tuple(tt.shape)
        np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-6, atol=1e-7)


# float16 losses over 100,000 values: the mean's sum passed float16's max (inf, or NaN), and
# its gradient divided by the count read as float16 (inf) was 0; torch adds in float32
@pytest.mark.parametrize("fn, torch_fn", [
    (F.nn.l1_loss, TF.l1_loss),
    (F.nn.square_loss, TF.mse_loss),
], ids=["l1", "square"])
def test_float16_losses_add_in_float32(fn, torch_fn):
    rs = np.random.RandomState(0)
    check_float16_against_torch(fn, torch_fn, rs.rand(100000) * 2, rs.rand(100000))


@pytest.mark.usefixtures("host_default_device")
def test_float16_cross_entropy_of_many_rows():
    # (on the CPU: a GPU's cross entropy is ATen's, whose CUDA kernel adds in float32, but the
    # simulated GPU runs torch's CPU kernel, which adds float16 in float16 and gives inf here;
    # torch's oracle below computes in float32 for that reason)
    rs = np.random.RandomState(0)
    label = rs.randint(0, 4, 50000)
    check_float16_against_torch(
        lambda p: F.nn.cross_entropy(p, mge.tensor(label.astype(np.int32))),
        lambda p: TF.cross_entropy(p.float() if p.dtype == torch.float16 else p,
                                   torch.tensor(label)).to(p.dtype),
        rs.rand(50000, 4))



@pytest.mark.usefixtures("host_default_device")
@pytest.mark.parametrize("smooth", [0, 0.1])
def test_float16_cross_entropy_of_large_logits_rounds_once(smooth):
    # logits near 100: float16 steps 0.0625 there, and m + log(s) - pred[label] computed in
    # float16 lost ~0.03 of each loss (30x torch's float16 error); torch computes in float32
    rs = np.random.RandomState(0)
    label = rs.randint(0, 10, 64)
    check_float16_against_torch(
        lambda p: F.nn.cross_entropy(p, mge.tensor(label), label_smooth=smooth, reduction="none"),
        lambda p: TF.cross_entropy(p.float() if p.dtype == torch.float16 else p,
                                   torch.tensor(label), label_smoothing=smooth,
                                   reduction="none").to(p.dtype),
        rs.randn(64, 10) * 0.5 + 100)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_smoothed_cross_entropy_of_one_class_is_zero(dtype):
    # by hand: one class has log-softmax 0, so the loss is 0 with any smoothing; subtracting the
    # weighed logits from the log-sum-exp left rounding (-3e-7 for float16 fuzz case 51959)
    pred = np.random.RandomState(0).uniform(-4, 4, (3, 1, 3, 3)).astype(dtype)
    label = np.zeros((3, 3, 3), np.int32)
    for reduction in ("sum", "none"):
        loss = F.nn.cross_entropy(mge.tensor(pred), mge.tensor(label), label_smooth=0.1,
                                  reduction=reduction)
        assert loss.dtype == dtype and not loss.numpy().any()


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("fn, torch_fn", [
    (F.nn.l1_loss, TF.l1_loss), (F.nn.square_loss, TF.mse_loss),
    (F.nn.smooth_l1_loss, TF.smooth_l1_loss),
    (F.nn.binary_cross_entropy, TF.binary_cross_entropy_with_logits),
], ids=["l1", "square", "smooth_l1", "bce"])
def test_float16_pair_losses_compute_in_float32_rounded_once(monkeypatch, fn, torch_fn,
                                                             reduction):
    # on the CPU from _aten.HALF_MIN values: the loss and both gradients within a float16 step
    # of the exact value (torch in float64 on the same float16 values), as torch's float16
    # kernels compute in float32 (numpy's float16 loops rounded each step: a squared error
    # up to 1.5 steps off)
    from megengine.core import ops  # (its cast: the float32 path, `Op.half_in_float32`)

    rng = np.random.default_rng(11)
    pred = (rng.standard_normal((256, 256)) * 4).astype(np.float16)
    label = rng.uniform(0, 1, (256, 256)).astype(np.float16)
    g = rng.uniform(0.5, 1, (256, 256) if reduction == "none" else ()).astype(np.float16)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    p, y = mge.Parameter(pred, device="cpu0"), mge.Parameter(label, device="cpu0")
    with GradManager().attach([p, y]) as gm:
        out = fn(p, y, reduction=reduction)
        gm.backward(out, mge.tensor(g, device="cpu0"))
    tp, ty = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (pred, label))
    want = torch_fn(tp, ty, reduction=reduction)
    want.backward(torch.tensor(g, dtype=torch.float64))
    assert taken[:2] == [np.float32, np.float32]  # the float32 path ran
    within_a_float16_step(out.numpy(), want.detach().numpy())
    # (bce's sigmoid(pred) - label cancels where the two meet: float32's own rounding of the
    # sigmoid is then a part of a float16 step of the tiny difference; measured 1.14 steps.
    # numpy's float16 passes were 6630 steps off, torch's float16 kernel 2007)
    within_a_float16_step(p.grad.numpy(), tp.grad.numpy(), 1.5 if fn is F.nn.binary_cross_entropy
                          else 1)
    within_a_float16_step(y.grad.numpy(), ty.grad.numpy())


@pytest.mark.parametrize("fn, torch_fn", [
    (F.nn.l1_loss, TF.l1_loss), (F.nn.square_loss, TF.mse_loss),
    (F.nn.smooth_l1_loss, TF.smooth_l1_loss),
    (F.nn.binary_cross_entropy, TF.binary_cross_entropy_with_logits),
], ids=["l1", "square", "smooth_l1", "bce"])
@pytest.mark.parametrize("pred, label", [
    ([3.973], [0.9595]),  # (BCE's x - x * y cancels: float16 steps gave 0.1788, 6.7 steps off)
    (np.linspace(-4, 4, 12).reshape(3, 4), np.linspace(0.1, 0.9, 12).reshape(3, 4)),
], ids=["one", "3x4"])
def test_float16_pair_losses_of_few_values_compute_in_float32_too(monkeypatch, fn, torch_fn,
                                                                  pred, label):
    # below _aten.HALF_MIN values too (element-wise ops keep numpy's float16 loops there):
    # within a float16 step of the exact loss (torch in float64 on the same float16 values)
    from megengine.core import ops

    pred, label = np.float16(pred), np.float16(label)
    taken, real = [], ops.cast
    monkeypatch.setattr(ops, "cast", lambda a, d: taken.append(np.dtype(d)) or real(a, d))
    out = fn(mge.tensor(pred, device="cpu0"), mge.tensor(label, device="cpu0"))
    assert out.dtype == np.float16 and taken[:2] == [np.float32, np.float32]
    want = torch_fn(torch.tensor(pred, dtype=torch.float64),
                    torch.tensor(label, dtype=torch.float64))
    within_a_float16_step(out.numpy(), want.numpy())


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.nn.hinge_loss(x, F.ones((3, 4)), norm="L3"),
                 AssertionError, "norm must be 'L1' or 'L2', got 'L3'", id="hinge_loss"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: AssertionError from its Python assert; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


@pytest.mark.parametrize("call, error, match", [
    # upstream 1.13 measured: TypeError for a string axis, RuntimeError (wrapping float()'s
    # ValueError) for a string label_smooth; Python's "'<=' not supported between instances of
    # 'int' and 'str'" and float()'s words came out here before
    (lambda x, y: F.nn.cross_entropy(x, y, axis="1"), TypeError,
     "cross_entropy: axis must be an int, got str"),
    (lambda x, y: F.nn.cross_entropy(x, y, label_smooth="x"), RuntimeError,
     "cross_entropy: label_smooth must be a number, got 'x'"),
    (lambda x, y: F.nn.smooth_l1_loss(x, F.zeros_like(x), beta="x"), TypeError,
     "smooth_l1_loss: beta must be a number, got 'x'"),
])
def test_loss_arguments_of_another_type_name_the_function_and_argument(call, error, match):
    x, y = mge.tensor(np.ones((2, 3), "float32")), mge.tensor([0, 1])
    with pytest.raises(error, match=match):
        call(x, y)


@pytest.mark.parametrize("name", ["square_loss", "l1_loss", "smooth_l1_loss", "hinge_loss",
                                  "binary_cross_entropy"])
def test_a_none_label_names_the_function_and_the_argument(name):
    # upstream 1.13: TypeError "the operand is None and is not supported." (its words kept,
    # after the loss and its argument: the operand of a subtraction inside it named neither)
    pred = mge.tensor(np.full((2, 3), 0.5, np.float32))
    with pytest.raises(TypeError, match=f"^{name}: (the operand label is None|label is None)"):
        getattr(F.nn, name)(pred, None)
    with pytest.raises(TypeError, match=f"^{name}: label: cannot make a tensor"):
        getattr(F.nn, name)(pred, "x")
