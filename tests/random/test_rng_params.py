"""megengine/random/rng.py's parameter rules against upstream's: the dtype of draws from Tensor
parameters (upstream's GammaRNG/BetaRNG/PoissonRNG write their parameters' dtype, float16
included), and argument checks (an empty shuffle, bad dtypes, parameter values and types)."""
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.random as rand


def _t(values, dtype):
    return mge.tensor(np.asarray(values), dtype=dtype)


# name: (call on an RNG with parameters of dtype, numpy's draw from the same seed)
DRAWS = {
    "gamma": (lambda r, d: r.gamma(_t([2.0, 5.0], d), _t([1.5, 0.5], d), size=(3,)),
              lambda g: g.gamma(np.array([2.0, 5.0]), np.array([1.5, 0.5]), (3, 2))),
    "beta": (lambda r, d: r.beta(_t([2.0, 0.5], d), _t([3.0, 0.5], d), size=(3,)),
             lambda g: g.beta(np.array([2.0, 0.5]), np.array([3.0, 0.5]), (3, 2))),
    "poisson": (lambda r, d: r.poisson(_t([4.0, 0.5], d), size=(3,)),
                lambda g: g.poisson(np.array([4.0, 0.5]), (3, 2))),
    "exponential": (lambda r, d: r.exponential(_t([2.0, 0.25], d), size=(3,)),
                    lambda g: g.exponential(1 / np.array([2.0, 0.25]), (3, 2))),
}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", sorted(DRAWS))
def test_draws_take_the_dtype_of_float_tensor_parameters(name, dtype):
    ours, numpy_draw = DRAWS[name]
    out = ours(rand.RNG(seed=5), dtype)
    assert out.dtype == np.dtype(dtype) and out.shape == (3, 2)
    # the same numbers as numpy's generator from that seed, rounded to the dtype
    want = numpy_draw(np.random.default_rng(5)).astype(dtype)
    np.testing.assert_array_equal(out.numpy(), want)


def test_numbers_take_the_dtype_of_their_tensor_partner_and_alone_give_float32():
    h = _t([2.0, 3.0], "float16")
    assert rand.gamma(h).dtype == np.float16  # scale=1, a Python number
    assert rand.gamma(2.0, h).dtype == np.float16
    assert rand.beta(h, 2).dtype == np.float16
    assert rand.gamma(2.0, 1.0, size=(2,)).dtype == np.float32
    assert rand.poisson(mge.tensor([1, 2])).dtype == np.float32  # integers: float32
    assert rand.gamma(mge.tensor([1, 2]), h).dtype == np.float16


def test_tensor_parameters_of_two_float_dtypes_are_refused():
    with pytest.raises(TypeError, match=r"gamma: .*shape \(float16\) and scale \(float32\).*"
                                        r"scale.astype\('float16'\)"):
        rand.gamma(_t([2.0], "float16"), _t([1.0], "float32"))
    with pytest.raises(TypeError, match="beta: .*alpha.*beta"):
        rand.beta(_t([2.0], "float64"), _t([1.0], "float16"))


def test_float16_gamma_moments():
    # Gamma(k, theta): mean k theta, variance k theta^2; 20000 draws per column, within 5
    # standard errors of the mean and 10 % of the variance
    k, theta = np.array([2.0, 9.0]), np.array([1.5, 0.25])
    out = rand.RNG(seed=11).gamma(_t(k, "float16"), _t(theta, "float16"), size=(20000,))
    x = out.numpy().astype(np.float64)
    assert out.dtype == np.float16 and (x > 0).all()
    mean, var = k * theta, k * theta ** 2
    assert (np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / len(x))).all(), x.mean(0)
    assert (np.abs(x.var(0) / var - 1) < 0.1).all(), x.var(0)


