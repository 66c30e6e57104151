"""Training steps of recurrent layers, group norm, activations and dropout on this engine against the same work in PyTorch, same process.

CPU, one thread, random inputs fixed in advance. Cases (``--case``, repeatable; default all):

* ``lstm``: ``M.LSTM(256, 256)`` over seq 32, batch 16, loss ``mean(out ** 2)``, SGD (aim
  <= 1.15x); ``lstm_small``: ``LSTM(64, 64)``, seq 8, batch 4 (<= 1.15x); ``lstm_bidir``:
  ``LSTM(128, 128, num_layers=2, bidirectional=True)``, seq 16, batch 8 (<= 1.15x);
  ``rnn``: ``M.RNN(256, 256)`` (tanh), seq 32, batch 16 (<= 1.15x); ``lstm_cell``:
  ``M.LSTMCell(128, 128)`` stepped 16 times at batch 16 (<= 1.15x);
  ``lstm_infer``, ``lstm_small_infer``, ``lstm_bidir_infer``: the ``lstm``, ``lstm_small``
  and ``lstm_bidir`` networks' forward without gradients, in eval mode (<= 1.10x);
  ``lstm_tiny_infer``: ``LSTM(8, 8)`` over seq 2, batch 1, where a call's fixed cost is most of
  it (<= 1.10x); ``lstm_cell_infer``, ``lstm_cell_small_infer``: ``M.LSTMCell(128, 128)``
  stepped 16 times at batch 16, ``LSTMCell(64, 64)`` at batch 4, without gradients, in eval
  mode (<= 1.10x).
* ``groupnorm``: ``Conv2d(64, 64, 3) -> GroupNorm(8, 64) -> SiLU`` on 16x64x32x32, SGD
  (<= 1.10x); ``instancenorm``: the same with ``InstanceNorm(64)`` (torch: ``GroupNorm(64,
  64)``, the same maths) (<= 1.10x).
* ``mlp``: ``Linear(512, 512) -> BatchNorm1d -> ReLU -> Dropout(0.1) -> Linear(512, 10)`` at
  batch 256, SGD (no aim: a mix of layers measured elsewhere; it shows dropout's share).
* ``act``: forward + backward of each activation and of dropout on a tensor of 64K and of 1M
  float32 values (``y = f(x)``, backward from a fixed ``dy``; no optimizer) (<= 1.10x); silu
  and gelu on the array code too (``silu_arrays``, ``gelu_arrays``: ATen avoided, what CuPy
  runs when torch has no CUDA; no aim).

Before timing, each case checks that both sides do the same work: the networks start from the
same weights and take 3 steps on the same batch; the losses must agree (relative difference
< 1e-4; dropout masks cannot agree, so that check runs with p = 0), and an activation's output
and input gradient must agree. Then ``--repeats`` rounds of ``--steps`` steps per side, the two
sides taking turns step by step (who goes first alternating); a round's figure is the median
of megengine step / torch step over adjacent pairs (``_timing.paired_ratio``); the verdict is
the median over rounds with quartiles and range.

    python benchmarks/bench_layers.py [--steps N] [--repeats R] [--quick] [--case NAME]

Before/after: run the script with ``PYTHONPATH`` at each checkout (the script imports whichever
``megengine`` comes first), back to back.

Thread counts are pinned to 1 (OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before
numpy is imported, and torch.set_num_threads(1)): with two OpenBLAS threads numpy's gemms would
compete with torch's one.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402
from megengine.functional import _aten  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)
CHECK_STEPS = 3


# ----- networks: (megengine module, torch module) with the same weights -----

def copy_by_order(mge_net, torch_net):
    """Copy megengine's parameters and buffers into torch's, matched by order and shape (both
    register them in the same order for the networks here)."""
    mp = [p for _, p in sorted(mge_net.named_parameters(), key=lambda kv: _order_key(kv[0]))]
    tp = list(torch_net.parameters())
    if len(mp) != len(tp):
        sys.exit(f"bench_layers: {len(mp)} megengine parameters against {len(tp)} torch ones")
    with torch.no_grad():
        for a, b in zip(mp, tp):
            b.copy_(torch.from_numpy(a.numpy().reshape(tuple(b.shape))))


def _order_key(name):
    # Sequential children by index; within one, weight before bias (torch's order)
    parts = name.split(".")
    return [int(p) if p.isdigit() else {"weight": 0, "bias": 1}.get(p, 2) for p in parts]


def rnn_nets(kind, i, h, **kw):
    m, t = getattr(M, kind)(i, h, **kw), getattr(tnn, kind)(i, h, **kw)
    tparams = dict(t.named_parameters())
    with torch.no_grad():
        for name, p in m.named_parameters():
            _, layer, d, w = name.split(".")
            tparams[f"{w}_l{layer}" + ("_reverse" if d == "1" else "")].copy_(
                torch.from_numpy(p.numpy()))
    return m, t


def conv_norm_nets(norm):
    m = M.Sequential(M.Conv2d(64, 64, 3, 1, 1),
                     M.GroupNorm(8, 64) if norm == "group" else M.InstanceNorm(64), M.SiLU())
    t = tnn.Sequential(tnn.Conv2d(64, 64, 3, 1, 1),
                       tnn.GroupNorm(8 if norm == "group" else 64, 64), tnn.SiLU())
    copy_by_order(m, t)
    return m, t


def mlp_nets(p):
    m = M.Sequential(M.Linear(512, 512), M.BatchNorm1d(512), M.ReLU(), M.Dropout(p),
                     M.Linear(512, 10))
    t = tnn.Sequential(tnn.Linear(512, 512), tnn.BatchNorm1d(512), tnn.ReLU(), tnn.Dropout(p),
                       tnn.Linear(512, 10))
    copy_by_order(m, t)
    return m, t


# ----- steps -----

def train_steppers(m, t, x, out_of=lambda o: o):
    """A training step each: loss mean(out ** 2), backward, SGD(lr 0.01); returns the loss."""
    gm = GradManager().attach(m.parameters())
    opt = optim.SGD(m.parameters(), lr=0.01)
    topt = torch.optim.SGD(t.parameters(), lr=0.01)
    xm, xt = mge.tensor(x), torch.from_numpy(x)

    def mge_step():
        with gm:
            loss = (out_of(m(xm)) ** 2).mean()
            gm.backward(loss)
        opt.step().clear_grad()
        return float(loss.numpy())

    def torch_step():
        loss = (out_of(t(xt)) ** 2).mean()
        loss.backward()
        topt.step()
        topt.zero_grad()
        return loss.item()

    return mge_step, torch_step


def cell_steppers(m, t, x):
    """LSTMCell stepped over x's first axis (state carried), loss mean(h_T ** 2)."""
    gm = GradManager().attach(m.parameters())
    opt = optim.SGD(m.parameters(), lr=0.01)
    topt = torch.optim.SGD(t.parameters(), lr=0.01)
    xm, xt = [mge.tensor(a) for a in x], list(torch.from_numpy(x))

    def mge_step():
        with gm:
            state = None
            for a in xm:
                state = m(a, state)
            loss = (state[0] ** 2).mean()
            gm.backward(loss)
        opt.step().clear_grad()
        return float(loss.numpy())

    def torch_step():
        state = None
        for a in xt:
            state = t(a, state)
        loss = (state[0] ** 2).mean()
        loss.backward()
        topt.step()
        topt.zero_grad()
        return loss.item()

    return mge_step, torch_step


