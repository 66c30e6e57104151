"""Random tensors: the global generator behind `megengine.random.*`, `seed`, and `RNG` objects."""
import numbers

import numpy as np

from .. import device as _device
from ..core import _rng as _core_rng
from ..core._trace_option import is_dim, is_int, sizes_of
from ..core.dispatch import Op, apply, xp_of
from ..core.ops import ArgumentError, ArgumentTypeError, _size_item, move_array
from ..core.tensor import Tensor
from ..device import canonical_device, get_default_device

__all__ = ["seed", "RNG", "uniform", "normal", "gamma", "beta", "poisson", "exponential",
           "multinomial", "permutation", "shuffle"]

# megengine.random's own draws (and CPU dropout's) come from `_core_rng.generator`; seed()
# replaces it.
_global_seed = 0  # the last seed() (upstream's get_global_rng_seed reads it)


def seed(seed: int):
    """Make random draws reproducible on every device, as upstream's one seed does.

    Reseeds megengine.random's generator (module initialisers and dropout on the CPU draw from
    it too) and, when CUDA is usable, CuPy's generator on every visible GPU (dropout on a GPU
    draws there, on the device). So one ``seed(n)`` makes a model's initial weights and a
    training run repeatable on any device. numpy's global RNG (``np.random``, which data
    transforms draw from) is the program's own, as in upstream: ``seed`` leaves it alone; it
    does restart the stream each DataLoader iteration takes its workers' seeds from, so seeded
    workers draw from ``np.random`` what upstream's draw.
    ``megengine.random``'s own draws (``uniform``, ``normal``, ...) are made on the host and
    copied to their device, so after the same seed they are the same numbers on a CPU and on a
    GPU.
    """
    global _global_seed
    # upstream's seed is a uint64 (programs seed with int(time.time() * 1000), beyond 2**32)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        # (a TypeError / ValueError as upstream's: ArgumentTypeError is both)
        raise ArgumentTypeError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    seed = int(seed)
    _core_rng.generator = np.random.default_rng(seed)
    _core_rng.data_seeds = np.random.MT19937(seed)  # the DataLoader's worker seeds
    _global_seed = seed
    _seed_cuda_generators(seed)


def _seed_cuda_generators(seed):
    """Seed CuPy's per-device generators (each GPU has its own) from ``seed``."""
    if not _device.is_cuda_available():
        return
    cp = _device._cupy()
    for index in range(_device.get_device_count("gpu")):
        with cp.cuda.Device(index):
            cp.random.seed(seed)


def _shape(size, what):
    """Upstream's size rule: None means (1,); an int n means (n,)."""
    if size is None:
        return (1,)
    if is_int(size):
        size = (size,)
    if isinstance(size, np.ndarray) and size.ndim == 0 and size.dtype.kind in "iu":
        size = (int(size),)  # (a 0-d integer array, ``np.array(2)``: a count, as upstream's)
    if isinstance(size, Tensor):
        # upstream takes a shape tensor; a 0-d count (``mask.sum()``, as in the detection
        # programs' label sampling) is one dimension, as an int is
        if size.dtype.kind not in "iu":
            raise TypeError(f"{what}: a size tensor must hold integers, got dtype {size.dtype}")
        sizes = sizes_of(size)  # a shape tensor of a dumpable trace (a TracedModule's): SymDims
        size = size.tolist() if sizes is None else sizes.tolist()
        if not isinstance(size, list):
            size = (size,)
    try:
        items = None if isinstance(size, str) else list(size)
    except TypeError:
        items = None
    if items is not None:
        # a whole float (``n / 2`` of an even n) is its int, as upstream's int32 shape
        # conversion reads it; a fraction is refused (upstream truncated it silently); a 0-d
        # integer Tensor (``(mask.sum(), 4)``) is its value, as upstream's shape conversion (a
        # size of ``x.shape`` in a dumpable trace: its SymDim, so a dump follows the batch)
        items = [int(s) if isinstance(s, (float, np.floating)) and float(s).is_integer()
                 else _size_item(s) if isinstance(s, Tensor) and s.ndim == 0
                 and s.dtype.kind in "iu" else s for s in items]
    if items is None or not all(is_int(s) for s in items):
        raise TypeError(f"{what}: size must be None, an int or a tuple of ints, got {size!r}")
    # (a size from x.shape in a dumpable trace stays one: the draw's op carries it)
    shape = tuple(s if is_dim(s) else int(s) for s in items)
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: size must not be negative, got {shape}")
    return shape


