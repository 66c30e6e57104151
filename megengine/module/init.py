"""`megengine.module.init`: fill a tensor in place with constants or random values.

Random values come from megengine.random's generator, as upstream's initialisers draw from
``megengine.random``: ``megengine.random.seed(n)`` makes initialization reproducible, numpy's
global RNG (``np.random.seed``) does not reach it, and an unseeded process (each launched rank)
starts from weights of its own. Every function writes into the tensor's
existing storage (``Tensor._reset``), so views of it (e.g. a torch module sharing it) see the values.
"""
import math
from typing import Optional, Tuple, Union

import numpy as np

from ..core import _rng as _core_rng
from ..core.tensor import Tensor
from ..random.rng import _floor_into_range

__all__ = [
    "fill_", "zeros_", "ones_", "uniform_", "normal_", "calculate_gain",
    "calculate_fan_in_and_fan_out", "calculate_correct_fan", "xavier_uniform_",
    "xavier_normal_", "msra_uniform_", "msra_normal_",
]


def _check_tensor(tensor, what):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what}: expected a Tensor to initialize, got {type(tensor).__name__}")


def fill_(tensor: Tensor, val: Union[float, int]) -> None:
    """Fill ``tensor`` with ``val``."""
    _check_tensor(tensor, "fill_")
    tensor._reset(np.full(tensor.shape, val, dtype=tensor.dtype))


def zeros_(tensor: Tensor) -> None:
    """Fill ``tensor`` with 0."""
    fill_(tensor, 0)


def ones_(tensor: Tensor) -> None:
    """Fill ``tensor`` with 1."""
    fill_(tensor, 1)


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0) -> None:
    """Fill ``tensor`` with samples of U(a, b); ``a >= b`` raises AssertionError, as
    upstream's."""
    _check_tensor(tensor, "uniform_")
    # as upstream's (its megengine.random.uniform asserts low < high), not numpy's ValueError
    assert a < b, (f"uniform_: U(a, b) is not defined when a >= b (got a={a}, b={b}); "
                   "pass a < b, or use fill_ for a constant")
    draw = _core_rng.generator.uniform(a, b, size=tensor.shape)
    dtype = np.dtype(tensor.dtype)
    if dtype.kind == "f" and a < b and draw.size:
        # rounded down into [a, b) as megengine.random.uniform does: rounding to nearest made
        # b itself a value (for float16 about one draw in 2**12 of U(0, 1))
        tensor._reset(_floor_into_range(draw, a, b, dtype))
    else:
        tensor._reset(draw.astype(dtype))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> None:
    """Fill ``tensor`` with samples of N(mean, std**2): ``mean + std * z`` for standard normal
    draws ``z``, so a negative ``std`` mirrors them, as upstream's (numpy refuses it)."""
    _check_tensor(tensor, "normal_")
    draw = mean + std * _core_rng.generator.standard_normal(size=tensor.shape)
    tensor._reset(np.asarray(draw).astype(tensor.dtype))


def calculate_gain(nonlinearity: str, param: Optional[Union[int, float]] = None) -> float:
    """The recommended gain for a nonlinearity: 1 for linear/conv/sigmoid, 5/3 for tanh,
    sqrt(2) for relu, sqrt(2 / (1 + slope**2)) for leaky_relu (slope ``param``, default 0.01)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope must be a number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(
        f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
        f"{list(linear) + ['tanh', 'relu', 'leaky_relu']}"
    )


def calculate_fan_in_and_fan_out(tensor: Tensor) -> Tuple[float, float]:
    """(fan_in, fan_out) of a weight in NCHW layout: (in, out) times the receptive field.

    As upstream, a 5-d (or larger) weight is a grouped conv weight ``(G, O/G, I/G, kh, kw)``:
    the group dimension is ignored, so fan_out is ``O/G * kh * kw`` (PyTorch would use ``O``).
    """
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ValueError(
            f"calculate_fan_in_and_fan_out: needs a tensor with at least 2 dims, got shape {shape}"
        )
    if len(shape) >= 5:
        shape = shape[1:]
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_correct_fan(tensor: Tensor, mode: str) -> float:
    """fan_in or fan_out of ``tensor``, chosen by ``mode`` ("fan_in" or "fan_out")."""
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"calculate_correct_fan: mode {mode!r} is not 'fan_in' or 'fan_out'")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def xavier_uniform_(tensor: Tensor, gain: float = 1.0) -> None:
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    uniform_(tensor, -a, a)


def xavier_normal_(tensor: Tensor, gain: float = 1.0) -> None:
    """Glorot normal: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def msra_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in",
                  nonlinearity: str = "leaky_relu") -> None:
    """He uniform: U(-bound, bound) with bound = gain * sqrt(3 / fan), gain from
    ``calculate_gain(nonlinearity, a)`` and fan from ``mode``."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(calculate_correct_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    uniform_(tensor, -bound, bound)


def msra_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in",
                 nonlinearity: str = "leaky_relu") -> None:
    """He normal: N(0, std**2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(calculate_correct_fan(tensor, mode))
    normal_(tensor, 0.0, std)
