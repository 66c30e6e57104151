"""F.utils: upstream's checking helper (F.utils._assert_equal) and the older spelling
F.utils.topk_accuracy of F.metric.topk_accuracy."""
import numpy as np

from ..core.tensor import Tensor
from ._args import _tensor
from .metric import topk_accuracy

__all__ = ["topk_accuracy"]


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


# Upstream's utils module also holds these functions of F at module level (F.utils.copy, ...)
from .elemwise import abs, maximum, minimum  # noqa: E402,F401
from .tensor import copy, ones, zeros  # noqa: E402,F401
