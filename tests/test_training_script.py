"""The engine issue's training script, end to end, against the same network trained in PyTorch."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager

from devices import peak_rss_growth_kib


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 8, 3, padding=1)
        self.bn = M.BatchNorm2d(8)
        self.fc = M.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(F.flatten(x, 1))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8, momentum=0.1)  # upstream's momentum 0.9, torch's way
        self.fc = torch.nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def copy_weights(net, tnet):
    with torch.no_grad():
        tnet.conv.weight.copy_(torch.tensor(net.conv.weight.numpy()))
        tnet.conv.bias.copy_(torch.tensor(net.conv.bias.numpy().reshape(-1)))
        tnet.bn.weight.copy_(torch.tensor(net.bn.weight.numpy().reshape(-1)))
        tnet.bn.bias.copy_(torch.tensor(net.bn.bias.numpy().reshape(-1)))
        tnet.fc.weight.copy_(torch.tensor(net.fc.weight.numpy()))
        tnet.fc.bias.copy_(torch.tensor(net.fc.bias.numpy()))


def test_issue_script_trains_like_pytorch_and_round_trips_through_save(tmp_path):
    mge.random.seed(0)
    net, tnet = Net(), TorchNet()
    copy_weights(net, tnet)
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((16, 1, 28, 28)).astype("float32")
        y = rng.integers(0, 10, 16).astype("int32")
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(y))
            gm.backward(loss)
        opt.step().clear_grad()
        tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y).long())
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss.item() == pytest.approx(tloss.item(), rel=1e-4)
    np.testing.assert_allclose(net.fc.weight.numpy(), tnet.fc.weight.detach().numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(net.conv.weight.numpy(), tnet.conv.weight.detach().numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(net.bn.running_mean.numpy().reshape(-1), tnet.bn.running_mean.numpy(),
                               rtol=1e-4, atol=1e-6)

    path = str(tmp_path / "net.pkl")
    mge.save(net.state_dict(), path)
    other = Net()
    other.load_state_dict(mge.load(path))
    x = mge.tensor(rng.standard_normal((4, 1, 28, 28)).astype("float32"))
    net.eval(), other.eval()
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())


@pytest.mark.slow
def test_no_memory_growth_over_10000_training_steps():
    class Small(M.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = M.Linear(32, 64), M.Linear(64, 10)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    net = Small()
    gm = GradManager().attach(net.parameters())
    opt = optim.Adam(net.parameters(), lr=1e-3)
    x = mge.tensor(np.random.randn(8, 32).astype("float32"))
    y = mge.tensor(np.random.randint(0, 10, 8))

    def step():
        with gm:
            loss = F.nn.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step().clear_grad()

    grown_kb = peak_rss_growth_kib(step, warmup=1000, steps=9000)
    assert grown_kb < 10 * 1024, f"peak RSS grew by {grown_kb} KiB over 9000 steps"