def cell_infer_steppers(m, t, x):
    """LSTMCell stepped over x's first axis (state carried) without gradients, in eval mode."""
    m.eval()
    t.eval()
    xm, xt = [mge.tensor(a) for a in x], list(torch.from_numpy(x))

    def mge_step():
        state = None
        for a in xm:
            state = m(a, state)
        return float(state[0].numpy()[0, 0])

    def torch_step():
        with torch.no_grad():
            state = None
            for a in xt:
                state = t(a, state)
            return state[0][0, 0].item()

    return mge_step, torch_step


def infer_steppers(m, t, x):
    m.eval()
    t.eval()
    xm, xt = mge.tensor(x), torch.from_numpy(x)

    def mge_step():
        return float(m(xm)[0].numpy()[0, 0, 0])

    def torch_step():
        with torch.no_grad():
            return t(xt)[0][0, 0, 0].item()

    return mge_step, torch_step


def _on_array_code(fn):
    """``fn`` on the engine's array code, ATen's kernels avoided: what CuPy arrays run when
    torch has no CUDA (no aim: numpy's passes against torch's one fused kernel)."""
    def on_array_code(x):
        with _aten.avoided("activation", "gelu"):
            return fn(x)
    return on_array_code


ACTIVATIONS = {  # name: (megengine, torch)
    "relu": (F.relu, torch.relu),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1)),
    "relu6": (F.relu6, TF.relu6),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
    "silu": (F.silu, TF.silu),
    "gelu": (F.gelu, TF.gelu),
    "silu_arrays": (_on_array_code(F.silu), TF.silu),
    "gelu_arrays": (_on_array_code(F.gelu), TF.gelu),
    "hswish": (F.hswish, TF.hardswish),
    "hsigmoid": (F.hsigmoid, TF.hardsigmoid),
    "softplus": (F.softplus, TF.softplus),
    "clip": (lambda x: F.clip(x, -1.0, 1.0), lambda x: torch.clamp(x, -1.0, 1.0)),
    "dropout": (lambda x: F.dropout(x, 0.1), lambda x: TF.dropout(x, 0.1)),
}


