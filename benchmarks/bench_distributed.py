"""Data-parallel speed of megengine.distributed on CPU processes (gloo), against torch.distributed called directly.

What it prints:

1. Training throughput of the guide's hybrid LeNet (torch ``LeNet_Extract`` inside
   ``PyTorchModule`` + megengine ``M.Linear(84, 10)``, cross entropy, SGD momentum 0.9) at batch
   ``--batch`` per process, in samples per second: one process (plain training, no process group)
   and two processes (``@dist.launcher``, ``make_allreduce_cb("mean")``), each process on one
   thread; and the scaling efficiency ``sps(2) / (2 * sps(1))``. Both runs are timed inside the
   launched workers (the same start-up for both), after warm-up steps; a run's figure is its
   slowest rank's; the 1- and 2-process runs alternate ``--repeats`` times (median and best).
   A third run, two processes training independently (no process group traffic), shows what the
   machine allows two processes; on a shared 2-core machine that ceiling, not the communication,
   bounds the efficiency, so the ratio to it is printed too.
2. An all-reduce of a 10 MB float32 gradient (2.5 M values) between the two processes:
   ``F.distributed.all_reduce_sum`` (the engine op: a fresh output array, reduced in place by
   gloo through the bridge's zero-copy view), ``make_allreduce_cb("mean")`` as a backward
   runs it on one 10 MB gradient (which fills a bucket alone, so it is scaled and reduced in
   place), a packed bucket (a copy scaled by 1/size into a flat buffer, reduced in place: the
   callback's path for several smaller gradients), and ``torch.distributed.all_reduce`` on a
   torch tensor directly (in place, no copy), in ms (median over repeats, the four taking turns
   call by call; best), with the ratios to torch (aim: <= 1.10x).

    python benchmarks/bench_distributed.py [--steps N] [--repeats R] [--batch B] [--quick]

Thread counts are pinned to 1 per process (OMP/OPENBLAS/MKL_NUM_THREADS with setdefault before
numpy is imported, torch.set_num_threads(1) in every process).
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread per process

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _timing  # noqa: E402

GRADIENT_VALUES = 10 * 1024 * 1024 // 4  # 10 MB of float32


def _lenet():
    spec = importlib.util.spec_from_file_location("lenet_pytorch_example", ROOT / "examples" / "lenet_pytorch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LeNet(module.LeNet_Extract())


def _train_throughput(batch, steps, warmup, distributed):
    """Samples per second of this process's training loop (after ``warmup`` steps)."""
    import torch

    import megengine as mge
    import megengine.distributed as dist
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = _lenet()
    if distributed:
        dist.bcast_list_(net.parameters())
    callbacks = [dist.make_allreduce_cb("mean")] if distributed else []
    gm = GradManager().attach(net.parameters(), callbacks=callbacks)
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.RandomState(dist.get_rank())
    data = mge.tensor(rng.randn(batch, 1, 32, 32).astype("float32"))
    label = mge.tensor(rng.randint(0, 10, batch).astype("int32"))

    def step():
        with gm:
            gm.backward(F.nn.cross_entropy(net(data), label))
        opt.step()
        opt.clear_grad()

    for _ in range(warmup):
        step()
    if distributed:
        dist.group_barrier()  # start the clocks together
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return batch * steps / seconds


