"""Tests for megengine/module/vision.py: noise statistics (fixed seeds, tolerances of several
standard errors), Emboss/Sharpen against torch convolutions with hand-built kernels, contrast."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M

ZEROS = mge.tensor(np.zeros((8, 3, 64, 64), np.float32))  # 98304 noise values per channel


def noise_of(module, x=ZEROS):
    return module(x).numpy().astype(np.float64)


def test_gaussian_noise_statistics_and_channel_sharing():
    shared = noise_of(M.AdditiveGaussianNoise(mean=1.0, std=2.0, seed=3))
    assert np.array_equal(shared[:, 0], shared[:, 2])  # one map per image
    assert not np.array_equal(shared[0, 0], shared[1, 0])
    # 32768 independent values: standard error of the mean is 2/181 = 0.011
    v = shared[:, 0]
    assert abs(v.mean() - 1.0) < 0.06 and abs(v.std() - 2.0) < 0.06
    own = noise_of(M.AdditiveGaussianNoise(mean=1.0, std=2.0, per_channel=True, seed=3))
    assert not np.array_equal(own[:, 0], own[:, 1])
    assert abs(own.mean() - 1.0) < 0.04 and abs(own.std() - 2.0) < 0.04


def test_laplace_noise_has_laplace_moments():
    v = noise_of(M.AdditiveLaplaceNoise(mean=-0.5, std=1.5, per_channel=True, seed=4)).ravel()
    # Laplace(mu, b): E|X - mu| = b, Var = 2 b^2, P(|X - mu| > b) = e^-1
    # (a normal with that mean and std would give P(|X - mu| > b) = 0.32, not 0.37)
    assert abs(np.median(v) + 0.5) < 0.02
    assert abs(np.abs(v + 0.5).mean() - 1.5) < 0.02
    assert abs(v.var() - 2 * 1.5 ** 2) < 0.1
    assert abs((np.abs(v + 0.5) > 1.5).mean() - np.exp(-1)) < 0.005


def test_poisson_noise_is_integer_with_equal_mean_and_variance():
    v = noise_of(M.AdditivePoissonNoise(lam=3.0, per_channel=True, seed=5)).ravel()
    assert np.array_equal(v, np.round(v)) and v.min() >= 0
    assert abs(v.mean() - 3.0) < 0.03 and abs(v.var() - 3.0) < 0.06


def test_noise_seeds_reproduce_and_reset():
    x = mge.tensor(np.random.RandomState(0).rand(2, 3, 4, 4).astype(np.float32))
    a = M.AdditiveGaussianNoise(seed=7)
    first = a(x).numpy()
    np.testing.assert_array_equal(first, M.AdditiveGaussianNoise(seed=7)(x).numpy())
    assert not np.array_equal(first, a(x).numpy())  # the stream moves on
    a.seed = 7
    np.testing.assert_array_equal(first, a(x).numpy())
    assert a.seed == 7 and a.per_channel is False
    with pytest.raises(TypeError, match="per_channel"):
        M.AdditiveGaussianNoise(per_channel=0.5)
    with pytest.raises(TypeError, match="Tensor"):
        a(np.zeros((1, 1, 2, 2)))


def torch_blur(x, kernel):
    c = x.shape[1]
    w = torch.tensor(np.broadcast_to(kernel, (c, 1, 3, 3)).astype(np.float32).copy())
    padded = torch.nn.functional.pad(torch.tensor(x), (1, 1, 1, 1), mode="reflect")
    return torch.nn.functional.conv2d(padded, w, groups=c).numpy()


IDENTITY = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float64)


def emboss_kernel(alpha, s):
    effect = np.array([[-1 - s, -s, 0], [-s, 1, s], [0, s, 1 + s]])
    return (1 - alpha) * IDENTITY + alpha * effect


def sharpen_kernel(alpha, lightness):
    effect = -np.ones((3, 3))
    effect[1, 1] = 8 + lightness
    return (1 - alpha) * IDENTITY + alpha * effect


def test_emboss_and_sharpen_match_torch_convolution():
    x = np.random.RandomState(1).rand(2, 3, 7, 6).astype(np.float32) * 255
    np.testing.assert_allclose(M.Emboss(alpha=0.7, strength=1.2)(mge.tensor(x)).numpy(),
                               torch_blur(x, emboss_kernel(0.7, 1.2)), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(M.Sharpen(alpha=0.4, lightness=1.5)(mge.tensor(x)).numpy(),
                               torch_blur(x, sharpen_kernel(0.4, 1.5)), rtol=1e-5, atol=1e-3)
    assert np.allclose(M.Sharpen(alpha=0.0, lightness=1.0)(mge.tensor(x)).numpy(), x)


def test_random_alpha_is_drawn_from_its_range():
    x = np.random.RandomState(2).rand(1, 2, 5, 5).astype(np.float32)
    base, effect = torch_blur(x, IDENTITY), torch_blur(x, sharpen_kernel(1.0, 1.0))
    alphas = []
    for seed in range(5):
        out = M.Sharpen(alpha=(0.6, 0.8), lightness=1.0, seed=seed)(mge.tensor(x)).numpy()
        # the output is linear in alpha: recover it and check it explains every pixel
        alpha = ((out - base) * (effect - base)).sum() / ((effect - base) ** 2).sum()
        np.testing.assert_allclose(out, base + alpha * (effect - base), rtol=1e-4, atol=1e-4)
        alphas.append(alpha)
    assert all(0.6 - 1e-4 <= a <= 0.8 + 1e-4 for a in alphas) and len(set(np.round(alphas, 4))) == 5


def test_blur_keeps_integer_dtypes_clipped():
    x = np.random.RandomState(3).randint(0, 256, (1, 1, 6, 6)).astype(np.uint8)
    out = M.Emboss(alpha=1.0, strength=2.0)(mge.tensor(x))
    assert out.dtype == np.uint8
    expected = np.clip(torch_blur(x.astype(np.float32), emboss_kernel(1.0, 2.0)), 0, 255)
    np.testing.assert_allclose(out.numpy(), expected.astype(np.uint8), atol=1)
    with pytest.raises(TypeError, match="bool"):
        M.Emboss(alpha=True, strength=1.0)(mge.tensor(x))


def test_linear_contrast_uint8_and_float():
    row = np.array([0, 100, 127, 200, 255], np.uint8).reshape(1, 1, 1, 5)
    out = M.LinearContrast(alpha=0.5)(mge.tensor(row))
    assert out.dtype == np.uint8
    # 127 + 0.5 * (v - 127), truncated: 63.5 -> 63, 113.5 -> 113, 163.5 -> 163, 191
    assert out.numpy().ravel().tolist() == [63, 113, 127, 163, 191]
    assert M.LinearContrast(alpha=3.0)(mge.tensor(row)).numpy().ravel().tolist() == \
        [0, 46, 127, 255, 255]
    x = np.random.RandomState(4).randn(6, 3, 2, 2).astype(np.float32)
    np.testing.assert_allclose(M.LinearContrast(alpha=1.5)(mge.tensor(x)).numpy(), 1.5 * x,
                               rtol=1e-6)
    ratio = M.LinearContrast(alpha=(0.5, 2.0), seed=1)(mge.tensor(x)).numpy() / x
    per_image = ratio.reshape(6, -1)
    np.testing.assert_allclose(per_image, per_image[:, :1].repeat(12, 1), rtol=1e-5)
    assert np.all((per_image >= 0.5 - 1e-6) & (per_image <= 2.0 + 1e-6))
    ratio = M.LinearContrast(alpha=(0.5, 2.0), per_channel=True, seed=1)(mge.tensor(x)).numpy() / x
    per_channel = ratio.reshape(6, 3, -1)
    np.testing.assert_allclose(per_channel, per_channel[..., :1].repeat(4, -1), rtol=1e-5)
    assert len(np.unique(np.round(per_channel[..., 0], 5))) > 6