def test_float16_beta_and_poisson_ranges_and_means():
    b = rand.RNG(seed=2).beta(_t([2.0, 0.5], "float16"), _t([3.0, 0.5], "float16"),
                              size=(20000,)).numpy().astype(np.float64)
    assert (b >= 0).all() and (b <= 1).all()
    mean = np.array([0.4, 0.5])
    sd = np.sqrt(np.array([2 * 3 / (25 * 6), 0.25 / 2]) / len(b))
    assert (np.abs(b.mean(0) - mean) < 5 * sd).all(), b.mean(0)
    p = rand.RNG(seed=3).poisson(_t([4.0, 30.0], "float16"), size=(20000,)).numpy()
    assert p.dtype == np.float16 and (p == np.round(p)).all() and (p >= 0).all()
    lam = np.array([4.0, 30.0])
    assert (np.abs(p.astype(np.float64).mean(0) - lam) < 5 * np.sqrt(lam / len(p))).all()


def test_float16_draws_past_its_range_are_inf_without_a_warning():
    # Gamma(40000, 2) is about 80000 > float16's 65504: inf, as upstream's kernel stores it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rand.RNG(seed=0).gamma(_t([40000.0], "float16"), _t([2.0], "float16"), size=(4,))
    assert out.dtype == np.float16 and np.isinf(out.numpy()).all()


# ----- argument checks (upstream asserts; here the error says what was wrong and what to do) -----

@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_shuffle_of_an_empty_tensor_is_refused_and_leaves_it_unchanged(shape):
    # upstream's _shuffle: assert inp.size > 0, "size needs to be greater than 0"
    x = mge.tensor(np.zeros(shape, np.float32))
    data = x._data
    with pytest.raises(ValueError, match=r"shuffle: the Tensor is empty \(shape .*x.size == 0"):
        rand.shuffle(x)
    assert x.shape == shape and x._data is data
    with pytest.raises(ValueError, match="permutation: the Tensor is empty"):
        rand.permutation(x)
    with pytest.raises(ValueError, match="shuffle: the Tensor is empty"):
        rand.RNG(seed=1).shuffle(x)


def test_shuffle_of_one_row_still_works():
    x = mge.tensor(np.arange(3, dtype=np.float32).reshape(1, 3))
    rand.shuffle(x)
    np.testing.assert_array_equal(x.numpy(), [[0, 1, 2]])
    assert rand.permutation(n=0).shape == (0,)  # an int 0 is an empty range, as upstream


