"""The fuzzer's misuse mode (``--misuse``): a drawn case's call of a public megengine.functional
function is replayed with one argument broken at a time, the way users break them, and what the
function did is classified.

The call is found by a profile hook: the first public function of ``megengine/functional`` that
the case's code calls directly, with the arguments it received (cases that call none, such as
modules and optimizers, are skipped). The breaks (`breaks`): a tensor replaced by None or a
string, given a dimension more or less, a mismatched last dimension, or integer values where it
is float; an int replaced by a string, a float, a list, a huge or a negative value; a string by
an unknown mode; a sequence of ints given an entry more or fewer, a string or a negative entry;
one tensor of a list of them replaced by None or given a dimension less. The classes:

- "clear": a TypeError, ValueError, IndexError, NotImplementedError or RuntimeError raised by
  a ``raise`` of megengine's own code whose message names the function or the broken argument;
- "unnamed": such an error whose message names neither (a tensor's constructor refusing a
  string: the user learns what, not where);
- "internal": any other error (AttributeError, KeyError, an AssertionError, ...), or one raised
  inside numpy or torch in their words (numpy's "operands could not be broadcast together");
- "accepted": the call returned; upstream may accept it too (a broadcast, an int for a float),
  which only upstream itself can judge, so these are listed, not failed;
- "hang": no answer within `HANG_S` seconds (a crash ends the run: the last op printed is it).
"""
import collections
import inspect
import os
import signal
import sys
import traceback
import warnings

import numpy as np

import megengine as mge
from megengine.core.tensor import Tensor

from .gen import Check

_MGE_DIR = os.path.dirname(os.path.abspath(mge.__file__)) + os.sep
_FUNCTIONAL_DIR = os.path.join(_MGE_DIR, "functional") + os.sep
CLEAR_TYPES = (TypeError, ValueError, IndexError, NotImplementedError, RuntimeError)
HANG_S = 20


