"""Larger training workloads on the CPU: peak memory growth and step time against PyTorch.

Cases (a step: forward, loss, backward, optimizer update; torch starts from megengine's weights):

* ``resnet50``: ResNet-50 (bottleneck blocks [3, 4, 6, 3], as MegEngine's model zoo defines it;
  bench_models.py's ResNet-18 deepened), batch 16 at 224x224, cross entropy, SGD momentum 0.9;
  ``resnet50_trace``: the same step under ``jit.trace`` (``symbolic=False``);
  ``resnet50_amp``: its forward under ``amp.autocast`` (float16, computed in float32 on the CPU;
  torch's side stays float32, so its time and memory are the reference only);
* ``transformer``: bench_transformer.py's encoder (attention written out, Adam) at d_model 512,
  8 heads, seq 512, batch 8, 2 blocks;
* ``lstm``: a 2-layer ``M.LSTM`` (256 -> 256) at seq 256, batch 16 (bench_layers.py's nets);
* ``unet``: a 3-level UNet (conv-BN-ReLU pairs, max pooling, bilinear ``interpolate`` up and
  ``concat`` skips, 16-128 channels) at batch 4, 256x256, mean squared output, SGD momentum.

Memory, as bench_models.py measures it: peak RSS growth over 3 steps above the RSS after
building the network and the batch, each side in a fresh process (``--worker``), sampled every
millisecond; the first losses of the two sides must agree (relative 1e-4; 2e-3 under autocast),
else the script exits with an error. Time: both sides in this process, one thread each, taking turns step by
step (``_timing.paired_rounds``, one warm-up step): the median of megengine / torch over the
pairs. Aims, as bench_models.py's: <= 1.2x memory, <= 1.1x time.

    python benchmarks/bench_scale.py [--case NAME|all] [--steps N] [--quick] [--skip-time]
        [--skip-memory] [--memory-runs R]

``--quick``: batch 4 for the ResNet-50 cases and seq 128 for the transformer, one timed pair.

Measured on 2 shared cores (one run each; memory is steady, times are rough at load 4-7),
megengine / torch peak growth before -> after recorded add, sub, constant multiples and
divisions, sum and mean stopped keeping the inputs their backward does not read (exp, tanh,
sqrt and sigmoid their input): resnet50 2221 / 1776 MB (1.25x) -> 1749 / 1843 (0.95x);
resnet50_amp 2277 / 1854 (1.23x) -> 1954 / 1982 (0.99x); transformer 713 / 637 (1.12x) ->
584 / 605 (0.97x); unet 580 / 592 (0.98x) -> 558 / 569 (0.98x); lstm 131 / 142 (0.92x) -> 128 /
142 (0.90x); resnet50_trace 2977 / 1848 (1.61x) -> 2911 / 1779 (1.64x): the first (recording)
call of a trace kept every value of the call until it ended (``jit/record.py``'s ``keep``), and
checked calls the outputs of the ops they check on their slow path (batch norm's). Once both
freed values as eager code does: resnet50_trace 3209 / 1832 (1.75x) -> 1720 / 1897 (0.91x);
the recording call alone freeing them gave 2467 / 1822 (1.35x). Step times after, paired:
resnet50 0.95x (load 1), resnet50_amp 1.03x, transformer 1.04x, lstm 1.01x, unet 1.09x,
resnet50_trace 1.16x (load 4-7; traced / eager in thread time, paired: 1.06x at batch 16,
its spread 0.91-1.21x, and benchmarks/HISTORY.md "Traced ResNet-50 step" on where the time and
the first call's memory go). A full run took ~16 minutes at load 4-7. The script prints
which checkout's ``megengine`` it imported (put one first on PYTHONPATH to measure it).
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import bench_layers  # noqa: E402
import bench_transformer  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine import amp  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.jit import trace  # noqa: E402

torch.set_num_threads(1)
AIM_TIME, AIM_MEMORY = 1.1, 1.2
CASES = ("resnet50", "resnet50_trace", "resnet50_amp", "transformer", "lstm", "unet")


# ----- ResNet-50 (model zoo: official/vision/classification/resnet, Bottleneck [3, 4, 6, 3]) -----
def bottleneck(nn, relu):
    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(mid)
            self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.downsample = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = relu(self.bn1(self.conv1(x)))
            y = relu(self.bn2(self.conv2(y)))
            return relu(self.bn3(self.conv3(y)) + self.downsample(x))

    return Bottleneck


def resnet50(nn, relu, avg_pool, flatten):
    block = bottleneck(nn, relu)

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, layers = 64, []
            for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                blocks = []
                for j in range(n):
                    blocks.append(block(cin, mid, stride if j == 0 else 1))
                    cin = mid * 4
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.maxpool(relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(flatten(avg_pool(x, 7), 1))

    return ResNet50()


# ----- a UNet: two conv-BN-ReLU per level, max pooling down, bilinear interpolate up + concat -----
def unet(nn, relu, max_pool, up, cat):
    class Double(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)

        def forward(self, x):
            return relu(self.b2(self.c2(relu(self.b1(self.c1(x))))))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.d1, self.d2, self.d3 = Double(3, 16), Double(16, 32), Double(32, 64)
            self.mid = Double(64, 128)
            self.u3, self.u2, self.u1 = Double(192, 64), Double(96, 32), Double(48, 16)
            self.out = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            a = self.d1(x)
            b = self.d2(max_pool(a, 2))
            c = self.d3(max_pool(b, 2))
            y = self.u3(cat(up(self.mid(max_pool(c, 2))), c))
            y = self.u2(cat(up(y), b))
            return self.out(self.u1(cat(up(y), a)))

    return UNet()


def _mge_up(x):
    return F.nn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _torch_up(x):
    return TF.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def copy_named(mge_net, torch_net):
    ours = {name: p.numpy() for name, p in mge_net.named_parameters()}
    with torch.no_grad():
        for name, p in torch_net.named_parameters():
            p.copy_(torch.from_numpy(ours[name].reshape(tuple(p.shape))))


# ----- cases: (megengine net, torch net maker, input, loss of each side, optimizers) -----
def _classes(n, classes, rng):
    return rng.randint(0, classes, n).astype("int32")


def build(case, quick):
    """(mge_net, make_torch_net(mge_net), x, mge_loss, torch_loss, mge_opt, torch_opt)."""
    mge.random.seed(0)
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    mean_square = (lambda out: (out ** 2).mean(), lambda out: (out ** 2).mean())
    sgd = (lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
           lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9))
    if case.startswith("resnet50"):
        batch = 4 if quick else 16
        x = rng.randn(batch, 3, 224, 224).astype("float32")
        y = _classes(batch, 1000, rng)
        net = resnet50(M, F.relu, F.avg_pool2d, F.flatten)

        def make_torch(net):
            t = resnet50(tnn, TF.relu, TF.avg_pool2d, torch.flatten)
            copy_named(net, t)
            return t
        losses = (lambda out: F.loss.cross_entropy(out, mge.tensor(y)),
                  lambda out: TF.cross_entropy(out, torch.from_numpy(y).long()))
        return net, make_torch, x, losses, sgd
    if case == "transformer":
        d, heads, seq, batch = 512, 8, 128 if quick else 512, 8
        x = rng.randn(batch, seq, d).astype("float32")
        y = _classes(batch, bench_transformer.CLASSES, rng)
        net = bench_transformer.MgeEncoder(d, heads, 2, bench_transformer.MgeAttention)

        def make_torch(net):
            t = bench_transformer.TorchEncoder(d, heads, 2, bench_transformer.TorchAttention)
            bench_transformer.copy_weights(net, t, "encoder")
            return t
        losses = (lambda out: F.loss.cross_entropy(out, mge.tensor(y)),
                  lambda out: TF.cross_entropy(out, torch.from_numpy(y).long()))
        adam = (lambda ps: optim.Adam(ps, 3e-4), lambda ps: torch.optim.Adam(ps, 3e-4))
        return net, make_torch, x, losses, adam
    if case == "lstm":
        x = rng.randn(256, 16, 256).astype("float32")
        net, tnet = bench_layers.rnn_nets("LSTM", 256, 256, num_layers=2)
        losses = (lambda out: (out[0] ** 2).mean(), lambda out: (out[0] ** 2).mean())
        plain = (lambda ps: optim.SGD(ps, lr=0.01), lambda ps: torch.optim.SGD(ps, lr=0.01))
        return net, lambda net: tnet, x, losses, plain
    if case == "unet":
        x = rng.randn(4, 3, 256, 256).astype("float32")
        net = unet(M, F.relu, F.max_pool2d, _mge_up, lambda a, b: F.concat([a, b], 1))

        def make_torch(net):
            t = unet(tnn, TF.relu, TF.max_pool2d, _torch_up, lambda a, b: torch.cat([a, b], 1))
            copy_named(net, t)
            return t
        return net, make_torch, x, mean_square, sgd
    raise ValueError(f"bench_scale: unknown case {case!r} (one of {', '.join(CASES)})")


def steppers(case, quick, sides=("megengine", "torch")):
    """{side: a step returning its loss} from the same initial weights."""
    net, make_torch, x, (mge_loss, torch_loss), (mge_opt, torch_opt) = build(case, quick)
    steps = {}
    if "torch" in sides:
        tnet = make_torch(net)
        topt = torch_opt(tnet.parameters())
        tx = torch.from_numpy(x)

        def torch_step():
            topt.zero_grad(set_to_none=True)
            loss = torch_loss(tnet(tx))
            loss.backward()
            topt.step()
            return float(loss.detach())
        steps["torch"] = torch_step
    if "megengine" in sides:
        gm = GradManager().attach(net.parameters())
        opt = mge_opt(net.parameters())
        mx = mge.tensor(x)
        autocast = case.endswith("_amp")

        def mge_step(mx):
            with gm:
                if autocast:
                    with amp.autocast():
                        out = net(mx)
                else:
                    out = net(mx)
                loss = mge_loss(out)
                gm.backward(loss)
            opt.step().clear_grad()
            return loss

        if case.endswith("_trace"):
            mge_step = trace(mge_step, symbolic=False)
        steps["megengine"] = lambda: float(mge_step(mx).numpy())
    return steps


# ----- memory: one side per fresh process -----
def worker(side, case, quick):
    """One side's peak RSS growth (MB) over 3 steps and its losses, as JSON."""
    step = steppers(case, quick, (side,))[side]
    if side == "megengine":  # the first kernel call loads torch's bridge: not the model's memory
        F.conv2d(mge.tensor(np.zeros((1, 1, 1, 1), "float32")),
                 mge.tensor(np.zeros((1, 1, 1, 1), "float32")))
    base, peak, losses = _timing.sampled_peak(lambda: [step() for _ in range(3)])
    print(json.dumps({"growth_mb": (peak - base) / 2 ** 20, "losses": losses}))


