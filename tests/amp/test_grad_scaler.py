"""Tests for megengine/amp/grad_scaler.py: scaled backward and unscale against hand-computed
gradients, dynamic scaling (back off on inf/nan, grow after clean steps), upstream's example
test (eager and under trace), and state_dict."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine import amp
from megengine.amp import GradScaler
from megengine.autodiff import GradManager
from megengine.jit import trace

from devices import requires_cuda, simulated_gpu_runtime


def test_upstream_grad_scaler_example():
    # upstream's test_grad_scaler.py: y.grad is the scale before unscale, 1 after
    def f():
        gm = GradManager()
        scaler = GradScaler()
        x = mge.tensor(1.0)
        for _ in range(3):
            with gm:
                y = x + 1
                gm.attach(y)
                loss = y + 1
                scaler.backward(gm, loss, unscale_grad=False)
            np.testing.assert_equal(y.grad.numpy(), scaler.scale_factor)
            scaler.unscale(gm.attached_tensors())
            np.testing.assert_equal(y.grad.numpy(), 1)
        scaler.unscale(gm.attached_tensors())  # tensors whose .grad is None are skipped

    f()
    trace(f)()


def test_scaled_backward_gives_unscaled_gradients_and_skips_overflow():
    w = mge.Parameter(np.array([1.0, 2.0, 3.0], "float32"))
    gm = GradManager().attach(w)
    scaler = GradScaler(init_scale=8.0, growth_factor=2.0, backoff_factor=0.25,
                        growth_interval=2)
    x = mge.tensor(np.array([0.5, -1.0, 2.0], "float32"))
    scales = []
    for step in range(5):
        with gm:
            # step 2 overflows: the loss's gradient is inf for every weight
            loss = (w * x).sum() * (np.float32(np.inf) if step == 2 else 1.0)
            scaler.backward(gm, loss)
        scales.append(scaler.scale_factor)
        if step == 2:
            assert w.grad is None  # the overflowing step's gradients are dropped
        else:
            np.testing.assert_allclose(w.grad.numpy(), x.numpy())  # d(w.x)/dw = x, unscaled
        w.grad = None
    # clean, clean -> grow x2; overflow -> x0.25 and reset; clean, clean -> grow
    assert scales == [8.0, 16.0, 4.0, 4.0, 8.0]


def test_explicit_dy_accumulation_and_manual_update():
    w = mge.Parameter(np.array([1.0, -1.0], "float32"))
    gm = GradManager().attach(w)
    scaler = GradScaler(init_scale=4.0)
    for k in (1.0, 3.0):  # accumulate two batches, then unscale once
        with gm:
            loss = (w * k).sum()
            scaler.backward(gm, loss, dy=mge.tensor(2.0), unscale_grad=False)
    np.testing.assert_allclose(w.grad.numpy(), [4.0 * 2 * 4, 4.0 * 2 * 4])
    scaler.unscale([w])
    np.testing.assert_allclose(w.grad.numpy(), [8.0, 8.0])  # 2 * (1 + 3)
    scaler.update(new_scale=1.0)
    assert scaler.scale_factor == 1.0


def test_growth_interval_zero_is_a_fixed_scale_without_checks():
    scaler = GradScaler(init_scale=2.0, growth_interval=0)
    t = mge.Parameter([1.0])
    t.grad = mge.tensor([np.nan])
    scaler.unscale([t])
    assert np.isnan(t.grad.numpy()).all()  # not checked: scaled by 1/2 like any value
    scaler.update()
    assert scaler.scale_factor == 2.0


@pytest.mark.parametrize("growth_interval", [0, 2000])
def test_unscale_refuses_a_grad_that_is_not_a_tensor_before_unscaling_any(growth_interval):
    # earlier versions of this fork, with growth_interval=0 (no checks), halved the first
    # gradient before an AttributeError ('str' object has no attribute '_reset') came
    scaler = GradScaler(init_scale=2.0, growth_interval=growth_interval)
    a, b = mge.Parameter([1.0]), mge.Parameter([1.0])
    a.grad, b.grad = mge.tensor([4.0]), "grad"
    with pytest.raises(TypeError, match="must be a Tensor or None, got str .*nothing was"):
        scaler.unscale([a, b])
    assert a.grad.tolist() == [4.0]


def test_backward_refuses_what_is_no_grad_manager_or_loss_saying_so():
    # upstream 1.13: its op's TypeError "py_apply expects tensor as inputs" (measured); an
    # AttributeError ('int' object has no attribute '_data') here before
    with pytest.raises(TypeError, match="gm must be the GradManager"):
        GradScaler().backward(3, mge.tensor(1.0))
    with pytest.raises(TypeError, match="y must be a Tensor or a list of them .*got int"):
        GradScaler().backward(GradManager(), 4)


def test_state_dict_round_trip():
    a = GradScaler(init_scale=32.0, growth_interval=3)
    a._growth_tracker = 2
    b = GradScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {
        "scale_factor": 32.0, "growth_factor": 2.0, "backoff_factor": 0.5,
        "growth_interval": 3, "_growth_tracker": 2}
    # upstream 1.13 measured: {"scale_factor": 1024.0, "growth_factor": 3.0} raised KeyError
    # 'backoff_factor' after setting both; here it changes nothing and names what is missing
    before = b.state_dict()
    with pytest.raises(KeyError, match=r"lacks \['backoff_factor', 'growth_interval', "
                                       r"'_growth_tracker'\]"):
        b.load_state_dict({"scale_factor": 1024.0, "growth_factor": 3.0})
    assert b.state_dict() == before


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_traced_step_uses_the_scale_as_it_grows_and_backs_off(symbolic):
    # the scaler's calls are replayed on every traced call, so the scale may change between
    # calls (it was a constant of the trace: the second call raised a TraceMismatchError);
    # the oracle is the same step run eagerly
    import megengine.optimizer as optim

    def run(traced):
        w = mge.Parameter(np.array([1.0, -2.0, 0.5], "float32"))
        gm = GradManager().attach(w)
        opt = optim.SGD([w], lr=0.1)
        scaler = GradScaler(init_scale=4.0, growth_factor=2.0, backoff_factor=0.5,
                            growth_interval=1)

        def step(x):
            with gm:
                loss = (w * x).sum()
                scaler.backward(gm, loss)
            opt.step().clear_grad()
            return loss

        if traced:
            step = trace(step, symbolic=symbolic)
        seen = []
        for k in range(6):  # the fourth batch overflows: backs off, skips the update
            x = np.array([1.0, 2.0, np.inf if k == 3 else 3.0], "float32")
            step(mge.tensor(x))
            seen.append((scaler.scale_factor, w.numpy().copy()))
        return seen

    eager, traced = run(False), run(True)
    assert [s for s, _ in eager] == [8.0, 16.0, 32.0, 16.0, 32.0, 64.0]
    assert [s for s, _ in traced] == [s for s, _ in eager]
    for (_, a), (_, b) in zip(traced, eager):
        np.testing.assert_array_equal(a, b)


def _linear_under_amp():
    import megengine.module as M

    lin = M.Linear(3, 2)
    lin.weight[...] = mge.tensor(np.array([[0.5, -0.25, 0.125], [1.0, 0.75, -0.5]], "float32"))
    lin.bias[...] = mge.tensor(np.array([0.1, -0.2], "float32"))
    return lin, GradManager().attach(lin.parameters())


def test_an_amp_training_loop_scales_as_upstream():
    # upstream 1.13 measured on this loop: backward returns None; the scale grows x3 after
    # 2 clean steps and backs off x0.25 on a step whose input holds inf (step 3) and on one
    # whose float16 forward overflows (step 4), whose gradients are dropped
    import megengine.optimizer as optim
    from megengine.amp import autocast

    lin, gm = _linear_under_amp()
    opt = optim.SGD(lin.parameters(), lr=0.1)
    scaler = GradScaler(init_scale=4.0, growth_factor=3.0, backoff_factor=0.25,
                        growth_interval=2)
    seen = []
    for i in range(6):
        x = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]], "float32") * (i + 1)
        if i == 3:
            x[0, 0] = np.inf
        if i == 4:
            x = x * 3000.0
        with gm:
            with autocast():
                loss = (lin(mge.tensor(x)).astype("float32") ** 2).mean()
            assert scaler.backward(gm, loss) is None
        seen.append((scaler.scale_factor, scaler._growth_tracker, lin.weight.grad is None))
        opt.step().clear_grad()
    assert seen == [(4.0, 1, False), (12.0, 0, False), (12.0, 1, False), (3.0, 0, True),
                    (0.75, 0, True), (0.75, 1, False)]
    # upstream's parameters after the six steps (float16 compute: within its rounding)
    np.testing.assert_allclose(lin.weight.numpy(), [[0.770569, 1.076725, -1.456136],
                                                    [-1.75433, -8.461199, 8.421615]],
                               rtol=3e-3, atol=1e-3)
    np.testing.assert_allclose(lin.bias.numpy(), [0.020972, -0.645492], rtol=3e-3, atol=1e-3)


def test_unscale_divides_the_gradient_tensors_in_place():
    # upstream 1.13 measured: a reference to a gradient taken before unscale sees the unscaled
    # values (earlier versions of this fork replaced .grad by a new tensor)
    lin, gm = _linear_under_amp()
    scaler = GradScaler(init_scale=8.0, growth_interval=1)
    with gm:
        loss = (lin(mge.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]])) ** 2).mean()
        gm.backward(loss, dy=mge.tensor(scaler.scale_factor))
    grad = lin.weight.grad
    np.testing.assert_allclose(grad.numpy(), [[1.35, -1.65, 5.9], [9.05, 24.55, -19.8]],
                               rtol=1e-6)
    assert scaler.unscale(gm.attached_tensors()) is scaler and lin.weight.grad is grad
    np.testing.assert_allclose(grad.numpy(), [[0.16875, -0.20625, 0.7375],
                                              [1.13125, 3.06875, -2.475]], rtol=1e-6)


def test_only_the_gradients_unscaled_decide_whether_they_are_dropped():
    # upstream 1.13 measured: gradients accumulated after an unscale that found inf are
    # unscaled (not dropped) by the next unscale; update still backs off (earlier versions of
    # this fork dropped every gradient until the next update)
    lin, gm = _linear_under_amp()
    scaler = GradScaler(init_scale=2.0, growth_interval=3)
    x = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 2.0]], "float32")
    with gm:
        scaler.backward(gm, (lin(mge.tensor(x)) * np.inf).mean(), unscale_grad=False)
    scaler.unscale(gm.attached_tensors())
    assert lin.weight.grad is None and scaler._found_non_finite
    with gm:
        scaler.backward(gm, lin(mge.tensor(x * 2)).mean(), unscale_grad=False)
    scaler.unscale(gm.attached_tensors())
    np.testing.assert_allclose(lin.weight.grad.numpy(), [[0.75, 0.75, 0.5]] * 2)
    scaler.update()
    assert (scaler.scale_factor, scaler._growth_tracker) == (1.0, 0)


@requires_cuda
@pytest.mark.parametrize("case", ["finite", "inf", "alias", "fixed scale"])
def test_unscale_on_a_gpu_checks_and_unscales_all_gradients_in_one_kernel(monkeypatch, case):
    # torch's GradScaler kernel (one launch, one read of the verdict) where the gradients are
    # float32 on one device and nothing else holds them; the values the array code gives
    # (products by the same float32 scale), inf/nan dropping all, an alias sending all to the
    # array code (it keeps its value there, as upstream's values never change)
    from megengine.amp import grad_scaler as module

    taken = []
    real = module._unscale_on_aten

    def spy(*args):
        out = real(*args)
        taken.append(out)
        return out

    monkeypatch.setattr(module, "_unscale_on_aten", spy)
    rng = np.random.RandomState(0)
    values = [rng.randn(*s).astype("float32") * 12 for s in ((4, 3), (3,), (2, 2, 2))]
    if case == "inf":
        values[1][2] = np.inf
    ps = [mge.Parameter(np.zeros(v.shape, "float32")) for v in values]
    for p, v in zip(ps, values):
        p.grad = mge.Tensor(v)
    alias = ps[0].grad.detach() if case == "alias" else None
    scaler = GradScaler(init_scale=12.0, growth_interval=0 if case == "fixed scale" else 5)
    scaler.unscale(ps)
    assert taken == [{"finite": False, "inf": True, "alias": None, "fixed scale": False}[case]]
    if case == "inf":
        assert all(p.grad is None for p in ps) and scaler._found_non_finite
        return
    for p, v in zip(ps, values):  # the array code's product: v * float32(1 / 12)
        np.testing.assert_array_equal(p.grad.numpy(), v * np.float32(1.0 / 12.0))
    if alias is not None:
        np.testing.assert_array_equal(alias.numpy(), values[0])


def test_an_autocast_relu_network_step_on_a_gpu_reads_back_only_the_scalers_verdict():
    """Under autocast on a GPU: ReLU's float16 backward is its select kernel (the array code
    read a NaN check back to the host, a sync per ReLU), a float16 bias gradient one float32-
    accumulating sum (three kernels before). The step's host reads from CuPy arrays: the
    labels' range check alone (GradScaler's verdict is read through torch, `_unscale_on_aten`;
    the two ReLUs added two)."""
    import megengine.module as M
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    rt = simulated_gpu_runtime()
    mge.random.seed(0)
    net = M.Sequential(M.Linear(32, 16), M.ReLU(), M.Linear(16, 16), M.ReLU(), M.Linear(16, 4))
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    gm = GradManager().attach(net.parameters())
    scaler = GradScaler()
    rng = np.random.RandomState(0)
    x = mge.tensor(rng.randn(8, 32).astype(np.float32), device="gpu0")
    y = mge.tensor(rng.randint(0, 4, 8), dtype="int32", device="gpu0")
    for step in range(3):
        syncs = rt.syncs
        with gm:
            with amp.autocast():
                loss = F.loss.cross_entropy(net(x), y)
            scaler.backward(gm, loss)
        opt.step().clear_grad()
    assert rt.syncs - syncs == 1
