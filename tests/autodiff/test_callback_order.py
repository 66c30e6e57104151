"""The order in which GradManager callbacks (and upstream's `Grad` callbacks) see gradients: the
order the gradients become complete, as upstream's tape and torch's engine hand them out.

The rule (megengine/core/dispatch.py, `_graph_order`): ops run backward in the reverse of their
forward order; an attached tensor's gradient is complete right after the last op to give it one
(the first to use it in forward), and one op gives its inputs their gradients in input order.
The oracle is torch's hook order (`register_post_accumulate_grad_hook` and `register_hook`, which
agree) on the same computation. Where one upstream op is one torch op the orders agree as they
are; where they split a computation differently (upstream's linear and convolution are a matmul
or convolution followed by ``+ bias``; its transposed convolution is an op on (weight, input))
the torch oracle runs upstream's split, each of upstream's ops one torch node (`_OneOp`), and
upstream's order is the one followed.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine.functional as F
import megengine.module as M
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager
from megengine.core.autodiff.grad import Grad
from megengine.jit import trace


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


class _OneOp(torch.autograd.Function):
    """``fn(*xs)`` as one torch autograd node whose inputs are ``xs`` in this order: how one of
    upstream's ops hands out gradients, run through torch's engine (up to three inputs torch
    hands them out in input order; see test_many_inputs_of_one_op_in_input_order)."""

    @staticmethod
    def forward(ctx, fn, *xs):
        ctx.fn = fn
        ctx.save_for_backward(*xs)
        return fn(*xs)

    @staticmethod
    def backward(ctx, g):
        xs = [x.detach().requires_grad_() for x in ctx.saved_tensors]
        with torch.enable_grad():
            y = ctx.fn(*xs)
        return (None, *torch.autograd.grad(y, xs, g))


def torch_order(fn, arrays):
    """(names in torch's post-accumulate-grad hook order, gradients by name) for
    ``fn(**leaves).sum().backward()``; tensor hooks (register_hook) must give the same order."""
    leaves = {k: torch.tensor(a, requires_grad=True) for k, a in arrays.items()}
    post, pre = [], []
    for k, t in leaves.items():
        t.register_post_accumulate_grad_hook(lambda t, k=k: post.append(k))
        t.register_hook(lambda g, k=k: pre.append(k))
    fn(**leaves).sum().backward()
    assert pre == post
    return post, {k: t.grad.numpy() for k, t in leaves.items() if t.grad is not None}


def mge_order(fn, arrays):
    """(names in the order GradManager callbacks saw them, .grad by name) for
    ``fn(**tensors).sum()`` with every tensor attached with a callback."""
    tensors = {k: Tensor(a) for k, a in arrays.items()}
    seen = []
    gm = GradManager()
    for k, t in tensors.items():
        gm.attach(t, callbacks=lambda t, g, k=k: (seen.append(k), g)[1])
    with gm:
        gm.backward(fn(**tensors).sum())
    return seen, {k: t.grad.numpy() for k, t in tensors.items() if t.grad is not None}


def check_against_torch(mge_fn, torch_fn, arrays):
    got, grads = mge_order(mge_fn, arrays)
    expected, tgrads = torch_order(torch_fn, arrays)
    assert got == expected
    assert grads.keys() == tgrads.keys() == set(arrays)
    for k in arrays:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=1e-5, atol=1e-5)
    return got


def _vectors(names, n=3):
    return {k: rand(n) for k in names}


def _branch_f_first(x, z):
    u = x * x
    v = z * z
    return u + v


def _branch_g_first(x, z):
    v = z * z
    u = x * x
    return u + v


@pytest.mark.parametrize("fn, names, expected", [
    (lambda a, b: a * b, "ab", "ab"),
    (lambda a, b: b * a, "ab", "ba"),
    (lambda x, a, b: (x * a) * b, "xab", "bxa"),  # b's only user runs backward first
    (lambda x, a, b: b * (x * a), "xab", "bxa"),
    (lambda x, a, b: x * a + x * b, "xab", "bxa"),  # x waits for its first user
    (lambda a, b: (a * b) * a, "ab", "ab"),
    (_branch_f_first, "xz", "zx"),  # independent branches: reverse forward order
    (_branch_g_first, "xz", "xz"),
], ids=["a*b", "b*a", "chain", "chain-swapped", "x-twice", "a-early-and-late", "branch-f-first",
        "branch-g-first"])
def test_elementwise_graphs_in_torchs_order(fn, names, expected):
    # the same function runs on megengine and torch tensors (operators only)
    got = check_against_torch(fn, fn, _vectors(names))
    assert got == list(expected)  # what torch gave when these cases were written


def test_concat_in_input_order():
    got = check_against_torch(lambda a, b, c: F.concat([a, b, c]),
                              lambda a, b, c: torch.cat([a, b, c]), _vectors("abc"))
    assert got == ["a", "b", "c"]


def test_many_inputs_of_one_op_in_input_order():
    # Upstream's callback for each input of one op runs in input order (its GradFn's dests).
    # Torch hands out 4 or more leaf gradients of one node in its ready queue's heap order
    # (5 leaves: 0, 2, 4, 1, 3), so upstream's rule, input order, is the expectation here.
    names = "abcdef"
    got, grads = mge_order(lambda **t: F.concat([t[k] for k in names]), _vectors(names, 2))
    assert got == list(names)
    for k in names:
        np.testing.assert_array_equal(grads[k], np.ones(2, np.float32))


def _linear_upstream(x, W, b=None):
    """upstream's F.linear on torch: one matmul op on (x, W), then + bias"""
    y = _OneOp.apply(lambda x, W: x @ W.t(), x, W)
    return y if b is None else y + b


@pytest.mark.parametrize("x_shape", [(2, 4), (2, 5, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("attach_x", [False, True], ids=["x-const", "x-attached"])
def test_linear_bias_first_as_upstream(x_shape, bias, attach_x):
    arrays = {"W": rand(3, 4)}
    if bias:
        arrays["b"] = rand(3)
    x_np = rand(*x_shape)
    if attach_x:
        arrays = {"x": x_np, **arrays}

    def x_of(t, make):
        return t["x"] if attach_x else make(x_np)

    got = check_against_torch(
        lambda **t: F.linear(x_of(t, Tensor), t["W"], t.get("b")),
        lambda **t: _linear_upstream(x_of(t, torch.tensor), t["W"], t.get("b")), arrays)
    expected = (["b"] if bias else []) + (["x"] if attach_x else []) + ["W"]
    assert got == expected
    if len(x_shape) == 2 or not attach_x:
        # torch's own F.linear agrees here; on a 3-d input attached with a bias it splits
        # differently (it gives b, W, x) and upstream's order is kept
        assert torch_order(lambda **t: TF.linear(x_of(t, torch.tensor), t["W"], t.get("b")),
                           arrays)[0] == got


def _conv_upstream(x, w, b, transposed):
    """upstream's conv2d on torch: a convolution op on (x, w), or its transposed convolution on
    (w, x), then + bias"""
    if transposed:
        y = _OneOp.apply(lambda w, x: TF.conv_transpose2d(x, w), w, x)
    else:
        y = _OneOp.apply(lambda x, w: TF.conv2d(x, w), x, w)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_conv2d_bias_first_as_upstream(transposed, bias):
    arrays = {"x": rand(1, 2, 5, 5), "w": rand(2, 3, 3, 3) if transposed else rand(3, 2, 3, 3)}
    if bias:
        arrays["b"] = rand(3)
    conv = F.conv_transpose2d if transposed else F.conv2d
    got = check_against_torch(lambda x, w, b=None: conv(x, w, b),
                              lambda x, w, b=None: _conv_upstream(x, w, b, transposed), arrays)
    if transposed:
        assert got == ["b", "w", "x"] if bias else ["w", "x"]
    else:
        assert got == ["b", "x", "w"] if bias else ["x", "w"]
        # torch's own conv2d is one node on (x, w, b): it differs from upstream with a bias
        assert torch_order(lambda x, w, b=None: TF.conv2d(x, w, b), arrays)[0] == ["x", "w"] + (
            ["b"] if bias else [])


def test_network_parameters_in_upstreams_order():
    # conv (bias added after it), batch norm (weight and bias are its inputs), linear, as
    # upstream's layers compute them; torch's oracle network is split the same way
    torch.manual_seed(0)
    tconv, tbn, tfc = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(27, 2)
    mconv, mbn, mfc = M.Conv2d(2, 3, 3), M.BatchNorm2d(3), M.Linear(27, 2)
    for tl, ml in ((tconv, mconv), (tbn, mbn), (tfc, mfc)):
        ml.weight.set_value(tl.weight.detach().numpy().reshape(ml.weight.shape))
        ml.bias.set_value(tl.bias.detach().numpy().reshape(ml.bias.shape))
    names = ["conv.w", "conv.b", "bn.w", "bn.b", "fc.w", "fc.b"]
    tparams = [tconv.weight, tconv.bias, tbn.weight, tbn.bias, tfc.weight, tfc.bias]
    mparams = [mconv.weight, mconv.bias, mbn.weight, mbn.bias, mfc.weight, mfc.bias]
    x = rand(2, 2, 5, 5)

    tseen = []
    for k, p in zip(names, tparams):
        p.register_post_accumulate_grad_hook(lambda p, k=k: tseen.append(k))
    h = _conv_upstream(torch.tensor(x), tconv.weight, tconv.bias, False)
    h = torch.relu(tbn(h)).flatten(1)
    _linear_upstream(h, tfc.weight, tfc.bias).sum().backward()

    seen = []
    gm = GradManager()
    for k, p in zip(names, mparams):
        gm.attach(p, callbacks=lambda p, g, k=k: (seen.append(k), g)[1])
    with gm:
        h = F.relu(mbn(mconv(Tensor(x)))).reshape(2, -1)
        gm.backward(mfc(h).sum())
    assert seen == tseen == ["fc.b", "fc.w", "bn.w", "bn.b", "conv.b", "conv.w"]
    for tp, mp in zip(tparams, mparams):
        np.testing.assert_allclose(mp.grad.numpy().reshape(tp.shape), tp.grad.numpy(),
                                   rtol=1e-4, atol=1e-5)


def _random_program(rng, n_leaves=5, n_ops=12):
    """A random straight-line program over ``n_leaves`` vectors: (op name, operand indices)
    steps, where operands are leaves or earlier results; the output sums every result."""
    steps = []
    for i in range(n_ops):
        kind = rng.choice(["mul", "add", "exp", "cat"])
        arity = {"mul": 2, "add": 2, "exp": 1, "cat": 3}[kind]
        steps.append((kind, [int(j) for j in rng.randint(0, n_leaves + i, size=arity)]))
    return steps


def _run_program(steps, leaves, cat, exp):
    values = list(leaves)
    for kind, args in steps:
        a = [values[j] for j in args]
        if kind == "mul":
            values.append(a[0] * a[1])
        elif kind == "add":
            values.append(a[0] + a[1])
        elif kind == "exp":
            values.append(exp(a[0] * 0.1))
        else:
            values.append(cat(a).reshape(3, 3).sum(0))
    out = values[len(leaves)]
    for v in values[len(leaves) + 1:]:
        out = out + v
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_programs_in_torchs_order(seed):
    rng = np.random.RandomState(seed)
    steps = _random_program(rng)
    names = "abcde"
    arrays = {k: (rng.rand(3).astype(np.float32) + 0.5) for k in names}
    got, grads = mge_order(
        lambda **t: _run_program(steps, [t[k] for k in names], F.concat, F.exp), arrays)
    expected, tgrads = torch_order(
        lambda **t: _run_program(steps, [t[k] for k in names], torch.cat, torch.exp), arrays)
    assert got == expected
    assert grads.keys() == tgrads.keys() == set(expected)  # unused leaves: no callback, no grad
    for k in expected:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=1e-4)


def test_upstream_grad_callbacks_in_input_order():
    # upstream's test_tqt / test_lsq shape: grad.wrt(x, s, callback=cb) on one op of (x, s)
    # and the callbacks' gradients read back as g_x, g_s
    from megengine.quantization.utils import tqt_forward

    x_np, s_np = rand(1, 2, 3, 4) * 50, np.array([-0.3], np.float32)
    got = []
    x, s = Tensor(x_np), Tensor(s_np)
    with Grad() as grad:
        grad.wrt(x, s, callback=got.append)
        y = tqt_forward(-127, 127, x, s)
        grad(y, Tensor(np.ones_like(x_np)))
    assert [g.shape for g in got] == [(1, 2, 3, 4), (1,)]


def test_attached_root_and_unused_tensor():
    # a root that is itself attached has its gradient at once; a tensor y does not depend on
    # gets no callback
    a, b, c = Tensor(rand(3)), Tensor(rand(3)), Tensor(rand(3))
    seen = []
    gm = GradManager()
    for k, t in zip("abc", (a, b, c)):
        gm.attach(t, callbacks=lambda t, g, k=k: (seen.append(k), g)[1])
    with gm:
        gm.backward([a * b, b], [Tensor(np.ones(3, np.float32))] * 2)
    assert seen == ["a", "b"]
    np.testing.assert_allclose(b.grad.numpy(), a.numpy() + 1, rtol=1e-6)
    assert c.grad is None


@pytest.mark.parametrize("kwargs", [{"symbolic": False}, {"symbolic": True},
                                    {"symbolic": True, "without_host": True}],
                         ids=["checked", "symbolic", "without-host"])
def test_traced_step_calls_back_in_eager_order(kwargs):
    W, bias = Parameter(rand(3, 4)), Parameter(rand(3))
    x = Parameter(rand(2, 4))
    seen = []
    gm = GradManager()
    for k, t in (("W", W), ("b", bias), ("x", x)):
        gm.attach(t, callbacks=lambda t, g, k=k: (seen.append(k), g)[1])

    def step():
        with gm:
            gm.backward(F.tanh(F.linear(x, W, bias)).sum())

    step()
    assert seen == ["b", "x", "W"]
    traced = trace(step, **kwargs)
    for i in range(3):
        del seen[:]
        traced()
        if kwargs.get("without_host") and i:
            # a without_host replay runs the callbacks' recorded ops, not their Python
            # (megengine/jit/grad_callbacks.py): the note-taking runs while tracing only
            assert seen == []
        else:
            assert seen == ["b", "x", "W"]
