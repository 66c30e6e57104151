"""Dumped programs the tool tests share: a tiny conv-bn-relu-pool-linear net (with its eager
model, the oracle) and a two-input program, written once per test session."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace


class TinyNet(M.Module):
    """conv 2->3 (3x3, pad 1) on 4x4, batch norm, relu, 2x2 max pool, linear 12->5."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(2, 3, 3, padding=1)
        self.bn = M.BatchNorm2d(3)
        self.pool = M.MaxPool2d(2)
        self.fc = M.Linear(12, 5)

    def forward(self, x):
        return self.fc(F.flatten(self.pool(F.relu(self.bn(self.conv(x)))), 1))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(eager model, path of its dump with input 'data' of shape (1, 2, 4, 4), path of the same
    dump with two stored test cases)."""
    rng = np.random.RandomState(3)
    net = TinyNet()
    for p in net.parameters():
        p._reset(mge.tensor(rng.uniform(-1, 1, p.shape).astype("float32")))
    net.bn.running_mean[...] = mge.tensor(rng.uniform(-0.5, 0.5, (1, 3, 1, 1)).astype("float32"))
    net.bn.running_var[...] = mge.tensor(rng.uniform(0.5, 2, (1, 3, 1, 1)).astype("float32"))
    net.eval()

    @trace(symbolic=True, capture_as_const=True)
    def fwd(data):
        return net(data)

    fwd(mge.tensor(np.zeros((1, 2, 4, 4), "float32")))
    d = tmp_path_factory.mktemp("tiny")
    plain, cases = d / "tiny.mge", d / "tiny_cases.mge"
    fwd.dump(str(plain), arg_names=["data"], output_names=["logits"])
    fwd.dump(str(cases), arg_names=["data"], output_names=["logits"],
             input_data=["#rand(0,1)", "#rand(-1,1)"])
    return net, str(plain), str(cases)


@pytest.fixture(scope="session")
def two_inputs(tmp_path_factory):
    """Path of a dump of ``(a * 2 + b, a - b)`` with inputs 'a' (2, 3) and 'b' (2, 3)."""
    @trace(symbolic=True, capture_as_const=True)
    def fwd(a, b):
        return a * 2 + b, a - b

    fwd(mge.tensor(np.zeros((2, 3), "float32")), mge.tensor(np.ones((2, 3), "float32")))
    path = tmp_path_factory.mktemp("two") / "two.mge"
    fwd.dump(str(path), arg_names=["a", "b"], output_names=["s", "d"])
    return str(path)