def memory(case, args):
    """{side: (median growth MB, first loss)} over ``args.memory_runs`` fresh processes."""
    out = {}
    for side in ("megengine", "torch"):
        growth, first = [], None
        for _ in range(args.memory_runs):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--case", case]
            proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True,
                                  text=True)
            if proc.returncode:
                sys.exit(f"bench_scale: the {side} worker of {case} failed:\n{proc.stderr}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            growth.append(res["growth_mb"])
            first = res["losses"][0]
        out[side] = (statistics.median(growth), first)
    return out


def run_case(case, args):
    print(f"{case}{' (--quick)' if args.quick else ''}:")
    ok = True
    if not args.skip_memory:
        mem = memory(case, args)
        (mm, ml), (tm, tl) = mem["megengine"], mem["torch"]
        # (autocast rounds to float16, torch stays float32: 1.6e-4 measured, 3.6e-4 --quick)
        ok = abs(ml - tl) <= (2e-3 if case.endswith("_amp") else 1e-4) * abs(tl)
        print(f"  same work: first loss megengine {ml:.6f}, torch {tl:.6f} "
              f"{'ok' if ok else 'MISMATCH'}")
        ratio = mm / max(tm, 1e-9)
        print(f"  peak RSS growth over 3 steps (fresh process per side, median of "
              f"{args.memory_runs}): megengine {mm:.0f} MB, torch {tm:.0f} MB: {ratio:.2f}x "
              f"({_timing.verdict(ratio, AIM_MEMORY)})")
        _timing.flush()
    if not args.skip_time:
        steps = steppers(case, args.quick)
        rounds = _timing.paired_rounds(steps["megengine"], steps["torch"], args.steps,
                                       args.repeats, warmup=1)
        ratios = [r[0] for r in rounds]
        mt = statistics.median(t for r in rounds for t in r[1]) * 1e3
        tt = statistics.median(t for r in rounds for t in r[2]) * 1e3
        print(f"  step time: megengine {mt:.0f} ms, torch {tt:.0f} ms: paired "
              f"{_timing.describe_ratios(ratios)} ({_timing.ratio_verdict(ratios, AIM_TIME)})")
        _timing.flush()
    return ok


def main():
    def extra(parser):
        parser.add_argument("--case", choices=CASES + ("all",), default="all")
        parser.add_argument("--skip-time", action="store_true")
        parser.add_argument("--skip-memory", action="store_true")
        parser.add_argument("--memory-runs", type=int, default=1)
        parser.add_argument("--worker", choices=["megengine", "torch"], help=argparse.SUPPRESS)

    args = _timing.parse_args(__doc__, steps=3, repeats=1, quick_steps=1, quick_repeats=1,
                              extra=extra)
    if args.worker:
        worker(args.worker, args.case, args.quick)
        return
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}")
    ok = True
    for case in (CASES if args.case == "all" else (args.case,)):
        ok &= run_case(case, args)
    if not ok:
        sys.exit("the two sides did not do the same work")


if __name__ == "__main__":
    main()