def _allreduce_timings(steps, repeats):
    import torch
    import torch.distributed as tdist

    import megengine as mge
    import megengine.distributed as dist
    import megengine.functional.distributed as fd
    from megengine.autodiff import GradManager, grad_manager
    from megengine.core.torch_bridge import to_torch

    torch.set_num_threads(1)
    rank = dist.get_rank()
    grad = mge.tensor(np.full(GRADIENT_VALUES, rank + 1.0, np.float32))
    raw = torch.full((GRADIENT_VALUES,), rank + 1.0)
    size = dist.get_world_size()

    def engine_op():
        fd.all_reduce_sum(grad)

    # The callback as GradManager.backward runs it (gradient callbacks, then the after-backward
    # hook), on one 10 MB gradient. A gradient that fills a bucket alone is reduced in place;
    # reducing the same array again keeps its values (the mean of equal values), so it is reused.
    w = mge.Parameter(np.zeros(GRADIENT_VALUES, np.float32))
    gm = GradManager().attach([w])
    cb = dist.make_allreduce_cb("mean")
    gradient = mge.tensor(np.full(GRADIENT_VALUES, 1.5, np.float32))

    def callback_path():
        grad_manager._backwarding = gm
        try:
            out = cb(w, gradient)
            for hook in gm._after_backward_callbacks:
                hook()
        finally:
            grad_manager._backwarding = None
        return out

    def packed_path():  # what the callback does with a bucket of several gradients: pack, reduce
        bucket = np.empty(GRADIENT_VALUES, np.float32)
        np.multiply(grad._data, np.float32(1.0 / size), out=bucket)
        tdist.all_reduce(to_torch(bucket))

    def torch_direct():
        tdist.all_reduce(raw)

    # checks before timing: the three compute the same sum
    assert np.array_equal(fd.all_reduce_sum(grad).numpy()[:3], [3.0, 3.0, 3.0])
    assert np.array_equal(callback_path().numpy()[:3], [1.5, 1.5, 1.5])
    timings = _timing.time_steps({"engine": engine_op, "callback": callback_path,
                                  "packed": packed_path, "torch": torch_direct},
                                 steps, repeats, warmup=2)
    return {k: (v.median, v.best) for k, v in timings.items()}


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=5, quick_steps=4, quick_repeats=2,
                              extra=lambda p: p.add_argument("--batch", type=int, default=32,
                                                             help="samples per process per step (default 32)"))
    import megengine.distributed as dist

    print(_timing.machine_line())
    warmup = 2 if args.quick else 5
    steps = args.steps * 2
    run = lambda n, distributed: dist.launcher(  # noqa: E731
        _train_throughput, n_gpus=n, device_type="cpu", timeout=600)(args.batch, steps, warmup, distributed)
    # the 1- and 2-process runs take turns, repeat by repeat, so that load from other processes
    # (these machines are shared) hits both alike; each repeat is one sample of each
    ones, twos, ceilings = [], [], []
    for _ in range(args.repeats):
        ones.append(run(1, False)[0])
        twos.append(2 * min(run(2, True)))  # the slowest rank paces the group
        ceilings.append(sum(run(2, False)))  # two independent trainings: no communication
    one, two, ceiling = (statistics.median(v) for v in (ones, twos, ceilings))
    print(f"\nLeNet (PyTorchModule extractor + M.Linear), batch {args.batch} per process, {steps} steps "
          f"after {warmup} warm-up, one thread per process; median of {args.repeats} runs (best):")
    print(f"  1 process  : {one:8.1f} samples/s  ({max(ones):.1f})")
    print(f"  2 processes: {two:8.1f} samples/s  ({max(twos):.1f})")
    print(f"  2 processes without communication (what this machine allows): {ceiling:8.1f} samples/s "
          f"({max(ceilings):.1f})")
    print(f"  scaling efficiency sps(2) / (2 sps(1)) = {two / (2 * one):.2f}  "
          f"(of the best runs: {max(twos) / (2 * max(ones)):.2f}); against the machine's ceiling: "
          f"{two / ceiling:.2f}")
    _timing.flush()

    (timings, _) = dist.launcher(_allreduce_timings, n_gpus=2, device_type="cpu",
                                 timeout=600)(args.steps, args.repeats)
    torch_ms = timings["torch"][0]
    print(f"\nall-reduce of a 10 MB float32 gradient between 2 processes (gloo), ms "
          f"(median of {args.repeats} x {args.steps}; best):")
    for name, label in (("torch", "torch.distributed.all_reduce (direct)"),
                        ("engine", "F.distributed.all_reduce_sum"),
                        ("callback", "make_allreduce_cb(\"mean\"), one gradient"),
                        ("packed", "packed bucket (copy, all-reduce)")):
        median, best = timings[name]
        ratio = median / torch_ms
        line = f"  {label:40s} {median:8.2f}  ({best:.2f})  {ratio:5.2f}x"
        if name != "torch":
            line += "  " + _timing.verdict(ratio, 1.10)
        print(line)


if __name__ == "__main__":
    main()
