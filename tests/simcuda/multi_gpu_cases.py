"""Engine work on gpu1 while gpu0 is current: ops, autodiff, optimizers, ATen kernels, jit and copies keep every array on its tensor's device.

Not collected by a plain ``pytest tests`` (the name does not start with ``test_``): it needs two
CUDA devices, simulated (``MGE_SIM_CUDA=2``; tests/test_simcuda.py runs it so in a subprocess)
or real (``python -m pytest tests/simcuda/multi_gpu_cases.py`` on a machine with two GPUs).
Each case checks values against numpy or torch on the CPU, and that the engine arrays live on
the GPU their tensor names (CuPy's ``a.device.id``), which is what a missed current-device
switch gets wrong.
"""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.device import get_device_count
from megengine.optimizer import SGD, Adam

pytestmark = pytest.mark.skipif(
    not mge.is_cuda_available() or get_device_count("gpu") < 2,
    reason="needs two CUDA devices (real, or simulated with MGE_SIM_CUDA=2)")


def _on(t, index):
    """Assert tensor ``t`` is labelled gpu<index> and its array lives on that device."""
    assert t.device == mge.tensor(0.0, device=f"gpu{index}").device
    assert t._data.device.id == index, (t.device, t._data.device.id)


def _current():
    import cupy

    return cupy.cuda.runtime.getDevice()


def test_tensors_and_scalar_operands_live_on_gpu1():
    x = mge.tensor(np.arange(4, dtype=np.float32), device="gpu1")
    _on(x, 1)
    for y in (x * 3, 3 - x, x / 2.0, x ** 2, x + True, F.maximum(x, 1.5)):
        _on(y, 1)
    np.testing.assert_allclose((x * 3 - 1).numpy(), np.arange(4) * 3 - 1)
    assert _current() == 0  # the caller's device is given back


def test_a_host_copy_of_a_gpu1_tensor_computes_on_the_host():
    x = mge.tensor([1.0, 2.0], device="gpu1")
    h = F.copy(x, "cpu0") * 2  # the example: a numpy constant met a CuPy array
    assert h.device == mge.tensor(0.0, device="cpu0").device
    np.testing.assert_allclose(h.numpy(), [2.0, 4.0])
    back = F.copy(h, "gpu1") + x
    _on(back, 1)
    np.testing.assert_allclose(back.numpy(), [3.0, 6.0])


def test_ops_on_two_gpus_raise():
    a = mge.tensor([1.0], device="gpu0")
    b = mge.tensor([1.0], device="gpu1")
    with pytest.raises(ValueError, match="different devices"):
        a + b


def test_gradients_on_gpu1_match_numpy():
    xv = np.random.randn(3, 4).astype(np.float32)
    x = mge.tensor(xv, device="gpu1")
    with GradManager().attach([x]) as gm:
        y = (F.exp(x) * x).sum() + F.relu(x).mean()
        gm.backward(y)
    _on(x.grad, 1)
    expected = np.exp(xv) * (1 + xv) + (xv > 0) / xv.size
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-5)
    assert _current() == 0


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: Adam(ps, lr=0.01)], ids=["sgd_momentum", "adam"])
def test_optimizer_steps_on_gpu1_match_torch(make):
    torch = pytest.importorskip("torch")
    w0 = np.random.randn(3, 2).astype(np.float32)
    xv = np.random.randn(5, 3).astype(np.float32)
    w = mge.Parameter(w0, device="gpu1")
    opt = make([w])
    gm = GradManager().attach([w])
    tw = torch.tensor(w0, requires_grad=True)
    topt = (torch.optim.SGD([tw], lr=0.1, momentum=0.9) if isinstance(opt, SGD)
            else torch.optim.Adam([tw], lr=0.01))
    for _ in range(3):
        with gm:
            gm.backward((F.matmul(mge.tensor(xv, device="gpu1"), w) ** 2).sum())
        opt.step().clear_grad()
        topt.zero_grad()
        ((torch.tensor(xv) @ tw) ** 2).sum().backward()
        topt.step()
    _on(w, 1)
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert _current() == 0


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.5), lambda ps: Adam(ps, lr=0.5)],
                         ids=["sgd", "adam"])
def test_a_gradient_on_another_gpu_than_its_parameter_is_refused_before_any_update(make):
    # a GPU's kernels read their own device's memory: the update failed midway (CuPy's peer
    # access error, or torch's device check in a multi-tensor kernel), some parameters changed
    ps = [mge.Parameter(np.ones(3, np.float32), device="gpu0") for _ in range(3)]
    for i, p in enumerate(ps):
        p.grad = mge.Tensor(np.ones(3, np.float32), device="gpu1" if i == 1 else "gpu0")
    opt = make(ps)
    with pytest.raises(ValueError, match="gradient of parameter 1 is on gpu1, the parameter on "
                                         "gpu0; nothing was updated"):
        opt.step()
    assert all((p.numpy() == 1).all() for p in ps)
    ps[1].grad = ps[1].grad.to(ps[1].device)  # what the message says to do
    opt.step()
    assert all((p.numpy() < 1).all() for p in ps)
    for p in ps:
        _on(p, 0)


def test_clipping_recorded_gradients_on_gpu0_and_gpu1_matches_torch():
    pytest.importorskip("torch")
    from oracle import check_recorded_clip_grad_norm

    xs, ws = check_recorded_clip_grad_norm(("gpu0", "gpu1"))
    for i, (x, w) in enumerate(zip(xs, ws)):
        _on(x.grad, i)
        _on(w.grad, i)
    assert _current() == 0


