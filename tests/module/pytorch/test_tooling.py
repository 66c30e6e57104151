"""MegEngine's own tools over a network holding a PyTorchModule (module_stats, the profiler,
traced_module, quantization, deepcopy, modes, hub, dtr, the module walk), each against an independent oracle:
the same network with the torch part ported to megengine layers by hand, or the network itself
before the tool ran."""
import copy
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
import megengine.quantization as Q
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule
from megengine.traced_module import trace_module
from megengine.utils.module_stats import module_stats
from megengine.utils.module_utils import set_module_mode_safe
from megengine.utils.profiler import Profiler
from devices import host, host_default_device, torch_device, torch_host  # noqa: F401  (a fixture)


class _TorchBody(nn.Module):
    """conv, batch norm, pooling and linear: the layer kinds the tools treat specially."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 8)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class _PortedBody(M.Module):
    """`_TorchBody` written with megengine layers."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.pool = M.MaxPool2d(2)
        self.fc = M.Linear(4 * 2 * 2, 8)

    def forward(self, x):
        return self.fc(F.flatten(self.pool(F.relu(self.bn(self.conv(x)))), 1))


class _Hybrid(M.Module):
    def __init__(self, body):
        super().__init__()
        self.pre = M.Conv2d(2, 3, 1)
        self.body = body
        self.head = M.Linear(8, 5)

    def forward(self, x):
        return self.head(F.relu(self.body(self.pre(x))))


def _hybrid():
    torch.manual_seed(0)  # (torch's initialisers draw from torch's generator, not megengine's)
    return _Hybrid(PyTorchModule(_TorchBody()))


def _input():
    return mge.tensor(np.random.rand(2, 2, 4, 4).astype("float32"))


def _train(net, x, steps=2):
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    label = mge.tensor(np.array([1, 3], dtype="int32"))
    for _ in range(steps):
        with gm:
            gm.backward(F.loss.cross_entropy(net(x), label))
        opt.step().clear_grad()


def _state(net):
    return {k: host(v).copy() for k, v in net.state_dict().items()}


def _assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_module_stats_count_the_torch_part_as_its_megengine_port():
    x = np.random.rand(2, 2, 4, 4).astype("float32")
    total, details = module_stats(_hybrid(), inputs=(x,), logging_to_stdout=False)
    want_total, want = module_stats(_Hybrid(_PortedBody()), inputs=(x,), logging_to_stdout=False)
    assert total == want_total
    assert [r["name"] for r in details.params] == [r["name"] for r in want.params]
    assert "body.conv-w" in [r["name"] for r in details.params]
    for got_rows, want_rows, key in ((details.flops, want.flops, "flops_num"),
                                     (details.activations, want.activations, "act_dim")):
        assert [(r["name"], r.get(key)) for r in got_rows] == \
            [(r["name"], r.get(key)) for r in want_rows]
    assert [r["class_name"] for r in details.flops[:-1]] == [
        "Conv2d", "torch Conv2d", "torch BatchNorm2d", "torch MaxPool2d", "torch Linear",
        "Linear"]
    # without cal_params the rows of the parameters the forward reads are listed all the same,
    # unsummed, as upstream lists a megengine layer's
    _, details = module_stats(_hybrid(), inputs=(x,), cal_params=False, logging_to_stdout=False)
    _, want = module_stats(_Hybrid(_PortedBody()), inputs=(x,), cal_params=False,
                           logging_to_stdout=False)
    assert [r["name"] for r in details.params] == [r["name"] for r in want.params]
    assert "body.conv-w" in [r["name"] for r in details.params]


