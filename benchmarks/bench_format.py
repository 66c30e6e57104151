"""Tensor format labels: what ``amp.convert_module_format`` (NHWC) costs or saves on this engine.

What it prints, for the default device (cpu0 here; gpu0 where CUDA is usable), in ms per call
(median over repeats, the variants taking turns call by call; the fastest call in brackets):

* a small CNN's training step (conv 3x3 -> batch norm -> relu twice, average pooling, linear,
  cross entropy, SGD), batch 8, 32 channels, 32x32:
  ``plain`` (the NCHW model, no label anywhere), ``nhwc`` (the model and the batch converted:
  labels and channels-last storage, which ATen's kernels then use), ``labels only`` (the same
  labels with NCHW storage: the label machinery alone); ratios against ``plain``;
* the label machinery on tiny ops: 50 elementwise ops on a (1, 4, 2, 2) tensor with the
  dispatcher hook absent (a process that never labelled a tensor), present with unlabelled
  tensors, and on an "nhwc" tensor; ratios against the first.

Before timing, the variants' losses must agree (else it exits with an error).

    python benchmarks/bench_format.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import sys  # noqa: E402

import numpy as np  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402
from megengine import amp  # noqa: E402
from megengine.core import dispatch  # noqa: E402
from megengine.core import format as _fmt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


class Net(M.Module):
    def __init__(self, c=32):
        super().__init__()
        self.conv1, self.bn1 = M.Conv2d(c, c, 3, padding=1, bias=False), M.BatchNorm2d(c)
        self.conv2, self.bn2 = M.Conv2d(c, c, 3, padding=1, bias=False), M.BatchNorm2d(c)
        self.fc = M.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _step_fn(model, image, label, hook):
    train_step = _timing.mge_training_step(model, optim.SGD(model.parameters(), lr=1e-3))

    def step():
        dispatch._format_hook = hook  # each variant runs with its own dispatcher state
        return train_step(image, label)

    return step


def _twin(state):
    m = Net()
    m.load_state_dict({k: v.copy() for k, v in state.items()})
    return m


def _tiny_ops(x):
    def run():
        y = x
        for _ in range(25):
            y = y * 1.0001 + 0.5
        return y
    return run


def main():
    args = _timing.parse_args(__doc__, steps=20, repeats=5, quick_steps=3, quick_repeats=2)
    print(_timing.machine_line())
    rng = np.random.RandomState(0)
    batch = rng.rand(8, 32, 32, 32).astype(np.float32)
    label = mge.tensor(rng.randint(0, 10, 8), dtype="int32")
    state = Net().state_dict()

    # the tiny-op baseline is a process state without the hook: measure it first
    small = mge.tensor(rng.rand(1, 4, 2, 2).astype(np.float32))
    assert dispatch._format_hook is None, "a label was made before the baseline"
    labelled = mge.tensor(small.numpy(), format="nchw")  # installs the hook
    hook = dispatch._format_hook
    plain_ops, hooked_ops, labelled_ops = _tiny_ops(small), _tiny_ops(small), _tiny_ops(labelled)

    def without_hook():
        dispatch._format_hook = None
        return plain_ops()

    def with_hook():
        dispatch._format_hook = hook
        return hooked_ops()

    def on_labelled():
        dispatch._format_hook = hook
        return labelled_ops()

    image = mge.tensor(batch)
    plain = _step_fn(_twin(state), image, label, None)
    nhwc_model = amp.convert_module_format(_twin(state))
    nhwc = _step_fn(nhwc_model, amp.convert_tensor_format(mge.tensor(batch), inplace=False),
                    label, hook)
    label_model = _twin(state)
    for _, t in label_model.named_tensors():
        if t.ndim == 4:
            t.format = "nhwc"  # the label without the channels-last storage
    label_only = _step_fn(label_model, _labelled_nchw(batch), label, hook)
    assert nhwc_model.conv1.weight._data.transpose(0, 2, 3, 1).flags["C_CONTIGUOUS"]

    losses = [fn().item() for fn in (plain, nhwc, label_only)]
    if not np.allclose(losses, losses[0], rtol=1e-4):
        sys.exit(f"the variants disagree: losses {losses}")

    print(f"\nsmall CNN training step, batch 8, 32x32x32, device {image.device}")
    res = _timing.time_steps({"plain": plain, "nhwc": nhwc, "labels only": label_only},
                             args.steps, args.repeats)
    base = res["plain"]
    for name, t in res.items():
        print(f"  {name:12s} {t.median:8.2f} ms ({t.best:.2f})   "
              f"x plain {t.median / base.median:.3f} ({t.best / base.best:.3f})")

    print("\n50 elementwise ops on a (1, 4, 2, 2) tensor")
    res = _timing.time_steps({"no hook": without_hook, "hook, unlabelled": with_hook,
                              "hook, labelled": on_labelled}, args.steps * 5, args.repeats)
    base = res["no hook"]
    for name, t in res.items():
        print(f"  {name:17s} {t.median * 1e3:8.1f} us ({t.best * 1e3:.1f})   "
              f"x no hook {t.median / base.median:.3f} ({t.best / base.best:.3f})")
    dispatch._format_hook = hook
    _timing.flush()


def _labelled_nchw(batch):
    t = mge.tensor(batch)  # NCHW storage
    t.format = "nhwc"
    assert not _fmt.to_physical(t._data).flags["C_CONTIGUOUS"]
    return t


if __name__ == "__main__":
    main()
