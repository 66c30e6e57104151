"""Per-op survey: the public functional ops a training or eval program calls most, each against the same call in torch, same process.

CPU, one thread, random inputs fixed in advance. Each op runs at a small and a medium size
(``--size``; ``tiny`` and ``wide`` only when asked: cross entropy's 8 x 10 and 64 x 32000), in
two modes (``--mode``):

* ``fwd``: the forward call alone; torch under ``no_grad``, megengine with nothing attached.
* ``fb``: forward and backward from a fixed output gradient into the inputs' ``.grad``, reset
  to None every step as a training loop's ``clear_grad`` does: megengine under a
  ``GradManager``, torch by ``.backward``. Both sides then hand every input a gradient buffer
  of its own, laid out as the input is: torch's ``AccumulateGrad`` clones a gradient that is
  shared (``x + y`` gives both inputs the output gradient), a broadcast (``sum``'s expanded
  gradient) or a strided view (``concat``'s slices), as the GradManager copies them. One
  exception: a contiguous view of the output gradient (``stack``'s along axis 0) torch keeps
  as ``.grad``, where the GradManager copies a gradient that shares the caller's output
  gradient, so ``stack``'s fb times three copies more on megengine's side.
  ``stack_scaled`` and ``concat0_scaled`` (the join times 2) take the join's output gradient
  from the backward instead: there torch copies nothing, nor does the GradManager at the
  medium size (it copies slices under 64 KiB, which costs less than checking them).
  ``--torch-grad autograd`` takes torch's ``autograd.grad`` instead (the round-1 comparator),
  which returns such views uncopied: it times less work than a training step does.
  Ops without a float gradient (argmax, comparisons, one_hot, topk's indices) are timed in
  ``fwd`` only.

Before timing, each case checks that both sides compute the same values (rtol 1e-4, atol 1e-5
times the largest value; the gradients too in ``fb``), and exits with an error if not. Then
``--repeats`` rounds of ``--steps`` steps per side, the two sides taking turns step by step (who goes first
alternating); a round's figure is the median of megengine step / torch step over adjacent pairs
(``_timing.paired_ratio``); the line gives the median over rounds with quartiles, and the
median times of both sides. Lines at or above ``--flag`` (1.30x) are marked ``<<``.

    python benchmarks/bench_ops.py [--quick] [--case SUBSTRING ...] [--size small|medium]
                                   [--mode fwd|fb] [--steps N] [--repeats R]
                                   [--torch-grad backward|autograd]

Before/after: run the script with ``PYTHONPATH`` at each checkout (the script imports whichever
``megengine`` comes first), back to back; each line names the checkout in use.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
from megengine.autodiff import GradManager  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)

# (rows, classes) of the losses, softmax and reductions; the elementwise ops take rows x classes
# values too, the matmul (m, k, n)
SIZES = {"small": dict(rows=64, cols=10, ew=(64, 128), mm=(64, 128, 64)),
         "medium": dict(rows=256, cols=1000, ew=(512, 1024), mm=(256, 512, 256)),
         # only when asked (--size): the smallest and the widest cross entropy measured before
         "tiny": dict(rows=8, cols=10, ew=(8, 16), mm=(8, 16, 8)),
         "wide": dict(rows=64, cols=32000, ew=(64, 32000), mm=(64, 1024, 64))}
DEFAULT_SIZES = ["small", "medium"]


class Case:
    """One op: ``inputs(size)`` -> list of numpy arrays (the float ones are differentiated in
    ``fb`` unless ``grad`` is False), ``mge(*tensors)`` and ``torch(*tensors)`` -> the output to
    time (the same maths)."""

    def __init__(self, name, inputs, mge_fn, torch_fn, grad=True):
        self.name, self.inputs, self.mge, self.torch, self.grad = \
            name, inputs, mge_fn, torch_fn, grad


def _rs(size, salt):
    return np.random.RandomState(hash((size["rows"], size["cols"], salt)) % 2 ** 31)


def logits(size):
    rs = _rs(size, 1)
    n, c = size["rows"], size["cols"]
    return [rs.randn(n, c).astype(np.float32), rs.randint(0, c, n).astype(np.int32)]


def two_floats(size, low=-2.0, high=2.0):
    rs = _rs(size, 2)
    shape = size["ew"]
    return [rs.uniform(low, high, shape).astype(np.float32),
            rs.uniform(low, high, shape).astype(np.float32)]


def one_float(size, low=-2.0, high=2.0):
    return two_floats(size, low, high)[:1]


def positive(size):
    return one_float(size, 0.1, 4.0)


def probs_and_targets(size):
    rs = _rs(size, 3)
    shape = size["ew"]
    return [rs.uniform(0.05, 0.95, shape).astype(np.float32),
            rs.uniform(0, 1, shape).astype(np.float32)]


def matrices(size):
    rs = _rs(size, 4)
    m, k, n = size["mm"]
    return [rs.randn(m, k).astype(np.float32), rs.randn(k, n).astype(np.float32)]


def batched_matrices(size):
    """Eight (m/4, k/4) @ (k/4, n/4) products: attention-sized batches at the medium size."""
    rs = _rs(size, 9)
    m, k, n = (max(d // 4, 1) for d in size["mm"])
    return [rs.randn(8, m, k).astype(np.float32), rs.randn(8, k, n).astype(np.float32)]


def three_floats(size):
    rs = _rs(size, 5)
    return [rs.randn(*size["ew"]).astype(np.float32) for _ in range(3)]


def mask_and_two(size):
    rs = _rs(size, 6)
    x, y = two_floats(size)
    return [rs.rand(*size["ew"]) > 0.5, x, y]


def half_rows_and_index(size):
    """float16 rows and 4 * rows indices into them (repeats): x[idx], whose gradient sums the
    repeated rows (float16 in index order, as numpy's add.at and torch)."""
    rs = _rs(size, 10)
    n, c = size["rows"], size["cols"]
    return [rs.randn(n, c).astype(np.float16), rs.randint(0, n, 4 * n).astype(np.int32)]


def _long(t):
    return t.long()


CASES = [
    Case("cross_entropy", logits, lambda x, y: F.nn.cross_entropy(x, y),
         lambda x, y: TF.cross_entropy(x, _long(y))),
    Case("cross_entropy_ls0.1", logits, lambda x, y: F.nn.cross_entropy(x, y, label_smooth=0.1),
         lambda x, y: TF.cross_entropy(x, _long(y), label_smoothing=0.1)),
    Case("bce_logits", probs_and_targets,
         lambda x, y: F.nn.binary_cross_entropy(x, y),
         lambda x, y: TF.binary_cross_entropy_with_logits(x, y)),
    Case("bce_probs", probs_and_targets,
         lambda x, y: F.nn.binary_cross_entropy(x, y, with_logits=False),
         lambda x, y: TF.binary_cross_entropy(x, y)),
    Case("softmax", logits, lambda x, y: F.softmax(x, axis=1), lambda x, y: torch.softmax(x, 1)),
    Case("log_softmax", logits, lambda x, y: F.logsoftmax(x, axis=1),
         lambda x, y: torch.log_softmax(x, 1)),
    Case("logsumexp", logits, lambda x, y: F.logsumexp(x, axis=1),
         lambda x, y: torch.logsumexp(x, 1)),
    Case("l1_loss", two_floats, lambda x, y: F.nn.l1_loss(x, y), lambda x, y: TF.l1_loss(x, y)),
    Case("square_loss", two_floats, lambda x, y: F.nn.square_loss(x, y),
         lambda x, y: TF.mse_loss(x, y)),
    Case("smooth_l1_loss", two_floats, lambda x, y: F.nn.smooth_l1_loss(x, y),
         lambda x, y: TF.smooth_l1_loss(x, y)),
    Case("nll_gather", logits, lambda x, y: F.gather(x, 1, F.expand_dims(y, 1)),
         lambda x, y: torch.gather(x, 1, _long(y)[:, None])),
    Case("indexing_one_hot", logits, lambda x, y: F.indexing_one_hot(x, y, 1),
         lambda x, y: torch.gather(x, 1, _long(y)[:, None])[:, 0]),
    Case("index_rows_f16", half_rows_and_index, lambda x, i: x[i], lambda x, i: x[_long(i)]),
    Case("one_hot", logits, lambda x, y: F.one_hot(y, x.shape[1]),
         lambda x, y: TF.one_hot(_long(y), x.shape[1]).int(), grad=False),
    Case("topk5", logits, lambda x, y: F.topk(x, 5, descending=True)[0],
         lambda x, y: torch.topk(x, 5, 1)[0]),
    Case("argmax", logits, lambda x, y: F.argmax(x, axis=1),
         lambda x, y: torch.argmax(x, 1).int(), grad=False),
    Case("sum_axis1", logits, lambda x, y: F.sum(x, axis=1), lambda x, y: x.sum(1)),
    Case("mean_axis1", logits, lambda x, y: F.mean(x, axis=1), lambda x, y: x.mean(1)),
    Case("max_axis1", logits, lambda x, y: F.max(x, axis=1), lambda x, y: x.amax(1)),
    Case("matmul", matrices, lambda a, b: F.matmul(a, b), lambda a, b: a @ b),
    Case("einsum_bmm", batched_matrices, lambda a, b: F.einsum("bij,bjk->bik", a, b),
         lambda a, b: torch.einsum("bij,bjk->bik", a, b)),
    Case("clip", one_float, lambda x: F.clip(x, -1.0, 1.0), lambda x: x.clamp(-1.0, 1.0)),
    Case("where", mask_and_two, lambda m, x, y: F.where(m, x, y),
         lambda m, x, y: torch.where(m, x, y)),
    Case("add", two_floats, lambda x, y: x + y, lambda x, y: x + y),
    Case("mul", two_floats, lambda x, y: x * y, lambda x, y: x * y),
    Case("mul_scalar", one_float, lambda x: x * 0.5, lambda x: x * 0.5),
    Case("pow2", one_float, lambda x: x ** 2, lambda x: x ** 2),
    Case("pow_half", positive, lambda x: x ** 0.5, lambda x: x ** 0.5),
    Case("greater", two_floats, lambda x, y: x > y, lambda x, y: x > y, grad=False),
    Case("sqrt", positive, lambda x: F.sqrt(x), lambda x: x.sqrt()),
    Case("exp", one_float, lambda x: F.exp(x), lambda x: x.exp()),
    Case("log", positive, lambda x: F.log(x), lambda x: x.log()),
    Case("log1p", positive, lambda x: F.log1p(x), lambda x: x.log1p()),
    Case("logsigmoid", one_float, lambda x: F.logsigmoid(x), lambda x: TF.logsigmoid(x)),
    Case("normalize", one_float, lambda x: F.normalize(x, axis=1),
         lambda x: TF.normalize(x, dim=1)),
    Case("concat", three_floats, lambda a, b, c: F.concat([a, b, c], axis=1),
         lambda a, b, c: torch.cat([a, b, c], 1)),
    Case("stack", three_floats, lambda a, b, c: F.stack([a, b, c], axis=0),
         lambda a, b, c: torch.stack([a, b, c], 0)),
    # the joins' output gradient made inside the backward (a training step's, not the
    # caller's): the input gradients are contiguous slices of a buffer the backward allocated,
    # which both sides hand to .grad uncopied (the GradManager from 64 KiB a slice)
    Case("stack_scaled", three_floats, lambda a, b, c: F.stack([a, b, c], axis=0) * 2.0,
         lambda a, b, c: torch.stack([a, b, c], 0) * 2.0),
    Case("concat0_scaled", three_floats, lambda a, b, c: F.concat([a, b, c], axis=0) * 2.0,
         lambda a, b, c: torch.cat([a, b, c], 0) * 2.0),
]


def _numpy(t):
    return t.numpy() if isinstance(t, mge.Tensor) else t.detach().numpy()


def steppers(case, size, mode, torch_grad="backward"):
    """(megengine step, torch step, check) for one case; ``check()`` compares the outputs
    (and in ``fb`` the gradients) and returns an error message or None."""
    arrays = case.inputs(size)
    diff = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if mode == "fb" else []
    xs = [mge.tensor(a) for a in arrays]
    ts = [torch.tensor(a, requires_grad=i in diff) for i, a in enumerate(arrays)]
    out = case.mge(*xs)
    dy = np.asarray(np.random.RandomState(0).randn(*out.shape),  # (float16 for a float16 op)
                    dtype=out.dtype if out.dtype == np.float16 else np.float32)
    dy_m, dy_t = mge.tensor(dy), torch.from_numpy(dy)
    attached = [xs[i] for i in diff]
    gm = GradManager().attach(attached)
    inputs_t = [ts[i] for i in diff]

    if mode == "fwd":
        def mge_step():
            return case.mge(*xs)

        def torch_step():
            with torch.no_grad():
                return case.torch(*ts)
    else:
        def mge_step():
            for x in attached:
                x.grad = None
            with gm:
                gm.backward(case.mge(*xs), dy_m)
            return [x.grad for x in attached]

        if torch_grad == "autograd":
            def torch_step():
                return torch.autograd.grad(case.torch(*ts), inputs_t, dy_t)
        else:
            def torch_step():
                for t in inputs_t:
                    t.grad = None
                case.torch(*ts).backward(dy_t)
                return [t.grad for t in inputs_t]

    def check():
        got, want = mge_step(), torch_step()
        if mode == "fwd":
            got, want = [got], [want]
        for g, w in zip(got, want):
            g, w = _numpy(g), _numpy(w)
            if g.shape != w.shape:
                return f"shapes differ: {g.shape} against torch's {w.shape}"
            scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
            if not np.allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-4,
                               atol=1e-5 * scale):  # sums of many terms (matmul) round apart
                return f"values differ by up to {np.abs(g.astype(float) - w).max():.3g}"
        return None

    return mge_step, torch_step, check


