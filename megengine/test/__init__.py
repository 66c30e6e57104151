"""Upstream's test helpers (`megengine.test.assertTensorClose`), which 0.x-era tests import."""
import numpy as np

__all__ = ["assertTensorClose"]


def _host(v):
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "__cuda_array_interface__") and hasattr(v, "get"):  # CuPy: np.asarray refuses
        return v.get()
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def _match_special(v0, v1, mask0, mask1, what):
    if np.any(mask0) or np.any(mask1):
        if not np.array_equal(mask0, mask1):
            raise AssertionError(f"{what} values at different places: v0={v0} v1={v1}")
        v0[mask0] = 0
        v1[mask0] = 0


def assertTensorClose(v0, v1, *, max_err: float = 1e-6, allow_special_values: bool = False,
                      name=None):
    """Assert that ``v0`` and ``v1`` (Tensors or arrays) have one dtype and shape and agree
    elementwise to ``max_err``, measured relative to ``max(|v0|, |v1|, 1)`` (so small values
    are compared absolutely). NaN and +-inf must sit at the same places when
    ``allow_special_values``; otherwise their presence fails."""
    __tracebackhide__ = True  # pytest shows the caller's line
    a, b = _host(v0), _host(v1)
    if a.dtype != b.dtype:
        raise AssertionError(f"Two Tensor must have same dtype, but the inputs are {a.dtype} "
                             f"and {b.dtype}")
    if a.shape != b.shape:
        raise AssertionError(f"Two tensor must have same shape({a.shape} v.s. {b.shape})")
    a = np.array(a, dtype=np.float32)
    b = np.array(b, dtype=np.float32)
    if allow_special_values:
        _match_special(a, b, np.isnan(a), np.isnan(b), "nan")
        _match_special(a, b, a == np.inf, b == np.inf, "inf")
        _match_special(a, b, a == -np.inf, b == -np.inf, "-inf")
    elif not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise AssertionError(f"non-finite values (pass allow_special_values=True to compare "
                             f"them): v0={a} v1={b}")
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1.0)
    err = np.abs(a - b) / scale
    bad = err > max_err
    if bad.any():
        idx = tuple(int(i[0]) for i in np.nonzero(bad))
        label = "tensor" if name is None else f"tensor {name}"
        raise AssertionError(f"{label} not equal: shape={a.shape} nonequal_idx={idx} "
                             f"v0={a[idx]} v1={b[idx]} err={err[idx]}")
