"""Hand-written numpy oracles as torch functions for `gen.Case`: the value from a float64 numpy
function, the gradient from central finite differences of a float64 numpy function."""
import numpy as np
import torch


def fd_vjp(fn, args, i, g, eps=1e-6, stacked=False):
    """``g . d fn(*args) / d args[i]`` by central differences in float64 (exact up to rounding
    for functions linear within ``eps`` of the point: keep drawn points away from kinks).
    ``stacked``: ``fn`` maps a leading axis of ``args[i]`` to a leading axis of its output
    (every perturbation in one call)."""
    args = [np.array(a, np.float64) if isinstance(a, np.ndarray) else a for a in args]
    x = args[i]
    g = np.asarray(g, np.float64)
    if stacked:
        k = x.size
        eye = np.eye(k).reshape((k,) + x.shape) * eps
        args[i] = np.concatenate([x + eye, x - eye])
        y = np.asarray(fn(*args), np.float64)
        return ((y[:k] - y[k:]) * g).reshape(k, -1).sum(1).reshape(x.shape) / (2 * eps)
    out = np.zeros(x.shape, np.float64)
    for j in np.ndindex(x.shape):
        keep = x[j]
        x[j] = keep + eps
        hi = np.asarray(fn(*args), np.float64)
        x[j] = keep - eps
        lo = np.asarray(fn(*args), np.float64)
        x[j] = keep
        out[j] = ((hi - lo) * g).sum() / (2 * eps)
    return out


class _Oracle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, *ts):
        value_fn, grad_fns, out_dtype, _ = spec
        arrs = [t.detach().numpy().astype(np.float64) if t.dtype.is_floating_point
                else t.detach().numpy() for t in ts]
        ctx.spec, ctx.arrs, ctx.dtypes = spec, arrs, [t.dtype for t in ts]
        y = np.asarray(value_fn(*arrs))
        return torch.from_numpy(np.ascontiguousarray(y.astype(out_dtype or ts[0].detach().numpy().dtype)))

    @staticmethod
    def backward(ctx, g):
        _, grad_fns, _, stacked = ctx.spec
        grads = []
        for i, need in enumerate(ctx.needs_input_grad[1:]):
            if not need:
                grads.append(None)
                continue
            fn = grad_fns[i] if isinstance(grad_fns, (list, tuple)) else grad_fns
            grads.append(torch.from_numpy(fd_vjp(fn, ctx.arrs, i, g.numpy(), stacked=stacked))
                         .to(ctx.dtypes[i]))
        return (None, *grads)


def numpy_oracle(value_fn, grad_fn=None, out_dtype=None, stacked=False):
    """A torch function of tensors computing ``value_fn`` on float64 numpy arrays (output cast
    to ``out_dtype``, default the first input's dtype); its gradient in input ``i`` is the
    finite-difference VJP of ``grad_fn`` (one function, or one per input; default
    ``value_fn``): a function whose gradient upstream defines by another formula (the exact
    points behind rounded ones) passes that formula here. ``stacked``: see `fd_vjp`."""
    spec = (value_fn, value_fn if grad_fn is None else grad_fn, out_dtype, stacked)
    return lambda *ts: _Oracle.apply(spec, *ts)
