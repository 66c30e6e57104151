"""CPU threads: training steps at one thread and at several, this engine against PyTorch.

Every other benchmark pins one thread. Here the count is set the way a user sets it:
``torch.set_num_threads(T)`` (the pool of the engine's ATen kernels, as ``MGE_NUM_THREADS``),
with numpy's BLAS left at its default of one thread per core, as on a machine where nobody
exported ``OPENBLAS_NUM_THREADS``. The networks are bench_models.py's (ShuffleNetV2 by
default: its step has the most small kernels), batch 8 at 224x224, SGD with momentum.

Two variants of the engine, for each thread count, each timed against torch in the same
process, the two taking turns step by step (paired ratios, as the other benchmarks):

- ``megengine``: as shipped: every kernel of the engine's that runs on threads runs in torch's
  pool (convolution, batch norm, pooling on ATen; large matrix products on ATen too, see
  ``megengine/core/ops.py`` ``matmul``);
- ``megengine, numpy BLAS``: the same with the matrix products on numpy's BLAS
  (``_aten.avoided("gemm")``), as earlier versions of this fork ran them: a second thread pool
  whose idle workers spin on the cores torch's kernels run on. The torch steps beside it can
  slow down too (one process): its step times say what its ratio may understate.

Each variant runs in a fresh process per round (a pool's spinning workers must not reach the
other variant), the rounds taking turns between variants and thread counts; each process times
``--steps`` pairs of steps after two warm-up pairs. Figures: medians over the rounds.

Aim: the engine scales with threads as torch does: megengine / torch at N threads at most
1.1 times megengine / torch at one thread.

    python benchmarks/bench_threads.py [--threads 1,2] [--model shufflenet_v2|resnet18]
                                       [--steps N] [--repeats R] [--quick]
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("megengine", "megengine, numpy BLAS")
AIM = 1.1


def worker(model, threads, variant, steps):
    """Time ``steps`` pairs of training steps (the engine's ``variant``, torch) with ``threads``
    threads; print the median paired ratio and both median step times (ms) as JSON."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # torch's pool (and MKL's, inside it)
    # numpy's BLAS as on a machine where nobody set it: one thread per core (bench_models would
    # otherwise pin it to one)
    os.environ["OPENBLAS_NUM_THREADS"] = str(os.cpu_count())
    os.environ["MGE_NUM_THREADS"] = str(threads)
    sys.path.insert(0, HERE)
    import contextlib

    import _timing
    import bench_models as bm
    import torch

    from megengine.functional import _aten

    data = bm.make_data()
    mstep, mnet = bm.mge_stepper(model, data, "cpu0")
    tstep, _ = bm.torch_stepper(model, data, "cpu0", init_from=mnet)
    torch.set_num_threads(threads)  # (bench_models pins one at import)
    context = _aten.avoided("gemm") if variant == "megengine, numpy BLAS" \
        else contextlib.nullcontext()
    with context:
        [(ratio, mt, tt)] = _timing.paired_rounds(mstep, tstep, steps, 1, warmup=2)
    print(json.dumps([ratio, statistics.median(mt) * 1e3, statistics.median(tt) * 1e3]))


def run_worker(model, threads, variant, steps):
    out = subprocess.run([sys.executable, __file__, "--worker", model, str(threads), variant,
                          str(steps)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"worker {variant!r} with {threads} thread(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, threads, variant, steps = sys.argv[2:6]
        worker(model, int(threads), variant, int(steps))
        return
    sys.path.insert(0, HERE)
    import _timing

    def extra(parser):
        parser.add_argument("--threads", default=f"1,{min(os.cpu_count() or 1, 8)}",
                            help="thread counts, comma-separated (default 1 and the number of "
                                 "cores, at most 8); the first is the reference")
        parser.add_argument("--model", choices=["shufflenet_v2", "resnet18"],
                            default="shufflenet_v2")

    args = _timing.parse_args(__doc__, steps=6, repeats=3, quick_steps=2, quick_repeats=1,
                              extra=extra)
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        sys.exit(f"--threads: expected positive integers separated by commas, got "
                 f"{args.threads!r}")
    print(_timing.machine_line())
    print(f"{args.model}, batch 8, 224x224; threads {counts}; {args.repeats} round(s) of "
          f"{args.steps} steps per variant, each in a fresh process")
    _timing.flush()
    samples = {(t, v): [] for t in counts for v in VARIANTS}
    for _ in range(args.repeats):
        for t in counts:
            for v in VARIANTS:
                samples[t, v].append(run_worker(args.model, t, v, args.steps))
    # per (threads, variant): [paired ratio, megengine ms, torch ms], medians over the rounds
    med = {key: [statistics.median(r[i] for r in rounds) for i in range(3)]
           for key, rounds in samples.items()}
    print(f"  {'threads':>7}  {'variant':<22} {'megengine / torch':>18} {'megengine':>12} "
          f"{'torch':>12}")
    for t in counts:
        for v in VARIANTS:
            ratio, m, tt = med[t, v]
            print(f"  {t:>7}  {v:<22} {ratio:17.2f}x {m:9.1f} ms {tt:9.1f} ms")
    ref = counts[0]
    for t in counts[1:]:
        for v in VARIANTS:
            gain, torch_gain = (med[ref, v][i] / med[t, v][i] for i in (1, 2))
            print(f"  {v}, {ref} -> {t} threads: speed-up megengine {gain:.2f}x, torch beside it "
                  f"{torch_gain:.2f}x")
        rel = med[t, "megengine"][0] / med[ref, "megengine"][0]
        print(f"  megengine / torch at {t} threads over the same at {ref}: {rel:.2f}x "
              f"({_timing.verdict(rel, AIM)})")


if __name__ == "__main__":
    main()
