"""Gradients through complex tensors against torch's complex autograd (core/dispatch.py's
`_ComplexGrad`): the gradient of a real loss with respect to ``z = x + iy`` is dL/dx + i dL/dy,
real inputs get real gradients; ops without a complex rule raise when a gradient reaches them."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.optimizer as optim
from megengine.autodiff import Function, GradManager
from megengine.core import dispatch

# (real dtype, complex dtype, rtol, atol)
PRECISIONS = [(np.float32, np.complex64, 2e-5, 2e-5), (np.float64, np.complex128, 1e-11, 1e-11)]
IDS = ["complex64", "complex128"]


def rand(shape, dtype, seed):
    rng = np.random.RandomState(seed)
    a = rng.uniform(-1.5, 1.5, shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.uniform(-1.5, 1.5, shape)
    return a.astype(dtype)


def check(mge_fn, torch_fn, arrays, rtol, atol):
    """Loss and every input's gradient (dtype and values) against torch."""
    params = [mge.Parameter(a, dtype=a.dtype) for a in arrays]
    gm = GradManager().attach(params)
    with gm:
        loss = mge_fn(*params)
        gm.backward(loss)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*tensors)
    expected.backward()
    np.testing.assert_allclose(loss.numpy(), expected.detach().numpy(), rtol=rtol, atol=atol)
    for p, t in zip(params, tensors):
        assert p.grad is not None and p.grad.dtype == p.dtype
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)


# real -> complex -> real: float inputs (m > 0: torch.polar's gradient assumes a magnitude
# >= 0), a complex value in the middle, a real loss
REAL_CHAINS = {
    "polar_mul_real": (  # the silent case this file was written for
        lambda m, a, w: F.real(F.polar(m, a) * F.complex(w, m)).sum(),
        lambda m, a, w: (torch.polar(m, a) * torch.complex(w, m)).real.sum()),
    "complex_add_sub_neg_imag": (
        lambda m, a, w: F.imag(-(F.complex(m, a) + F.complex(a, w)) - F.complex(w, w)).sum(),
        lambda m, a, w: (-(torch.complex(m, a) + torch.complex(a, w))
                         - torch.complex(w, w)).imag.sum()),
    "div_abs": (
        lambda m, a, w: F.abs(F.complex(m, a) / F.complex(w + 2, a)).sum(),
        lambda m, a, w: (torch.complex(m, a) / torch.complex(w + 2, a)).abs().sum()),
    "exp_square_pow": (
        lambda m, a, w: F.real(F.exp(F.complex(m, a)) + F.square(F.complex(a, w))
                               + F.complex(w, m) ** 3).sum(),
        lambda m, a, w: (torch.exp(torch.complex(m, a)) + torch.complex(a, w) ** 2
                         + torch.complex(w, m) ** 3).real.sum()),
    "float_times_complex_and_scalars": (  # float tensors, Python complex numbers
        lambda m, a, w: F.imag((a * F.polar(m, w) + 1j * a - w / (2 - 1j)) * (0.5 + 2j)).sum(),
        lambda m, a, w: ((a * torch.polar(m, w) + 1j * a - w / (2 - 1j)) * (0.5 + 2j))
        .imag.sum()),
    "sum_mean_axes": (
        lambda m, a, w: F.abs(F.complex(m, a).sum(axis=1)).sum()
        + F.imag(F.complex(a, w).mean(axis=0)).sum() + F.real(F.complex(w, m).mean()),
        lambda m, a, w: torch.complex(m, a).sum(1).abs().sum()
        + torch.complex(a, w).mean(0).imag.sum() + torch.complex(w, m).mean().real),
    "reshape_transpose_index": (
        lambda m, a, w: F.real(F.complex(m, a).reshape(4, 3).transpose(1, 0)[1:, ::2]
                               * F.complex(w, w)[[2, 2]][:, 1:3]).sum(),
        lambda m, a, w: (torch.complex(m, a).reshape(4, 3).permute(1, 0)[1:, ::2]
                         * torch.complex(w, w)[[2, 2]][:, 1:3]).real.sum()),
    "matmul": (
        lambda m, a, w: F.abs(F.matmul(F.complex(m, a), F.complex(w, m).T) @ w).sum(),
        lambda m, a, w: ((torch.complex(m, a) @ torch.complex(w, m).T)
                         @ w.to(torch.complex(w, m).dtype)).abs().sum()),
    "concat_stack_broadcast": (
        lambda m, a, w: F.imag(F.concat([F.complex(m, a), w * 1j]) * 2
                               + F.stack([F.complex(a, m), F.complex(w, a)]).sum(0)[:1]).sum()
        + F.real(F.broadcast_to(F.complex(m[:1], a[:1]), (3, 4))).sum(),
        lambda m, a, w: (torch.cat([torch.complex(m, a), w * 1j]) * 2
                         + torch.stack([torch.complex(a, m), torch.complex(w, a)]).sum(0)[:1])
        .imag.sum() + torch.complex(m[:1], a[:1]).expand(3, 4).real.sum()),
}


