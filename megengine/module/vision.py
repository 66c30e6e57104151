"""Image augmentation layers (upstream's module/vision.py): additive noise, emboss, sharpen, contrast.

Inputs are NCHW batches. Random choices come from a per-layer :class:`~.random.RNG`
(``seed=None``: the global generator that ``megengine.random.seed`` sets).
"""
import numbers

import numpy as np

from .. import functional as F
from ..core.tensor import Tensor
from ..random.rng import RNG
from .module import Module

__all__ = [
    "AdditiveGaussianNoise", "AdditiveLaplaceNoise", "AdditivePoissonNoise", "Emboss", "Sharpen",
    "LinearContrast",
]


def _check_seed(seed):
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return seed


def _check_tensor(inp, what):
    if not isinstance(inp, Tensor):
        raise TypeError(f"{what}: expected input is megengine.Tensor, but got {type(inp)}")


def _value_range(dtype):
    """(min, middle, max) of ``dtype``'s values, as upstream's augmenters use them."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return float(info.min), 0.0, float(info.max)
    if dtype.kind == "u":
        info = np.iinfo(dtype)
        return info.min, info.min + 0.5 * info.max, info.max
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        return info.min, -0.5, info.max
    if dtype.kind == "b":
        return 0, None, 1
    raise TypeError(f"cannot estimate the value range of dtype {dtype}")


def _back_to_dtype(out, dtype):
    """Float results back to an integer/bool input's dtype, clipped to its range."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return out > 0.5
    if dtype.kind in "ui" or dtype == np.float16:
        low, _, high = _value_range(dtype)
        return F.clip(out, low, high).astype(dtype)
    return out


class _AdditiveNoise(Module):
    """Adds ``self.sample(shape)``: one noise map per image shared by its channels
    (``per_channel=False``) or one per channel (``per_channel=True``)."""

    def __init__(self, per_channel=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        self._per_channel = per_channel
        self._seed = _check_seed(seed)
        self._rng = RNG(seed)

    @property
    def per_channel(self):
        return self._per_channel

    @per_channel.setter
    def per_channel(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"per_channel must be True or False, got {value!r}")
        self._per_channel = value

    @property
    def seed(self):
        return self._seed

    @seed.setter
    def seed(self, seed):
        if seed is None:
            raise TypeError("seed must be an int")
        self._seed = _check_seed(seed)
        self._rng = RNG(seed)

    def forward(self, inp):
        _check_tensor(inp, type(self).__name__)
        if self._per_channel:
            noise = self.sample(inp.shape)
        else:
            if inp.ndim != 4:
                raise ValueError(f"{type(self).__name__}: per_channel=False needs a 4-d image "
                                 f"batch, got shape {inp.shape}")
            # an "nhwc" tensor shows its NCHW shape too (megengine.core.format)
            n, _, h, w = inp.shape
            noise = self.sample((n, 1, h, w))
            noise = F.broadcast_to(noise, inp.shape)
        return inp + noise._to(inp.device)

    def sample(self, size):
        raise NotImplementedError(f"{type(self).__name__} must define sample(size)")


class AdditiveGaussianNoise(_AdditiveNoise):
    """Add N(mean, std**2) noise."""

    def __init__(self, mean=0.0, std=1.0, per_channel=False, seed=None):
        super().__init__(per_channel, seed)
        self.mean = float(mean)
        self.std = float(std)

    def sample(self, size):
        return self._rng.normal(self.mean, self.std, size)


class AdditiveLaplaceNoise(_AdditiveNoise):
    """Add Laplace noise of location ``mean`` and scale ``std`` (as upstream names them: the
    density is ``exp(-|x - mean| / std) / (2 std)``), drawn by inverting the CDF."""

    def __init__(self, mean=0.0, std=1.0, per_channel=False, seed=None):
        super().__init__(per_channel, seed)
        self.mean = float(mean)
        self.std = float(std)

    def sample(self, size):
        eps = float(np.finfo(np.float32).eps)
        u = self._rng.uniform(eps - 1, 1, size)  # open at -1, so log(1 - |u|) stays finite
        return self.mean - self.std * F.sign(u) * F.log(1 - F.abs(u))


class AdditivePoissonNoise(_AdditiveNoise):
    """Add Poisson(lam) noise (non-negative integers, as float)."""

    def __init__(self, lam=1.0, per_channel=False, seed=None):
        super().__init__(per_channel, seed)
        self.lam = float(lam)

    def sample(self, size):
        return self._rng.poisson(self.lam, size)


class _Blur3x3(Module):
    """Convolves each channel of a reflect-padded NCHW batch with a 3x3 kernel blended
    between the identity (``alpha`` 0) and an effect kernel (``alpha`` 1)."""

    _IDENTITY = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float64)

    def __init__(self, alpha, seed=None):
        super().__init__()
        self.alpha = alpha
        self.seed = _check_seed(seed)
        self._rng = RNG(seed)

    def _value(self, param, name):
        """A number as it is; a tuple (a, b) as a fresh draw from U(a, b)."""
        if isinstance(param, bool):
            raise TypeError(f"{type(self).__name__}: {name} cannot be a bool")
        if isinstance(param, numbers.Real):
            return float(param)
        if isinstance(param, tuple):
            if len(param) != 2:
                raise ValueError(f"{type(self).__name__}: {name} as a tuple must be (low, high), "
                                 f"got {param!r}")
            return float(self._rng.uniform(param[0], param[1], (1,)).numpy()[0])
        raise TypeError(f"{type(self).__name__}: {name} must be a number or a (low, high) "
                        f"tuple, got {param!r}")

    def kernel(self):
        """The 3x3 kernel of this call (random parameters drawn now)."""
        alpha = self._value(self.alpha, "alpha")
        return (1 - alpha) * self._IDENTITY + alpha * self._effect()

    def forward(self, inp):
        _check_tensor(inp, type(self).__name__)
        if inp.ndim != 4:  # any format label: an "nhwc" tensor is its NCHW tensor
            raise ValueError(f"{type(self).__name__}: expects an NCHW batch, got shape "
                             f"{inp.shape}")
        c = inp.shape[1]
        weight = Tensor(np.broadcast_to(self.kernel().astype(np.float32), (c, 1, 1, 3, 3)).copy(),
                        device=inp.device)
        x = inp if np.dtype(inp.dtype).kind == "f" else inp.astype("float32")
        padded = F.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        return _back_to_dtype(F.conv2d(padded, weight, groups=c), inp.dtype)