def test_module_stats_count_a_parameter_once_across_the_two_sides():
    class Tied(M.Module):  # a megengine layer using the wrapped weight as well
        def __init__(self):
            super().__init__()
            self.body = PyTorchModule(nn.Linear(3, 3))
            self.out = M.Linear(3, 3)
            self.out.weight = self.body.weight

        def forward(self, x):
            return self.out(self.body(x))

    total, details = module_stats(Tied(), input_shapes=[(2, 3)], logging_to_stdout=False)
    assert [r["name"] for r in details.params[:-1]] == ["body-w", "body-b", "out-b"]
    assert total.param_dims == 9 + 3 + 3


def test_module_stats_of_a_wrapper_alone_count_every_torch_parameter():
    class Seq(nn.Module):  # an LSTM has no formula: its parameters count, its FLOPs do not
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.rnn = nn.LSTM(4, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(self.norm(x))[0]

    tmod = Seq()
    total, details = module_stats(PyTorchModule(tmod), input_shapes=[(2, 3, 4)],
                                  logging_to_stdout=False)
    assert total.param_dims == sum(p.numel() for p in tmod.parameters())
    want = ["norm-w", "norm-b"] + sorted("rnn-" + n for n, _ in tmod.rnn.named_parameters())
    assert [r["name"] for r in details.params[:-1]] == want
    assert [(r["name"], r["flops_num"]) for r in details.flops[:-1]] == [("norm", 2 * 3 * 4 * 7)]


def test_module_stats_of_a_torch_part_under_bfloat16_autocast_show_torch_dtypes():
    tmod = _TorchBody()
    wrap = PyTorchModule(tmod)
    x = np.random.rand(2, 3, 4, 4).astype("float32")
    with mge.amp.autocast(low_prec_dtype="bfloat16"):
        total, details = module_stats(wrap, inputs=(x,), logging_to_stdout=False)
    # the oracle: the dtypes the same layers return under torch's own autocast
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.dtype))
               for n, m in tmod.named_children()]
    device = torch.device(torch_device())  # (where the wrapper moved tmod: CUDA on a GPU)
    with torch.autocast(device.type, dtype=torch.bfloat16), torch.no_grad():
        tmod.eval()(torch.from_numpy(x).to(device))
    for h in handles:
        h.remove()
    rows = details.activations[:-1]
    assert [(r["name"], str(r["dtype"])) for r in rows] == \
        [(n, str(d).replace("torch.", "")) for n, d in seen.items()]
    assert total.act_size == sum(r["act_dim"] * r["nbits"] // 8 for r in rows)
    assert "bfloat16" in [str(r["dtype"]) for r in rows]


class _Bf16Conv(nn.Conv2d):
    """A float32 convolution that hands on bfloat16 (its parameters cannot be bfloat16: the
    wrapper mirrors them in numpy)."""

    def forward(self, x):
        return super().forward(x).to(torch.bfloat16)


class _Fp8Linear(nn.Linear):
    """A linear layer that stores its result in float8, as an FP8 pipeline's layers do."""

    def forward(self, x):
        return super().forward(x).to(torch.float8_e4m3fn)


class _SpectrumPool(nn.AdaptiveAvgPool2d):
    """Pools the complex spectrum of its input."""

    def forward(self, x):
        return super().forward(torch.fft.fft2(x))


class _OddDtypes(nn.Module):
    """Counted layers whose outputs numpy (bfloat16, float8) or megengine (complex) cannot
    hold; the module returns float32."""

    def __init__(self):
        super().__init__()
        self.conv = _Bf16Conv(3, 4, 1)
        self.pool = _SpectrumPool(1)  # (torch pools complex values to one per plane only)
        self.fc = _Fp8Linear(4, 5)

    def forward(self, x):
        spectrum = self.pool(self.conv(x).float())
        return self.fc(spectrum.abs().flatten(1)).float()


def test_module_stats_count_torch_outputs_numpy_cannot_hold_from_their_sizes():
    torch.manual_seed(0)
    tmod = _OddDtypes()
    wrap = PyTorchModule(tmod)
    x = np.random.rand(2, 3, 4, 4).astype("float32")
    total, details = module_stats(wrap, inputs=(x,), logging_to_stdout=False)
    rows = details.activations[:-1]
    # conv: 2*4*4*4 bfloat16 (2 bytes); pool: 2*4*1*1 complex64 (8 bytes); fc: 2*5 float8
    assert [(r["name"], str(r["dtype"]), r["shape"], r["act_dim"], r["nbits"])
            for r in rows] == [("conv", "bfloat16", (2, 4, 4, 4), 128, 16),
                               ("pool", "complex64", (2, 4, 1, 1), 8, 64),
                               ("fc", "float8_e4m3fn", (2, 5), 10, 8)]
    assert total.act_size == 256 + 64 + 10 and total.act_dims == 128 + 8 + 10
    # statistics of the values torch computed (float32 / complex64), as for megengine layers
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n, m in tmod.named_children()]
    with torch.no_grad():
        tmod.eval()(torch.from_numpy(x).to(tmod.conv.weight.device))
    for h in handles:
        h.remove()
    for r in rows:
        values = seen[r["name"]].to(torch.complex64 if r["name"] == "pool" else torch.float32)
        assert r["mean"] == f"{values.mean().item():.3g}", r["name"]
        assert r["std"] == f"{values.std(correction=0).item():.3g}", r["name"]
    assert [r["flops_num"] for r in details.flops[:-1]] == [
        2 * 4 * 4 * 4 * (3 + 1), 2 * 4 * 1 * 1, 2 * 5 * 4 + 5]  # (upstream's adaptive window: 1)


