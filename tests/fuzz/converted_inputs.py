"""The fuzzer's input-converting modes (``--quantized``, ``--int``, ``--float64``,
``--float16``): a drawn case whose inputs include float32 tensors is run again with those inputs
converted (to quantized tensors, to integer or bool tensors, to another float dtype) holding
values the case's float32 inputs round to, and megengine's outcome is checked against torch's
op on those values (in float32, or the mode's `Mode.oracle_dtype`). A `Mode` says how inputs are
converted and how a result or a refusal is judged; `run_converted` is the runner they share:

- each output is checked by the mode (its dtype and values against torch's);
- a TypeError (or what else the mode allows) of megengine's own that the mode recognizes as a
  refusal of the converted dtype is "refused", accepted;
- anything else (a wrong value or dtype, another error, a numpy warning about a cast) is a
  Mismatch. Gradients are not compared."""
import warnings

import numpy as np
import torch

import megengine as mge

from .gen import Check, Mismatch, _is_ours, case_layouts, flat, outputs, torch_outputs


class Mode:
    """How a mode converts inputs and judges the outcome (see `run_converted`)."""

    name = ""
    errors = (TypeError,)  # the exception types a refusal may have
    # whether a case that upstream refuses (``case.refuse``) is rerun: the refusal may be of
    # the float inputs the mode replaces (a shift of floats)
    reruns_refused = True
    # whether torch's outputs on the converted arrays themselves (their integer dtypes) are a
    # second oracle, given to `check` as ``native``
    native = False
    # the dtype of torch's tensors of the converted values (the oracle's precision)
    oracle_dtype = np.float32
    # whether a value mismatch reports what megengine's float32 path gives on the values
    triage = True
    # whether the mode's dtypes hold NaN and infinity (a case drawing them is rerun)
    non_finite = False

    def dtypes(self, rng, xs):
        """Target dtypes for the float32 arrays ``xs`` (one per array), or None to skip."""
        raise NotImplementedError

    def convert(self, x, dt):
        """``x`` held in dtype ``dt``: the array the converted tensor is made of."""
        raise NotImplementedError

    def values(self, q, dt):
        """The float64 values of converted array ``q`` of dtype ``dt`` (exact)."""
        raise NotImplementedError

    def dtype_name(self, dt):
        return str(np.dtype(dt))

    def refusal(self, msg):
        """True when error message ``msg`` says that the converted dtype is not taken."""
        raise NotImplementedError

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        """Raise Mismatch unless output ``y`` (a Tensor) has the values ``want_value`` (torch's
        result on the values, an array) and a dtype that fits ``want_dtype`` (torch's or the
        case's) and ``kept`` (the dtypes of the inputs left as they were); ``native``: torch's
        output on the converted arrays (see `native`), or None."""
        raise NotImplementedError


def snap(x, scale=1.0, zero_point=0, qmin=None, qmax=None):
    """``x`` on the grid of step ``scale`` about ``zero_point``: the integers, as float64. The
    values stay in ``x``'s range where a grid point is, and keep their signs (a step away from 0
    rather than 0), so that the case's domain holds (log's x > 0, a probability's [0, 1]);
    clipped to [qmin, qmax]."""
    x = x.astype(np.float64) / scale
    r = np.round(x)
    if x.size and np.ceil(x.min()) <= np.floor(x.max()):
        r = r.clip(np.ceil(x.min()), np.floor(x.max()))
    q = np.where((r == 0) & (x != 0), np.sign(x), r) + zero_point
    return q.clip(qmin, qmax) if qmin is not None else q


def _convert_inputs(rng, case, mode):
    """{input index: (dtype, converted array)} for the case's float32 inputs; None when it has
    none (or NaN or infinity, in a mode without them) or the conversion would tie values a
    tie-sensitive case keeps distinct."""
    idx = [i for i, a in enumerate(case.inputs) if a.dtype == np.float32]
    if not idx or not (mode.non_finite or all(np.isfinite(case.inputs[i]).all() for i in idx)):
        return None  # (NaN and infinity have no integer or quantized form)
    shared = rng.random() < 0.5  # one dtype for all: the same-dtype paths (q + q, concat)
    xs = [case.inputs[i] for i in idx]
    dts = mode.dtypes(rng, [np.concatenate([x.ravel() for x in xs])] if shared else xs)
    if dts is None:
        return None
    dts = dts * len(idx) if shared else dts
    out = {}
    for i, dt in zip(idx, dts):
        x, q = case.inputs[i], mode.convert(case.inputs[i], dt)
        if not case.bcast and np.unique(mode.values(q, dt)).size < np.unique(x).size:
            return None  # (ties that the two frameworks may break differently)
        out[i] = (dt, q)
    return out


