"""What one GPU training step asks of the device, without a GPU: kernels launched and host synchronisations per step, this engine against the same step in PyTorch.

Where a small step is bound by the host (each kernel launch costs host time, far more under a
sandboxed driver such as gVisor's: benchmarks/README.md, "GPU"), the number of launches and of
host waits is what the fork must keep at torch's. This script counts them on the simulated GPU
(tests/simcuda, installed here before megengine loads: CuPy's rules, ATen's kernels routed to the
CPU), so every machine can see what a change does to them:

* the engine: the simulated CuPy's kernels and syncs (`simcuda.cuda_runtime.Runtime`: new memory
  a kernel filled, an in-place write, a host read of device values) plus the ATen kernels the
  engine calls (torch's dispatcher sees them: every aten op that is not a view, an allocation or
  a record-function marker);
* torch: the same aten ops of its step on CPU tensors, its optimizer with the multi-tensor
  (foreach) path it takes on CUDA by default; a sync is ``_local_scalar_dense`` (``.item()``).

The networks and steps: benchmarks/bench_engine.py's MLP 784-256-10 and small CNN (batch 64,
SGD momentum 0.9, cross entropy), and a transformer's MLP block (LayerNorm, Linear, GELU,
Linear, Dropout, a residual; 8 sequences of 16 tokens of 64 features, a linear head on their
mean; Adam), the step as `_timing.mge_training_step` writes it, each counted over 3 steps after
2 of warm-up; then the losses that have fused ATen kernels (squared error, smooth L1, binary
cross entropy with logits), forward and backward into an attached (64, 10) prediction (mean).
Counts, not times: they are the same on every machine. ``--by-site`` lists where the engine's
launches come from. ``--layers`` counts instead the forward and backward of single layers and
functions (`LAYERS`: convolutions, norms, activations, pooling, resizing, reductions, joins,
indexing, attention scores), engine against torch, and marks those where the engine launches
more.

    python benchmarks/count_launches.py [--by-site] [--json] [--layers]
"""
import argparse
import collections
import itertools
import json
import os
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simcuda  # noqa: E402

cupy = simcuda.install(1)  # before megengine: its tensors on "gpu0" are simulated CuPy arrays

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import numpy as np  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import bench_engine as bench  # noqa: E402
import _timing  # noqa: E402
import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402

STEPS, WARM_UP = 3, 2
_NOT_KERNELS = ("empty", "empty_strided", "empty_like", "new_empty", "_record_function_enter",
                "_record_function_enter_new", "_record_function_exit", "_local_scalar_dense")


class AtenKernels(TorchDispatchMode):
    """Counts the aten ops that launch work on a device (views, allocations and markers do
    not); ``.item()`` reads (``_local_scalar_dense``) count as syncs. With ``sites``, each
    kernel is also counted by the engine line that called it."""

    def __init__(self, sites=None, host_side=()):
        super().__init__()
        self.kernels = self.syncs = 0
        self.sites = sites
        self.host_side = host_side  # ids of tensors a CUDA run keeps on the host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self.syncs += id(args[0]) not in self.host_side
        elif not func.is_view and name not in _NOT_KERNELS:
            self.kernels += 1
            if self.sites is not None:
                self.sites[(f"aten.{name}", _engine_site())] += 1
        return func(*args, **(kwargs or {}))


