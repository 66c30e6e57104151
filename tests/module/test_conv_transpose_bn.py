"""ConvTransposeBn2d / ConvTransposeBnRelu2d against torch's ConvTranspose2d + BatchNorm2d (+ ReLU)."""
import pytest
import torch

import megengine.module as M
from module_oracle import randn, run_both


class TorchConvTransposeBn(torch.nn.Module):
    def __init__(self, relu, **conv):
        super().__init__()
        self.conv_transpose2d = torch.nn.ConvTranspose2d(**conv)
        self.bn = torch.nn.BatchNorm2d(conv["out_channels"], momentum=0.1)
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.conv_transpose2d(x))
        return torch.relu(y) if self.relu else y


@pytest.mark.parametrize("cls, relu", [(M.ConvTransposeBn2d, False), (M.ConvTransposeBnRelu2d, True)])
def test_conv_transpose_bn_matches_torch(cls, relu):
    kw = dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1)
    m, t = cls(**kw), TorchConvTransposeBn(relu, **kw)
    ym, _ = run_both(m, t, randn(2, 4, 5, 5), rtol=1e-4, atol=1e-4)
    assert ym.shape == (2, 2, 10, 10)
    assert {"conv_transpose2d.weight", "bn.running_var"} <= set(m.state_dict())
