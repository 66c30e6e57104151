"""megengine.experimental.weight_scaler: the factors against hand-computed powers of two, the
scaled training forward against a network holding the scaled weights, gradients against torch."""
import io
import logging

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.experimental import get_scaled_model
from megengine.experimental.weight_scaler import get_norm_mod_value


class Block(M.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = M.Conv2d(3, 4, 3, padding=1)
        self.conv2 = M.Conv2d(4, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv2(F.relu(self.conv1(x))))


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Conv2d(3, 3, 1)
        self.block = Block()
        self.fc = M.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.mean(self.block(self.stem(x)), axis=(2, 3)))


def _net(seed=0):
    rng = np.random.default_rng(seed)
    net = Net()
    for p in net.parameters():
        p._reset(mge.tensor(rng.standard_normal(p.shape).astype("float32")))
    return net


SCALES = {"stem": ("CONST", 4.0), "block": ("NORM", 1.0), "fc": ("NORM", 0.5)}
X = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype("float32")


def _power_below(limit):
    return 2.0 ** np.floor(np.log2(limit))  # the largest power of two not above limit


def test_norm_mod_value_is_the_largest_power_of_two_within_the_norm():
    w = mge.tensor([3.0, 4.0])  # norm 5
    for target, want in [(40.0, 8.0), (39.9, 4.0), (1.0, 0.125), (5.0, 1.0), (0.3, 0.03125)]:
        got = get_norm_mod_value(w, target)
        assert got.shape == () and got.dtype == np.float32
        assert got.item() == want, target
    assert get_norm_mod_value(mge.tensor(np.ones((2, 3, 2), "float32")), 1.0).item() == 0.25
    assert np.isinf(get_norm_mod_value(mge.tensor([0.0, 0.0]), 1.0).item())
    for bad in (0.0, -2.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="norm_value must be a positive number"):
            get_norm_mod_value(w, bad)


def test_factors_and_bias_scales_follow_the_activations_scale():
    net = _net()
    norms = {n: np.linalg.norm(m.weight.numpy()) for n, m in net.named_modules()
             if isinstance(m, (M.Conv2d, M.Linear))}
    assert get_scaled_model(net, SCALES, input_shape=(1, 3, 5, 5)) is net
    s1, s2 = _power_below(1.0 / norms["block.conv1"]), _power_below(1.0 / norms["block.conv2"])
    sfc = _power_below(0.5 / norms["fc"])
    want = {  # (weight factor, bias factor): the stem's 4 carries into the block, its
        "stem": (4.0, 4.0),  # batch norm ends it; the named Linear is scaled alone
        "block.conv1": (s1, 4.0 * s1),
        "block.conv2": (s2, 4.0 * s1 * s2),
        "fc": (sfc, sfc),
    }
    for name, (ws, bs) in want.items():
        layer = dict(net.named_modules())[name]
        assert float(layer.weight_scale) == ws and float(layer.bias_scale) == bs, name
    assert isinstance(net.stem.weight_scale, float)  # constants stay numbers, fitted are Tensors
    keys = set(net.state_dict())
    assert {"block.conv1.weight_scale", "block.conv1.bias_scale", "fc.weight_scale",
            "fc.bias_scale"} <= keys and "stem.weight_scale" not in keys


def test_training_forward_uses_the_scaled_weights_and_eval_the_stored_ones():
    net, twin = _net(), _net()
    eval_before = _eval(net)
    get_scaled_model(net, SCALES, input_shape=(1, 3, 5, 5))
    np.testing.assert_array_equal(_eval(net), eval_before)  # (before training moves the stats)
    for name, layer in net.named_modules():
        if hasattr(layer, "weight_scale"):
            other = dict(twin.named_modules())[name]
            other.weight._reset(layer.weight * layer.weight_scale)
            other.bias._reset(layer.bias * layer.bias_scale)
    x = mge.tensor(X)
    np.testing.assert_array_equal(net(x).numpy(), twin(x).numpy())


def _eval(net):
    net.eval()
    try:
        return net(mge.tensor(X)).numpy()
    finally:
        net.train()


def test_a_batch_norm_takes_the_blocks_scale_out_again():
    net, plain = _net(), _net()
    get_scaled_model(net, {"block": ("CONST", 4.0)}, input_shape=(1, 3, 5, 5))
    x = mge.tensor(X)
    assert float(net.block.conv2.bias_scale) == 16.0
    # (equal but for the batch norm's eps, which weighs 1/256 as much against 16x the values)
    np.testing.assert_allclose(net.block(x).numpy(), plain.block(x).numpy(), rtol=0, atol=1e-4)
    assert not np.allclose(net.block.conv2(net.block.conv1(x)).numpy(),
                           plain.block.conv2(plain.block.conv1(x)).numpy())