def _dist_param(value, name, what, zero_ok=False):
    """A distribution parameter: a number > 0 (upstream asserts that), or a Tensor, read as its
    host array. Upstream does not look at a Tensor's values; here a value no draw is defined for
    (negative, NaN, or 0 where ``zero_ok`` is False) is refused with its name instead of numpy's
    "a <= 0" or a silent NaN. ``zero_ok`` (Tensor values only): 0 gives the degenerate draw 0,
    as numpy and torch (gamma, poisson)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a numpy scalar array is its number, as upstream takes it
    if isinstance(value, Tensor):
        arr = value.numpy()
        ok = arr >= 0 if zero_ok else arr > 0  # (NaN fails both)
        if not ok.all():
            raise ValueError(f"{what}: every value of the Tensor {name} must be "
                             f"{'>= 0' if zero_ok else '> 0'}, got {arr[~ok].flat[0]}")
        return arr
    if isinstance(value, (str, bytes)) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"{what}: {name} must be a number > 0 or a Tensor, got {value!r}")
    if not value > 0:
        raise ValueError(f"{what}: {name} must be > 0, got {value!r}")
    return value


def _param_dtype(what, **params):
    """The dtype of draws from Tensor parameters: theirs, as upstream's GammaRNG, BetaRNG and
    PoissonRNG kernels write the dtype of their parameter tensors (float16 gives float16).
    Python numbers take the Tensors' dtype (upstream makes them float32 Tensors, and its kernel
    then refuses a float16 partner); integer Tensors and numbers alone give float32. Two float
    Tensors of different dtypes are refused, as upstream's kernel does."""
    floats = {name: np.dtype(t.dtype) for name, t in params.items()
              if isinstance(t, Tensor) and np.dtype(t.dtype).kind == "f"}
    if len(set(floats.values())) > 1:
        (a, da), (b, db) = list(floats.items())[:2]
        raise TypeError(f"{what}: the Tensors {a} ({da}) and {b} ({db}) differ in dtype; pass "
                        f"them in one float dtype, e.g. {b}.astype({da.name!r})")
    return next(iter(floats.values()), np.dtype(np.float32))


def _number(value, name, what):
    """A parameter upstream takes as a Python float (uniform's bounds, normal's mean and std): a
    number, or a one-element Tensor read as its value."""
    if isinstance(value, Tensor):
        if value.size != 1:
            raise TypeError(f"{what}: {name} must be a number, got a Tensor of shape "
                            f"{tuple(value.shape)}; for per-element parameters scale a standard "
                            f"draw instead (e.g. mean + std * normal(size=mean.shape))")
        return value.item()
    return value


def _param_shape(size, *params):
    """Output shape for Tensor-valued parameters: size + broadcast(params).shape (upstream)."""
    try:
        base = np.broadcast_shapes(*(np.shape(p) for p in params))
    except ValueError:
        raise ValueError("random: the parameters' shapes "
                         f"{' and '.join(str(np.shape(p)) for p in params)} do not broadcast "
                         "(numpy's rules); make them broadcastable") from None
    # (an int 0 means no size, as upstream; a shape Tensor is not compared with 0)
    if not (size is None or (is_int(size) and size == 0)):
        base = _shape(size, "random") + base
    # scalar parameters and no size (or size ()) give one draw shaped (1,), as upstream's
    # uniform and normal without a size
    return base or (1,)