class _TwoWrappers(M.Module):
    """Two wrapped torch modules: one under an attribute, one in a list, around a megengine
    layer."""

    def __init__(self):
        super().__init__()
        self.body = PyTorchModule(_TorchBody())
        self.mid = M.Linear(8, 8)
        self.heads = [PyTorchModule(torch.jit.script(nn.Linear(8, 5)))]

    def forward(self, x):
        return self.heads[0](self.mid(self.body(x)))


def _torch_call_events(profiler):
    with open(os.path.join(profiler.directory, f"{os.getpid()}.chrome_timeline.json")) as f:
        events = json.load(f)["traceEvents"]
    return [(e["cat"], e["name"]) for e in events
            if e.get("ph") == "X" and e["name"].startswith("TorchCall")]


def test_profiler_events_name_the_torch_module_each_call_ran(tmp_path):
    torch.manual_seed(0)
    net = _TwoWrappers()
    alone = PyTorchModule(nn.Tanh())  # in no network: its torch class only
    x = mge.tensor(np.random.rand(2, 3, 4, 4).astype("float32"))
    gm = GradManager().attach(net.parameters())
    profiler = Profiler(str(tmp_path))
    with profiler:
        with gm:
            gm.backward(alone(net(x)).sum())
    # the wrapper's place in the network, then the torch class (a scripted module's own name)
    assert _torch_call_events(profiler) == [
        ("op", "TorchCall(body: _TorchBody)"), ("op", "TorchCall(heads.0: Linear)"),
        ("op", "TorchCall(Tanh)"),
        ("backward", "TorchCallBackward(Tanh)"), ("backward", "TorchCallBackward(heads.0: Linear)"),
        ("backward", "TorchCallBackward(body: _TorchBody)")]
    net.body.name = "backbone"  # a name the user gives wins over the attribute path
    with profiler:
        net(x)
    assert _torch_call_events(profiler)[0] == ("op", "TorchCall(backbone: _TorchBody)")


def test_stats_put_back_the_torch_layers_own_modes():
    body = _TorchBody()
    net = _Hybrid(PyTorchModule(body))
    body.bn.eval()  # a frozen BatchNorm inside a training backbone
    modes = [m.training for m in body.modules()]
    module_stats(net, input_shapes=[(2, 2, 4, 4)], logging_to_stdout=False)
    assert [m.training for m in body.modules()] == modes
    with set_module_mode_safe(net, training=False):
        assert not any(m.training for m in body.modules())
    assert [m.training for m in body.modules()] == modes and net.body.training


