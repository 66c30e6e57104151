"""The fuzzer's special-values mode (``python -m tests.fuzz --special``): a drawn case whose
inputs include float32 tensors is run again with one to three elements of each replaced by
IEEE's special values (NaN, +inf, -inf, 0.0 or -0.0, each at most once per tensor, so that no
new ties appear), to find NaN and infinities lost or made on the way: a BLAS call that skips a
zero factor, a fast path that clamps, a reduction that drops a NaN. `converted_inputs`'s runner
runs it; the oracle is torch's op on the same float32 values:

- an output's dtype is torch's (or the case's), its NaN are where torch's are, its infinities
  are torch's, and its finite values are within the case's tolerance of torch's;
- where torch refuses the values (a probability of NaN for ``binary_cross_entropy``) there is
  nothing to compare: "torch refuses", accepted, whatever megengine does;
- both raising is "error" (a matrix of NaN whose SVD does not converge: numpy's error here);
  megengine alone raising is a Mismatch. Gradients are not compared here: `run_special_gradients`
  (``--special-grad``) puts the special values among the output gradients instead;
- the ops whose float inputs are coordinates (`COORDINATE_OPS`: sampling maps, warp matrices,
  boxes, offsets) are skipped: a NaN position has no pixel to read, and each kernel reads
  another one.

The values replaced are picked from the case's own values by a generator seeded with their
bytes, so a seed reproduces its case."""
import warnings
import zlib

import numpy as np

from .converted_inputs import Mode, run_converted
from .gen import Check, Mismatch, _close, run

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)
COORDINATE_OPS = {"remap", "warp_affine", "warp_perspective", "roi_align", "roi_pooling",
                  "deformable_conv2d", "deformable_psroi_pooling", "nms", "correlation"}


class _Special(Mode):
    name = "special"
    non_finite = True
    triage = False  # (the float32 path is the one under test)
    errors = ()  # (float32 stays float32: no refusal of a dtype to accept)
    reruns_refused = False  # (a case upstream refuses is about its arguments, not its values)

    def dtypes(self, rng, xs):
        return [np.dtype(np.float32)] * len(xs)

    def convert(self, x, dt):
        q = np.array(x, dtype=np.float32, copy=True)
        if q.size == 0:
            return q
        rng = np.random.default_rng(zlib.crc32(q.tobytes()))
        count = min(q.size, int(rng.integers(1, 4)))
        picked = [SPECIALS[i] for i in rng.permutation(4)[:count]]  # (at most one zero)
        if 0.0 in picked and rng.random() < 0.5:
            picked[picked.index(0.0)] = -0.0
        q.flat[rng.choice(q.size, count, replace=False)] = picked
        return q

    def values(self, q, dt):
        return q.astype(np.float64)

    def refusal(self, msg):
        return False

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        got, dt = y.numpy(), np.dtype(y.dtype)
        if dt != want_dtype and dt != want_value.dtype:
            raise Mismatch(f"{what} dtype {dt}, expected {want_dtype}")
        if got.dtype.kind in "fc" and want_value.dtype.kind in "fc":
            g, w = (np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else a
                    for a in (got, want_value))
            inf = np.isinf(g.astype(np.float64)) | np.isinf(w.astype(np.float64))
            if (inf & (g != w)).any():
                i = tuple(np.argwhere(inf & (g != w))[0])
                raise Mismatch(f"{what}: {g[i]} where torch has {w[i]} at {i}")
        _close(got, want_value, tol, what)


SPECIAL = _Special()


def _linear_resizing(desc):
    """Linear resizing, whose NaN and infinities follow a rule other than torch's, judged (not
    compared): it reads upstream 1.13's taps, whose weight-0 neighbours of a NaN or infinite
    pixel make NaN where torch's taps do not read it (special seed 208 checked equal to
    upstream's), and its gradient scatters by upstream's backward taps (`OTHER_GRADIENT_RULES`).
    Nearest resizing is compared."""
    return desc.split("(")[0] == "interpolate" and "mode=nearest" not in desc


# ops that order values, whose NaN this fork puts after every number in both orders (numpy's
# order: docs/compatibility.rst) and torch first when descending
_ORDERING = {"argsort", "sort", "sort_nan", "top_k", "topk", "topk_no_sort"}
_TOP_CLASSES = {"accuracy", "topk_accuracy"}  # (the classes of the largest logits)


def _nan_ordered_otherwise(case, desc):
    """Whether ``case`` orders a NaN that the mode puts among its inputs descending: judged,
    not compared (the order of NaN is this fork's documented one, torch's another)."""
    op = desc.split("(")[0]
    if not (op in _TOP_CLASSES or op in _ORDERING and "descending=True" in desc):
        return False
    return any(np.isnan(SPECIAL.convert(a, np.float32)).any()
               for a in case.inputs if a.dtype == np.float32)


