"""F.utils: upstream's metric and checking helpers (F.topk_accuracy, F.utils._assert_equal)."""
import numpy as np

from ..core._trace_option import as_int, is_dim, is_int
from ..core.tensor import Tensor
from ._args import _tensor
from .math import topk as _topk  # the parameter `topk` (upstream's name) shadows F.topk

__all__ = ["topk_accuracy"]


def topk_accuracy(logits, target, topk=1):
    """Fraction of rows whose ``target`` class is among the ``k`` largest ``logits``.

    ``logits``: (N, C) scores; ``target``: (N,) class indices. ``topk`` an int gives one float32
    scalar Tensor; a tuple of ints gives a list of them, one per k (upstream's signature).
    """
    logits, target = _tensor(logits), _tensor(target)
    if logits.ndim != 2:
        raise ValueError(f"topk_accuracy: logits must be (N, C), got shape {logits.shape}")
    if target.shape != (logits.shape[0],) or target.dtype.kind not in "iu":
        raise ValueError(f"topk_accuracy: target must hold {logits.shape[0]} integer class "
                         f"indices (N,), got shape {target.shape} and dtype {target.dtype}")
    # (sizes from x.shape in a dumpable trace: their values, guards)
    ks = [as_int(topk)] if is_int(topk) else [as_int(k) if is_dim(k) else k for k in topk]
    if not ks or any(not 1 <= int(k) <= logits.shape[1] for k in ks):
        raise ValueError(f"topk_accuracy: each k must be in [1, {logits.shape[1]}], got {topk}")
    _, pred = _topk(logits, max(ks), descending=True)  # (N, maxk), best first
    hit = pred == target.astype(pred.dtype).reshape(-1, 1)
    n = logits.shape[0]
    accs = [hit[:, :int(k)].astype("float32").sum() / n for k in ks]
    return accs[0] if is_int(topk) else accs



def _assert_equal(expect, actual, *, maxerr=0.0001, verbose=False):
    """Check that two tensors are equal and return ``expect``.

    Upstream's traceable assert: the error per element is
    ``|expect - actual| / max(min(|expect|, |actual|), 1)`` (absolute below 1, relative above)
    and a RuntimeError is raised when the largest one exceeds ``maxerr``.
    """
    e, a = _tensor(expect), _tensor(actual)
    if e.shape != a.shape:
        raise RuntimeError(f"_assert_equal: shapes differ: expect {e.shape}, actual {a.shape}")
    ev, av = e.numpy().astype(np.float64), a.numpy().astype(np.float64)
    err = np.abs(ev - av) / np.maximum(np.minimum(np.abs(ev), np.abs(av)), 1.0)
    worst = float(err.max()) if err.size else 0.0
    if not worst <= maxerr:  # also catches NaN
        at = np.unravel_index(int(np.argmax(np.where(np.isnan(err), np.inf, err))), err.shape)
        raise RuntimeError(f"_assert_equal: error {worst:g} exceeds maxerr={maxerr:g} at index "
                           f"{tuple(int(i) for i in at)}: expect {ev[at]!r}, actual {av[at]!r}")
    if verbose:
        print(f"_assert_equal: max error {worst:g} (maxerr={maxerr:g})")
    return expect if isinstance(expect, Tensor) else e