def test_trace_module_of_a_hybrid_net_calls_the_wrapper_as_one_module():
    net, x = _hybrid(), _input()
    net.eval()
    want = host(net(x))
    traced = trace_module(net, x)
    assert "body = getattr(self, \"body\") -> (PyTorchModule)" in str(traced.graph)
    np.testing.assert_array_equal(host(traced(x)), want)
    np.testing.assert_array_equal(host(traced.flatten()(x)), want)
    names = [n for n, _ in traced.named_modules()]
    assert {"body", "body.conv", "body.fc", "head", "pre"} <= set(names)

    loaded = pickle.loads(pickle.dumps(traced))
    np.testing.assert_array_equal(host(loaded(x)), want)
    # the loaded one has its own torch module, and trains without touching the original's
    before = _state(net)
    loaded.train()
    _train(loaded, x, steps=1)
    _assert_states_equal(_state(net), before)
    assert not np.array_equal(host(loaded(x)), want)


def test_quantize_qat_converts_the_megengine_layers_and_keeps_the_torch_part_float(
        host_default_device):  # (quantized tensors live on CPU devices only, also on a GPU machine)
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = M.QuantStub(), M.DequantStub()
            self.pre = M.Conv2d(2, 3, 1)
            self.body = PyTorchModule(_TorchBody())
            self.quant2, self.head, self.dequant2 = M.QuantStub(), M.Linear(8, 5), M.DequantStub()

        def forward(self, x):
            h = self.body(self.dequant(self.pre(self.quant(x))))
            return self.dequant2(self.head(self.quant2(h)))

    torch.manual_seed(0)
    net, x = Net(), _input()
    float_net = copy.deepcopy(net)
    qat = Q.quantize_qat(net)
    assert isinstance(qat.head, M.qat.Linear) and isinstance(qat.pre, M.qat.Conv2d)
    assert type(qat.body) is PyTorchModule
    # with fake quantization off the QAT network computes and trains as the float one
    Q.disable_fake_quant(qat)
    Q.disable_observer(qat)
    np.testing.assert_array_equal(host(qat(x)), host(float_net(x)))
    _train(qat, x)
    _train(float_net, x)
    np.testing.assert_allclose(host(qat(x)), host(float_net(x)), rtol=1e-6, atol=1e-6)
    assert torch.equal(qat.body.torch_module.fc.weight.cpu(),
                       float_net.body.torch_module.fc.weight.cpu())

    Q.enable_observer(qat)
    Q.enable_fake_quant(qat)
    trained = host(qat.body.get_param_by_name("conv.weight")).copy()
    _train(qat, x, steps=1)  # fake-quantized training reaches the torch part too
    assert not np.array_equal(host(qat.body.get_param_by_name("conv.weight")), trained)
    qat.eval()
    fake = host(qat(x))
    quantized = Q.quantize(qat, inplace=False)
    quantized.eval()
    assert type(quantized.body) is PyTorchModule
    assert isinstance(quantized.head, M.quantized.Linear)
    # the quantized layers compute what their fake-quantized twins did, to a rounding step of
    # the head's output
    step = float(host(qat.head.get_activation_qparams().scale))
    np.testing.assert_allclose(host(quantized(x)), fake, rtol=0, atol=1.01 * step)


def _saved_and_loaded(net):
    buffer = io.BytesIO()
    mge.save(net, buffer)
    buffer.seek(0)
    return mge.load(buffer)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda net: pickle.loads(pickle.dumps(net)),
                                    _saved_and_loaded], ids=["deepcopy", "pickle", "mge.save"])