class Emboss(_Blur3x3):
    """Emboss each channel and alpha-blend with the input.

    Args:
        alpha: visibility of the embossed image (0: the input only, 1: the embossed image
            only); a number, or a tuple (a, b) drawn from U(a, b) at each call.
        strength: emboss strength (sane values in [0, 2)); a number or a tuple as ``alpha``.
        seed: seed of this layer's random draws.
    """

    def __init__(self, alpha, strength, seed=None):
        super().__init__(alpha, seed)
        self.strength = strength

    def _effect(self):
        s = self._value(self.strength, "strength")
        return np.array([[-1 - s, -s, 0], [-s, 1, s], [0, s, 1 + s]], np.float64)


class Sharpen(_Blur3x3):
    """Sharpen each channel and alpha-blend with the input.

    Args:
        alpha: visibility of the sharpened image, a number or a (a, b) tuple as in Emboss.
        lightness: brightness of the sharpened image (sane values in [0.5, 2)).
        seed: seed of this layer's random draws.
    """

    def __init__(self, alpha, lightness, seed=None):
        super().__init__(alpha, seed)
        self.lightness = lightness

    def _effect(self):
        lightness = self._value(self.lightness, "lightness")
        return np.array([[-1, -1, -1], [-1, 8 + lightness, -1], [-1, -1, -1]], np.float64)


class LinearContrast(Module):
    """Scale each value's distance from the dtype's middle by ``alpha``: ``127 + alpha * (v -
    127)`` for uint8 (clipped to [0, 255]), ``alpha * v`` for floats (middle 0).

    Args:
        alpha: a number, or a tuple (a, b): one draw from U(a, b) per image (per channel
            with ``per_channel``) at each call.
        per_channel: draw alpha per channel instead of per image.
        seed: seed of this layer's random draws.
    """

    def __init__(self, alpha, per_channel=False, seed=None):
        super().__init__()
        self.alpha = alpha
        self.per_channel = per_channel
        self.seed = _check_seed(seed)
        self._rng = RNG(seed)

    def _alphas(self, shape):
        if isinstance(self.alpha, bool):
            raise TypeError("LinearContrast: alpha cannot be a bool")
        if isinstance(self.alpha, numbers.Real):
            return F.full(shape, float(self.alpha))
        if isinstance(self.alpha, tuple) and len(self.alpha) == 2:
            return self._rng.uniform(self.alpha[0], self.alpha[1], shape)
        raise TypeError(f"LinearContrast: alpha must be a number or a (low, high) tuple, got "
                        f"{self.alpha!r}")

    def forward(self, inp):
        _check_tensor(inp, "LinearContrast")
        if inp.ndim != 4:
            raise ValueError(f"LinearContrast: expects an NCHW batch, got shape {inp.shape}")
        n, c = inp.shape[:2]
        alpha = self._alphas((n, c, 1, 1) if self.per_channel else (n, 1, 1, 1))
        dtype = np.dtype(inp.dtype)
        if dtype == np.uint8:
            out = F.clip(127 + (inp.astype("float32") - 127) * alpha, 0, 255)
            return out.astype("uint8")  # truncates, as upstream's lookup table does
        _, middle, _ = _value_range(dtype)
        if dtype.kind in "ui":
            middle = int(middle)
        out = middle + (inp.astype("float32") - middle) * alpha
        return out.astype(dtype)
