"""Tests for megengine/module/init.py and the layers' default initialization (vs torch.nn.init)."""
import math

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine import Parameter, Tensor
from megengine.module import init
from devices import address


def _param(*shape):
    return Parameter(np.zeros(shape, np.float32))


def _torch_std(fill, shape):
    t = torch.empty(shape)
    fill(t)
    return t.std().item(), t.abs().max().item()


def test_fill_zeros_ones_write_in_place_keeping_dtype():
    p = _param(3, 4)
    before = address(p)
    init.fill_(p, 2.5)
    assert (p.numpy() == 2.5).all() and address(p) == before
    init.ones_(p)
    assert (p.numpy() == 1).all()
    init.zeros_(p)
    assert (p.numpy() == 0).all() and address(p) == before
    ints = Tensor(np.zeros(3, np.int32))
    init.fill_(ints, 7)
    assert ints.dtype == np.int32 and ints.numpy().tolist() == [7, 7, 7]
    with pytest.raises(TypeError, match="expected a Tensor"):
        init.zeros_(np.zeros(3))


@pytest.mark.parametrize("shape", [(5, 7), (8, 3, 3, 3), (6, 2, 5)])
def test_fans_match_torch_for_ungrouped_weights(shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.calculate_fan_in_and_fan_out(_param(*shape)) == expected
    assert init.calculate_correct_fan(_param(*shape), "FAN_OUT") == expected[1]


def test_grouped_weight_fans_ignore_the_group_dim():
    # upstream: (G, O/G, I/G, kh, kw) gives fan_in = I/G*kh*kw and fan_out = O/G*kh*kw
    assert init.calculate_fan_in_and_fan_out(_param(4, 3, 2, 5, 5)) == (2 * 25, 3 * 25)


def test_fan_errors():
    with pytest.raises(ValueError, match=r"at least 2 dims, got shape \(4,\)"):
        init.calculate_fan_in_and_fan_out(_param(4))
    with pytest.raises(ValueError, match="'fan_avg'"):
        init.calculate_correct_fan(_param(2, 2), "fan_avg")


@pytest.mark.parametrize("name,param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                        ("tanh", None), ("relu", None), ("leaky_relu", None),
                                        ("leaky_relu", 0.2), ("leaky_relu", 3)])
def test_gain_matches_torch(name, param):
    assert init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


def test_gain_errors():
    with pytest.raises(ValueError, match="'selu'"):
        init.calculate_gain("selu")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", True)


def test_uniform_and_normal_statistics():
    p = _param(200, 200)
    init.uniform_(p, -2.0, 3.0)
    v = p.numpy()
    assert v.min() >= -2 and v.max() < 3 and abs(v.mean() - 0.5) < 0.05
    assert abs(v.std() - 5 / math.sqrt(12)) < 0.02
    init.normal_(p, 1.0, 0.5)
    v = p.numpy()
    assert abs(v.mean() - 1.0) < 0.01 and abs(v.std() - 0.5) < 0.01
    assert p.dtype == np.float32


def test_init_draws_from_megengine_randoms_generator_not_numpys():
    # upstream's initialisers draw from megengine.random: its seed makes them repeat, numpy's
    # global RNG neither reaches them nor is advanced by them (earlier versions of this fork
    # drew from np.random, which megengine.random.seed also reseeded)
    a, b, c = _param(4, 4), _param(4, 4), _param(4, 4)
    mge.random.seed(3)
    init.normal_(a)
    mge.random.seed(3)
    np.random.seed(5)
    init.normal_(b)
    after_init = np.random.rand(2)
    np.random.seed(5)
    init.normal_(c)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(b.numpy(), c.numpy())
    np.random.seed(5)
    np.testing.assert_array_equal(after_init, np.random.rand(2))


@pytest.mark.parametrize("ours,theirs,uniform", [
    (init.xavier_uniform_, torch.nn.init.xavier_uniform_, True),
    (init.xavier_normal_, torch.nn.init.xavier_normal_, False),
    (lambda t: init.xavier_uniform_(t, gain=2.0),
     lambda t: torch.nn.init.xavier_uniform_(t, gain=2.0), True),
    (init.msra_uniform_, lambda t: torch.nn.init.kaiming_uniform_(t, a=0), True),
    (init.msra_normal_, lambda t: torch.nn.init.kaiming_normal_(t, a=0), False),
    (lambda t: init.msra_uniform_(t, a=math.sqrt(5)),
     lambda t: torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5)), True),
    (lambda t: init.msra_normal_(t, mode="fan_out", nonlinearity="relu"),
     lambda t: torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"), False),
])
def test_xavier_and_msra_match_torch_statistics(ours, theirs, uniform):
    shape = (64, 32, 3, 3)
    p = _param(*shape)
    ours(p)
    std, peak = _torch_std(theirs, shape)
    v = p.numpy()
    assert abs(v.std() - std) < 0.03 * std
    assert abs(v.mean()) < 0.03 * std
    if uniform:  # the same bound: both reach within 1% of it
        assert abs(np.abs(v).max() - peak) < 0.01 * peak


def _std(t):
    return float(t.numpy().std())


