"""Time to the first batch of a DataLoader over a RandomSampler of a large dataset (MegEngine/
swin-transformer's loader samples a 60M-long one) against the floor, numpy's permutation of the
same length, in the same process, as a ratio.

    python benchmarks/bench_sampler.py [--steps N] [--repeats R] [--quick] [--samples N]

The floor is what any sampler must pay (one random permutation of the epoch); what a sampler
adds on top (listing the epoch as Python ints cost 3x the floor and 2.8 GB at 60M) is the
ratio's excess. Each variant is checked to draw the same first batch from the same seed.
"""
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402

from megengine.data import DataLoader  # noqa: E402
from megengine.data.dataset import Dataset  # noqa: E402
from megengine.data.sampler import RandomSampler  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


class _Long(Dataset):
    """``n`` samples that all are the same small image: only the sampling costs."""

    def __init__(self, n):
        self.n, self.image = n, np.zeros((3, 8, 8), np.float32)

    def __getitem__(self, index):
        return self.image, np.int32(index % 10)

    def __len__(self):
        return self.n


def main():
    def extra(parser):
        parser.add_argument("--samples", type=int, default=None,
                            help="dataset length (default 20M; --quick: 2M)")

    args = _timing.parse_args(__doc__, steps=1, repeats=5, quick_steps=1, quick_repeats=1,
                              extra=extra)
    n = args.samples or (2_000_000 if args.quick else 20_000_000)
    print(_timing.machine_line())
    ds = _Long(n)

    def first_batch():
        loader = DataLoader(ds, RandomSampler(ds, batch_size=2, seed=1), num_workers=0)
        return next(iter(loader))[1]

    def floor():
        return np.random.RandomState(1).permutation(n)[:2]

    if list(first_batch()) != [i % 10 for i in floor()]:
        sys.exit("the sampler and the floor draw different first batches; not timing")
    times = _timing.time_steps({"loader": first_batch, "floor": floor}, args.steps, args.repeats,
                               warmup=1)
    a, b = times["loader"], times["floor"]
    print(f"first batch of {n:,} samples: DataLoader(RandomSampler) {a.median:8.1f} ms  "
          f"np.random.permutation {b.median:8.1f} ms  ratio {a.median / b.median:5.2f}x "
          f"(best-of ratio {a.best / b.best:5.2f}x)")
    _timing.flush()


if __name__ == "__main__":
    main()
