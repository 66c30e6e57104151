"""Tests for megengine/amp/convert_format.py: 4-D/5-D parameters and buffers get channels-last
storage and format "nhwc", values and outputs unchanged, upstream's NHWC shapes with auto
conversion off, other tensors untouched, inplace=False leaves the original alone, PyTorchModule
storage is not replaced, and amp training of a converted model matches the unconverted one."""
import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine import amp
from megengine.core import torch_bridge
from devices import address


class MyModule(M.Module):
    # the module of upstream's test_convert_format.py
    class InnerModule(M.Module):
        def __init__(self):
            super().__init__()
            self.bn = M.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(x)

    def __init__(self):
        super().__init__()
        self.i = self.InnerModule()
        self.conv = M.Conv2d(4, 4, 4, groups=2)
        self.bn = M.BatchNorm2d(4)
        self.param = mge.Parameter(np.random.rand(1, 3, 1, 1).astype(np.float32))
        self.buff = mge.Tensor(np.random.rand(1, 3, 2, 2).astype(np.float32))

    def forward(self, x):
        return self.bn(self.i(self.conv(x)))


def _channels_last(a):
    """The channel dim (1 of NCHW; 2 of a grouped (G, O/G, I/G, kh, kw) weight) is innermost
    and the rest is dense: the NHWC view is C-contiguous."""
    to_last = (0, 2, 3, 1) if a.ndim == 4 else (0, 1, 3, 4, 2)
    return a.transpose(to_last).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("inplace", [False, True])
def test_convert_module(inplace):
    m = MyModule()
    m.eval()
    x = mge.tensor(np.random.rand(2, 4, 7, 7).astype(np.float32))
    before = {k: v.numpy().copy() for k, v in m.named_tensors()}
    y0 = m(x).numpy()
    converted = amp.convert_module_format(m, inplace)
    assert (converted is m) == inplace
    for name, t in converted.named_tensors():
        np.testing.assert_array_equal(t.numpy(), before[name])  # values kept, shape NCHW
        if t.ndim in (4, 5):
            assert t.format == "nhwc", name
            assert _channels_last(t._data), (name, t._data.strides)
        else:
            assert getattr(t, "format", "default") != "nhwc", name
    np.testing.assert_allclose(converted(x).numpy(), y0, rtol=1e-6, atol=1e-6)
    if not inplace:  # the original keeps its layout
        assert getattr(m.conv.weight, "format", "default") != "nhwc"
        assert m.conv.weight._data.flags["C_CONTIGUOUS"]
    assert converted.conv.weight.shape == (2, 2, 2, 4, 4)


@pytest.mark.parametrize("inplace", [False, True])
def test_auto_conversion_off_shows_upstreams_nhwc_shapes(inplace):
    # the shapes upstream's test_convert_format.py expects with _auto_format_convert off
    from megengine.core._config import set_auto_format_convert

    m = amp.convert_module_format(MyModule(), inplace)
    expected = {"conv.weight": (2, 2, 4, 4, 2), "param": (1, 1, 1, 3), "buff": (1, 2, 2, 3)}
    values = {name: t.numpy() for name, t in m.named_tensors()}
    previous = set_auto_format_convert(False)
    try:
        for name, t in m.named_tensors():
            assert t.format == "nhwc", name
            assert t.shape == expected.get(name, (1, 1, 1, 4)), name
            perm = (0, 1, 3, 4, 2) if t.ndim == 5 else (0, 2, 3, 1)
            np.testing.assert_array_equal(t.numpy(), values[name].transpose(perm))
    finally:
        set_auto_format_convert(previous)