def run_special(case, rng):
    """Run ``case`` with special values among its float32 inputs (`run_converted`); "torch
    refuses" where torch's op raises on them; "refused" where F.svd refuses them (LAPACK may
    never return on an infinity); "other rule" for linear resizing (`_linear_resizing`) and
    NaN ordered descending (`_nan_ordered_otherwise`)."""
    desc = getattr(case, "desc", "")
    if desc.split("(")[0] in COORDINATE_OPS:
        return "skip"
    if _linear_resizing(desc) or _nan_ordered_otherwise(case, desc):
        return "other rule"
    try:
        return run_converted(case, rng, SPECIAL)
    except Mismatch as e:
        if "megengine accepted what torch refuses" in str(e):
            return "torch refuses"
        if "megengine raised" in str(e) and "(torch: " in str(e):
            return "error"  # (both raise)
        if "megengine raised LinAlgError: svd:" in str(e) and "NaN or infinity" in str(e):
            return "refused"  # (on purpose, before LAPACK hangs: docs/compatibility.rst)
        raise


# The ops whose gradients of a NaN or infinite output gradient follow a rule other than torch's,
# judged (the mode below does not compare them):
OTHER_GRADIENT_RULES = {
    **dict.fromkeys(("max", "min"), "upstream 1.13 selects the extremes (F.max of [1, 2, 3, 4] "
                    "with gradient NaN gives [0, 0, 0, NaN], measured); torch's amax and amin "
                    "multiply by a mask, NaN everywhere"),
    "norm": "ord=inf or -inf over an axis selects the extreme |x| as the max reduction does; "
            "torch's vector_norm multiplies by a mask (other orders are compared)",
    "pow": "an exponent of 0 times an infinite gradient is NaN, as upstream 1.13's (measured: "
           "pow([0.5, 2], [0, 0]) with gradients [inf, NaN] gives [NaN, NaN]); torch's is 0",
    **dict.fromkeys(("complex", "polar"), "torch's complex gradients multiply inf by an "
                    "imaginary 0 (NaN); upstream has no complex numbers"),
    "roi_pooling": "the oracle's empty bin is img[:, 0, 0] * 0, which sends a NaN to pixel (0, 0)",
    "tqt_forward": "the oracle multiplies by the mask of the unclipped values (NaN * 0)",
    "interpolate": "linear taps of weight 0 are upstream's backward kernel's (a clamped last "
                   "pixel's neighbour at weight 0 takes a NaN gradient too: upstream_calls "
                   "--odd-gradients); torch's reads itself (nearest resizing is compared)",
    "ctc_loss": "not judged: a NaN gradient of a sample reaches each of its (frame, label) "
                "pairs here, the reachable ones in torch's, and more in upstream's (frames past "
                "the sample's length too: measured)",
    **dict.fromkeys(("warp_perspective", "warp_affine", "remap"),
                    "the taps of upstream 1.13's kernels (300 drawn warps and remaps with NaN "
                    "and infinite gradients give its NaN and infinities: measured); torch's "
                    "grid sampler reads other taps of weight 0"),
    "roi_align": "not judged: upstream 1.13's gradient puts its NaN at other places from run to "
                 "run (two runs of 300 drawn cases differ in 74: measured); torch's grid sampler "
                 "multiplies the taps of weight 0, as here",
    **dict.fromkeys(("correlation", "deformable_conv2d", "deformable_psroi_pooling"),
                    "not judged: sampling taps of weight 0, which torch's kernels multiply by "
                    "the gradient and these skip; upstream's not measured"),
}


def _other_rule(desc):
    """`OTHER_GRADIENT_RULES`' reason for the case ``desc``, or None where it is compared."""
    op = desc.split("(")[0]
    if op == "interpolate" and not _linear_resizing(desc) or \
            op == "norm" and "ord=inf" not in desc and "ord=-inf" not in desc:
        return None
    return OTHER_GRADIENT_RULES.get(op)


def _special_gradient(d):
    return SPECIAL.convert(d, np.float32) if d.dtype == np.float32 else d


def _gradient_close(a, b, tol, what):
    """`gen.close` of input gradients where an output gradient was NaN or infinite: NaN or
    infinities where torch's are (NaN for inf or the reverse is arithmetic: inf - inf in one
    formula, inf in another, as the normalisations' gradient, whose NaN upstream 1.13's
    shares: measured), infinities that both have equal, the rest within tolerance."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and b.dtype.kind == "f" and a.shape == b.shape:
        odd_a, odd_b = ~np.isfinite(a), ~np.isfinite(b)
        apart = (odd_a != odd_b) | (np.isinf(a) & np.isinf(b) & (a != b))
        if apart.any():
            i = tuple(np.argwhere(apart)[0])
            raise Mismatch(f"{what}: {a[i]} where torch's gradient is {b[i]} at {i} (NaN "
                           "or infinities lost or made)")
        a, b = np.where(odd_a, 0, a), np.where(odd_b, 0, b)
    _close(a, b, tol, what)


def run_special_gradients(case, rng):
    """Run ``case`` (its inputs as drawn) with NaN, infinities and zeros among its float32
    output gradients (`SPECIAL`'s choice), against torch's input gradients (`_gradient_close`):
    a NaN or infinite output gradient reaches the inputs that the output read, and no other (a
    product by a 0/1 mask instead of a select makes NaN of every input a 0 meets; upstream's and
    torch's kernels select). "other rule" for `OTHER_GRADIENT_RULES`."""
    if isinstance(case, Check):
        return "skip"
    if _other_rule(getattr(case, "desc", "")):
        return "other rule"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(case, rng, output_grad=_special_gradient, grad_close=_gradient_close)
