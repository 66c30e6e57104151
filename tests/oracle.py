"""PyTorch as the oracle: run a function in megengine and in torch on the same inputs and compare
values, dtypes and gradients (shared by the core and functional tests)."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager


def needs_torch(version, what):
    """Skip mark for a test whose torch oracle needs torch ``version`` ("2.13") or newer: the
    engine supports older torch releases (pyproject.toml's floor) that lack ``what``."""
    # (torch.__version__ is a TorchVersion: it compares with a version string)
    return pytest.mark.skipif(torch.__version__ < version,
                              reason=f"the torch oracle needs torch {version}+ ({what}); this "
                                     f"is torch {torch.__version__}")


def _outputs(out, index):
    if index is not None:
        return [out[index]]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _numpy_dtype(t):
    return np.dtype(str(t.dtype).replace("torch.", ""))


def check_against_torch(fn, torch_fn, *arrays, diff=None, rtol=1e-5, atol=1e-5,
                        check_dtype=False, out_index=None, grad_shape=None):
    """Compare ``fn`` (megengine) with ``torch_fn`` on tensors made of ``arrays``.

    Every output's shape and value is compared (a list/tuple output element by element, or
    only ``out[out_index]``), and so is the gradient of each input in ``diff`` (default: every
    float input) for random output gradients. ``check_dtype`` also compares output dtypes.
    ``grad_shape``: {input index: fn(torch_grad) -> array in megengine's layout}. Returns
    megengine's output.
    """
    if diff is None:
        diff = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    xs = [mge.tensor(a) for a in arrays]
    gm = GradManager().attach([xs[i] for i in diff])
    rs = np.random.RandomState(1)
    with gm:
        out = fn(*xs)
        ys = _outputs(out, out_index)
        dys = [np.asarray(rs.randn(*y.shape), dtype=y.dtype) for y in ys]
        gm.backward(ys, [mge.tensor(d) for d in dys])
    ts = [torch.tensor(a, requires_grad=i in diff) for i, a in enumerate(arrays)]
    tys = _outputs(torch_fn(*ts), out_index)
    assert len(ys) == len(tys)
    for y, ty in zip(ys, tys):
        assert y.shape == tuple(ty.shape)
        if check_dtype:
            assert y.dtype == _numpy_dtype(ty)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=rtol, atol=atol)
    torch.autograd.backward(tys, [torch.tensor(d) for d in dys])
    for i in diff:
        expect = ts[i].grad.numpy()
        if grad_shape and i in grad_shape:
            expect = grad_shape[i](expect)
        got = xs[i].grad
        assert got is not None, f"no gradient reached input {i}, which torch differentiates"
        assert got.shape == expect.shape and got.dtype == xs[i].dtype
        np.testing.assert_allclose(got.numpy(), expect, rtol=rtol, atol=atol)
    return out


def check_second_order_against_torch(loss, torch_loss, *arrays, rtol=2e-4, atol=2e-5):
    """Gradients of gradients: d(loss)/dp recorded by an inner GradManager, then the outer
    gradient of sum(d(loss)/dp * v) for random v (a Hessian-vector product); both compared
    with torch.autograd.grad(create_graph=True) on the same float32 ``arrays``."""
    rng = np.random.RandomState(7)
    vs = [rng.uniform(-1, 1, a.shape).astype(np.float32) for a in arrays]
    ps = [mge.Parameter(a) for a in arrays]
    outer, inner = GradManager().attach(ps), GradManager().attach(ps)
    with outer:
        with inner:
            inner.backward(loss(*ps))
        firsts = [p.grad for p in ps]
        assert all(g._tracked for g in firsts), "the gradient was not recorded"
        for p in ps:
            p.grad = None
        outer.backward(sum((g * mge.tensor(v)).sum() for g, v in zip(firsts, vs)))
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    tg = torch.autograd.grad(torch_loss(*ts), ts, create_graph=True)
    hv = torch.autograd.grad(sum((g * torch.tensor(v)).sum() for g, v in zip(tg, vs)), ts,
                             allow_unused=True)
    for g, t in zip(firsts, tg):
        np.testing.assert_allclose(g.numpy(), t.detach().numpy(), rtol=rtol, atol=atol)
    for p, h in zip(ps, hv):  # None on either side: no second-order dependence on p
        want = np.zeros(p.shape, np.float32) if h is None else h.numpy()
        got = np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def float64_value_and_grads(fn, torch_fn, *arrays, seed=3):
    """fn's output and input gradients in float64 (mge.tensor would store float64 as float32
    without a dtype), and torch's, for one random output gradient: (ours, torch's), each the
    output followed by the inputs' gradients, as host arrays."""
    from devices import host

    xs = [mge.tensor(a, dtype="float64") for a in arrays]
    gm = GradManager().attach(xs)
    with gm:
        y = fn(*xs)
        dy = np.random.RandomState(seed).randn(*y.shape)
        gm.backward(y, mge.tensor(dy, dtype="float64"))
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    ty = torch_fn(*ts)
    ty.backward(torch.tensor(dy))
    assert y.dtype == np.float64 and all(x.grad.dtype == np.float64 for x in xs)
    return ([host(y)] + [host(x.grad) for x in xs],
            [ty.detach().numpy()] + [t.grad.numpy() for t in ts])