def test_amp_training_of_a_converted_model_matches_the_plain_one():
    # upstream's test_format_remained: outputs stay "nhwc" step after step; here also checked
    # against the same model unconverted, trained on the same batches
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = M.BatchNorm2d(8)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def train(model, image, convert):
        if convert:
            model = amp.convert_module_format(model)
            image = amp.convert_tensor_format(image)
        gm = GradManager().attach(model.parameters())
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = amp.GradScaler()
        label = mge.tensor(np.random.RandomState(1).randint(0, 8, (2, 6, 6)), dtype="int32")
        outs = []
        for _ in range(3):
            with amp.autocast():
                with gm:
                    logits = model(image)
                    scaler.backward(gm, F.nn.cross_entropy(logits, label))
            opt.step().clear_grad()
            outs.append(logits)
        return model, outs

    image = mge.tensor(np.random.rand(2, 3, 6, 6).astype(np.float32))
    first, twin = Net(), Net()
    twin.load_state_dict({k: v.copy() for k, v in first.state_dict().items()})
    plain, expected = train(first, image, False)
    converted, got = train(twin, image, True)
    for e, g in zip(expected, got):
        assert g.format == "nhwc" and e.format == "default"
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=2e-3, atol=2e-3)
    for (name, p), (_, q) in zip(plain.named_parameters(), converted.named_parameters()):
        assert q.format == "nhwc" and _channels_last(q._data), name
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_optimizer_updates_keep_the_layout():
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    conv = M.Conv2d(3, 5, 3)
    amp.convert_module_format(conv)
    gm = GradManager().attach(conv.parameters())
    opt = optim.SGD(conv.parameters(), lr=0.1)
    w0 = conv.weight.numpy().copy()
    with gm:
        loss = F.sum(conv(mge.tensor(np.random.rand(2, 3, 6, 6).astype("float32"))))
        gm.backward(loss)
    g = conv.weight.grad.numpy().copy()
    opt.step()
    np.testing.assert_allclose(conv.weight.numpy(), w0 - 0.1 * g, rtol=1e-6, atol=1e-7)
    assert _channels_last(conv.weight._data)
    # ATen sees the weight as channels-last memory, without a copy
    import torch
    w = torch_bridge.to_torch(conv.weight._data)
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert w.data_ptr() == address(conv.weight)


def test_pytorch_module_storage_is_left_alone():
    torch = pytest.importorskip("torch")
    from megengine.module.pytorch import PyTorchModule

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.t = PyTorchModule(torch.nn.Conv2d(2, 3, 3))
            self.conv = M.Conv2d(3, 3, 1)

    net = Net()
    shared = net.t.named_parameters().__next__()[1]
    ptr = address(shared)
    amp.convert_module_format(net)
    assert address(shared) == ptr  # still the torch tensor's memory
    assert net.conv.weight.format == "nhwc"


def test_convert_tensor_format_rejects_non_tensors():
    with pytest.raises(TypeError, match="expected a Tensor"):
        amp.convert_tensor_format(np.ones((1, 2, 3, 4)))
    t = mge.tensor(np.ones((2, 3)))
    assert amp.convert_tensor_format(t) is t  # not 4-D/5-D: unchanged


@pytest.mark.parametrize("index", [0, 1])
def test_the_amp_page_examples_run(index):
    # docs/api/amp.rst, "What autocast changes" and "Tensor format (NHWC)": each code block runs
    # as written
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "api" / "amp.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)", page)
    assert len(blocks) == 2
    code = "\n".join(line[4:] for line in blocks[index].splitlines())
    exec(compile(code, "amp.rst", "exec"), {})


def test_a_pytorch_module_gets_converted_inputs_in_torchs_own_layout():
    # torch code written for the tensors torch makes (x.view(n, -1) fails on channels-last
    # memory) keeps working when the megengine side is converted; values and gradients too
    torch = pytest.importorskip("torch")
    import megengine.functional as F
    from megengine.autodiff import GradManager
    from megengine.module.pytorch import PyTorchModule

    class Extractor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 2, 3)

        def forward(self, x):
            assert x.is_contiguous()
            y = self.conv(x)
            return y.view(y.size(0), -1)

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 4, 1)
            self.t = PyTorchModule(Extractor())
            self.fc = M.Linear(2 * 3 * 3, 2)

        def forward(self, x):
            return self.fc(self.t(F.relu(self.conv(x))))

    def run(net, x):
        gm = GradManager().attach([x] + list(net.parameters()))
        with gm:
            y = net(x)
            gm.backward((y * y).sum())
        return y.numpy(), [t.grad.numpy() for t in [x] + list(net.parameters())]

    net = Net()
    data = np.random.rand(2, 3, 5, 5).astype(np.float32)
    y0, g0 = run(net, mge.tensor(data))
    for t in net.parameters():
        t.grad = None
    amp.convert_module_format(net)
    x = amp.convert_tensor_format(mge.tensor(data))
    y1, g1 = run(net, x)
    assert _channels_last(x._data)  # the engine's copy keeps its layout
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