def _engine_site():
    frames = [f for f in traceback.extract_stack()[:-2] if "/megengine/" in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{os.path.relpath(f.filename, REPO)}:{f.lineno} {f.name}"


def _cupy_sites(sites):
    """Attribute each simulated CuPy kernel to the engine line that launched it: the runtime's
    counter is watched around every engine frame's calls (a profile hook)."""
    rt = cupy._simulated
    last = [rt.kernels]

    def hook(frame, event, arg):
        if event in ("return", "c_return") and rt.kernels != last[0]:
            f = frame
            while f is not None and "/megengine/" not in f.f_code.co_filename:
                f = f.f_back
            if f is not None and f is frame:
                where = f"{os.path.relpath(f.f_code.co_filename, REPO)}:{f.f_lineno} " \
                        f"{f.f_code.co_name}"
                sites[("cupy", where)] += rt.kernels - last[0]
                last[0] = rt.kernels
        return hook
    return hook


class MgeBlock(M.Module):
    """A transformer's MLP block with a residual, and a linear head on the tokens' mean."""

    def __init__(self, d=64):
        super().__init__()
        self.ln, self.fc1, self.fc2 = M.LayerNorm(d), M.Linear(d, 4 * d), M.Linear(4 * d, d)
        self.drop, self.head = M.Dropout(0.1), M.Linear(d, 10)

    def forward(self, x):
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.ln(x)))))
        return self.head(x.mean(axis=1))


class TorchBlock(tnn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.ln, self.fc1, self.fc2 = tnn.LayerNorm(d), tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)
        self.drop, self.head = tnn.Dropout(0.1), tnn.Linear(d, 10)

    def forward(self, x):
        x = x + self.drop(self.fc2(TF.gelu(self.fc1(self.ln(x)))))
        return self.head(x.mean(dim=1))


def _sgd(params, torch_side=False):
    if torch_side:  # foreach: torch's default on CUDA
        return torch.optim.SGD(params, lr=bench.LR, momentum=bench.MOMENTUM, foreach=True)
    return optim.SGD(params, lr=bench.LR, momentum=bench.MOMENTUM)


def _adam(params, torch_side=False):
    return (torch.optim.Adam(params, lr=1e-3, foreach=True) if torch_side
            else optim.Adam(params, lr=1e-3))


def _tokens(seed=0, batches=4):
    rng = np.random.RandomState(seed)
    return ([rng.randn(8, 16, 64).astype("float32") for _ in range(batches)],
            [rng.randint(0, 10, 8).astype("int32") for _ in range(batches)])


def count_engine(net_cls, make_opt, data, by_site=False):
    mge.random.seed(0)
    net = net_cls()
    step = _timing.mge_training_step(net, make_opt(net.parameters()))
    batches = [(mge.tensor(x, device="gpu0"), mge.tensor(y, dtype="int32", device="gpu0"))
               for x, y in zip(*data)]
    calls = itertools.count()

    def next_step():  # the batches in turn
        return step(*batches[next(calls) % len(batches)])

    for _ in range(WARM_UP - 1):  # (`_count_steps` runs one more before counting)
        float(next_step().numpy())
    return _count_steps(next_step, False, by_site)


def count_torch(torch_cls, make_opt, data):
    torch.manual_seed(0)
    net = torch_cls()
    opt = make_opt(net.parameters(), torch_side=True)
    step = _timing.torch_training_step(net, opt)
    batches = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in zip(*data)]
    for i in range(WARM_UP):
        step(*batches[i % len(batches)])
    # torch's optimizers keep their step counts on the host for CUDA parameters too (reading
    # one is no device sync); the counts here are those tensors
    steps = [s["step"] for s in opt.state.values() if torch.is_tensor(s.get("step"))]
    aten = AtenKernels(host_side={id(t) for t in steps})
    with aten:
        for i in range(STEPS):
            step(*batches[(WARM_UP + i) % len(batches)])
    return {"kernels": aten.kernels / STEPS, "syncs": aten.syncs / STEPS}


LOSSES = {  # name: (engine loss, torch loss); pred attached, label fixed, mean reduction
    "loss: squared error": (lambda p, y: F.nn.square_loss(p, y), TF.mse_loss),
    "loss: smooth L1": (lambda p, y: F.nn.smooth_l1_loss(p, y), TF.smooth_l1_loss),
    "loss: BCE with logits": (lambda p, y: F.nn.binary_cross_entropy(p, y, with_logits=True),
                              TF.binary_cross_entropy_with_logits),
}


