"""What stopping in-place input writes before they happen would cost: the guide's LeNet extractor
called through PyTorchModule with a TorchFunctionMode watching every torch call for an in-place
write into an input (the guard the bridge does not have), against the plain call, same process.

    python benchmarks/bench_input_write_guard.py [--steps N] [--repeats R] [--quick]

The bridge notices a write into an input only after the call (torch's version counters), so a
module that starts writing on a later call changes the megengine tensor before the error
(docs/pytorch_embedding.rst, "In-place writes to inputs"). A TorchFunctionMode could refuse the
write first; this measures its price per forward call at batch 8 and 64 (paired call ratios per
round, see _timing.py). Before timing, the guard is checked to refuse ``x.relu_()`` on an input.
Thread counts are pinned to 1.
"""
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS: one thread

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import megengine as mge  # noqa: E402
from megengine.module.pytorch import PyTorchModule  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)
# the guide's extractor: the example's class, as bench_pytorch_module.py times it
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples"))
from lenet_pytorch import LeNet_Extract  # noqa: E402


class InputWriteGuard(TorchFunctionMode):
    """Refuses a torch call that writes in place (a name ending in ``_``, or ``out=``) into one
    of ``inputs``, before it runs."""

    def __init__(self, inputs):
        super().__init__()
        self.inputs = {id(t) for t in inputs}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("out", args[0] if args else None)
        if id(target) in self.inputs and (
                "out" in kwargs or getattr(func, "__name__", "").endswith("_")):
            raise RuntimeError(f"{func.__name__} would write into an input")
        return func(*args, **kwargs)


def _check_the_guard_refuses_a_write():
    x = torch.ones(3)
    with InputWriteGuard([x]):
        try:
            x.relu_()
        except RuntimeError:
            return
    sys.exit("the guard let x.relu_() through: nothing to measure")


def main():
    args = _timing.parse_args(__doc__, steps=50, repeats=15, quick_steps=10, quick_repeats=3)
    print(_timing.machine_line())
    _check_the_guard_refuses_a_write()
    wrap = PyTorchModule(LeNet_Extract())
    wrap.eval()
    for batch in (8, 64):
        x = mge.tensor(np.random.rand(batch, 1, 32, 32).astype("float32"))
        guard = InputWriteGuard([])  # (the inputs' torch views are made inside the call)

        def guarded():
            with guard:
                wrap(x)

        rounds = _timing.paired_rounds(guarded, lambda: wrap(x), args.steps, args.repeats)
        ratios = [r for r, _, _ in rounds]
        plain_us = 1e6 * float(np.median([t for _, _, tt in rounds for t in tt]))
        print(f"batch {batch}: guarded / plain call {_timing.describe_ratios(ratios)}; "
              f"plain call {plain_us:.0f} us")
        _timing.flush()


if __name__ == "__main__":
    main()