def act_steppers(name, n):
    rs = np.random.RandomState(0)
    x = rs.randn(n // 256, 256).astype(np.float32) * 3
    dy = rs.randn(n // 256, 256).astype(np.float32)
    mf, tf = ACTIVATIONS[name]
    xm, dym = mge.tensor(x), mge.tensor(dy)
    xt, dyt = torch.tensor(x, requires_grad=True), torch.from_numpy(dy)
    gm = GradManager().attach(xm)

    def mge_step():
        xm.grad = None  # (as torch's side: a fresh gradient, not a sum)
        with gm:
            y = mf(xm)
            gm.backward(y, dym)
        return y, xm.grad

    def torch_step():
        xt.grad = None
        y = tf(xt)
        y.backward(dyt)
        return y, xt.grad

    return mge_step, torch_step


# ----- cases -----

def _lstm(i, h, seq, batch, **kw):
    def make(p=None):
        x = np.random.RandomState(0).randn(seq, batch, i).astype(np.float32)
        return train_steppers(*rnn_nets("LSTM", i, h, **kw), x, out_of=lambda o: o[0])
    return make


def _rnn(p=None):
    x = np.random.RandomState(0).randn(32, 16, 256).astype(np.float32)
    return train_steppers(*rnn_nets("RNN", 256, 256), x, out_of=lambda o: o[0])


def _cell(p=None, steppers=cell_steppers, size=128, batch=16):
    m, t = M.LSTMCell(size, size), tnn.LSTMCell(size, size)
    tparams = dict(t.named_parameters())  # the same names on both sides
    with torch.no_grad():
        for name, p in m.named_parameters():
            tparams[name].copy_(torch.from_numpy(p.numpy()))
    x = np.random.RandomState(0).randn(16, batch, size).astype(np.float32)
    return steppers(m, t, x)


def _cell_infer(size, batch):
    def make(p=None):
        return _cell(steppers=cell_infer_steppers, size=size, batch=batch)
    return make


def _infer(i, h, seq, batch, **kw):
    def make(p=None):
        x = np.random.RandomState(0).randn(seq, batch, i).astype(np.float32)
        return infer_steppers(*rnn_nets("LSTM", i, h, **kw), x)
    return make


def _norm(kind):
    def make(p=None):
        x = np.random.RandomState(0).randn(16, 64, 32, 32).astype(np.float32)
        return train_steppers(*conv_norm_nets(kind), x)
    return make


def _mlp(p=0.1):
    x = np.random.RandomState(0).randn(256, 512).astype(np.float32)
    return train_steppers(*mlp_nets(p), x)


CASES = {  # name: (maker(p) -> (mge_step, torch_step), aim or None, steps factor)
    "lstm": (_lstm(256, 256, 32, 16), 1.15, 1),
    "lstm_small": (_lstm(64, 64, 8, 4), 1.15, 10),
    "lstm_bidir": (_lstm(128, 128, 16, 8, num_layers=2, bidirectional=True), 1.15, 2),
    "rnn": (_rnn, 1.15, 2),
    "lstm_cell": (_cell, 1.15, 3),
    "lstm_infer": (_infer(256, 256, 32, 16), 1.10, 3),
    "lstm_small_infer": (_infer(64, 64, 8, 4), 1.10, 30),
    "lstm_bidir_infer": (_infer(128, 128, 16, 8, num_layers=2, bidirectional=True), 1.10, 6),
    "lstm_tiny_infer": (_infer(8, 8, 2, 1), 1.10, 60),
    "lstm_cell_infer": (_cell_infer(128, 16), 1.10, 3),
    "lstm_cell_small_infer": (_cell_infer(64, 4), 1.10, 10),
    "groupnorm": (_norm("group"), 1.10, 1),
    "instancenorm": (_norm("instance"), 1.10, 1),
    "mlp": (_mlp, None, 4),
}


def same_work(name, make):
    if name.endswith("_infer"):
        ms, ts = make()
        a, b = ms(), ts()
        return abs(a - b) <= 1e-5 * max(1.0, abs(b)), f"first output {a:.6f} / {b:.6f}"
    ms, ts = make(0.0) if name == "mlp" else make()
    ml = [ms() for _ in range(CHECK_STEPS)]
    tl = [ts() for _ in range(CHECK_STEPS)]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ml, tl))
    return worst < 1e-4, (f"losses {ml[0]:.6g} -> {ml[-1]:.6g} / {tl[0]:.6g} -> {tl[-1]:.6g}, "
                          f"largest relative difference {worst:.1e}")