def test_training_a_copy_leaves_the_original_untouched(copier):
    net, x = _hybrid(), _input()
    net.tied = net.body.get_param_by_name("fc.bias")  # a wrapped parameter held twice
    _train(net, x, steps=1)  # moved batch-norm statistics
    before = _state(net)
    torch_before = {k: v.clone() for k, v in net.body.torch_module.state_dict().items()}
    twin = copier(net)
    assert twin.body.torch_module is not net.body.torch_module
    assert twin.tied is twin.body.get_param_by_name("fc.bias")  # the tie is kept, in the copy
    _train(twin, x, steps=2)
    _assert_states_equal(_state(net), before)
    for k, v in net.body.torch_module.state_dict().items():
        assert torch.equal(v, torch_before[k]), k
    assert not np.array_equal(host(twin.body.get_param_by_name("conv.weight")),
                              before["body.conv.weight"])


def test_train_and_eval_reach_torch_modules_through_nested_containers():
    class Holder(M.Module):
        def __init__(self):
            super().__init__()
            self.seq = M.Sequential(M.Linear(2, 2), PyTorchModule(nn.Sequential(nn.Dropout())))
            self.items = [PyTorchModule(nn.BatchNorm1d(2))]
            self.by_name = {"a": PyTorchModule(nn.Dropout())}

    holder = Holder()
    tmods = [holder.seq[1].torch_module, holder.items[0].torch_module,
             holder.by_name["a"].torch_module]
    for mode in (False, True):
        holder.train(mode)
        assert all(m.training is mode for t in tmods for m in t.modules())
    holder.seq.eval()
    assert not tmods[0][0].training and tmods[1].training


def test_named_parameters_of_a_wrapper_take_prefixes_as_torch_names():
    tmod = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    wrap = PyTorchModule(tmod)
    want = sorted("p." + n for n, _ in tmod.named_parameters())
    assert [n for n, _ in wrap.named_parameters(prefix="p")] == want
    assert list(wrap.named_parameters(recursive=False)) == []  # they sit in the mirrors
    flat = PyTorchModule(nn.Linear(2, 3))
    assert [n for n, _ in flat.named_parameters(recursive=False)] == ["bias", "weight"]
    seen = []
    _Hybrid(wrap).apply(lambda m: seen.append(type(m).__name__))
    assert seen.count("PyTorchModule") == 1
    # an initialiser applied over the tree writes into torch's memory
    wrap.apply(lambda m: M.init.fill_(m.weight, 0.5) if "weight" in vars(m) else None)
    np.testing.assert_array_equal(torch_host(tmod[0].weight), np.full((3, 2), 0.5))
    np.testing.assert_array_equal(torch_host(tmod[1].weight), np.full((3,), 0.5))


def test_hub_load_of_a_local_hubconf_building_a_hybrid_net(tmp_path):
    (tmp_path / "hubconf.py").write_text(
        "import torch.nn as nn\n"
        "import megengine.module as M\n"
        "from megengine.module.pytorch import PyTorchModule\n"
        "class Net(M.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = PyTorchModule(nn.Linear(4, 3))\n"
        "        self.head = M.Linear(3, 2)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n"
        "def hybrid(pretrained=False):\n"
        "    return Net()\n")
    net = mge.hub.load(str(tmp_path), "hybrid")
    x = np.random.rand(2, 4).astype("float32")
    torch_out = torch_host(net.body.torch_module(torch.from_numpy(x).to(
        net.body.torch_module.weight.device)).detach())
    np.testing.assert_allclose(host(net(mge.tensor(x))), host(net.head(mge.tensor(torch_out))),
                               rtol=1e-6)
    _train(M.Sequential(M.Linear(2, 4), net, M.Linear(2, 5)), mge.tensor(x[:, :2]), steps=1)


def test_dtr_enabled_trains_a_hybrid_net_as_without():
    net, x = _hybrid(), _input()
    twin = copy.deepcopy(net)
    mge.dtr.enable()
    try:
        _train(net, x)
    finally:
        mge.dtr.disable()
    _train(twin, x)
    _assert_states_equal(_state(net), _state(twin))