@pytest.mark.parametrize("call, error, match", [
    (lambda: rand.permutation(3, dtype="foo"), TypeError, r"int32, int16 or float32.*'foo'"),
    (lambda: rand.permutation(3, dtype="float16"), TypeError, "int32, int16 or float32"),
    (lambda: rand.permutation(-1), ValueError, "n must be an int >= 0"),
    (lambda: rand.permutation(2.0), ValueError, "n must be an int >= 0"),
    (lambda: rand.uniform(size=(2, -1)), ValueError, "negative"),
    (lambda: rand.gamma(2.0, size=-3), ValueError, "negative"),
    (lambda: rand.gamma("a"), TypeError, "gamma: shape must be a number > 0 or a Tensor"),
    (lambda: rand.poisson(None), TypeError, "poisson: lam must be a number"),
    (lambda: rand.beta(1.0, 0.0), ValueError, "beta: beta must be > 0"),
    (lambda: rand.gamma(mge.tensor([1.0, -2.0])), ValueError,
     r"gamma: every value of the Tensor shape must be >= 0, got -2"),
    (lambda: rand.poisson(mge.tensor([np.nan, 1.0])), ValueError, "lam must be >= 0, got nan"),
    (lambda: rand.beta(mge.tensor([0.0, 1.0]), 1.0), ValueError, "alpha must be > 0, got 0"),
    (lambda: rand.exponential(mge.tensor([0.0])), ValueError, "rate must be > 0"),
    (lambda: rand.gamma(mge.tensor([1.0, 2.0]), mge.tensor([1.0, 2.0, 3.0])), ValueError,
     r"\(2,\) and \(3,\) do not broadcast"),
    (lambda: rand.normal(mge.tensor([0.0, 1.0]), 1.0, size=(2,)), TypeError,
     r"normal: mean must be a number, got a Tensor of shape \(2,\)"),
    (lambda: rand.uniform(mge.tensor([0.0, 1.0]), 2.0), TypeError, "uniform: low"),
    # upstream's low + (high - low) * u gives inf and NaN; numpy raised an OverflowError
    (lambda: rand.uniform(0.0, float("inf")), ValueError, "low and high must be finite"),
])
def test_bad_arguments_say_what_was_wrong(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_zero_tensor_parameters_give_the_degenerate_draw_where_defined():
    # Gamma(0, theta) and Poisson(0) are the point mass at 0 (numpy and torch agree)
    assert (rand.gamma(mge.tensor([0.0, 0.0]), size=(5,)).numpy() == 0).all()
    assert (rand.poisson(mge.tensor([0.0]), size=(5,)).numpy() == 0).all()


def test_one_element_tensor_bounds_are_read_as_numbers():
    # upstream passes mean/std (and low/high) as floats: a one-element Tensor converts
    a = rand.RNG(seed=4).normal(mge.tensor([3.0]), mge.tensor(2.0), size=(6,)).numpy()
    b = rand.RNG(seed=4).normal(3.0, 2.0, size=(6,)).numpy()
    np.testing.assert_array_equal(a, b)
    u = rand.RNG(seed=4).uniform(mge.tensor(1.0), mge.tensor([2.0]), size=(6,)).numpy()
    np.testing.assert_array_equal(u, rand.RNG(seed=4).uniform(1.0, 2.0, size=(6,)).numpy())
    assert u.dtype == np.float32


@pytest.mark.parametrize("name", ["gamma", "beta", "poisson", "exponential"])
def test_draws_from_tensor_parameters_live_on_the_parameters_device(name):
    # upstream 1.13 measured: gamma / beta / poisson of Tensors on cpu1 give a cpu1:0 draw (its
    # kernels run where their inputs are); a draw with two parameters takes the first one's
    # device (shape on cpu1, scale on cpu0: cpu1:0); earlier versions of this fork put the
    # draw on the default device
    p = mge.tensor([1.0, 2.0], device="cpu1")
    q = mge.tensor([1.0, 2.0], device="cpu0")
    args = {"gamma": (p, q), "beta": (p, q), "poisson": (p,), "exponential": (p,)}[name]
    out = getattr(rand, name)(*args, size=(3,))
    assert out.device.logical_name == "cpu1:0" and out.shape == (3, 2)
    # a seeded RNG with a device draws there, and default-device parameters stay on theirs
    assert getattr(rand.RNG(1, device="cpu2"), name)(*args).device.logical_name == "cpu2:0"
    default = getattr(rand, name)(*(mge.tensor([1.0, 2.0]) for _ in args))
    # (the default device's own name: "xpux:0" unless MGE_DEFAULT_DEVICE names another)
    assert default.device.logical_name == mge.get_default_device() + ":0"


@pytest.mark.parametrize("draw", [
    lambda size: rand.uniform(size=size), lambda size: rand.normal(size=size),
    lambda size: rand.gamma(2.0, size=size), lambda size: rand.beta(2.0, 3.0, size=size),
    lambda size: rand.poisson(3.0, size=size),
])
def test_a_size_may_hold_0d_integer_tensors(draw):
    # upstream 1.13 measured: size=(mge.tensor(2), 3) gives shape (2, 3), a count taken from a
    # tensor (mask.sum()) next to an int; earlier versions of this fork raised TypeError
    assert draw((mge.tensor(2), 3)).shape == (2, 3)
    assert draw([np.int64(2), mge.tensor(3, dtype="int16")]).shape == (2, 3)
    with pytest.raises(TypeError, match="size must be"):
        draw((mge.tensor(2.0), 3))  # a float Tensor is no count


@pytest.mark.parametrize("name, args", [
    ("gamma", (np.array(2.0), np.array(3.0))), ("beta", (np.array(2.0), 3.0)),
    ("poisson", (np.array(4.0),)),
])
def test_numpy_0d_array_parameters_are_numbers(name, args):
    # upstream 1.13 measured: gamma(np.array(2.0), size=(2,)) is a float32 draw of shape (2,);
    # earlier versions of this fork raised TypeError
    out = getattr(rand.RNG(seed=6), name)(*args, size=(2,))
    assert out.shape == (2,) and out.dtype == np.float32
    numbers = tuple(float(a) for a in args)
    again = getattr(rand.RNG(seed=6), name)(*numbers, size=(2,))
    np.testing.assert_array_equal(out.numpy(), again.numpy())
