"""Higher-order gradients (nested GradManagers) against torch.autograd.grad(create_graph=True)."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from oracle import check_second_order_against_torch

RTOL, ATOL = 2e-4, 2e-5


def rand(*shape, low=None):
    a = np.random.randn(*shape).astype(np.float32)
    return np.abs(a) + low if low is not None else a


def check_second_order(mge_fn, torch_fn, *arrays):
    """Compare d(loss)/dx and the Hessian-vector product d(sum_i <dx_i, v_i>)/dx."""
    check_second_order_against_torch(mge_fn, torch_fn, *arrays, rtol=RTOL, atol=ATOL)


ELEMWISE = {
    "mul_add_sub": (lambda a, b: ((a * b + a - b * b) * a).sum(),
                    lambda a, b: ((a * b + a - b * b) * a).sum(), False),
    "div": (lambda a, b: (a / b).sum(), lambda a, b: (a / b).sum(), True),
    "pow": (lambda a, b: (a ** b).sum(), lambda a, b: (a ** b).sum(), True),
    "exp_log": (lambda a, b: (F.exp(a * 0.3) * F.log(b)).sum(),
                lambda a, b: ((a * 0.3).exp() * b.log()).sum(), True),
    "sin_cos_tanh": (lambda a, b: (F.sin(a) * F.cos(b) + F.tanh(a * b)).sum(),
                     lambda a, b: (a.sin() * b.cos() + (a * b).tanh()).sum(), False),
    "sqrt_abs_neg": (lambda a, b: (F.sqrt(b) * F.abs(a) - (-a) ** 2).sum(),
                     lambda a, b: (b.sqrt() * a.abs() - (-a) ** 2).sum(), True),
    "max_min": (lambda a, b: (F.maximum(a, b) * F.minimum(a, b) ** 2).sum(),
                lambda a, b: (torch.maximum(a, b) * torch.minimum(a, b) ** 2).sum(), False),
    "broadcast": (lambda a, b: (a * b[0] + b[:1] ** 3).sum(),
                  lambda a, b: (a * b[0] + b[:1] ** 3).sum(), False),
    "activations": (lambda a, b: (F.sigmoid(a) * F.relu(b) + F.softplus(a) * F.silu(b)
                                  + F.logsigmoid(b) * F.leaky_relu(a, 0.2)).sum(),
                    lambda a, b: (torch.sigmoid(a) * torch.relu(b)
                                  + torch.nn.functional.softplus(a) * torch.nn.functional.silu(b)
                                  + torch.nn.functional.logsigmoid(b)
                                  * torch.nn.functional.leaky_relu(a, 0.2)).sum(), False),
}


@pytest.mark.parametrize("name", sorted(ELEMWISE))
def test_elemwise_second_order(name):
    f, tf, positive = ELEMWISE[name]
    low = 0.5 if positive else None
    check_second_order(f, tf, rand(3, 4, low=low), rand(3, 4, low=low))


def test_matmul_and_linear_second_order():
    check_second_order(lambda a, b: ((a @ b) ** 2).sum(), lambda a, b: ((a @ b) ** 2).sum(),
                       rand(3, 4), rand(4, 2))
    check_second_order(lambda a, b: (F.matmul(a, b) ** 3).sum(),
                       lambda a, b: (torch.matmul(a, b) ** 3).sum(), rand(2, 3, 4), rand(4))
    check_second_order(lambda x, w, b: (F.tanh(F.linear(x, w, b)) ** 2).sum(),
                       lambda x, w, b: (torch.tanh(torch.nn.functional.linear(x, w, b)) ** 2).sum(),
                       rand(5, 4), rand(3, 4), rand(3))


def test_reductions_and_shapes_second_order():
    check_second_order(
        lambda a: (a.sum(axis=1) ** 2).sum() + (a.mean(axis=0) ** 3).sum()
        + F.max(a * a, axis=1).sum() + (a.reshape(4, 3).transpose(1, 0)[1:, ::2] ** 3).sum(),
        lambda a: (a.sum(1) ** 2).sum() + (a.mean(0) ** 3).sum()
        + (a * a).max(1).values.sum() + (a.reshape(4, 3).T[1:, ::2] ** 3).sum(),
        rand(3, 4))
    check_second_order(lambda a: F.prod(a, axis=1).sum() * a.min(),
                       lambda a: a.prod(1).sum() * a.min(), rand(2, 3, low=0.5))


def test_expand_dims_and_squeeze_second_order():
    # their gradients are the inverse axis operations (RemoveAxis of AddAxis's positions, ...),
    # themselves recorded; squeeze of (1, 3) removes 1, then 2
    check_second_order(
        lambda a: (F.squeeze(F.expand_dims(a, (0, 2)) ** 3 * a.sum(), (0, 2)) ** 2).sum(),
        lambda a: ((a.unsqueeze(0).unsqueeze(2) ** 3 * a.sum()).squeeze(2).squeeze(0) ** 2).sum(),
        rand(3, 4))
    check_second_order(
        lambda a: (F.expand_dims(F.squeeze(a, (1, 3)), -1) ** 3).sum() * F.squeeze(a).sum(),
        lambda a: (a.squeeze(3).squeeze(1).unsqueeze(-1) ** 3).sum() * a.squeeze().sum(),
        rand(2, 1, 3, 1))


def test_softmax_logsoftmax_cross_entropy_second_order():
    label = np.array([0, 3, 1, 2])
    check_second_order(lambda x: (F.softmax(x, axis=1) ** 2).sum() + F.logsoftmax(x, 1)[:, 0].sum(),
                       lambda x: (torch.softmax(x, 1) ** 2).sum() + torch.log_softmax(x, 1)[:, 0].sum(),
                       rand(4, 5))
    for smooth in (0.0, 0.2):
        check_second_order(
            lambda x: F.nn.cross_entropy(x * x, mge.tensor(label), label_smooth=smooth),
            lambda x: torch.nn.functional.cross_entropy(x * x, torch.tensor(label),
                                                         label_smoothing=smooth),
            rand(4, 5))
    probs = np.random.dirichlet(np.ones(5), size=4).astype(np.float32)
    check_second_order(
        lambda p: F.nn.cross_entropy(p * p, mge.tensor(label), with_logits=False, reduction="sum"),
        lambda p: torch.nn.functional.nll_loss((p * p).log(), torch.tensor(label), reduction="sum"),
        probs + 0.1)


def test_conv2d_second_order():
    check_second_order(
        lambda x, w: (F.conv2d(x, w, padding=1) ** 2).sum(),
        lambda x, w: (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum(),
        rand(1, 2, 5, 5), rand(3, 2, 3, 3))


def test_gradient_penalty_on_inputs_trains_weights():
    """WGAN-GP style: the penalty on d(out)/d(input) is differentiated w.r.t. the weights."""
    xa, wa, ba = rand(6, 4), rand(3, 4), rand(3)
    x, w, b = mge.tensor(xa), mge.Parameter(wa), mge.Parameter(ba)
    gm_in, gm_w = GradManager().attach(x), GradManager().attach([w, b])
    with gm_w:
        with gm_in:
            gm_in.backward(F.sigmoid(F.linear(x, w, b)).sum())
        penalty = ((F.sqrt((x.grad ** 2).sum(axis=1)) - 1) ** 2).mean()
        gm_w.backward(penalty)
    tx = torch.tensor(xa, requires_grad=True)
    tw, tb = torch.tensor(wa, requires_grad=True), torch.tensor(ba, requires_grad=True)
    gx, = torch.autograd.grad(torch.sigmoid(torch.nn.functional.linear(tx, tw, tb)).sum(), tx,
                              create_graph=True)
    gw, gb = torch.autograd.grad(((gx.pow(2).sum(1).sqrt() - 1) ** 2).mean(), [tw, tb])
    np.testing.assert_allclose(w.grad.numpy(), gw.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b.grad.numpy(), gb.numpy(), rtol=RTOL, atol=ATOL)


def test_third_order_through_three_nested_grad_managers():
    x = mge.Parameter(np.array([0.3, -1.2], np.float32))
    g1, g2, g3 = (GradManager().attach(x) for _ in range(3))
    with g1:
        with g2:
            with g3:
                g3.backward(F.sin(x * 2).sum())
            d1 = x.grad
            x.grad = None
            g2.backward(d1.sum())
        d2 = x.grad
        x.grad = None
        g1.backward(d2.sum())
    v = np.array([0.3, -1.2])
    np.testing.assert_allclose(d1.numpy(), 2 * np.cos(2 * v), rtol=1e-5)
    np.testing.assert_allclose(d2.numpy(), -4 * np.sin(2 * v), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), -8 * np.cos(2 * v), rtol=1e-5)


def test_math_ops_second_order():
    check_second_order(
        lambda a: (F.var(a, axis=1) ** 2).sum() + F.logsumexp(a * a, axis=0).sum()
        + (F.norm(a, axis=1) ** 3).sum() + F.norm(a, ord=3) * F.cumsum(a, axis=1)[:, -1].sum(),
        lambda a: (a.var(1, unbiased=False) ** 2).sum() + torch.logsumexp(a * a, 0).sum()
        + (a.norm(dim=1) ** 3).sum() + a.norm(p=3) * a.cumsum(1)[:, -1].sum(),
        rand(3, 4))
    m = rand(3, 3) + 3 * np.eye(3, dtype=np.float32)
    check_second_order(lambda a: (F.matinv(a) ** 2).sum() + (F.sort(a)[0][:, :2] ** 3).sum(),
                       lambda a: (torch.inverse(a) ** 2).sum() + (a.sort(-1)[0][:, :2] ** 3).sum(),
                       m)


def test_comparisons_inside_second_order_need_no_grad_graph():
    check_second_order(lambda a: (a * a * (a > 0)).sum() + F.where(a > 0, a ** 3, -a).sum(),
                       lambda a: (a * a * (a > 0)).sum() + torch.where(a > 0, a ** 3, -a).sum(),
                       rand(3, 4))


def test_tensor_manipulation_second_order():
    check_second_order(
        lambda a, b: (F.concat([a, b * b], axis=1) ** 2).sum() + (F.stack([a, b], 0) ** 3).sum()
        + (F.broadcast_to(a[:1], (3, 4)) * b).sum() + (F.split(a * b, 2, axis=1)[1] ** 2).sum(),
        lambda a, b: (torch.cat([a, b * b], 1) ** 2).sum() + (torch.stack([a, b], 0) ** 3).sum()
        + (a[:1].expand(3, 4) * b).sum() + ((a * b).split(2, 1)[1] ** 2).sum(),
        rand(3, 4), rand(3, 4))


def test_more_activations_dropout_and_embedding_second_order():
    check_second_order(lambda a: (F.gelu(a) * F.hswish(a * 2)).sum(),
                       lambda a: (torch.nn.functional.gelu(a)
                                  * torch.nn.functional.hardswish(a * 2)).sum(),
                       rand(3, 4))
    idx = np.array([[0, 2], [2, 3]])
    check_second_order(lambda w: (F.embedding(mge.tensor(idx), w, padding_idx=3) ** 3).sum(),
                       lambda w: (torch.nn.functional.embedding(torch.tensor(idx), w,
                                                                padding_idx=3) ** 3).sum(),
                       rand(4, 3))
    mge.random.seed(3)
    x = mge.Parameter(rand(50))
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with outer:
        with inner:
            out = F.dropout(x, 0.5)
            inner.backward((out ** 2).sum())
        kept = out.numpy() != 0
        first = x.grad
        x.grad = None
        outer.backward(first.sum())
    # d/dx sum(2 (m x) m) = 2 m^2 with m = 2 where kept
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 8.0, 0.0), rtol=1e-6)


def test_autodiff_page_maml_example_matches_torch():
    # docs/api/autodiff.rst's MAML block runs as written; its meta-gradients equal torch's
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "api" / "autodiff.rst").read_text()
    block = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)", page)[-1]
    scope = {}
    exec("\n".join(line[4:] for line in block.splitlines()), scope)
    net0 = [p.numpy() for p in scope["params"]]  # unchanged: the modules hold the fast weights
    xs, xq = scope["x_support"].numpy(), scope["x_query"].numpy()
    ys, yq = (torch.tensor(scope[k].numpy()).long() for k in ("y_support", "y_query"))
    ts = [torch.tensor(a, requires_grad=True) for a in net0]

    def tnet(x, w):  # Linear, BatchNorm1d (training), ReLU, Linear; w in named_parameters order
        h = torch.tensor(x) @ w[1].T + w[0]
        h = torch.nn.functional.batch_norm(h, None, None, w[3].reshape(-1), w[2].reshape(-1),
                                           training=True)
        return torch.relu(h) @ w[5].T + w[4]

    g = torch.autograd.grad(torch.nn.functional.cross_entropy(tnet(xs, ts), ys), ts,
                            create_graph=True)
    meta = torch.autograd.grad(
        torch.nn.functional.cross_entropy(tnet(xq, [t - 0.5 * gi for t, gi in zip(ts, g)]), yq),
        ts)
    for p, m in zip(scope["params"], meta):
        np.testing.assert_allclose(p.grad.numpy(), m.numpy(), rtol=RTOL, atol=ATOL)


def test_prod_over_zeros_second_and_third_order():
    # found by the fuzzer (tests/fuzz/grad2.py): relu(x) ** 2 then prod made zeros, and the
    # recorded gradient of prod divided by them (it raised instead); one zero and two zeros
    # per group differ (the second-order term of a single zero survives)
    x = np.array([[0.0, 2.0, 3.0], [1.0, 0.0, 0.0], [2.0, -3.0, 0.5]], np.float32)
    check_second_order(lambda a: F.prod(a, axis=1).sum(), lambda a: a.prod(1).sum(), x)
    check_second_order(lambda a: (F.prod(a, axis=0, keepdims=True) ** 2).sum(),
                       lambda a: (a.prod(0, keepdim=True) ** 2).sum(), x)
    check_second_order(lambda a: F.prod(F.relu(a) ** 2), lambda a: (torch.relu(a) ** 2).prod(),
                       x)
    ps = mge.Parameter(x)
    gms = [GradManager().attach([ps]) for _ in range(3)]
    with gms[2]:
        with gms[1]:
            with gms[0]:
                gms[0].backward(F.prod(ps, axis=1).sum())
            g1, ps.grad = ps.grad, None
            gms[1].backward((g1 * g1).sum())
        g2, ps.grad = ps.grad, None
        gms[2].backward(g2.sum())
    t = torch.tensor(x, requires_grad=True)
    t1, = torch.autograd.grad(t.prod(1).sum(), t, create_graph=True)
    t2, = torch.autograd.grad((t1 * t1).sum(), t, create_graph=True)
    t3, = torch.autograd.grad(t2.sum(), t)
    np.testing.assert_allclose(ps.grad.numpy(), t3.numpy(), rtol=RTOL, atol=ATOL)
