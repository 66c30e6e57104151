"""A GradManager.backward inside a dumped function (megengine/jit/dump_backward.py): the loaded
file computes the gradients, checked against torch autograd at inputs other than the traced
ones, and the programs that cannot be dumped say why."""
import io

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.core.tensor_megbrain_graph as G
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.jit import trace
from megengine.jit.dump import DumpError
from megengine.utils import comp_graph_tools as cgtools


def _dumped(fn, *args, **options):
    fn(*args)
    buf = io.BytesIO()
    fn.dump(buf, optimize_for_inference=False, **options)
    return cgtools.GraphInference(io.BytesIO(buf.getvalue()))


def test_gradient_of_an_argument_as_upstreams_test_dump_backward_graph():
    rng = np.random.RandomState(0)
    x0, x1 = (mge.tensor(rng.randn(3, 4).astype("float32")) for _ in range(2))
    gm = GradManager().attach(x0)

    @trace(symbolic=True, capture_as_const=True)
    def f(x0, x1):
        with gm:
            y = x0 * x1
            gm.backward(y, F.ones_like(y))
            dx0 = x0.grad
        return y, dx0

    g = _dumped(f, x0, x1)
    buf = io.BytesIO()
    f.dump(buf)
    outs = G.load_graph(io.BytesIO(buf.getvalue())).output_vars_list
    # the gradient is an operator of the file (upstream: its backward graph's operators)
    assert outs[1].owner.type == "OpGrad" and outs[1].owner.params["grad_of"].__name__ == "Mul"
    a, b = rng.randn(3, 4).astype("float32"), rng.randn(3, 4).astype("float32")
    y, dx0 = g.run(a, b).values()
    ta = torch.tensor(a, requires_grad=True)
    ty = ta * torch.tensor(b)
    ty.backward(torch.ones_like(ty))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(dx0, ta.grad.numpy(), rtol=1e-6)


class _Net(M.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = M.Linear(5, 8)
        self.fc2 = M.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        # clip and abs: their backward reads a mask / signs of the forward values, which must be
        # those of each run's inputs; h is read twice (the gradients add up)
        return F.clip(self.fc2(h), -0.5, 0.5) + F.abs(h).sum(axis=1, keepdims=True)


def _torch_net(net):
    fc1, fc2 = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)
    with torch.no_grad():
        for t, m in ((fc1, net.fc1), (fc2, net.fc2)):
            t.weight.copy_(torch.tensor(m.weight.numpy()))
            t.bias.copy_(torch.tensor(m.bias.numpy()))

    def forward(x):
        h = torch.relu(fc1(x))
        return torch.clamp(fc2(h), -0.5, 0.5) + h.abs().sum(1, keepdim=True)
    return fc1, fc2, forward


def test_parameter_gradients_of_a_model_at_other_inputs_and_batch_sizes():
    net = _Net()
    gm = GradManager().attach(net.parameters())

    @trace(symbolic=True, capture_as_const=True)
    def f(x, label):
        with gm:
            loss = ((net(x) - label) ** 2).mean()
            gm.backward(loss)  # (no dy: a gradient of one)
        return loss, net.fc1.weight.grad, net.fc2.bias.grad

    rng = np.random.RandomState(1)
    g = _dumped(f, mge.tensor(rng.randn(4, 5).astype("float32")),
                mge.tensor(rng.randn(4, 3).astype("float32")))
    fc1, fc2, forward = _torch_net(net)
    for n in (4, 7):  # the traced batch size and another one (sizes from shapes)
        x, label = rng.randn(n, 5).astype("float32"), rng.randn(n, 3).astype("float32")
        loss, dw1, db2 = g.run(x, label).values()
        tl = ((forward(torch.tensor(x)) - torch.tensor(label)) ** 2).mean()
        fc1.zero_grad(), fc2.zero_grad()
        tl.backward()
        np.testing.assert_allclose(loss, tl.item(), rtol=1e-5)
        np.testing.assert_allclose(dw1, fc1.weight.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(db2, fc2.bias.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_what_cannot_be_dumped_says_why():
    w = mge.Parameter(np.ones(3, "float32"))
    v = mge.Parameter(np.ones(3, "float32"))
    gm = GradManager().attach([w, v], callbacks=lambda p, g: g * 2)

    @trace(symbolic=True, capture_as_const=True)
    def with_callbacks(x):
        with gm:
            gm.backward((w * x).sum())
        return w.grad * 1

    with_callbacks(mge.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(DumpError, match="callbacks"):
        with_callbacks.dump(io.BytesIO())

    gm2 = GradManager().attach([w, v])

    @trace(symbolic=True, capture_as_const=True)
    def unrelated(x):
        with gm2:
            gm2.backward((w * x).sum())
        return v.grad * 1  # v's .grad from before: this backward gives v none

    v.grad = mge.tensor(np.ones(3, "float32"))
    unrelated(mge.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(DumpError, match="no gradient"):
        unrelated.dump(io.BytesIO())