def _count_steps(step, torch_side, by_site):
    """Kernels and syncs per call of ``step`` over `STEPS` calls after one (the engine's: the
    simulated CuPy's and the ATen kernels it calls; torch's: its aten kernels)."""
    step()
    sites = collections.Counter() if by_site else None
    aten, rt = AtenKernels(sites), cupy._simulated
    kernels, syncs = rt.kernels, rt.syncs
    if by_site:
        sys.setprofile(_cupy_sites(sites))
    try:
        with aten:
            for _ in range(STEPS):
                step()
    finally:
        sys.setprofile(None)
    engine = 0 if torch_side else 1  # (the simulated CuPy counts the engine's side only)
    return {"kernels": (engine * (rt.kernels - kernels) + aten.kernels) / STEPS,
            "syncs": (engine * (rt.syncs - syncs) + aten.syncs) / STEPS,
            "sites": {f"{k[0]} {k[1]}": v / STEPS for k, v in (sites or {}).items()}}


def count_loss(loss, torch_side=False, by_site=False):
    """Kernels and syncs of one loss's forward and backward (see `LOSSES`)."""
    rng = np.random.RandomState(0)
    p, y = rng.randn(64, 10).astype("float32"), rng.rand(64, 10).astype("float32")
    if torch_side:
        tp, ty = torch.tensor(p, requires_grad=True), torch.tensor(y)

        def step():
            loss(tp, ty).backward()
            tp.grad = None
    else:
        from megengine.autodiff import GradManager

        mp, my = mge.tensor(p, device="gpu0"), mge.tensor(y, device="gpu0")
        gm = GradManager().attach(mp)

        def step():
            with gm:
                gm.backward(loss(mp, my))
            mp.grad = None
    return _count_steps(step, torch_side, by_site)