class RNG:
    """A random number source. ``RNG(seed)`` has its own generator; ``RNG()`` (no seed) draws
    from the global one that ``megengine.random.seed`` controls. Tensors go to ``device``
    (default: the default device at the time of each draw)."""

    def __init__(self, seed: int = None, device: str = None):
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            # (upstream: pybind's TypeError, for a negative seed too)
            raise ArgumentTypeError(f"RNG: seed must be a non-negative int or None, got "
                                    f"{seed!r}")
        self._generator = None if seed is None else np.random.default_rng(int(seed))
        self._device = None if device is None else canonical_device(device)

    def _gen(self):
        return self._generator if self._generator is not None else _core_rng.generator

    def _draw(self, method, *args, dtype="float32", params=()):
        """A tensor of ``generator.method(*args)``: an op, so a traced function draws anew on
        every replay instead of repeating the first call's numbers. It lives on this RNG's
        device; without one, on the device of the first Tensor in ``params`` (the
        distribution's parameters, as upstream's GammaRNG / BetaRNG / PoissonRNG run where
        their inputs are), else on the default device."""
        device = self._device
        if device is None:
            device = next((p._device for p in params if isinstance(p, Tensor)), None)
        if device is None:
            device = canonical_device(get_default_device())
        return apply(_Draw(self, method, args, np.dtype(dtype), device))

    def uniform(self, low: float = 0, high: float = 1, size=None):
        """Samples of U[low, high) (``high`` excluded, also after rounding to float32), float32,
        shape ``size`` (None means (1,))."""
        low, high = _number(low, "low", "uniform"), _number(high, "high", "uniform")
        if not (np.isfinite(low) and np.isfinite(high)):
            # (upstream's low + (high - low) * u gives inf and NaN; numpy raised OverflowError)
            raise ValueError(f"uniform: low and high must be finite, got low={low}, high={high}")
        if not low < high:
            raise ValueError(f"uniform: needs low < high, got low={low}, high={high}")
        return self._draw("uniform", low, high, _shape(size, "uniform"))

    def normal(self, mean: float = 0, std: float = 1, size=None):
        """Samples of N(mean, std**2), float32, shape ``size`` (None means (1,))."""
        mean, std = _number(mean, "mean", "normal"), _number(std, "std", "normal")
        if std < 0:
            raise ValueError(f"normal: std must be >= 0, got {std}")
        return self._draw("normal", mean, std, _shape(size, "normal"))

    def gamma(self, shape, scale=1, size=None):
        """Samples of Gamma(shape k, scale theta); Tensor parameters broadcast after ``size``.
        float32, or the dtype of float Tensor parameters (float16 gives float16)."""
        dtype = _param_dtype("gamma", shape=shape, scale=scale)
        k = _dist_param(shape, "shape", "gamma", zero_ok=True)
        theta = _dist_param(scale, "scale", "gamma", zero_ok=True)
        return self._draw("gamma", k, theta, _param_shape(size, k, theta), dtype=dtype,
                          params=(shape, scale))

    def beta(self, alpha, beta, size=None):
        """Samples of Beta(alpha, beta); Tensor parameters broadcast after ``size``. float32,
        or the dtype of float Tensor parameters (float16 gives float16)."""
        dtype = _param_dtype("beta", alpha=alpha, beta=beta)
        a, b = _dist_param(alpha, "alpha", "beta"), _dist_param(beta, "beta", "beta")
        return self._draw("beta", a, b, _param_shape(size, a, b), dtype=dtype,
                          params=(alpha, beta))

    def poisson(self, lam, size=None):
        """Samples of Poisson(lam) as float32, or as a float Tensor ``lam``'s dtype; a Tensor
        ``lam`` broadcasts after ``size``."""
        dtype = _param_dtype("poisson", lam=lam)
        lam_value = _dist_param(lam, "lam", "poisson", zero_ok=True)
        return self._draw("poisson", lam_value, _param_shape(size, lam_value), dtype=dtype,
                          params=(lam,))

    def exponential(self, rate=1.0, size=None):
        """Samples of Exp(rate) (density ``rate * exp(-rate * x)``, mean ``1 / rate``), float32
        or a float Tensor ``rate``'s dtype (as gamma); a Tensor ``rate`` broadcasts after
        ``size``."""
        dtype = _param_dtype("exponential", rate=rate)
        rate_value = _dist_param(rate, "rate", "exponential")
        return self._draw("exponential", rate_value, _param_shape(size, rate_value), dtype=dtype,
                          params=(rate,))

    def multinomial(self, input: Tensor, num_samples: int, replacement: bool = False):
        """Draw ``num_samples`` category indices (int32) per row of ``input``, a 1-d or 2-d
        Tensor of non-negative weights (need not sum to 1). Without ``replacement`` a row never
        repeats a category, so it needs at least ``num_samples`` non-zero weights. Output
        shape: ``(num_samples,)`` or ``(rows, num_samples)``."""
        if not isinstance(input, Tensor):
            raise TypeError(f"multinomial: input must be a Tensor of weights, got "
                            f"{type(input).__name__}")
        if input.ndim not in (1, 2):
            raise ValueError(f"multinomial: input must be 1-d or 2-d, got shape {input.shape}")
        if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) \
                or num_samples < 1:
            raise ValueError(f"multinomial: num_samples must be an int >= 1, got {num_samples!r}")
        if self._device is not None and canonical_device(input.device) != self._device:
            raise ValueError(f"multinomial: input is on {input.device}, this RNG draws on "
                             f"{self._device}")
        # an op over the weights, so a traced function reads the weights of each call
        return apply(_Multinomial(self, int(num_samples), bool(replacement)), input)

    def permutation(self, n, *, dtype: str = "int32"):
        """A random permutation of ``range(n)`` (int ``n``), or a shuffled copy of Tensor ``n``
        (only its first axis is shuffled)."""
        if isinstance(n, Tensor):
            _refuse_empty(n, "permutation")
            if n.ndim == 0:  # upstream: one element, shaped (1,)
                n = n.reshape(1)
            return apply(_Shuffled(self), n)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ArgumentError(f"permutation: n must be an int >= 0 or a Tensor, got {n!r}")
        try:
            ok = np.dtype(dtype) in (np.int32, np.int16, np.float32)
        except TypeError:  # (numpy: "data type 'x' not understood")
            ok = False
        if not ok:
            raise TypeError(f"permutation: dtype must be int32, int16 or float32 (upstream's "
                            f"PermutationRNG dtypes), got {dtype!r}")
        return self._draw("permutation", int(n), dtype=dtype)

    def shuffle(self, inp: Tensor):
        """Shuffle ``inp`` along its first axis in place (its storage is kept)."""
        if not isinstance(inp, Tensor):
            raise TypeError(f"shuffle: expected a Tensor, got {type(inp).__name__}")
        _refuse_empty(inp, "shuffle")
        inp._reset(self.permutation(inp))