@pytest.mark.parametrize("name", sorted(REAL_CHAINS))
@pytest.mark.parametrize("real, cplx, rtol, atol", PRECISIONS, ids=IDS)
def test_real_inputs_through_complex_values_get_torchs_gradients(name, real, cplx, rtol, atol):
    mge_fn, torch_fn = REAL_CHAINS[name]
    m, a, w = [rand((3, 4), real, seed) for seed in range(3)]
    check(mge_fn, torch_fn, [np.abs(m) + 0.1, a, w], rtol, atol)


COMPLEX_LEAVES = {
    "mul_conj_pairs": (lambda z, u: F.real(z * u * u).sum() + F.imag(z - u).sum(),
                       lambda z, u: (z * u * u).real.sum() + (z - u).imag.sum()),
    "abs_exp_div": (lambda z, u: (F.abs(F.exp(z * 0.5)) + F.imag(z / (u + 3))).sum(),
                    lambda z, u: ((z * 0.5).exp().abs() + (z / (u + 3)).imag).sum()),
    "pow_of_both": (lambda z, u: F.abs(z ** (u * 0.3)).sum(),
                    lambda z, u: (z ** (u * 0.3)).abs().sum()),
    "acosh_asin_atanh": (  # acosh's derivative is 1 / (sqrt(z - 1) sqrt(z + 1)), not its square
        lambda z, u: F.real(F.acosh(z) * 2j + F.asin(u) + F.atanh(z * 0.5)).sum(),
        lambda z, u: (z.acosh() * 2j + u.asin() + (z * 0.5).atanh()).real.sum()),
    "sin_log_sqrt": (lambda z, u: F.real(F.sin(z) + F.log(u) * F.sqrt(z)).sum(),
                     lambda z, u: (z.sin() + u.log() * z.sqrt()).real.sum()),
    "matmul_sum_index": (lambda z, u: F.abs((z @ u.T).sum(axis=0)[1:]).sum(),
                         lambda z, u: (z @ u.T).sum(0)[1:].abs().sum()),
    "gather_where_split_roll_diag": (
        lambda z, u: F.abs(F.gather(z, 1, mge.tensor([[0, 0], [3, 1], [2, 2]]))).sum()
        + F.real(F.where(F.real(u) > 0, z, u * 2)).sum()
        + F.imag(F.split(z, 2, axis=1)[1] * F.roll(u, 1, 0)[:, :2]).sum()
        + F.abs(F.diag(u[:, :3]) + F.indexing_one_hot(z, mge.tensor([1, 0, 3]), 1)).sum(),
        lambda z, u: torch.gather(z, 1, torch.tensor([[0, 0], [3, 1], [2, 2]])).abs().sum()
        + torch.where(u.real > 0, z, u * 2).real.sum()
        + (torch.split(z, 2, dim=1)[1] * torch.roll(u, 1, 0)[:, :2]).imag.sum()
        + (torch.diag(u[:, :3]) + z[torch.arange(3), torch.tensor([1, 0, 3])]).abs().sum()),
    "copy_cumsum_pad_cond_take": (
        lambda z, u: F.abs(F.copy(z) + F.cumsum(u, 1)).sum()
        + F.real(F.nn.pad(z, ((1, 0), (0, 2)), mode="reflect") * 2j).sum()
        + F.imag(F.cond_take(F.real(u) > 0, z)[0]).sum(),
        lambda z, u: (z.clone() + u.cumsum(1)).abs().sum()
        + (torch.nn.functional.pad(z[None], (0, 2, 1, 0), mode="reflect")[0] * 2j).real.sum()
        + z[u.real > 0].imag.sum()),
    "einsum_linear_matinv": (
        lambda z, u: F.abs(F.einsum("ij,kj->ik", z, u)).sum()
        + F.real(F.linear(z, u, u[0, :3])).sum()
        + F.imag(F.matinv(z[:, :3] + mge.tensor(np.eye(3) * 3))).sum(),
        lambda z, u: torch.einsum("ij,kj->ik", z, u).abs().sum()
        + torch.nn.functional.linear(z, u, u[0, :3]).real.sum()
        + torch.linalg.inv(z[:, :3] + 3 * torch.eye(3, dtype=z.dtype)).imag.sum()),
    "sigmoid_silu_tanh": (  # the activations torch computes for complex input (its silu
        # has no complex gradient: x * sigmoid(x) is the oracle)
        lambda z, u: F.abs(F.sigmoid(z) + F.silu(u * 0.5) * F.tanh(z * 0.25)).sum(),
        lambda z, u: (z.sigmoid() + (u * 0.5) * (u * 0.5).sigmoid() * (z * 0.25).tanh()).abs().sum()),
    "setitem_astype": (  # x[i] = v and a cast between complex dtypes
        lambda z, u: F.imag(_set_row(z, u).astype("complex128")).sum(),
        lambda z, u: torch.cat([u[1:2], z[1:]]).to(torch.complex128).imag.sum()),
}