def main():
    def extra(parser):
        parser.add_argument("--case", action="append", default=None,
                            help="run the cases whose name contains this (repeatable)")
        parser.add_argument("--size", choices=sorted(SIZES), action="append", default=None)
        parser.add_argument("--mode", choices=["fwd", "fb"], action="append", default=None)
        parser.add_argument("--torch-grad", choices=["backward", "autograd"], default="backward",
                            help="torch's side of fb: .backward into .grad (default, as the "
                                 "GradManager) or autograd.grad (no gradient buffers)")
        parser.add_argument("--flag", type=float, default=1.30,
                            help="mark ratios at or above this (default 1.30)")

    args = _timing.parse_args(__doc__, steps=60, repeats=7, quick_steps=12, quick_repeats=3,
                              extra=extra)
    cases = [c for c in CASES if not args.case or any(s in c.name for s in args.case)]
    if not cases:
        sys.exit(f"bench_ops: no case matches {args.case}; cases: "
                 f"{', '.join(c.name for c in CASES)}")
    print(_timing.machine_line())
    print(f"megengine from {_timing.megengine_source()}; {args.steps} steps x {args.repeats} "
          f"rounds per line; ratio = megengine / torch per adjacent pair; torch's fb by "
          f"{'.backward' if args.torch_grad == 'backward' else 'autograd.grad'}")
    flagged = []
    for size_name in args.size or DEFAULT_SIZES:
        size = SIZES[size_name]
        for mode in args.mode or ["fwd", "fb"]:
            for case in cases:
                if mode == "fb" and not case.grad:
                    continue
                mge_step, torch_step, check = steppers(case, size, mode, args.torch_grad)
                problem = check()
                if problem:
                    sys.exit(f"bench_ops: {case.name} {size_name} {mode}: {problem}")
                rounds = _timing.paired_rounds(mge_step, torch_step, args.steps, args.repeats)
                ratios = [r[0] for r in rounds]
                mt = statistics.median(statistics.median(r[1]) for r in rounds) * 1e6
                tt = statistics.median(statistics.median(r[2]) for r in rounds) * 1e6
                med = statistics.median(ratios)
                mark = "  <<" if med >= args.flag else ""
                if mark:
                    flagged.append((med, f"{case.name} {size_name} {mode}"))
                print(f"{case.name:20s} {size_name:6s} {mode:3s}  mge {mt:9.1f} us  torch "
                      f"{tt:9.1f} us  {_timing.describe_ratios(ratios)}{mark}")
                _timing.flush()
    if flagged:
        print(f"at or above {args.flag:.2f}x: " + "; ".join(
            f"{name} x{r:.2f}" for r, name in sorted(flagged, reverse=True)))


if __name__ == "__main__":
    main()
