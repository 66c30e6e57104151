"""Does memory grow over many training steps? The hybrid LeNet trained N steps, memory read along.

Trains the guide's hybrid LeNet step of bench_pytorch_module.py (torch extractor in
``PyTorchModule`` + ``M.Linear`` + cross entropy + GradManager + SGD, one thread) for
``--steps`` steps (default 5000) and reads, at step ``--start`` (default 500: caches, pools and
numpy's small-array free lists have reached their working size by then) and at every
``--every`` steps after it, after a ``gc.collect()``:

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

    python benchmarks/bench_memory_growth.py [--steps 5000] [--start 500] [--every 1000]
        [--batch 8]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import argparse  # noqa: E402
import gc  # noqa: E402
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
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reading():
    gc.collect()
    return tracemalloc.get_traced_memory()[0], len(gc.get_objects()), rss_mib()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="training steps (default 5000)")
    parser.add_argument("--start", type=int, default=500,
                        help="the step growth is measured from (default 500)")
    parser.add_argument("--every", type=int, default=1000, help="a reading every N steps")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not 0 < args.start < args.steps or args.every < 1:
        parser.error("need 0 < --start < --steps and --every >= 1")
    import torch

    torch.set_num_threads(1)
    print(_timing.machine_line())
    step = bench.fork_variant(bench.initial_weights(), bench.make_data(args.batch))
    tracemalloc.start()
    t0 = time.perf_counter()
    first = None
    print(f"hybrid LeNet, batch {args.batch}, {args.steps} training steps:")
    print(f"  {'step':>6s} {'traced KiB':>11s} {'gc objects':>11s} {'RSS MiB':>9s} {'seconds':>8s}")
    first_loss = None  # (a list of every loss would itself grow by 32 bytes per step)
    for i in range(1, args.steps + 1):
        loss = step()
        first_loss = first_loss or loss
        if i == args.start or (i > args.start and (i - args.start) % args.every == 0) \
                or i == args.steps:
            traced, objects, rss = reading()
            first = first or (traced, objects, rss)
            print(f"  {i:6d} {traced / 1024:11.1f} {objects:11d} {rss:9.1f} "
                  f"{time.perf_counter() - t0:8.1f}", flush=True)
    tracemalloc.stop()
    if not loss < first_loss:
        sys.exit(f"bench_memory_growth: the loss did not fall ({first_loss:.4f} -> "
                 f"{loss:.4f}); the steps did not train")
    n = args.steps - args.start
    traced, objects, rss = (b - a for a, b in zip(first, (traced, objects, rss)))
    checks = [
        ("traced memory", f"{traced / 1024:+.1f} KiB = {traced / n:+.2f} B/step",
         traced / n < TRACED_BYTES_PER_STEP, f"< {TRACED_BYTES_PER_STEP} B/step"),
        ("gc-tracked objects", f"{objects:+d} = {objects / n:+.4f} /step",
         objects / n < OBJECTS_PER_STEP, f"< {OBJECTS_PER_STEP} /step"),
        ("RSS", f"{rss:+.2f} MiB", rss < RSS_MIB, f"< {RSS_MIB} MiB"),
    ]
    print(f"growth from step {args.start} to step {args.steps} (aim: no growth):")
    for name, value, ok, tolerance in checks:
        print(f"  {name:20s} {value:32s} tolerance {tolerance:14s} {'ok' if ok else 'GREW'}")
    if not all(ok for _, _, ok, _ in checks):
        sys.exit("bench_memory_growth: memory grew over the run (see above)")
    print("aim no growth: met")


if __name__ == "__main__":
    main()