class _Fn(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _gpu_int(values):
    return mge.tensor(np.asarray(values), dtype="int32", device="gpu0")


LAYERS = {  # name: (engine layer or function, torch's, input shape); ``--layers``
    "Conv2d 3x3": (lambda: M.Conv2d(8, 16, 3, padding=1), lambda: tnn.Conv2d(8, 16, 3, padding=1),
                   (4, 8, 16, 16)),
    "ConvTranspose2d": (lambda: M.ConvTranspose2d(8, 4, 3, stride=2),
                        lambda: tnn.ConvTranspose2d(8, 4, 3, stride=2), (2, 8, 8, 8)),
    "BatchNorm2d (train)": (lambda: M.BatchNorm2d(8), lambda: tnn.BatchNorm2d(8), (4, 8, 16, 16)),
    "BatchNorm1d (train)": (lambda: M.BatchNorm1d(64), lambda: tnn.BatchNorm1d(64), (16, 64)),
    "Linear": (lambda: M.Linear(64, 32), lambda: tnn.Linear(64, 32), (16, 64)),
    "Linear, 3-d input": (lambda: M.Linear(64, 32), lambda: tnn.Linear(64, 32), (4, 16, 64)),
    "LayerNorm": (lambda: M.LayerNorm(64), lambda: tnn.LayerNorm(64), (16, 64)),
    "GroupNorm": (lambda: M.GroupNorm(4, 8), lambda: tnn.GroupNorm(4, 8), (4, 8, 8, 8)),
    "InstanceNorm": (lambda: M.InstanceNorm(8), lambda: tnn.InstanceNorm2d(8, affine=True),
                     (2, 8, 8, 8)),
    "Dropout": (lambda: M.Dropout(0.1), lambda: tnn.Dropout(0.1), (16, 64)),
    "ReLU": (lambda: M.ReLU(), lambda: tnn.ReLU(), (16, 64)),
    "GELU": (lambda: M.GELU(), lambda: tnn.GELU(), (16, 64)),
    "SiLU": (lambda: M.SiLU(), lambda: tnn.SiLU(), (16, 64)),
    "Sigmoid": (lambda: M.Sigmoid(), lambda: tnn.Sigmoid(), (16, 64)),
    "LeakyReLU": (lambda: M.LeakyReLU(0.1), lambda: tnn.LeakyReLU(0.1), (16, 64)),
    "PReLU": (lambda: M.PReLU(1), lambda: tnn.PReLU(1), (16, 64)),
    "tanh": (lambda: F.tanh, lambda: _Fn(torch.tanh), (16, 64)),
    "softplus": (lambda: F.softplus, lambda: tnn.Softplus(), (16, 64)),
    "hswish": (lambda: F.hswish, lambda: tnn.Hardswish(), (16, 64)),
    "softmax": (lambda: M.Softmax(axis=1), lambda: tnn.Softmax(dim=1), (16, 64)),
    "log_softmax": (lambda: (lambda x: F.logsoftmax(x, axis=1)), lambda: tnn.LogSoftmax(dim=1),
                    (16, 64)),
    "AvgPool2d 2x2": (lambda: M.AvgPool2d(2), lambda: tnn.AvgPool2d(2), (4, 8, 16, 16)),
    "MaxPool2d 3x3 s2": (lambda: M.MaxPool2d(3, 2, 1), lambda: tnn.MaxPool2d(3, 2, 1),
                         (4, 8, 16, 16)),
    "AdaptiveAvgPool2d(1)": (lambda: M.AdaptiveAvgPool2d(1), lambda: tnn.AdaptiveAvgPool2d(1),
                             (4, 8, 16, 16)),
    "interpolate x2 bilinear": (
        lambda: (lambda x: F.nn.interpolate(x, scale_factor=2, mode="bilinear",
                                            align_corners=False)),
        lambda: _Fn(lambda x: TF.interpolate(x, scale_factor=2, mode="bilinear",
                                             align_corners=False)), (2, 4, 8, 8)),
    "x * 2 + 1": (lambda: (lambda x: x * 2 + 1), lambda: _Fn(lambda x: x * 2 + 1), (16, 64)),
    "mean over axis 1": (lambda: (lambda x: x.mean(axis=1)), lambda: _Fn(lambda x: x.mean(1)),
                         (16, 64)),
    "var over axis 1": (lambda: (lambda x: F.var(x, axis=1)),
                        lambda: _Fn(lambda x: x.var(1, unbiased=False)), (16, 64)),
    "concat": (lambda: (lambda x: F.concat([x, x * 2], axis=1)),
               lambda: _Fn(lambda x: torch.cat([x, x * 2], 1)), (16, 64)),
    "batched matmul": (lambda: (lambda x: F.matmul(x, x.transpose(0, 2, 1))),
                       lambda: _Fn(lambda x: x @ x.transpose(1, 2)), (4, 16, 32)),
    "attention scores": (
        lambda: (lambda x: F.matmul(F.softmax(F.matmul(x, x.transpose(0, 2, 1)) * 0.125,
                                              axis=-1), x)),
        lambda: _Fn(lambda x: torch.softmax((x @ x.transpose(1, 2)) * 0.125, -1) @ x),
        (4, 16, 32)),
    "x[idx]": (lambda: (lambda x: x[_gpu_int([0, 3, 3, 5])]),
               lambda: _Fn(lambda x: x[torch.tensor([0, 3, 3, 5])]), (16, 64)),
    "where(x > 0, x, 0.1 x)": (lambda: (lambda x: F.where(x > 0, x, x * 0.1)),
                               lambda: _Fn(lambda x: torch.where(x > 0, x, x * 0.1)), (16, 64)),
    "clip": (lambda: (lambda x: F.clip(x, -0.5, 0.5)),
             lambda: _Fn(lambda x: torch.clamp(x, -0.5, 0.5)), (16, 64)),
    "normalize": (lambda: (lambda x: F.normalize(x, axis=1)),
                  lambda: _Fn(lambda x: TF.normalize(x, dim=1)), (16, 64)),
    "cross entropy, label smoothing": (
        lambda: (lambda x: F.loss.cross_entropy(x, _gpu_int(np.arange(16) % 64),
                                                label_smooth=0.1)),
        lambda: _Fn(lambda x: TF.cross_entropy(x, torch.arange(16) % 64, label_smoothing=0.1)),
        (16, 64)),
}


def count_layer(make, shape, torch_side=False, by_site=False):
    """Kernels and syncs of one layer's forward and backward into its input and parameters
    (see `LAYERS`; the output gradient made once, outside the count)."""
    torch.manual_seed(0)
    mge.random.seed(0)
    layer, x = make(), np.random.RandomState(0).randn(*shape).astype("float32")
    if torch_side:
        tx = torch.tensor(x, requires_grad=True)
        params = list(layer.parameters())
        dy = torch.ones_like(layer(tx))

        def step():
            layer(tx).backward(dy)
            for t in params + [tx]:
                t.grad = None
    else:
        from megengine.autodiff import GradManager

        mx = mge.tensor(x, device="gpu0")
        params = list(layer.parameters()) if isinstance(layer, M.Module) else []
        gm = GradManager().attach(params + [mx])
        dy = mge.tensor(np.ones(layer(mx).shape, "float32"), device="gpu0")

        def step():
            with gm:
                gm.backward(layer(mx), dy)
            for t in params + [mx]:
                t.grad = None
    return _count_steps(step, torch_side, by_site)


NETWORKS = {  # name: (engine network, torch network, optimizer, data)
    "MLP 784-256-10": (bench.MgeMLP, bench.TorchMLP, _sgd, lambda: bench.make_data((784,), 1.0)),
    "CNN conv-bn-relu-pool-linear": (bench.MgeCNN, bench.TorchCNN, _sgd,
                                     lambda: bench.make_data((1, 28, 28), 1.0)),
    "MLP block (LayerNorm, GELU, Adam)": (MgeBlock, TorchBlock, _adam, _tokens),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--by-site", action="store_true",
                        help="list the engine's launches by the engine line that made them")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON only")
    parser.add_argument("--layers", action="store_true",
                        help="instead: each of LAYERS' forward and backward, engine against torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.layers:
        return print_layers(args.by_site)
    results = {}
    for name, (mge_cls, torch_cls, make_opt, make_data) in NETWORKS.items():
        data = make_data()
        results[name] = {"engine": count_engine(mge_cls, make_opt, data, args.by_site),
                         "torch": count_torch(torch_cls, make_opt, data)}
    for name, (ours, theirs) in LOSSES.items():
        results[name] = {"engine": count_loss(ours, by_site=args.by_site),
                         "torch": count_loss(theirs, torch_side=True)}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("per training step (cross entropy; the optimizers as above), per loss forward and "
          "backward, on the simulated GPU:")
    print(f"  {'network':34s} {'engine kernels':>15s} {'torch kernels':>14s} "
          f"{'engine syncs':>13s} {'torch syncs':>12s}")
    for name, r in results.items():
        e, t = r["engine"], r["torch"]
        print(f"  {name:34s} {e['kernels']:15.0f} {t['kernels']:14.0f} {e['syncs']:13.0f} "
              f"{t['syncs']:12.0f}")
        if args.by_site:
            for site, n in sorted(e["sites"].items(), key=lambda kv: -kv[1]):
                print(f"      {n:4.0f}  {site}")
    return 0


def print_layers(by_site):
    print("forward and backward of one layer or function (the output gradient given), on the "
          "simulated GPU:")
    print(f"  {'layer':32s} {'engine kernels':>15s} {'torch kernels':>14s} "
          f"{'engine syncs':>13s} {'torch syncs':>12s}")
    for name, (ours, theirs, shape) in LAYERS.items():
        e = count_layer(ours, shape, by_site=by_site)
        t = count_layer(theirs, shape, torch_side=True)
        more = "  <- more" if e["kernels"] > t["kernels"] else ""
        print(f"  {name:32s} {e['kernels']:15.0f} {t['kernels']:14.0f} {e['syncs']:13.0f} "
              f"{t['syncs']:12.0f}{more}")
        if by_site and more:
            for site, n in sorted(e["sites"].items(), key=lambda kv: -kv[1]):
                print(f"      {n:4.0f}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
