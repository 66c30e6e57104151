"""Does memory grow over many training steps? The hybrid LeNet trained N steps, memory read along.

Trains the guide's hybrid LeNet step of bench_pytorch_module.py (torch extractor in
``PyTorchModule`` + ``M.Linear`` + cross entropy + GradManager + SGD, one thread) for
``--steps`` steps (default 5000), in the training loop ``--loop`` names (default ``plain``):

* ``plain``: the step as it is;
* ``modes``: the batch size cycles through ``--batch``, ``--batch`` - 2 and ``--batch`` - 4,
  the network switches to ``eval()`` after each step for an evaluation forward under
  ``torch.no_grad()`` and back to ``train()``, and every 100 steps its state dict goes
  through ``mge.save``/``mge.load`` into the network again;
* ``trace``: the step under ``jit.trace(symbolic=True)``, the batch size cycling as in
  ``modes`` (one program per size: the cache stays at three);
* ``amp``: the step under ``amp.autocast()`` with a ``GradScaler``;
* ``all``: each of them in turn, the verdict over all.

and reads, at step ``--start`` (default 500: caches, pools and numpy's small-array free lists
have reached their working size by then) and at every ``--every`` steps after it, after a
``gc.collect()``:

* Python-side memory traced by ``tracemalloc`` (numpy's array buffers included: numpy reports
  them to tracemalloc);
* the number of objects the garbage collector tracks;
* the process's resident memory (RSS, ``/proc/self/statm``), which also sees torch's
  allocations (tracemalloc does not).

The aim is **no growth** between step ``--start`` and the last step, judged with tolerances
that no leak of one object per step can stay under (so a leak fails, and the allocator's
jitter does not):

* traced memory: < 8 bytes per step on average (the smallest Python object is 16 bytes; one
  kept per step would be >= 16 bytes per step);
* gc-tracked objects: < 0.01 per step (one container kept per step would be 1 per step);
* RSS: < 1 MiB over the whole run (pages move as glibc's malloc arenas grow to their working
  size and are trimmed; measured 0.0-0.1 MiB over 4500 steps; a kept torch tensor per step,
  >= ~300 bytes with its TensorImpl, would pass 1 MiB within 4500 steps).

Prints each reading and the verdict; exits with status 1 when memory grew.

    python benchmarks/bench_memory_growth.py [--loop plain|modes|trace|amp|all] [--steps 5000]
        [--start 500] [--every 1000] [--batch 8]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import argparse  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import bench_pytorch_module as bench  # noqa: E402  (the same network, weights, data and step)

TRACED_BYTES_PER_STEP = 8
OBJECTS_PER_STEP = 0.01
RSS_MIB = 1.0


def rss_mib():
    return _timing.rss_bytes() / 2 ** 20


def reading():
    gc.collect()
    return tracemalloc.get_traced_memory()[0], len(gc.get_objects()), rss_mib()


def modes_loop(batch):
    """The hybrid LeNet's step with three batch sizes, an evaluation forward in eval mode under
    ``torch.no_grad()`` after each step, and the state dict saved and loaded every 100 steps."""
    import torch

    net, gm, opt, next_batch = _hybrid(batch)
    count = [0]

    def step():
        x, y = next_batch()
        net.train()
        with gm:
            loss = bench.F.loss.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step().clear_grad()
        net.eval()
        with torch.no_grad():
            net(x)
        count[0] += 1
        if count[0] % 100 == 0:
            f = io.BytesIO()
            bench.mge.save(net.state_dict(), f)
            f.seek(0)
            net.load_state_dict(bench.mge.load(f))
        return float(loss.numpy())

    return step


def trace_loop(batch):
    """The hybrid LeNet's step under ``jit.trace(symbolic=True)``, three batch sizes."""
    from megengine import jit

    net, gm, opt, next_batch = _hybrid(batch)

    @jit.trace(symbolic=True)
    def train(x, y):
        with gm:
            loss = bench.F.loss.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    return lambda: float(train(*next_batch()).numpy())


def amp_loop(batch):
    """The hybrid LeNet's step under ``amp.autocast()`` with a ``GradScaler``."""
    from megengine import amp

    net, gm, opt, next_batch = _hybrid(batch, sizes=1)
    scaler = amp.GradScaler()

    def step():
        x, y = next_batch()
        with gm:
            with amp.autocast():
                loss = bench.F.loss.cross_entropy(net(x), y)
            scaler.backward(gm, loss)
        opt.step().clear_grad()
        return float(loss.numpy())

    return step