def _set_row(z, u):
    out = z * 1
    out[0] = u[1]
    return out


@pytest.mark.parametrize("name", sorted(COMPLEX_LEAVES))
@pytest.mark.parametrize("real, cplx, rtol, atol", PRECISIONS, ids=IDS)
def test_complex_leaves_get_torchs_grad(name, real, cplx, rtol, atol):
    mge_fn, torch_fn = COMPLEX_LEAVES[name]
    arrays = [rand((3, 4), cplx, seed) for seed in (3, 4)]
    if name == "pow_of_both":  # numpy's complex power rounds otherwise than torch's (2e-8)
        rtol, atol = max(rtol, 1e-7), max(atol, 1e-7)
    check(mge_fn, torch_fn, arrays, rtol, atol)


def test_abs_of_zero_and_real_part_have_torchs_gradient():
    z = np.array([0, 3 + 4j, -2j], np.complex64)
    check(lambda t: F.abs(t).sum() + F.real(t).sum(),
          lambda t: t.abs().sum() + t.real.sum(), [z], 1e-6, 1e-6)


def test_complex_output_takes_an_output_gradient_as_torch():
    z, v = rand((5,), np.complex64, 0), rand((5,), np.complex64, 1)
    w = mge.Parameter(z, dtype=z.dtype)
    gm = GradManager().attach(w)
    with gm:
        gm.backward(F.exp(w) * 2, dy=mge.tensor(v))
    t = torch.tensor(z, requires_grad=True)
    (t.exp() * 2).backward(torch.tensor(v))
    np.testing.assert_allclose(w.grad.numpy(), t.grad.numpy(), rtol=1e-5)


def test_complex_loss_without_output_gradient_is_refused():
    w = mge.Parameter(rand((3,), np.complex64, 0), dtype=np.complex64)
    gm = GradManager().attach(w)
    with gm:
        with pytest.raises(ValueError, match="complex output.*a loss must be real"):
            gm.backward((w * w).sum())
    assert w.grad is None and dispatch._wide == 0


# ----- ops that accept complex values but have no complex gradient rule -----

class _Twice(Function):  # a user Function written for real numbers
    def forward(self, x):
        return x * 2

    def backward(self, g):
        return g * 2


NO_RULE = {
    "user Function": lambda z: _Twice()(z),
}


