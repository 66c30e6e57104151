"""ConvBn2d / ConvBnRelu2d against torch's Conv2d + BatchNorm2d (+ ReLU): values, gradients,
running statistics, padding modes (kept by the QAT layer), and upstream's state-dict names."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine.quantization import disable_fake_quant, quantize_qat
from module_oracle import randn, run_both


class TorchConvBn(torch.nn.Module):
    def __init__(self, relu, **conv):
        super().__init__()
        self.conv = torch.nn.Conv2d(**conv)
        self.bn = torch.nn.BatchNorm2d(conv["out_channels"], momentum=0.1)  # ours 0.9
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.conv(x))
        return torch.relu(y) if self.relu else y


@pytest.mark.parametrize("cls, relu", [(M.ConvBn2d, False), (M.ConvBnRelu2d, True)])
@pytest.mark.parametrize("training", [True, False])
def test_conv_bn_matches_torch(cls, relu, training):
    kw = dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1, groups=1)
    m = cls(**kw)
    t = TorchConvBn(relu, **kw)
    m.train(training)
    t.train(training)
    if not training:  # eval normalizes with running statistics: give both the same ones
        mean, var = randn(4), np.abs(randn(4)) + 0.5
        m.bn.running_mean._reset(mean.reshape(1, 4, 1, 1))
        m.bn.running_var._reset(var.reshape(1, 4, 1, 1))
        t.bn.running_mean.copy_(torch.from_numpy(mean))
        t.bn.running_var.copy_(torch.from_numpy(var))
    run_both(m, t, randn(2, 3, 7, 7), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.bn.running_mean.numpy().ravel(), t.bn.running_mean.numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.bn.running_var.numpy().ravel(), t.bn.running_var.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_state_dict_names_are_upstreams():
    keys = set(M.ConvBnRelu2d(2, 3, 1).state_dict())
    assert keys == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                    "bn.running_var"}
    assert "conv.bias" not in M.ConvBn2d(2, 3, 1, bias=False).state_dict()


@pytest.mark.parametrize("cls, relu", [(M.ConvBn2d, False), (M.ConvBnRelu2d, True)])
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate"])
def test_padding_mode_reaches_the_conv_and_its_qat_layer(cls, relu, padding_mode):
    # upstream 1.13's fused layers take padding_mode (after track_running_stats) and pass it to
    # their Conv2d; earlier versions of this fork refused the argument
    kw = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)
    m = cls(**kw, padding_mode=padding_mode)
    assert m.conv.padding_mode == padding_mode
    t = TorchConvBn(relu, **kw, padding_mode=padding_mode)
    run_both(m, t, randn(2, 3, 6, 7), rtol=1e-4, atol=1e-4)
    m.eval()
    x = randn(2, 3, 6, 7)
    expected = m(mge.tensor(x)).numpy()
    qat = quantize_qat(m, inplace=False)
    assert qat.conv.padding_mode == padding_mode
    disable_fake_quant(qat)
    qat.eval()
    np.testing.assert_allclose(qat(mge.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)