def test_gradients_reach_the_stored_parameters_through_the_factor():
    layer = M.Linear(3, 2)
    w = np.random.default_rng(2).standard_normal((2, 3)).astype("float32")
    layer.weight._reset(mge.tensor(w))
    get_scaled_model(layer, {"": ("CONST", 0.25)}, input_shape=(1, 3))
    x = np.random.default_rng(3).standard_normal((4, 3)).astype("float32")
    gm = GradManager().attach(layer.parameters())
    with gm:
        loss = (layer(mge.tensor(x)) ** 2).sum()
        gm.backward(loss)
    tw, tb = torch.tensor(w, requires_grad=True), torch.zeros(2, requires_grad=True)
    tloss = (torch.nn.functional.linear(torch.tensor(x), tw * 0.25, tb * 0.25) ** 2).sum()
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-6)
    np.testing.assert_allclose(layer.weight.grad.numpy(), tw.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(layer.bias.grad.numpy(), tb.grad.numpy(), rtol=1e-5)


def test_scaling_again_replaces_the_factors():
    net = _net()
    get_scaled_model(net, {"stem": ("CONST", 4.0)}, input_shape=(1, 3, 5, 5))
    get_scaled_model(net, {"stem": ("CONST", 2.0)}, input_shape=(1, 3, 5, 5))
    twin = _net()
    twin.stem.weight._reset(twin.stem.weight * 2.0)
    twin.stem.bias._reset(twin.stem.bias * 2.0)
    x = mge.tensor(X)
    np.testing.assert_array_equal(net(x).numpy(), twin(x).numpy())  # 2, not 4 * 2


def test_a_scaled_model_pickles_with_its_scaling():
    net = _net()
    get_scaled_model(net, SCALES, input_shape=(1, 3, 5, 5))
    buf = io.BytesIO()
    mge.save(net, buf)
    buf.seek(0)
    back = mge.load(buf)
    x = mge.tensor(X)
    np.testing.assert_array_equal(back(x).numpy(), net(x).numpy())
    assert back.fc.calc_linear.layer is back.fc


def test_a_qat_layer_is_scaled_inside_its_fake_quantization():
    from megengine.quantization import disable_fake_quant, disable_observer, quantize_qat

    net = M.Sequential(M.Linear(3, 2))
    qat = quantize_qat(M.Sequential(M.Linear(3, 2)))
    qat[0].weight._reset(net[0].weight)
    disable_fake_quant(qat)
    disable_observer(qat)
    get_scaled_model(qat, {"0": ("CONST", 8.0)}, input_shape=(1, 3))
    net[0].weight._reset(net[0].weight * 8.0)
    x = mge.tensor(X[:, :, 0, 0])
    np.testing.assert_array_equal(qat(x).numpy(), net(x).numpy())


def test_blocks_without_a_batch_norm_and_names_not_run_are_left_with_a_warning(caplog):
    class Head(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(3, 3)
            self.unused = M.Linear(3, 3)

        def forward(self, x):
            return self.fc(x)

    head = Head()
    with caplog.at_level(logging.WARNING):
        get_scaled_model(head, {"": ("CONST", 2.0), "unused": ("CONST", 2.0)}, input_shape=(1, 3))
    assert not hasattr(head.fc, "weight_scale") and not hasattr(head.unused, "weight_scale")
    text = caplog.text
    assert "no BatchNorm2d ran after the layers of ''" in text and "'unused' did not run" in text


@pytest.mark.parametrize("scales, shape, error, words", [
    ({"stem": ("CONST", 2.0)}, None, ValueError, "input_shape is required"),
    ({"stem": ("CONST", 2.0), "head": ("CONST", 2.0)}, (1, 3, 5, 5), ValueError,
     "no submodule named 'head'"),
    ({"stem": 2.0}, (1, 3, 5, 5), TypeError, "must be a pair (mode, number)"),
    ({"stem": ("NORM", "1")}, (1, 3, 5, 5), TypeError, "must be a pair (mode, number)"),
    ({"stem": ("NORM", -1.0)}, (1, 3, 5, 5), ValueError, "must be a positive number"),
    ([("stem", ("CONST", 2.0))], (1, 3, 5, 5), TypeError, "must be a dict"),
])
def test_bad_arguments_raise_and_change_nothing(scales, shape, error, words):
    net = _net()
    with pytest.raises(error) as info:
        get_scaled_model(net, scales, input_shape=shape)
    assert words in str(info.value)
    assert not any(hasattr(m, "weight_scale") for m in net.modules())


def test_a_zero_weight_cannot_be_fitted_to_a_norm_and_nothing_is_scaled():
    net = _net()
    net.block.conv2.weight._reset(F.zeros_like(net.block.conv2.weight))
    with pytest.raises(ValueError, match="'block.conv2''s weight has norm 0"):
        get_scaled_model(net, SCALES, input_shape=(1, 3, 5, 5))
    assert not any(hasattr(m, "weight_scale") for m in net.modules())  # (stem, conv1 neither)