def run_converted(case, rng, mode):
    """Run ``case`` with its float32 inputs converted by ``mode``; "skip" when it has none (or
    is a `Check`), "refused" for a clear refusal, else like `gen.run`."""
    if isinstance(case, Check) or (case.refuse and not mode.reruns_refused):
        return "skip"
    conv = _convert_inputs(rng, case, mode)
    if conv is None:
        return "skip"
    arrs = [conv[i][1] if i in conv else a for i, a in enumerate(case.inputs)]
    lays = case_layouts(rng, case, arrs)
    names = [mode.dtype_name(conv[i][0]) if i in conv else str(a.dtype)
             for i, a in enumerate(arrs)]
    desc = f"{case.desc} {mode.name}=[{', '.join(names)}] layouts=" + \
        ",".join(lay.name for lay in lays)

    ts = [torch.tensor(mode.values(lay.stored, conv[i][0]).astype(mode.oracle_dtype) if i in conv
                       else lay.stored) for i, lay in enumerate(lays)]
    tout, terr = torch_outputs(case, lays, ts)
    xs = [mge.tensor(lay.stored, dtype=conv[i][0] if i in conv else lay.stored.dtype)
          for i, lay in enumerate(lays)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ys = flat(case.mge_fn(*[lay.view(x) for lay, x in zip(lays, xs)]))
        except Exception as e:  # noqa: BLE001
            if isinstance(e, mode.errors) and _is_ours(e) and mode.refusal(str(e)):
                return "refused"
            if (case.refuse or terr is not None) and _is_ours(e):
                return "error"
            raise Mismatch(f"{desc}: megengine raised {type(e).__name__}: {e}"
                           + ("" if terr is None else f" (torch: {type(terr).__name__})")) from e
    # (a float cast's overflow is infinity, in a mode whose dtype holds it a value that the
    # check judges: torch's float16 op overflows where it does; an integer cast's is no value)
    casts = [str(w.message) for w in caught if "cast" in str(w.message)
             and not (mode.non_finite and "overflow" in str(w.message))]
    if casts:
        raise Mismatch(f"{desc}: numpy warned: {casts[0]}")
    kept = [a.dtype for i, a in enumerate(arrs) if i not in conv]
    natives = _native_outputs(case, lays) if mode.native else None
    for k, (y, tv, want) in enumerate(outputs(case, desc, ys, tout, terr)):
        what = f"{desc}: output {k}"
        tv = _rounded(case, y, _written(case, xs, tv))
        if tuple(y.shape) != tuple(tv.shape):
            raise Mismatch(f"{what} shape {tuple(y.shape)}, torch {tv.shape}")
        try:
            mode.check(y, tv, want, case.tol, what, kept, natives and natives[k])
        except Mismatch as e:
            if not mode.triage:
                raise
            raise Mismatch(f"{e}\n ({_float_path(case, lays, ts, k, y, mode)})") from None
    return "ok"


def _written(case, xs, tv):
    """torch's values ``tv`` as the input that ``case`` writes into stores them (`gen.Case`'s
    ``writes``): a bool tensor holds ``value != 0`` and an integer one the value truncated
    (wrapped by the integer mode's check); torch's op on the float values shows neither."""
    dt = None if case.writes is None else np.dtype(xs[case.writes].dtype)
    if dt is None or dt.metadata is not None or tv.dtype.kind != "f":
        return tv
    if dt == np.bool_:
        return tv != 0
    return np.trunc(tv) if dt.kind in "iu" else tv


def _rounded(case, y, tv):
    """torch's float values ``tv`` as an op that rounds its integer results stores them
    (`gen.Case`'s ``rounds``: upstream's Resize of int8/uint8 images rounds half away from zero
    and saturates); at a half (within 1e-3), either neighbour, since float32 arithmetic may land
    on either side of it."""
    dt = np.dtype(y.dtype)
    if not case.rounds or dt.kind not in "iu" or dt.metadata is not None or tv.dtype.kind != "f":
        return tv
    info = np.iinfo(dt)
    want = np.clip(np.sign(tv) * np.floor(np.abs(tv) + 0.5), info.min, info.max)
    got = y.numpy().astype(np.float64)
    near_half = np.abs(np.abs(tv) % 1 - 0.5) < 1e-3
    either = np.clip(np.floor(tv), info.min, info.max), np.clip(np.ceil(tv), info.min, info.max)
    return np.where(near_half & ((got == either[0]) | (got == either[1])), got, want)


def _native_outputs(case, lays):
    """torch's outputs (arrays) on the converted arrays in their own dtypes, or None where
    torch refuses them or gives another number of outputs."""
    with np.errstate(all="ignore"), warnings.catch_warnings():  # (oracles wrap in uint8)
        warnings.simplefilter("ignore")
        tout, terr = torch_outputs(case, lays, [torch.tensor(lay.stored) for lay in lays])
    if terr is not None:
        return None
    return [t.detach().to(_NUMPY_DTYPE.get(t.dtype, t.dtype)).numpy()
            if isinstance(t, torch.Tensor) else np.asarray(t) for t in flat(tout)]


_NUMPY_DTYPE = {torch.complex32: torch.complex64}  # (numpy has no complex32)


def _float_path(case, lays, ts, k, y, mode):
    """What megengine's float path gives on the same values (the triage a value mismatch
    needs: the converted path's fault, or the float path's at an edge the float cases miss)."""
    try:
        ours = flat(case.mge_fn(*[lay.view(mge.tensor(t.numpy())) for lay, t in
                                  zip(lays, ts)]))[k]
        mode.check(y, ours.numpy(), np.dtype(ours.dtype), case.tol, "")
        same = True
    except Mismatch:
        same = False
    except Exception as e:  # noqa: BLE001
        return f"megengine's float path on these values raises {type(e).__name__}"
    return ("megengine's float path on these values "
            + ("gives the same" if same else "agrees with torch"))