@pytest.mark.parametrize("name", sorted(NO_RULE))
def test_op_without_complex_rule_raises_when_a_gradient_reaches_it(name):
    x = mge.Parameter([[1.0, -2.0], [0.5, 3.0]])
    gm = GradManager().attach(x)
    with gm:
        y = NO_RULE[name](F.complex(x, x * 2))  # the forward runs
        with pytest.raises(RuntimeError, match="complex gradients are not supported"):
            gm.backward(F.real(y).sum())
    assert x.grad is None  # nothing half-delivered
    assert dispatch._wide == 0  # the recording ended: float programs take the fast path again


def test_op_without_complex_rule_off_the_gradient_path_is_fine():
    x = mge.Parameter([1.0, -2.0, 0.5])
    z = F.complex(x, x * 2)
    assert _Twice()(z).dtype == np.complex64  # nothing recorded: no error
    gm = GradManager().attach(x)
    with gm:
        z = F.polar(x, x)
        metric = _Twice()(z)  # recorded, unused by the loss
        detached = _Twice()(z.detach())  # off the path
        gm.backward(F.imag(z).sum())
    np.testing.assert_allclose(x.grad.numpy(), np.sin(x.numpy()) + x.numpy() * np.cos(x.numpy()),
                               rtol=1e-6)
    assert metric.shape == (3,) and detached.dtype == np.complex64


def test_complex_values_do_not_switch_float_recordings_to_the_general_branch():
    x = mge.Parameter([1.0, 2.0])
    gm = GradManager().attach(x)
    with gm:
        assert dispatch._wide == 0
        z = F.complex(x, x)
        assert dispatch._wide == 1  # this recording now tracks a complex value
        gm.backward(F.abs(z).sum())
    assert dispatch._wide == dispatch._complex_grads == 0
    with gm:  # the next recording of only float values: the fast path
        gm.backward((x * x).sum())
        assert dispatch._wide == 0


def test_higher_order_gradient_through_complex_values_raises():
    x = mge.Parameter([1.0, 2.0])
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            with pytest.raises(RuntimeError, match="higher-order gradients through complex"):
                inner.backward(F.abs(F.complex(x, x) * F.complex(x, -x)).sum())


def test_complex_parts_must_be_real_and_complex_functions_refuse_complex():
    z = F.complex(mge.tensor([1.0]), mge.tensor([2.0]))
    with pytest.raises(TypeError, match="parts must be real"):
        F.complex(z, z)
    for name, fn in [("erf", F.erf), ("atan2", lambda t: F.atan2(t, t)), ("softplus", F.softplus),
                     ("var", F.var), ("logsumexp", lambda t: F.logsumexp(t, 0))]:  # no silent cast
        with pytest.raises(TypeError, match=f"^{name}: it takes real numbers, got a complex "
                                            r"tensor \(complex64\); take F.real"):
            fn(z)


def test_float_and_complex_operands_promote_to_complex():
    x = mge.tensor([1.0, 2.0])
    z = F.complex(x, x)
    assert (x + z).dtype == np.complex64 and (z * x).dtype == np.complex64
    assert (x * 1j).tolist() == [1j, 2j]
    assert (mge.tensor([1.0], dtype="float64") * z[:1]).dtype == np.complex128
    assert F.concat([x, z]).tolist() == [1, 2, 1 + 1j, 2 + 2j]
    assert z.mean().item() == 1.5 + 1.5j
    assert F.exp(z * 0).tolist() == [1, 1]


# ----- optimizers: a complex parameter is updated as pairs of reals (torch's view_as_real) ----

