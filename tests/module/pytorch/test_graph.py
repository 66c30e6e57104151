"""megengine/module/pytorch/_graph.py: GradManager callbacks see a PyTorchModule's inputs and
parameters in the order torch's own hooks (register_post_accumulate_grad_hook) see them."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fa, self.fb = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, a, b):
        return self.fa(a) * torch.tanh(self.fb(b))


def _mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(27, 2))


def torch_seen(module, inputs):
    """(names in torch's hook order, gradients by name) for module(*inputs).sum().backward();
    inputs are named x0, x1, ..."""
    seen = []
    leaves = {f"x{i}": torch.tensor(a, requires_grad=True) for i, a in enumerate(inputs)}
    leaves.update((k, p) for k, p in module.named_parameters() if p.requires_grad)
    for k, t in leaves.items():
        t.register_post_accumulate_grad_hook(lambda t, k=k: seen.append(k))
    module(*[leaves[f"x{i}"] for i in range(len(inputs))]).sum().backward()
    grads = {k: t.grad.numpy().copy() for k, t in leaves.items()}
    module.zero_grad(set_to_none=True)
    return seen, grads


def mge_seen(wrapper, inputs, steps=2):
    """The names GradManager callbacks saw, per step (same names as torch_seen), and .grad."""
    xs = {f"x{i}": mge.tensor(a) for i, a in enumerate(inputs)}
    tensors = {**xs, **dict(wrapper.named_parameters())}
    seen = []
    gm = GradManager()
    for k, t in tensors.items():
        gm.attach(t, callbacks=lambda t, g, k=k: (seen.append(k), g)[1])
    per_step = []
    for _ in range(steps):
        del seen[:]
        for t in tensors.values():
            t.grad = None
        with gm:
            gm.backward(wrapper(*xs.values()).sum())
        per_step.append(list(seen))
    return per_step, {k: t.grad.numpy() for k, t in tensors.items() if t.grad is not None}


@pytest.mark.parametrize("make, shapes", [
    (_mlp, [(2, 4)]),
    (_cnn, [(2, 2, 5, 5)]),
    (TwoInputs, [(2, 4), (2, 4)]),
], ids=["mlp", "cnn-batchnorm", "two-inputs"])
def test_callbacks_in_torchs_hook_order(make, shapes):
    torch.manual_seed(0)
    module = make()
    inputs = [np.random.randn(*s).astype(np.float32) for s in shapes]
    expected, tgrads = torch_seen(copy.deepcopy(module), inputs)
    steps, grads = mge_seen(PyTorchModule(module), inputs)
    assert steps == [expected, expected]  # the first step too: the order is read in forward
    for k in expected:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=1e-5, atol=1e-6)


def test_known_orders():
    # what torch's hooks gave when this was written: the last layer first, a Linear's bias
    # before its weight, a Conv2d's and BatchNorm's weight before their bias, the input when
    # its first user (the first layer) hands it its gradient
    torch.manual_seed(0)
    x = np.random.randn(2, 4).astype(np.float32)
    assert mge_seen(PyTorchModule(_mlp()), [x], steps=1)[0][0] == [
        "2.bias", "2.weight", "0.bias", "x0", "0.weight"]
    x = np.random.randn(2, 2, 5, 5).astype(np.float32)
    assert mge_seen(PyTorchModule(_cnn()), [x], steps=1)[0][0] == [
        "4.bias", "4.weight", "1.weight", "1.bias", "x0", "0.weight", "0.bias"]


def test_frozen_parameters_and_eval_mode():
    # a frozen torch parameter gets no gradient and no callback; eval mode (a different torch
    # graph: batch norm on running statistics) is read on its own
    torch.manual_seed(0)
    module = _cnn()
    module[0].bias.requires_grad_(False)
    x = np.random.randn(2, 2, 5, 5).astype(np.float32)
    wrapper = PyTorchModule(copy.deepcopy(module))
    for mode in ("train", "eval"):
        getattr(module, mode)()
        getattr(wrapper, mode)()
        expected, _ = torch_seen(module, [x])
        assert "0.bias" not in expected
        assert mge_seen(wrapper, [x], steps=1)[0][0] == expected


def test_inside_a_megengine_network():
    # torch extractor in a PyTorchModule, megengine classifier after it: the classifier's
    # bias and weight first (upstream's linear: matmul, then + bias; torch's 2-d linear agrees),
    # then the extractor's parameters in torch's order
    torch.manual_seed(0)
    extractor, classifier = _mlp(), nn.Linear(2, 3)
    x = np.random.randn(5, 4).astype(np.float32)
    tnet = nn.Sequential(copy.deepcopy(extractor), copy.deepcopy(classifier))
    expected, _ = torch_seen(tnet, [x])

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.extract = PyTorchModule(extractor)
            self.fc = M.Linear(2, 3)
            self.fc.weight.set_value(classifier.weight.detach().numpy())
            self.fc.bias.set_value(classifier.bias.detach().numpy())

        def forward(self, x):
            return self.fc(self.extract(x))

    net = Net()
    # megengine's names -> the torch Sequential's ("extract.0.weight" -> "0.0.weight")
    rename = {f"extract.{k}": f"0.{k}" for k, _ in extractor.named_parameters()}
    rename.update({"fc.weight": "1.weight", "fc.bias": "1.bias", "x0": "x0"})
    seen, _ = mge_seen(net, [x], steps=1)
    assert [rename[k] for k in seen[0]] == expected
    assert expected[:2] == ["1.bias", "1.weight"]
