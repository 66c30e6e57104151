"""What the higher-order gradient machinery costs, against plain training and against PyTorch.

One small MLP (Linear 64-64, tanh, Linear 64-1 on a batch of 32), CPU, one thread. Per step:

* ``plain``: one GradManager, forward, backward, SGD update (the baseline of the ratios);
* ``outer idle``: the same step while an unrelated GradManager records around it (the dispatcher
  then keeps each op's values and runs the backward through Tensors, in case it is needed; its
  optimizer step rebinds the parameter arrays instead of writing into them, as the engine does
  while any GradManager records, which can make this variant the faster one);
* ``penalty``: a WGAN-GP style step: the gradient of the output with respect to the input is
  computed by an inner GradManager, and the penalty on its norm is backpropagated into the
  weights by the outer one (second-order gradients through linear, tanh, matmul, reductions);

and the same ``plain`` and ``penalty`` steps in PyTorch (``create_graph=True``). Before timing,
the penalty step's weight gradients are checked against PyTorch's. It prints ms/step (the median
over repeats, variants taking turns) and the ratios to ``plain`` and to PyTorch.

    python benchmarks/bench_autodiff.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)
BATCH, WIDTH, LR = 32, 64, 0.01


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = M.Linear(WIDTH, WIDTH), M.Linear(WIDTH, 1)

    def forward(self, x):
        return self.fc2(F.tanh(self.fc1(x)))


def torch_copy(net):
    tnet = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(),
                               torch.nn.Linear(WIDTH, 1))
    with torch.no_grad():
        for tl, ml in ((tnet[0], net.fc1), (tnet[2], net.fc2)):
            tl.weight.copy_(torch.tensor(ml.weight.numpy()))
            tl.bias.copy_(torch.tensor(ml.bias.numpy()))
    return tnet


def mge_steps(x_np):
    net = Net()
    params = list(net.parameters())
    opt = optim.SGD(params, LR)
    x = mge.tensor(x_np)
    gm = GradManager().attach(params)
    gm_x = GradManager().attach(x)
    idle = GradManager().attach(mge.Parameter(np.zeros(1, np.float32)))

    def plain():
        with gm:
            gm.backward(net(x).mean())
        opt.step().clear_grad()

    def outer_idle():
        with idle:
            plain()

    def penalty_grads():
        with gm:
            with gm_x:
                out = net(x)
                gm_x.backward(out.sum())
            gx, x.grad = x.grad, None
            loss = out.mean() + ((F.sqrt((gx ** 2).sum(axis=1)) - 1) ** 2).mean() * 10
            gm.backward(loss)

    def penalty():
        penalty_grads()
        opt.step().clear_grad()

    return net, params, {"plain": plain, "outer idle": outer_idle, "penalty": penalty}, \
        penalty_grads


def torch_steps(tnet, x_np):
    x = torch.tensor(x_np, requires_grad=True)
    opt = torch.optim.SGD(tnet.parameters(), LR)

    def plain():
        opt.zero_grad()
        tnet(x).mean().backward()
        opt.step()

    def penalty_loss():
        out = tnet(x)
        gx, = torch.autograd.grad(out.sum(), x, create_graph=True)
        return out.mean() + ((gx.pow(2).sum(1).sqrt() - 1) ** 2).mean() * 10

    def penalty():
        opt.zero_grad()
        penalty_loss().backward()
        opt.step()

    return {"plain": plain, "penalty": penalty}, penalty_loss


def main():
    args = _timing.parse_args(__doc__, steps=50, repeats=7, quick_steps=5, quick_repeats=2)
    print(_timing.machine_line())
    x_np = np.random.RandomState(0).randn(BATCH, WIDTH).astype(np.float32)
    net, params, mge_fns, penalty_grads = mge_steps(x_np)
    tnet = torch_copy(net)
    torch_fns, penalty_loss = torch_steps(tnet, x_np)
    penalty_grads()  # same work: the penalty's gradients equal torch's
    expected = torch.autograd.grad(penalty_loss(), list(tnet.parameters()))
    got = [net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias]
    worst = max(float(np.abs(p.grad.numpy().reshape(e.shape) - e.numpy()).max()
                      / (np.abs(e.numpy()).max() + 1e-12)) for p, e in zip(got, expected))
    for p in params:
        p.grad = None
    print(f"same work: penalty gradients, largest relative difference to torch {worst:.1e}")
    if worst > 1e-4:
        sys.exit("the penalty step's gradients differ from torch's: not timing")
    _, p1, f1, _ = mge_steps(x_np)  # same work: "outer idle" trains exactly as "plain"
    _, p2, f2, _ = mge_steps(x_np)
    for a, b in zip(p1, p2):
        b.set_value(a.numpy())
    for _ in range(3):
        f1["plain"]()
        f2["outer idle"]()
    diff = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(p1, p2))
    print(f"same work: outer idle vs plain after 3 steps, largest parameter difference {diff:.1e}")
    if diff > 0:
        sys.exit("the outer-idle step trains differently from the plain step: not timing")
    variants = {f"megengine {k}": f for k, f in mge_fns.items()}
    variants.update({f"torch {k}": f for k, f in torch_fns.items()})
    t = _timing.time_steps(variants, args.steps, args.repeats)
    base = t["megengine plain"].median
    print(f"MLP {WIDTH}-{WIDTH}-1, batch {BATCH}, SGD; median of {args.repeats} repeats of "
          f"{args.steps} steps")
    for name, timing in t.items():
        print(f"  {name:24s} {timing.median:8.3f} ms/step  best {timing.best:7.3f}  "
              f"x {timing.median / base:5.2f} of megengine plain")
    for k in ("plain", "penalty"):
        r = t[f"megengine {k}"].median / t[f"torch {k}"].median
        rb = t[f"megengine {k}"].best / t[f"torch {k}"].best
        print(f"  megengine / torch, {k}: {r:.2f}x median, {rb:.2f}x best")
    _timing.flush()


if __name__ == "__main__":
    main()