def _hybrid(batch, sizes=3):
    """bench_pytorch_module's hybrid LeNet, its GradManager and SGD, and its batches cut to
    ``sizes`` batch sizes (``batch``, ``batch`` - 2, ...), cycled."""
    extractor, w, b = bench.initial_weights()
    net = bench.LeNet(extractor)
    net.mge_classifier.weight.set_value(w)
    net.mge_classifier.bias.set_value(b)
    gm = bench.GradManager().attach(net.parameters())
    opt = bench.optim.SGD(net.parameters(), lr=bench.LR)
    xs, ys = bench.make_data(batch)
    batches = [(bench.mge.tensor(x[:batch - 2 * (i % sizes)]),
                bench.mge.tensor(y[:batch - 2 * (i % sizes)], dtype="int32"))
               for i, (x, y) in enumerate(zip(xs, ys))]
    return net, gm, opt, bench.cycle(batches)


LOOPS = {
    "plain": lambda batch: bench.fork_variant(bench.initial_weights(), bench.make_data(batch)),
    "modes": modes_loop,
    "trace": trace_loop,
    "amp": amp_loop,
}


def measure(name, step, args):
    """Run ``step`` ``args.steps`` times, printing the readings; the checks' list."""
    tracemalloc.start()
    t0 = time.perf_counter()
    first = None
    print(f"{name}: hybrid LeNet, batch {args.batch}, {args.steps} training steps:")
    print(f"  {'step':>6s} {'traced KiB':>11s} {'gc objects':>11s} {'RSS MiB':>9s} {'seconds':>8s}")
    # the sums of the first and the last 50 losses (a loop with several batch sizes is judged
    # on means; a list of losses would itself grow by 32 bytes a step)
    first_sum = last_sum = 0.0
    for i in range(1, args.steps + 1):
        loss = step()
        if i <= 50:
            first_sum += loss
        elif i > args.steps - 50:
            last_sum += loss
        if i == args.start or (i > args.start and (i - args.start) % args.every == 0) \
                or i == args.steps:
            traced, objects, rss = reading()
            first = first or (traced, objects, rss)
            print(f"  {i:6d} {traced / 1024:11.1f} {objects:11d} {rss:9.1f} "
                  f"{time.perf_counter() - t0:8.1f}", flush=True)
    tracemalloc.stop()
    before, after = first_sum / 50, last_sum / 50
    if not after < before:
        sys.exit(f"bench_memory_growth: {name}: the loss did not fall (mean {before:.4f} over "
                 f"the first 50 steps, {after:.4f} over the last 50); the steps did not train")
    n = args.steps - args.start
    traced, objects, rss = (b - a for a, b in zip(first, (traced, objects, rss)))
    checks = [
        ("traced memory", f"{traced / 1024:+.1f} KiB = {traced / n:+.2f} B/step",
         traced / n < TRACED_BYTES_PER_STEP, f"< {TRACED_BYTES_PER_STEP} B/step"),
        ("gc-tracked objects", f"{objects:+d} = {objects / n:+.4f} /step",
         objects / n < OBJECTS_PER_STEP, f"< {OBJECTS_PER_STEP} /step"),
        ("RSS", f"{rss:+.2f} MiB", rss < RSS_MIB, f"< {RSS_MIB} MiB"),
    ]
    print(f"{name}: growth from step {args.start} to step {args.steps} (aim: no growth):")
    for check, value, ok, tolerance in checks:
        print(f"  {check:20s} {value:32s} tolerance {tolerance:14s} {'ok' if ok else 'GREW'}")
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=[*LOOPS, "all"], default="plain",
                        help="the training loop (default plain)")
    parser.add_argument("--steps", type=int, default=5000, help="training steps (default 5000)")
    parser.add_argument("--start", type=int, default=500,
                        help="the step growth is measured from (default 500)")
    parser.add_argument("--every", type=int, default=1000, help="a reading every N steps")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not 0 < args.start < args.steps or args.every < 1:
        parser.error("need 0 < --start < --steps and --every >= 1")
    if args.steps <= 100:
        parser.error("need --steps > 100 (the losses of the first and the last 50 steps are "
                     "compared)")
    if args.batch < 5:
        parser.error("need --batch >= 5 (the loops cut batches of --batch - 4 samples)")
    import torch

    torch.set_num_threads(1)
    print(_timing.machine_line())
    names = list(LOOPS) if args.loop == "all" else [args.loop]
    grew = [name for name in names
            if not all(ok for _, _, ok, _ in measure(name, LOOPS[name](args.batch), args))]
    if grew:
        sys.exit(f"bench_memory_growth: memory grew over the run in {', '.join(grew)} (see "
                 "above)")
    print("aim no growth: met")


if __name__ == "__main__":
    main()