def within_a_float16_step(got, exact, steps=1):
    """``got`` (a float16 array) within one float16 step (or ``steps``) of ``exact`` (float64:
    torch in float64 on the same float16 values) everywhere: a result computed in float32 and
    rounded once. Where ``exact`` is past float16's range, ``got`` must be its infinity."""
    assert got.dtype == np.float16, got.dtype
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float16)
    past = np.isinf(rounded) & np.isfinite(exact)
    assert (got[past] == rounded[past]).all(), "not infinite past float16's range"
    exact, got = exact[~past], got[~past].astype(np.float64)
    step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    assert (np.abs(got - exact) <= steps * step).all(), \
        f"{np.max(np.abs(got - exact) / step):.3g} float16 steps off"


def check_float16_against_torch(fn, torch_fn, *arrays, diff=None, seed=5):
    """float16 precision where accumulation matters (sums, scans over 10^4-10^5 values): ``fn``
    on float16 tensors of ``arrays`` must give float16 outputs and input gradients (for one
    random output gradient) as close to the exact result (torch in float64 on the same float16
    values) as torch's own float16 result is: within 2x torch's error, or 2 float16 ulps of the
    result's largest value. ``diff``: the inputs to differentiate (default: every float one)."""
    if diff is None:
        diff = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    arrays = [a.astype(np.float16) if a.dtype.kind == "f" else a for a in arrays]
    xs = [mge.tensor(a) for a in arrays]
    gm = GradManager().attach([xs[i] for i in diff])
    with gm:
        y = fn(*xs)
        dy = np.random.RandomState(seed).uniform(0.5, 1, y.shape).astype(np.float16)
        gm.backward(y, mge.tensor(dy))
    ours = [y] + [xs[i].grad for i in diff]
    results = []
    for dtype in (torch.float16, torch.float64):
        ts = [torch.tensor(a).to(dtype if a.dtype.kind == "f" else None).requires_grad_(i in diff)
              for i, a in enumerate(arrays)]
        ty = torch_fn(*ts)
        ty.backward(torch.tensor(dy).to(dtype))
        results.append([ty] + [ts[i].grad for i in diff])
    for k, (got, theirs, exact) in enumerate(zip(ours, *results)):
        what = "output" if k == 0 else f"gradient of input {diff[k - 1]}"
        assert got.dtype == np.float16, f"{what}: {got.dtype}, not float16"
        exact = exact.detach().numpy()
        scale = max(np.abs(exact).max(), np.finfo(np.float16).tiny)
        ours_err = np.abs(got.numpy().astype(np.float64) - exact).max() / scale
        torch_err = np.abs(theirs.detach().numpy().astype(np.float64) - exact).max() / scale
        assert ours_err <= max(2 * torch_err, 2 * 2.0 ** -10), \
            f"{what}: relative error {ours_err:.3g}, torch's float16 {torch_err:.3g}"


def check_recorded_clip_grad_norm(devices, max_norm=0.1, ord=2.0):
    """`clip_grad_norm` of gradients an outer GradManager records, one input on each of
    ``devices`` (a penalty on the clipped gradients), against the clipping formula written in
    torch: the total norm over all gradients, the clipped gradients, and the outer gradients of
    the weights. Returns the megengine inputs and weights (for device checks)."""
    import megengine.functional as F
    from megengine.optimizer import clip_grad_norm

    rng = np.random.RandomState(5)
    xa = [rng.randn(3, 4).astype(np.float32) for _ in devices]
    wa = [rng.randn(2, 4).astype(np.float32) for _ in devices]
    xs = [mge.tensor(a, device=d) for a, d in zip(xa, devices)]
    ws = [mge.Parameter(a, device=d) for a, d in zip(wa, devices)]
    gm_in, gm_w = GradManager().attach(xs), GradManager().attach(ws)
    with gm_w:
        with gm_in:
            gm_in.backward([F.sigmoid(F.linear(x, w)).sum() for x, w in zip(xs, ws)])
        total = clip_grad_norm(xs, max_norm, ord=ord)
        clipped = [x.grad for x in xs]
        gm_w.backward([(g ** 2 * F.cos(g)).sum() for g in clipped])
    txs = [torch.tensor(a, requires_grad=True) for a in xa]
    tws = [torch.tensor(a, requires_grad=True) for a in wa]
    tgs = torch.autograd.grad(sum(torch.sigmoid(torch.nn.functional.linear(x, w)).sum()
                                  for x, w in zip(txs, tws)), txs, create_graph=True)
    ttotal = torch.linalg.vector_norm(torch.cat([g.flatten() for g in tgs]), ord)
    assert ttotal.item() > max_norm  # the gradients are clipped
    tclipped = [g * (max_norm / (ttotal + 1e-6)) for g in tgs]
    tgws = torch.autograd.grad(sum((g ** 2 * torch.cos(g)).sum() for g in tclipped), tws)
    assert total.device == xs[0].device
    np.testing.assert_allclose(total.numpy(), ttotal.detach().numpy(), rtol=1e-5)
    for g, tg, w, tgw in zip(clipped, tclipped, ws, tgws):
        np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w.grad.numpy(), tgw.numpy(), rtol=1e-4, atol=1e-6)
    return xs, ws


def raises_as_upstream(call, shape, upstream, match):
    """``call(x)``, x a float32 tensor of ``shape``, raises an error of ``upstream``'s type (what
    upstream 1.13 raises there, measured) whose message matches ``match``, and that error is a
    ValueError too (what the mistake is): the tables of bad arguments in tests/functional."""
    x = mge.tensor(np.random.RandomState(0).rand(*shape).astype("float32"))
    with pytest.raises(upstream, match=match) as e:
        call(x)
    assert isinstance(e.value, ValueError)