def _permutation_of_size(n, *, dtype: str = "int32"):
    """``permutation(n)`` where ``n`` is a size a TracedModule computes from ``x.shape`` (a 0-d
    integer Tensor there, an int in the module it was traced from): a permutation of
    ``range(n)``, as the module draws, not a shuffled copy of the one-element Tensor."""
    return _default_rng.permutation(int(n.item()) if isinstance(n, Tensor) else n, dtype=dtype)


def _refuse_empty(inp, what):
    """Upstream's shuffle (``shuffle`` and ``permutation`` of a Tensor) asserts "size needs to
    be greater than 0"; the same refusal, saying what to do, before anything is changed."""
    if inp.size == 0:
        raise ValueError(f"{what}: the Tensor is empty (shape {tuple(inp.shape)}); shuffling "
                         "needs at least one element, as upstream: skip the call when "
                         "x.size == 0")


class _Draw(Op):
    """Random samples from an RNG's generator, drawn when the op runs (no inputs, no gradient)."""

    def __init__(self, rng, method, args, dtype, device):
        self.rng, self.method, self.args, self.dtype, self.device = rng, method, args, dtype, device

    def __repr__(self):
        return f"random.{self.method}"

    def __copy__(self):
        # the copy megengine.jit records as the op's template (before forward runs) remembers
        # the generator state this draw starts from: a dumped program starts there, so its
        # first run draws what the traced call drew (upstream's RNG operator keeps its seed)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        bit_gen = self.rng._gen().bit_generator
        new.start = (type(bit_gen).__name__, bit_gen.state)
        return new

    def forward(self):
        gen = self.rng._gen()
        if self.method in _SAMPLERS:  # ours, built on the generator
            sample = _SAMPLERS[self.method](gen, *self.args)
        else:  # numpy's own distribution method
            sample = getattr(gen, self.method)(*self.args)
        if self.method == "uniform":  # (rounded down, not to nearest: see the function)
            sample = _floor_into_range(np.asarray(sample), *self.args[:2], self.dtype)
        else:
            # a float16 draw beyond its range (gamma's tail past 65504) is inf, as upstream's
            # kernels store it, without numpy's cast warning
            with np.errstate(over="ignore"):
                sample = np.asarray(sample, dtype=self.dtype)
        return sample if self.device.startswith("cpu") else move_array(sample, self.device)


def _floor_into_range(x, low, high, dtype):
    """numpy's float64 draws ``x`` of U[low, high) as ``dtype`` (float32, or float16 for
    module.init), without leaving [low, high).

    Rounding to nearest would turn a draw within half a step of high into high itself (about
    1 in 2**25 for U(0, 1): Exponential's -log1p(-u) became inf) and give the top step half
    its share. Rounding down (the largest value <= x) keeps every value below high and gives
    each representable v in range the exact probability of [v, next(v)). A draw below the
    first representable value >= low takes that value. Where no value of ``dtype`` lies in
    [low, high) at all (the bounds are closer than one step), the value nearest low is all
    there is."""
    t = dtype.type
    out = x.astype(dtype)
    up = out.astype(np.float64) > x
    out[up] = np.nextafter(out[up], t(-np.inf))
    first = t(low)
    if float(first) < low:
        first = np.nextafter(first, t(np.inf))
    if not float(first) < high:
        return np.full(x.shape, t(low), dtype)
    return np.maximum(out, first)


def _exponential(gen, rate, shape):
    # numpy parametrises by scale = 1 / rate
    return gen.exponential(1.0 / np.asarray(rate, dtype=np.float64), shape)