@pytest.mark.parametrize("make", [
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    (lambda p: optim.Adam(p, lr=0.1, weight_decay=0.01),
     lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.01)),
    (lambda p: optim.AdamW(p, lr=0.1), lambda p: torch.optim.AdamW(p, lr=0.1)),
    (lambda p: optim.Adagrad(p, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    (lambda p: optim.Adadelta(p, lr=0.5, weight_decay=0.01),
     lambda p: torch.optim.Adadelta(p, lr=0.5, weight_decay=0.01)),
    (lambda p: _MomentumSGD(p, lr=0.1, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
], ids=["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "upstream's _updates protocol"])
@pytest.mark.parametrize("shape", [(2, 3), ()], ids=["2x3", "0-d"])
def test_optimizers_step_complex_parameters_as_torch(make, shape):
    z0, target = rand(shape, np.complex64, 0), rand(shape, np.complex64, 1)
    w = mge.Parameter(z0, dtype=z0.dtype)
    opt, gm = make[0]([w]), GradManager().attach(w)
    t = torch.tensor(z0, requires_grad=True)
    topt = make[1]([t])
    for _ in range(4):
        with gm:
            gm.backward(F.abs(w - mge.tensor(target)).sum() + F.real(w * w).sum())
        opt.step().clear_grad()
        topt.zero_grad()
        ((t - torch.tensor(target)).abs().sum() + (t * t).real.sum()).backward()
        topt.step()
    assert w.dtype == np.complex64
    np.testing.assert_allclose(w.numpy(), t.detach().numpy(), rtol=1e-5, atol=1e-6)
    state = opt.state_dict()["state"][0]
    for name, value in state.items():  # buffers stay complex, of the parameter's shape
        if name != "step" and isinstance(value, np.ndarray) and value.shape == shape:
            assert value.dtype == np.complex64, name
    opt.load_state_dict(opt.state_dict())


class _MomentumSGD(optim.Optimizer):
    """An optimizer written for upstream: state made by ``_add_state``, updated by tensor
    operations in ``_updates``."""

    def __init__(self, params, lr, momentum):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    def _create_state(self, param_group):
        for p in param_group["params"]:
            self._add_state(p, "buf")  # zeros of the parameter's (complex) dtype

    def _updates(self, param_group):
        for p in param_group["params"]:
            buf = self._state[p]["buf"]
            buf[...] = buf * param_group["momentum"] + p.grad
            p[...] = p - param_group["lr"] * buf


def _step_lamb_on(w, opt, grads):
    for g in grads:
        w.grad = mge.tensor(g, dtype=g.dtype)
        opt.step().clear_grad()
    return w.numpy()


@pytest.mark.parametrize("make", [
    lambda p: optim.LAMB(p, lr=0.1, weight_decay=0.01),
    lambda p: optim.LAMB(p, lr=0.1, always_adapt=True),
    lambda p: optim.LAMBFp16(p, lr=0.1, weight_decay=0.01),
], ids=["LAMB", "LAMB always_adapt", "LAMBFp16"])
def test_lamb_steps_a_complex_parameter_as_its_pairs_of_reals(make):
    # torch has no LAMB: the oracle is the definition torch's optimizers follow for complex
    # parameters, the same optimizer on the (..., 2) float view (torch.view_as_real)
    z0 = rand((2, 3), np.complex64, 0)
    grads = [rand((2, 3), np.complex64, seed) for seed in (1, 2, 3)]
    w, pairs = mge.Parameter(z0, dtype=z0.dtype), mge.Parameter(torch.view_as_real(
        torch.tensor(z0)).numpy())
    got = _step_lamb_on(w, make([w]), grads)
    want = _step_lamb_on(pairs, make([pairs]), [torch.view_as_real(torch.tensor(g)).numpy()
                                                  for g in grads])
    np.testing.assert_allclose(torch.view_as_real(torch.tensor(got)).numpy(), want,
                               rtol=1e-6, atol=1e-7)
    assert got.dtype == np.complex64


@pytest.mark.parametrize("symbolic", [False, True])
def test_traced_training_step_through_complex_values_matches_torch(symbolic):
    from megengine.jit import trace

    m, a = mge.Parameter([1.0, 2.0]), mge.Parameter([0.3, -0.5])
    gm = GradManager().attach([m, a])

    @trace(symbolic=symbolic)
    def step(w):
        with gm:
            gm.backward(F.real(F.polar(m, a) * w).sum())

    tm, ta = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.3, -0.5],
                                                                         requires_grad=True)
    w = np.array([1 + 2j, 3 - 1j], np.complex64)
    (torch.polar(tm, ta) * torch.tensor(w)).real.sum().backward()
    for _ in range(3):  # the first call records, the later ones replay
        m.grad = a.grad = None
        step(mge.tensor(w))
        np.testing.assert_allclose(m.grad.numpy(), tm.grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-6)
