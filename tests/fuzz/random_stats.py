"""Statistical tests at a fixed false-alarm rate for the random fuzz family: a Kolmogorov-Smirnov
bound against an exact CDF, z-tests of means, a bounded-variable (Hoeffding) test and
frequency tests, each raising Mismatch with what was drawn."""
import math

import numpy as np
import torch

from .gen import Mismatch

# Every test below fails a correct sampler with probability below ~1e-8, so 2000 seeds of a
# dozen ops (a few tests each) give a false alarm well under one run in a thousand.
Z = 6.0  # sigmas of a z-test of normal samples (two-sided tail ~2e-9)
LOG_TAIL = math.log(2 / 2e-9)  # Bernstein's bound at the same false-alarm rate
KS_T = 3.2  # sqrt(n) * D above this: DKW bound 2 exp(-2 t^2) ~ 2.5e-9


def ks(sample, cdf, what, rounding="nearest"):
    """Kolmogorov-Smirnov distance of a float32 (or float16) ``sample`` from the exact ``cdf`` (a numpy-vectorised
    function in float64). DKW: P(sqrt(n) sup|F_n - F| > t) <= 2 exp(-2 t^2). A float32 value v
    stands for the true draws that round to it, in (v - ulp/2, v + ulp/2): the empirical CDF
    at v is compared with the CDF at the top of that interval, just below v with its bottom, so
    rounding (a gamma sample underflowing to 0, a range a few float32 steps wide) is no alarm.
    ``rounding="down"``: v stands for [v, next(v)) (megengine.random.uniform's rule)."""
    x = np.sort(np.asarray(sample).ravel())
    if x.dtype not in (np.float16, np.float32):  # integers (poisson's counts) step like float32
        x = x.astype(np.float32)
    t = x.dtype.type
    n = x.size
    if n == 0:
        return
    x64 = x.astype(np.float64)
    top = (x64 + np.nextafter(x, t(np.inf)).astype(np.float64)) / 2
    bottom = (x64 + np.nextafter(x, t(-np.inf)).astype(np.float64)) / 2
    if rounding == "down":
        top, bottom = np.nextafter(x, t(np.inf)).astype(np.float64), x64
    upper = np.searchsorted(x, x, side="right") / n  # the empirical CDF at v
    lower = np.searchsorted(x, x, side="left") / n  # ... just below v
    d = max(np.max(upper - np.asarray(cdf(top), np.float64)),
            np.max(np.asarray(cdf(bottom), np.float64) - lower))
    if math.sqrt(n) * d > KS_T:
        raise Mismatch(f"{what}: KS distance {d:.4g} over {n} samples (limit "
                       f"{KS_T / math.sqrt(n):.4g}): not the documented distribution")


def discrete_ks(sample, pmf_support, pmf, what):
    """KS for an integer-valued sample against probabilities ``pmf`` on ``pmf_support``."""
    cdf_vals = np.cumsum(pmf)

    def cdf(x):
        idx = np.searchsorted(pmf_support, np.floor(x), side="right") - 1  # last k <= x
        return np.where(idx < 0, 0.0, cdf_vals[np.clip(idx, 0, len(cdf_vals) - 1)])
    ks(sample, cdf, what)


def z_mean(sample, mean, var, what, slack=0.0):
    """|sample mean - mean| within Z standard errors (the variance ``var`` is exact)."""
    x = np.asarray(sample, np.float64).ravel()
    if x.size == 0:
        return
    se = math.sqrt(var / x.size)
    if abs(x.mean() - mean) > Z * se + slack:
        raise Mismatch(f"{what}: mean {x.mean():.6g} over {x.size} samples, expected {mean:.6g} "
                       f"(standard error {se:.3g})")


def bernstein(total, expect, var, n, what):
    """Bernstein: a sum of n independent values in [0, 1] with variance ``var`` each strays from
    its expectation by t with probability <= 2 exp(-t^2 / (2 n var + 2 t / 3)); valid for any n
    and any p (a normal approximation is not, for a rare event over few trials)."""
    t = LOG_TAIL / 3 + math.sqrt((LOG_TAIL / 3) ** 2 + 2 * n * var * LOG_TAIL)
    if abs(total - expect) > t:
        raise Mismatch(f"{what}: total {total:.6g} over {n}, expected {expect:.6g} (Bernstein "
                       f"limit {t:.3g})")


def bounded_mean(values, mean, var, what):
    """The mean of values in [0, 1] with exact ``mean`` and ``var``, by Bernstein's bound."""
    v = np.asarray(values, np.float64).ravel()
    if v.size:
        bernstein(v.sum(), v.size * mean, var, v.size, what)


def counts(observed, probs, trials, what):
    """Each count ~ Binomial(trials, p), by Bernstein's bound (a category of p = 0 never
    occurs)."""
    for k, (o, p) in enumerate(zip(np.asarray(observed, np.float64),
                                   np.asarray(probs, np.float64))):
        if p == 0 and o:
            raise Mismatch(f"{what}: category {k} of probability 0 seen {o:.0f} times")
        bernstein(o, trials * p, p * (1 - p), trials, what + f" category {k}")


# ----- exact CDFs (torch in float64; scipy is not installed) -----

def normal_cdf(mean, std):
    return lambda x: 0.5 * (1 + torch.special.erf(
        torch.tensor((x - mean) / (std * math.sqrt(2)), dtype=torch.float64)).numpy())


def gamma_cdf(k, theta):
    """Regularised lower incomplete gamma P(k, x / theta)."""
    return lambda x: torch.special.gammainc(
        torch.tensor(np.broadcast_to(k, np.shape(x)), dtype=torch.float64),
        torch.tensor(np.maximum(x, 0) / theta, dtype=torch.float64)).numpy()


def poisson_pmf(lam):
    """Support 0..K (K covers all but ~1e-12 of the mass) and the probabilities."""
    top = int(lam + 12 * math.sqrt(lam) + 30)
    ks_ = torch.arange(top + 1, dtype=torch.float64)
    logp = torch.distributions.Poisson(torch.tensor(float(lam), dtype=torch.float64)).log_prob(ks_)
    return ks_.numpy(), logp.exp().numpy()