def test_linear_default_init_is_normal_over_fan_in():
    m = M.Linear(400, 300)
    assert abs(_std(m.weight) - math.sqrt(1 / 400)) < 0.02 * math.sqrt(1 / 400)
    assert (m.bias.numpy() == 0).all()


def test_conv_default_init_is_normal_over_fan_in():
    m = M.Conv2d(16, 64, 3, groups=4)
    assert m.weight.shape == (4, 16, 4, 3, 3) and m.bias.shape == (1, 64, 1, 1)
    target = math.sqrt(1 / (16 * 9))  # upstream counts all in_channels, not per group
    assert abs(_std(m.weight) - target) < 0.05 * target
    assert (m.bias.numpy() == 0).all()
    t = M.ConvTranspose2d(8, 32, 3)
    target = math.sqrt(1 / (32 * 9))  # transposed: fan-in over out_channels
    assert t.weight.shape == (8, 32, 3, 3) and abs(_std(t.weight) - target) < 0.05 * target
    c1 = M.Conv1d(10, 20, 5)
    assert c1.weight.shape == (20, 10, 5) and c1.bias.shape == (1, 20, 1)
    assert abs(_std(c1.weight) - math.sqrt(1 / 50)) < 0.1 * math.sqrt(1 / 50)


def test_norm_and_embedding_default_init():
    bn = M.BatchNorm2d(5)
    assert (bn.weight.numpy() == 1).all() and (bn.bias.numpy() == 0).all()
    assert (bn.running_mean.numpy() == 0).all() and (bn.running_var.numpy() == 1).all()
    bn.running_mean._reset(np.full((1, 5, 1, 1), 3, np.float32))
    bn.weight._reset(np.full((1, 5, 1, 1), 3, np.float32))
    bn.reset_parameters()
    assert (bn.running_mean.numpy() == 0).all() and (bn.weight.numpy() == 1).all()
    ln = M.LayerNorm((3, 4))
    assert ln.weight.shape == (3, 4) and (ln.weight.numpy() == 1).all()
    emb = M.Embedding(300, 200)
    assert abs(_std(emb.weight) - 1) < 0.02 and abs(float(emb.weight.numpy().mean())) < 0.02
    prelu = M.PReLU(3, init=0.1)
    assert prelu.weight.shape == (1, 3, 1, 1) and np.allclose(prelu.weight.numpy(), 0.1)
    assert M.PReLU(init=1).weight.dtype == np.float32


def test_reset_parameters_draws_anew_as_upstream():
    # upstream 1.13 measured (each layer's parameters set to 7, then reset_parameters()):
    # norms back to weight 1 / bias 0; BatchMatMulActivation's N(0, 1 / fan_in) weight and
    # zero bias; MultiHeadAttention's packed (1, 4 e^2 + 4 e) parameter Glorot-uniform over its
    # (1, 288) shape (bound sqrt(6 / 289) = 0.144) with its 32 biases zero
    def scrambled(m):
        for p in m.parameters():
            p._reset(np.full(p.shape, 7, np.float32))
        m.reset_parameters()
        return {n: p.numpy() for n, p in m.named_parameters()}

    for m in (M.GroupNorm(2, 4), M.InstanceNorm(4), M.GeneralNorm((2, 3), (1, 2))):
        got = scrambled(m)
        assert (got["weight"] == 1).all() and (got["bias"] == 0).all(), type(m).__name__
    got = scrambled(M.BatchMatMulActivation(64, 30, 20, bias=True))
    assert (got["bias"] == 0).all()
    assert abs(float(got["weight"].std()) - math.sqrt(1 / 30)) < 0.1 * math.sqrt(1 / 30)
    got = scrambled(M.MultiHeadAttention(8, 2, bias=True))["io_weight_bias"].ravel()
    weights, biases = got[:256], got[256:]
    assert (biases == 0).all() and len(biases) == 32
    bound = math.sqrt(6 / 289)
    assert np.abs(weights).max() <= bound and np.abs(weights).max() > 0.9 * bound


def test_normal_negative_std_mirrors_the_draws_as_upstream():
    # upstream 1.13 measured: seed(3); normal_(a, 1, 2) and seed(3); normal_(b, 1, -2) give
    # (a - 1) == -(b - 1) to 2.4e-7 (earlier versions of this fork raised numpy's "scale < 0")
    a, b = _param(50, 20), _param(50, 20)
    mge.random.seed(3)
    init.normal_(a, 1.0, 2.0)
    mge.random.seed(3)
    init.normal_(b, 1.0, -2.0)
    np.testing.assert_allclose(b.numpy() - 1, -(a.numpy() - 1), atol=1e-6)
    assert abs(b.numpy().std() - 2.0) < 0.1


@pytest.mark.parametrize("a, b", [(1.0, -1.0), (1.0, 1.0)])
def test_uniform_refuses_an_empty_range_as_upstream(a, b):
    # upstream 1.13 measured: uniform_(t, 1, -1) and uniform_(t, 1, 1) raise AssertionError
    # ("Uniform is not defined when low >= high"); the tensor is left as it was
    p = _param(3, 3)
    before = p.numpy().copy()
    with pytest.raises(AssertionError, match="a >= b"):
        init.uniform_(p, a, b)
    np.testing.assert_array_equal(p.numpy(), before)
