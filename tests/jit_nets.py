"""What the trace tests (tests/jit) train and trace: a two-layer perceptron made of core Tensor
ops and Parameters only, its loss, batches of a learnable task, a training step as scripts
write it, the two checked modes, and a small traced program for the dump tests."""
import numpy as np

import megengine as mge
import megengine.functional as F
from megengine.core import ops
from megengine.core.dispatch import apply
from megengine.jit import trace

MODES = [False, True]  # trace(symbolic=...): both rerun the function and check it


def relu(x):
    return apply(ops.Maximum(), x, mge.tensor(0.0))


class MLP:
    """A two-layer perceptron built from core Tensor ops and Parameters only."""

    def __init__(self, sizes=(6, 16, 3), seed=0):
        rng = np.random.RandomState(seed)
        self.w1 = mge.Parameter(rng.randn(sizes[0], sizes[1]).astype("float32") * 0.3)
        self.b1 = mge.Parameter(np.zeros(sizes[1], "float32"))
        self.w2 = mge.Parameter(rng.randn(sizes[1], sizes[2]).astype("float32") * 0.3)
        self.b2 = mge.Parameter(np.zeros(sizes[2], "float32"))

    def params(self):
        return [self.w1, self.b1, self.w2, self.b2]

    def __call__(self, x):
        return relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


def mse(out, y):
    return ((out - y) ** 2).mean()


def training_step(loss_of, params, opt):
    """A training step as scripts write it: ``step(*batch)`` records ``loss_of(*batch)`` under
    a GradManager attached to ``params``, runs backward and ``opt``'s update, clears the
    gradients and returns the loss; a function of its batch, so that ``trace`` can wrap it."""
    from megengine.autodiff import GradManager

    gm = GradManager().attach(params)

    def step(*batch):
        with gm:
            loss = loss_of(*batch)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    return step


def batches(n, batch=8, seed=1):
    """(x, y) pairs of a learnable task: y is a fixed linear map of x."""
    rng = np.random.RandomState(seed)
    teacher = rng.randn(6, 3)
    xs = [rng.randn(batch, 6) for _ in range(n)]
    return [(mge.tensor(x), mge.tensor(x @ teacher)) for x in xs]


def values(ts):
    return [t.numpy() for t in ts]


def exp_trace(shape=(2, 3)):
    """``exp(x) * 2`` traced for dumping (capture_as_const), called once on zeros of ``shape``."""
    f = trace(lambda x: F.exp(x) * 2, symbolic=True, capture_as_const=True)
    f(mge.tensor(np.zeros(shape, "float32")))
    return f
