"""megengine.distributions.Exponential: densities and moments against torch.distributions,
sample shapes and moments, the reparameterization gradient, bad rates."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.autodiff as ad
import megengine.random as rand
from megengine.distributions import Distribution, Exponential


def test_log_prob_cdf_icdf_entropy_and_moments_match_torch():
    rate = np.array([[0.3, 1.0, 2.5], [4.0, 0.7, 9.0]], np.float32)
    value = np.array([[0.1, 2.0, 0.4], [0.05, 3.0, 0.01]], np.float32)
    prob = np.array([[0.1, 0.5, 0.9], [0.99, 0.01, 0.3]], np.float32)
    ours = Exponential(mge.tensor(rate))
    ref = torch.distributions.Exponential(torch.from_numpy(rate))
    pairs = [
        (ours.log_prob(mge.tensor(value)), ref.log_prob(torch.from_numpy(value))),
        (ours.cdf(mge.tensor(value)), ref.cdf(torch.from_numpy(value))),
        (ours.icdf(mge.tensor(prob)), ref.icdf(torch.from_numpy(prob))),
        (ours.entropy(), ref.entropy()),
        (ours.mean, ref.mean),
        (ours.variance, ref.variance),
        (ours.stddev, ref.stddev),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert ours.batch_shape == (2, 3) and ours.event_shape == ()


@pytest.mark.parametrize("rate, sample_shape, shape", [
    (2.0, (), ()), (2.0, (4,), (4,)), (np.ones((1,)), (), (1,)),
    (np.ones((2, 3)), (5,), (5, 2, 3)), (np.ones(3), (2, 4), (2, 4, 3)),
])
def test_sample_shape_is_sample_shape_plus_batch_shape(rate, sample_shape, shape):
    out = Exponential(rate).sample(sample_shape)
    assert out.shape == shape and out.dtype == np.float32


def test_sample_moments_and_seed():
    rates = np.array([0.5, 2.0, 5.0], np.float32)
    rand.seed(3)
    s = Exponential(rates).sample((100000,)).numpy()
    assert (s >= 0).all()
    # mean 1/rate and variance 1/rate^2, to a few standard errors of 100000 draws
    np.testing.assert_allclose(s.mean(axis=0), 1 / rates, rtol=0.02)
    np.testing.assert_allclose(s.var(axis=0), 1 / rates ** 2, rtol=0.05)
    rand.seed(3)
    np.testing.assert_array_equal(Exponential(rates).sample((100000,)).numpy(), s)


def test_rsample_gradient_is_minus_sample_over_rate():
    # x = -log(1 - u) / rate, so dx/drate = -x / rate for the same u.
    rate = mge.Parameter(np.array([0.5, 2.0, 3.0], np.float32))
    gm = ad.GradManager().attach([rate])
    with gm:
        x = Exponential(rate).rsample((4,))
        gm.backward(x.sum())
    expected = (-x.numpy() / rate.numpy()).sum(axis=0)
    np.testing.assert_allclose(rate.grad.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("rate", [0.0, -1.0, np.array([1.0, -2.0])])
def test_non_positive_rate_is_an_error(rate):
    with pytest.raises(ValueError, match="rate should be positive"):
        Exponential(rate)


def test_base_class_names_what_a_family_lacks():
    d = Distribution(batch_shape=(2,))
    assert d.batch_shape == (2,) and d._extended_shape((3,)) == (3, 2)
    with pytest.raises(NotImplementedError, match="Distribution does not define rsample"):
        d.sample()
    with pytest.raises(TypeError, match="sample_shape should be a tuple of ints"):
        Exponential(1.0).sample("ab")