def test_conv_pool_batchnorm_on_gpu1_match_torch():
    torch = pytest.importorskip("torch")
    xv = np.random.randn(2, 2, 6, 6).astype(np.float32)
    wv = np.random.randn(3, 2, 3, 3).astype(np.float32)
    bv = np.random.randn(1, 3, 1, 1).astype(np.float32)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    with torch.no_grad():
        tnet[0].weight.copy_(torch.tensor(wv))
        tnet[0].bias.copy_(torch.tensor(bv).reshape(-1))
    params = [mge.Parameter(wv, device="gpu1"), mge.Parameter(bv, device="gpu1")]
    x = mge.tensor(xv, device="gpu1")
    with GradManager().attach(params + [x]) as gm:
        y = F.conv2d(x, params[0], params[1], padding=1)
        y = F.batch_norm(y, training=True, momentum=0.9)
        y = F.max_pool2d(F.relu(y), 2)
        gm.backward((y * y).sum())
    tx = torch.tensor(xv, requires_grad=True)
    ty = tnet(tx)
    (ty * ty).sum().backward()
    _on(y, 1)
    _on(x.grad, 1)
    _on(params[0].grad, 1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(params[0].grad.numpy(), tnet[0].weight.grad.numpy(),
                               rtol=1e-3, atol=1e-4)
    assert _current() == 0


def test_softmax_cross_entropy_on_gpu1_matches_numpy():
    logits = np.random.randn(4, 5).astype(np.float32)
    labels = np.array([0, 3, 4, 1], np.int32)
    x = mge.tensor(logits, device="gpu1")
    with GradManager().attach([x]) as gm:
        loss = F.nn.cross_entropy(x, mge.tensor(labels, device="gpu1"))
        gm.backward(loss)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.log(p[np.arange(4), labels]).mean()
    onehot = np.eye(5, dtype=np.float32)[labels]
    _on(loss, 1)
    _on(x.grad, 1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), (p - onehot) / 4, rtol=1e-4, atol=1e-6)


def test_traced_function_on_gpu1_replays_there():
    from megengine.jit import trace

    @trace(symbolic=True)
    def f(a):
        return F.relu(a * 2 - 1).sum()

    for _ in range(3):
        xv = np.random.randn(6).astype(np.float32)
        out = f(mge.tensor(xv, device="gpu1"))
        _on(out, 1)
        np.testing.assert_allclose(out.numpy(), np.maximum(xv * 2 - 1, 0).sum(), rtol=1e-5)
    assert _current() == 0


def test_random_draws_and_dropout_on_gpu1():
    x = mge.tensor(np.ones((50, 40), np.float32), device="gpu1")
    y = F.dropout(x, 0.5, training=True)
    _on(y, 1)
    kept = y.numpy() != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(y.numpy()[kept], 2.0)
    n = mge.random.normal(size=(3,), mean=0.0, std=1.0)
    assert n.shape == (3,)


def test_a_device_error_inside_an_op_is_not_called_a_shape_error():
    import cupy

    if getattr(cupy, "_simulated", None) is None:
        pytest.skip("real GPUs with peer access run this kernel (CuPy warns instead)")
    from megengine.core import ops

    a = mge.tensor([1.0, 2.0], device="gpu0")._data
    with cupy.cuda.Device(1), pytest.raises(ValueError, match="different from the current") as e:
        ops.BINARY["add"]().forward(a, a)
    assert not isinstance(e.value, ops.BroadcastError)
    with pytest.raises(ops.BroadcastError, match=r"shapes \(2,\) and \(3,\) do not broadcast"):
        ops.BINARY["add"]().forward(a, mge.tensor([1.0, 2.0, 3.0], device="gpu0")._data)


def test_tensor_factories_allocate_on_the_gpu_they_name():
    x = mge.tensor([1.0, 2.0], device="gpu1")
    made = {"zeros": F.zeros((2, 3), device="gpu1"), "ones": F.ones(2, device="gpu1"),
            "full": F.full((2,), 7.0, device="gpu1"), "arange": F.arange(4, device="gpu1"),
            "linspace": F.linspace(0, 1, 3, device="gpu1"), "zeros_like": F.zeros_like(x),
            "full_like": F.full_like(x, 3.0)}
    for name, t in made.items():
        assert t._data.device.id == 1, name
    np.testing.assert_array_equal(made["arange"].numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(made["full_like"].numpy(), [3.0, 3.0])
    assert _current() == 0


def test_host_side_helpers_on_gpu1_tensors_run_there():
    from megengine.jit import trace

    x = mge.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3), device="gpu1")
    # an output gradient made on another device comes over to the output's
    with GradManager().attach([x]) as gm:
        gm.backward(x * 2, mge.tensor(np.ones((2, 3), np.float32), device="gpu0"))
    _on(x.grad, 1)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))
    SGD([x], lr=0.1).zero_grad()  # 0.x: zeroes the existing gradient in place, on its GPU
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 3)))
    g = F.gather(x, 1, mge.tensor([[0, 2], [1, 0]], dtype="int32", device="gpu1"))  # bounds
    _on(g, 1)
    np.testing.assert_array_equal(g.numpy(), [[0, 2], [4, 3]])

    @trace(symbolic=True, capture_as_const=True)
    def f(a):
        return a * x.sum()  # x is captured as a constant: a copy on its GPU

    for _ in range(2):
        out = f(mge.tensor([1.0], device="gpu1"))
        _on(out, 1)
        np.testing.assert_allclose(out.numpy(), [15.0])
    x.set_value(np.ones(4, np.float32))  # a new shape: new storage, on the tensor's GPU
    _on(x, 1)
    v = mge.tensor([1.0, 2.0, 3.0], device="gpu1")  # a longer bool mask: its true positions
    picked = v[mge.tensor([True, False, True, False], device="gpu1")]
    _on(picked, 1)
    np.testing.assert_array_equal(picked.numpy(), [1.0, 3.0])
    assert _current() == 0