def _multinomial(gen, weights, num_samples, replacement):
    """Indices (rows, num_samples) drawn per row of ``weights`` (rows, categories)."""
    nonzero = (weights > 0).sum(axis=1)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("multinomial: weights must be finite and >= 0")
    if np.any(nonzero == 0):
        raise ValueError("multinomial: every row needs at least one weight > 0")
    if not replacement and np.any(nonzero < num_samples):
        raise ValueError(
            f"multinomial: without replacement a row with {int(nonzero.min())} non-zero "
            f"weights cannot give {num_samples} distinct samples; pass replacement=True "
            f"or ask for fewer"
        )
    p = weights / weights.sum(axis=1, keepdims=True)
    rows = p.shape[0]
    if replacement:
        # inverse CDF: the first category whose cumulative probability exceeds u
        cdf = np.cumsum(p, axis=1)
        cdf[:, -1] = 1.0  # rounding must not let u fall past the last category
        u = gen.random((rows, num_samples))
        idx = np.stack([np.searchsorted(cdf[r], u[r], side="right") for r in range(rows)])
        # a zero-weight category has a zero-width CDF step, so it is never hit
    else:
        # exponential race: the k smallest E_i / p_i (E_i ~ Exp(1)) are a weighted sample
        # without replacement, in draw order; zero weights never win
        with np.errstate(divide="ignore"):
            keys = gen.exponential(1.0, p.shape) / p
        idx = np.argsort(keys, axis=1, kind="stable")[:, :num_samples]
    return idx


_SAMPLERS = {"exponential": _exponential}


class _Multinomial(Op):
    """Category indices drawn from the input's weights (int32, no gradient)."""

    def __init__(self, rng, num_samples, replacement):
        self.rng, self.num_samples, self.replacement = rng, num_samples, replacement

    def forward(self, weights):
        xp = xp_of(weights)
        if weights.size == 0:  # as upstream: no rows, or no categories, gives an empty draw
            if weights.ndim == 1:
                return xp.zeros((0,), np.int32)
            cols = self.num_samples if weights.shape[-1] else 0
            return xp.zeros((weights.shape[0], cols), np.int32)
        host = weights.get() if hasattr(weights, "get") else weights  # CuPy -> host
        rows = np.asarray(host, dtype=np.float64).reshape(-1, weights.shape[-1])
        idx = _multinomial(self.rng._gen(), rows, self.num_samples, self.replacement)
        idx = idx.astype(np.int32).reshape(weights.shape[:-1] + (self.num_samples,))
        return xp.asarray(idx)  # back on the weights' device

    def backward(self, g):
        return None  # sampling has no gradient


class _Shuffled(Op):
    """A copy of the input with its first axis in a random order; its gradient goes back to
    the rows they came from, as upstream's ShuffleRNG's."""

    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients
    backward_reads = ()  # (the order only)

    def __init__(self, rng):
        self.rng = rng

    def forward(self, x):
        # the order is drawn on the host (the seed governs it on every device), then indexes
        # the array on its own device
        self.order = xp_of(x).asarray(self.rng._gen().permutation(x.shape[0]))
        return x[self.order]

    def backward(self, g):
        grad = xp_of(g).empty_like(g)
        grad[self.order] = g  # (a permutation: each row is written once)
        return grad


_default_rng = RNG()
uniform = _default_rng.uniform
normal = _default_rng.normal
gamma = _default_rng.gamma
beta = _default_rng.beta
poisson = _default_rng.poisson
exponential = _default_rng.exponential
multinomial = _default_rng.multinomial
permutation = _default_rng.permutation
shuffle = _default_rng.shuffle


# 0.x names, still used by MegEngine/Models' GAN programs (megengine_mimicry's generator draws
# its noise with ``R.gaussian(shape=[n, nz])``). 0.x took the shape first and a ``comp_node``
# (device) and ``comp_graph``; 1.x renamed gaussian to normal with ``size`` last.
def gaussian(shape, mean: float = 0, std: float = 1, comp_node=None, comp_graph=None):
    """0.x ``megengine.random.gaussian``: samples of N(mean, std**2) of ``shape``, float32.

    The same draw as ``normal(mean, std, size=shape)`` from the global generator, so ``seed``
    (or 0.x ``manual_seed``) makes it reproducible; ``comp_node`` names the output's device.
    """
    if comp_graph is not None:
        raise ValueError("gaussian(comp_graph=...): this engine has no 0.x computing graphs; "
                         "leave comp_graph out")
    out = normal(mean, std, size=_shape(shape, "gaussian"))
    return out if comp_node is None else out._to(comp_node)


def manual_seed(seed_value: int):
    """0.x name of ``seed``: reseeds megengine.random's global generator (and numpy's)."""
    seed(seed_value)