def act_same_work(name, n):
    ms, ts = act_steppers(name, n)
    (y, g), (ty, tg) = ms(), ts()
    y, g, ty = y.numpy(), g.numpy(), ty.detach().numpy()
    if name == "dropout":  # the masks differ: the kept fraction, and dx = dy / 0.9 where kept
        dy = np.random.RandomState(0)
        dy.randn(n // 256, 256)  # (x's draw, as act_steppers made it)
        dy = dy.randn(n // 256, 256).astype(np.float32)
        keep, tkeep = float((y != 0).mean()), float((ty != 0).mean())
        err = np.abs(g - np.where(y != 0, dy / np.float32(0.9), 0)).max()
        return abs(keep - tkeep) < 0.01 and err < 1e-5, \
            f"kept {keep:.4f} / {tkeep:.4f}, dx off by {err:.1e}"
    dy, dg = np.abs(y - ty).max(), np.abs(g - tg.numpy()).max()
    return dy < 1e-4 and dg < 1e-4, f"largest difference y {dy:.1e}, dx {dg:.1e}"


def report(label, rounds, aim):
    ratios = [r for r, _, _ in rounds]
    m_ms = statistics.median(t for _, mt, _ in rounds for t in mt) * 1e3
    t_ms = statistics.median(t for _, _, tt in rounds for t in tt) * 1e3
    verdict = _timing.ratio_verdict(ratios, aim) if aim else "(no aim)"
    print(f"  {label:22s} megengine {m_ms:8.3f} ms  torch {t_ms:8.3f} ms  "
          f"{_timing.describe_ratios(ratios)}  {verdict}")
    _timing.flush()


def main():
    def extra(parser):
        parser.add_argument("--case", choices=sorted(CASES) + ["act"], action="append",
                            help="only this case (repeatable; default all)")

    args = _timing.parse_args(__doc__, steps=10, repeats=7, quick_steps=2, quick_repeats=2,
                              extra=extra)
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}; "
          f"{args.repeats} rounds of --steps {args.steps} (times each case's factor), paired")
    ok = True
    for name in args.case or list(CASES) + ["act"]:
        if name == "act":
            for act in ACTIVATIONS:
                for n in (1 << 16, 1 << 20):
                    same, note = act_same_work(act, n)
                    ok &= same
                    steps = args.steps * (20 if n == 1 << 16 else 2)
                    rounds = _timing.paired_rounds(*act_steppers(act, n), steps, args.repeats)
                    report(f"{act} {n >> 10}K", rounds,
                           None if act.endswith("_arrays") else 1.10)
                    if not same:
                        print(f"    same work: MISMATCH ({note})")
            continue
        make, aim, factor = CASES[name]
        same, note = same_work(name, make)
        ok &= same
        print(f"{name}: same work {'ok' if same else 'MISMATCH'} ({note})")
        report(name, _timing.paired_rounds(*make(), args.steps * factor, args.repeats), aim)
    if not ok:
        sys.exit("bench_layers: megengine and torch disagree; the figures compare different work")


if __name__ == "__main__":
    main()
