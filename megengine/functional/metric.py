"""F.metric: metrics of predictions against labels (upstream's `megengine.functional.metric`)."""
from ..core._trace_option import as_int, is_dim, is_int
from ..core.ops import ArgumentError, ShapeError
from ._args import _tensor
from .math import topk as _topk  # the parameter `topk` (upstream's name) shadows F.topk

__all__ = ["topk_accuracy"]


def topk_accuracy(logits, target, topk=1):
    """Fraction of rows whose ``target`` class is among the ``k`` largest ``logits``.

    ``logits``: (N, C) scores; ``target``: (N,) class indices. ``topk`` an int (or a sequence of
    one int) gives one float32 scalar Tensor; a longer sequence gives a list of them, one per k,
    as upstream 1.13's.
    """
    logits, target = _tensor(logits), _tensor(target)
    if logits.ndim != 2:
        raise ValueError(f"topk_accuracy: logits must be (N, C), got shape {logits.shape}")
    if target.shape != (logits.shape[0],) or target.dtype.kind not in "iu":
        raise ShapeError(f"topk_accuracy: target must hold {logits.shape[0]} integer class "
                         f"indices (N,), got shape {target.shape} and dtype {target.dtype}")
    # (sizes from x.shape in a dumpable trace: their values, guards)
    ks = [topk] if is_int(topk) or not hasattr(topk, "__iter__") else list(topk)
    if not all(is_int(k) for k in ks):
        raise TypeError(f"topk_accuracy: topk must be an int or a sequence of ints, got {topk!r}")
    ks = [as_int(k) if is_dim(k) else k for k in ks]
    if not ks or any(not 1 <= int(k) <= logits.shape[1] for k in ks):  # (upstream: its
        # kernel's RuntimeError)
        raise ArgumentError(f"topk_accuracy: each k must be in [1, {logits.shape[1]}], got "
                            f"{topk}")
    _, pred = _topk(logits, max(ks), descending=True)  # (N, maxk), best first
    hit = pred == target.astype(pred.dtype).reshape(-1, 1)
    n = logits.shape[0]
    accs = [hit[:, :int(k)].astype("float32").sum() / n for k in ks]
    return accs[0] if len(accs) == 1 else accs


# Upstream's metric module also holds these functions of F at module level (F.metric.abs, ...)
from .elemwise import abs, maximum, minimum  # noqa: E402,F401
from .tensor import broadcast_to, transpose  # noqa: E402,F401