class Call:
    """A captured call: the public function ``fn`` and its arguments by parameter name."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args
        self.params = inspect.signature(fn).parameters

    def run(self, args):
        """Call the function with ``args`` (every parameter's value, as captured)."""
        pos, kw = [], {}
        for name, p in self.params.items():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                pos.append(args[name])
            elif p.kind == p.VAR_POSITIONAL:
                pos.extend(args[name])
            elif p.kind == p.KEYWORD_ONLY:
                kw[name] = args[name]
            else:
                kw.update(args[name])
        return self.fn(*pos, **kw)


def _is_this(f, code, local):
    """Whether function ``f`` runs ``code`` with the free variables in ``local`` (the functions
    an op factory makes share one code and differ in their closures)."""
    if getattr(f, "__code__", None) is not code:
        return False
    cells = zip(code.co_freevars, f.__closure__ or ())
    return all(local.get(name, c) is c.cell_contents for name, c in cells)


def capture(case):
    """The `Call` of the first public megengine.functional function that ``case``'s code calls
    directly (on contiguous copies of its inputs), or None (it calls none, or the call fails)."""
    found = []

    def hook(frame, event, arg):
        if found or event != "call":
            return
        code = frame.f_code
        if not os.path.abspath(code.co_filename).startswith(_FUNCTIONAL_DIR) \
                or code.co_name.startswith("_") or frame.f_back is None \
                or os.path.abspath(frame.f_back.f_code.co_filename).startswith(_MGE_DIR):
            return
        local = dict(frame.f_locals)
        fn = next((f for k, f in frame.f_globals.items() if not k.startswith("_")
                   and _is_this(f, code, local)), None)
        if fn is not None:
            found.append(Call(fn, {k: local[k] for k in inspect.signature(fn).parameters
                                   if k in local}))

    xs = [mge.tensor(a, dtype=a.dtype) for a in case.inputs]
    old = sys.getprofile()
    sys.setprofile(hook)
    try:
        case.mge_fn(*xs)
    except Exception:  # noqa: BLE001 (a case upstream refuses: nothing valid to break)
        return None
    finally:
        sys.setprofile(old)
    return found[0] if found else None


def _tensor(a, like):
    return mge.tensor(a, dtype=a.dtype, device=like.device)


def _as_int32(a):
    """``a`` rounded to int32 values; a nan or an infinity (a drawn case may hold them: the log of a
    negative) becomes 0 and a value past int32's range its bound, where numpy's cast would warn
    "invalid value encountered in cast" and give an undefined value."""
    info = np.iinfo(np.int32)
    r = np.round(a.astype(np.float64))
    return np.clip(np.where(np.isnan(r), 0, r), info.min, info.max).astype(np.int32)


def _tensor_breaks(t):
    if isinstance(t, mge.Parameter) or np.dtype(t.dtype).metadata:
        return []  # (a quantized tensor: its own mode's business)
    a = t.numpy()
    out = [("None", None), ("a string", "x")]
    if a.ndim and a.shape[-1]:
        out.append(("a dimension less", _tensor(np.ascontiguousarray(a[..., 0]), t)))
        out.append(("last dimension +1",
                    _tensor(np.concatenate([a, a[..., :1]], axis=-1), t)))
    out.append(("an extra dimension of 3", _tensor(np.repeat(a[..., None], 3, -1), t)))
    if a.dtype.kind == "f":
        out.append(("int32 values", _tensor(_as_int32(a), t)))
    return out


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def breaks(value):
    """[(what, broken value)] for one argument's ``value`` (empty: nothing to break)."""
    if isinstance(value, Tensor):
        return _tensor_breaks(value)
    if _is_int(value):
        v = int(value)
        return [("a string", str(v)), ("a float", v + 0.5), ("a list", [v, v]),
                ("huge", v + 64), ("negative", -3)]
    if isinstance(value, float):
        return [("a string", str(value))]
    if isinstance(value, str):
        return [("an unknown string", "no_such_" + value)]
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        kind = type(value)
        return [("an entry more", kind(list(value) + [1])), ("an entry fewer", kind(value[:-1])),
                ("a string entry", kind(["1"] + list(value[1:]))),
                ("a negative entry", kind([-3] + list(value[1:])))]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        kind, last = type(value), value[-1]
        out = [("None entry", kind(list(value[:-1]) + [None]))]
        if last.ndim and last.shape[-1] and not np.dtype(last.dtype).metadata:
            less = _tensor(np.ascontiguousarray(last.numpy()[..., 0]), last)
            out.append(("an entry with a dimension less", kind(list(value[:-1]) + [less])))
        return out
    return []


def _describe(v):
    if isinstance(v, Tensor):
        return f"Tensor{tuple(v.shape)} {np.dtype(v.dtype)}"
    if isinstance(v, (list, tuple)) and any(isinstance(e, Tensor) for e in v):
        return "[" + ", ".join(_describe(e) for e in v) + "]"
    return repr(v)


def _names_it(msg, call, arg):
    m = msg.lower()
    return any(w.lower() in m for w in (call.fn.__name__, arg) if w)


def classify(exc, call, arg):
    """"clear", "unnamed" or "internal" for the error ``exc`` of ``call`` with argument ``arg``
    broken. An error is megengine's own when its last frame is megengine's and a ``raise``
    statement: a line that calls numpy or torch raises their words."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = bool(frames) and os.path.abspath(frames[-1].filename).startswith(_MGE_DIR) \
        and (frames[-1].line or "").lstrip().startswith("raise")
    if not (isinstance(exc, CLEAR_TYPES) and ours):
        return "internal"
    return "clear" if _names_it(str(exc), call, arg) else "unnamed"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_broken(call, arg, broken):
    """(class, first line of the error or "") of ``call`` with argument ``arg`` set to
    ``broken``."""
    args = dict(call.args)
    args[arg] = broken
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            call.run(args)
    except _Hang:
        return "hang", f"no answer in {HANG_S} s"
    except Exception as e:  # noqa: BLE001 (what the function did is the finding)
        line = (str(e).strip().splitlines() or [""])[0]
        return classify(e, call, arg), f"{type(e).__name__}: {line}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return "accepted", ""


def misuse_case(case):
    """[(class, description)] of ``case``'s call with each argument broken in each way; empty
    where the case calls no public functional function (or a `Check`)."""
    if isinstance(case, Check):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call = capture(case)
    if call is None:
        return []
    out = []
    for arg, value in call.args.items():
        default = call.params[arg].default
        for what, broken in breaks(value):
            if broken is None and default is None:
                continue  # (None is the argument's default: not a break)
            cls, msg = run_broken(call, arg, broken)
            desc = f"{call.fn.__module__.replace('megengine.', '')}.{call.fn.__name__}: " \
                   f"{arg}={_describe(value)} -> {what}"
            out.append((cls, desc + (f": {msg}" if msg else "")))
    return out


def misuse(names, seeds, start=0):
    """Run the misuse mode on ``seeds`` cases of each op; {name: (counter of classes,
    {class: [descriptions]})}."""
    from .registry import draw  # (registry imports every case file)

    report = {}
    for name in names:
        counts, found = collections.Counter(), collections.defaultdict(list)
        for s in range(start, start + seeds):
            try:
                results = misuse_case(draw(name, s))
            except Exception as e:  # noqa: BLE001 (the generator's crash)
                results = [("fuzzer crash", f"seed {s}: {type(e).__name__}: {e}")]
            for cls, desc in results:
                counts[cls] += 1
                if desc not in found[cls]:
                    found[cls].append(desc)
        report[name] = (counts, dict(found))
    return report
