"""Tests for megengine.quantization.quantize: quantize_qat (conversion, shared parameters, mapping,
disabled modules), the qconfig passes, switching fake quantization and observers, EasyQuant,
a small CNN that trains with QAT and whose outputs equal the float layers' outputs
fake-quantized by upstream's formulas (numpy) at every layer, and quantize(): a QAT network
with conv-bn-relu, elemwise, concat and linear layers becomes an integer network whose outputs
equal the QAT network's, also after save/load and through trace/dump."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as Float
from megengine.autodiff import GradManager
from megengine.core.tensor import dtype
from megengine.module import qat as QAT
from megengine.module import quantized as Q
from megengine.optimizer import SGD
from megengine.quantization import (
    calibration_qconfig,
    ema_fakequant_qconfig,
    min_max_fakequant_qconfig,
    passive_qconfig,
    tqt_qconfig,
)
from megengine.quantization.fake_quant import TQT, FakeQuantize
from megengine.quantization.observer import MinMaxObserver, PassiveObserver
from megengine.quantization.quantize import (
    _get_quantable_module_names,
    apply_easy_quant,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    hook_qat_module,
    propagate_qconfig,
    quantize,
    quantize_qat,
    reset_qconfig,
)

from devices import host_default_device  # noqa: F401  (the fixture below)

# quantized tensors live on CPU devices only: on a CUDA machine these tests run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")


class Net(Float.Module):
    def __init__(self):
        super().__init__()
        self.quant = Float.QuantStub()
        self.linear = Float.Linear(3, 3)
        self.dequant = Float.DequantStub()
        self.linear.bias._reset(np.random.rand(3).astype(np.float32))

    def forward(self, x):
        return self.dequant(self.linear(self.quant(x)))


def init_qat_net():
    net = quantize_qat(Net(), qconfig=min_max_fakequant_qconfig)
    net.linear.weight_observer.min_val._reset(np.float32(-50))
    net.linear.weight_observer.max_val._reset(np.float32(30))
    net.linear.act_observer.min_val._reset(np.float32(-20))
    net.linear.act_observer.max_val._reset(np.float32(100))
    return net


def test_quantize_qat_converts_quantizable_layers_sharing_their_parameters():
    net = Net()
    weight = net.linear.weight
    qat_net = quantize_qat(net, inplace=False, qconfig=min_max_fakequant_qconfig)
    assert isinstance(qat_net.quant, QAT.QuantStub) and isinstance(qat_net.linear, QAT.Linear)
    assert isinstance(qat_net.dequant, QAT.DequantStub)
    assert isinstance(net.linear, Float.Linear) and not isinstance(net.linear, QAT.QATModule)
    same = quantize_qat(net)
    assert same is net and net.linear.weight is weight  # in place: the very same Parameter
    assert [n for n, _ in net.named_parameters()] == ["linear.bias", "linear.weight"]
    # converting again changes nothing (QAT layers are float subclasses, not float layers)
    assert quantize_qat(net).linear is net.linear


def test_quantize_qat_again_leaves_a_qat_layers_inner_layers_float():
    # MegEngine/Models' ShuffleNetV1 convert.py calls quantize_qat on a model its factory already
    # converted (upstream raises KeyError on its QAT Linear): converting again changes nothing
    # here (docs/api/quantization.rst), so the float Conv2d a QAT ConvBn2d keeps stays float and
    # no unused observers join the state dict, which a strict load_state_dict would refuse
    class ConvNet(Float.Module):
        def __init__(self):
            super().__init__()
            self.conv_bn = Float.ConvBn2d(3, 4, 3)

        def forward(self, x):
            return self.conv_bn(x)

    net = quantize_qat(ConvNet(), qconfig=min_max_fakequant_qconfig)
    keys = set(net.state_dict())
    quantize_qat(net, qconfig=min_max_fakequant_qconfig)
    assert isinstance(net.conv_bn, QAT.ConvBn2d)
    assert type(net.conv_bn.conv) is Float.Conv2d
    assert set(net.state_dict()) == keys


def test_propagate_qconfig_builds_what_each_layer_has():
    net = Net()
    net.quant, net.linear, net.dequant = QAT.QuantStub(), QAT.Linear(3, 3), QAT.DequantStub()
    propagate_qconfig(net, min_max_fakequant_qconfig)
    assert net.quant.weight_observer is None and net.quant.weight_fake_quant is None
    assert isinstance(net.quant.act_observer, MinMaxObserver)
    assert isinstance(net.quant.act_fake_quant, FakeQuantize)
    assert isinstance(net.linear.weight_observer, MinMaxObserver)
    assert isinstance(net.linear.weight_fake_quant, FakeQuantize)
    assert net.dequant.act_observer is None and net.dequant.act_fake_quant is None
    assert net.linear.weight_observer is not QAT.Linear(3, 3).weight_observer


def test_reset_qconfig_carries_the_qparams_over():
    qat_net = init_qat_net()
    new_net = reset_qconfig(qat_net, passive_qconfig, inplace=False)
    assert isinstance(new_net.linear.weight_observer, PassiveObserver)
    assert new_net.linear.get_weight_qparams() == qat_net.linear.get_weight_qparams()
    assert new_net.linear.get_activation_qparams() == qat_net.linear.get_activation_qparams()
    tqt_net = reset_qconfig(qat_net, tqt_qconfig, inplace=False)
    assert isinstance(tqt_net.linear.weight_fake_quant, TQT)
    assert tqt_net.dequant.act_fake_quant is None
    # TQT starts from log2 of the observer's scale: 50 / 127 for the narrow weight range
    np.testing.assert_allclose(tqt_net.linear.weight_fake_quant.scale.numpy(),
                               np.log2(50 / 127), rtol=1e-5)


def test_reset_qconfig_that_fails_leaves_every_layer_as_it_was():
    # upstream 1.13 measured: with a QConfig whose act_observer factory raises, the first
    # layer's weight observer had been replaced when the error came. Here every layer's new
    # observers are built before any is set. A non-QConfig is refused by name (upstream:
    # AttributeError, no 'weight_observer').
    from megengine.quantization.qconfig import QConfig

    net = _FourLayers()
    quantize_qat(net)
    layers = (net.a, net.b, net.c, net.d)
    held = [(m.weight_observer, m.act_observer, m.weight_fake_quant, m.act_fake_quant)
            for m in layers]

    def fails(*args, **kwargs):
        raise RuntimeError("this observer cannot be built")

    bad = QConfig(weight_observer=MinMaxObserver, act_observer=fails,
                  weight_fake_quant=None, act_fake_quant=None)
    with pytest.raises(RuntimeError, match="cannot be built"):
        reset_qconfig(net, bad)
    with pytest.raises(TypeError, match="reset_qconfig: qconfig must be a QConfig, got int"):
        reset_qconfig(net, 3)
    assert all(a is b for m, old in zip(layers, held) for a, b in zip(
        (m.weight_observer, m.act_observer, m.weight_fake_quant, m.act_fake_quant), old))


def test_enable_and_disable_observer_and_fake_quant():
    net = init_qat_net()
    disable_observer(net)
    assert not any([net.quant.act_observer.enabled, net.linear.weight_observer.enabled,
                    net.linear.act_observer.enabled])
    enable_observer(net)
    assert net.quant.act_observer.enabled and net.linear.act_observer.enabled
    disable_fake_quant(net)
    assert not net.linear.weight_fake_quant.enabled and not net.quant.act_fake_quant.enabled
    enable_fake_quant(net)
    assert net.linear.act_fake_quant.enabled


def test_fake_quant_switch_changes_the_output_and_back():
    x = mge.tensor(np.random.randint(1, 10, size=(3, 3)).astype(np.float32))
    net = Net()
    y1 = net(x).numpy()
    net = quantize_qat(net, qconfig=min_max_fakequant_qconfig)
    enable_observer(net), disable_fake_quant(net)
    net(x)  # calibrate
    disable_observer(net), enable_fake_quant(net)
    y2 = net(x).numpy()
    disable_fake_quant(net)
    y3 = net(x).numpy()
    enable_fake_quant(net)
    y4 = net(x).numpy()
    np.testing.assert_allclose(y1, y3)
    np.testing.assert_allclose(y2, y4)
    assert not np.allclose(y2, y3)


def test_disabled_modules_and_custom_mappings():
    class WithDisabled(Float.Module):
        def __init__(self):
            super().__init__()
            self.conv = Float.ConvBnRelu2d(3, 3, 3)
            self.conv.disable_quantize()

        def forward(self, x):
            return self.conv(x)

    qat_net = quantize_qat(WithDisabled(), inplace=False)
    assert type(qat_net.conv) is Float.ConvBnRelu2d and type(qat_net.conv.conv) is Float.Conv2d

    class FloatExample(Float.Module):
        def forward(self, x):
            return x

    class QATExample(QAT.QATModule):
        def forward(self, x):
            return x

        @classmethod
        def from_float_module(cls, float_module):
            return cls()

    class Holder(Float.Module):
        def __init__(self):
            super().__init__()
            self.example = [FloatExample()]

    qat_net = quantize_qat(Holder(), inplace=False, mapping={FloatExample: QATExample})
    assert isinstance(qat_net.example[0], QATExample)


def test_a_linear_bn_keeps_its_own_unused_bias_as_upstreams_qat_layer_does():
    # upstream's LinearBn1d carries a zero ``bias`` Parameter its forward never reads; its QAT
    # version makes its own zeros and shares the rest (upstream 1.13 measured: a float layer's
    # bias set to ones gave the QAT layer's state dict zeros there); earlier versions of this
    # fork shared the float layer's
    class Holder(Float.Module):
        def __init__(self):
            super().__init__()
            self.fused = Float.LinearBn1d(2, 3)

    net = Holder()
    net.fused.bias[...] = np.ones(3, np.float32)
    float_fused = net.fused
    quantize_qat(net)
    assert isinstance(net.fused, QAT.LinearBn1d)
    assert net.fused.bias is not float_fused.bias
    np.testing.assert_array_equal(net.state_dict()["fused.bias"], np.zeros(3, np.float32))
    assert net.fused.linear.weight is float_fused.linear.weight and net.fused.bn is float_fused.bn


def test_a_quantizable_root_is_returned_converted():
    conv = Float.ConvBn2d(2, 2, 3)
    conv.eval()
    qat = quantize_qat(conv)
    # a new layer starts in training mode (upstream 1.13 measured), around the float layer's
    # own batch norm, which keeps its mode
    assert isinstance(qat, QAT.ConvBn2d) and qat.training and not qat.bn.training
    assert qat.conv.weight is conv.conv.weight and qat.bn is conv.bn


def test_quantize_qat_checks_its_qconfig():
    with pytest.raises(TypeError, match="QConfig"):
        quantize_qat(Net(), False, min_max_fakequant_qconfig.weight_observer)


def test_quantize_converts_every_qat_layer_in_place_or_on_a_copy():
    qat_net = init_qat_net()
    qat_net.eval()
    q_net = quantize(qat_net, inplace=False)
    assert isinstance(qat_net.linear, QAT.Linear)  # the original is untouched
    assert isinstance(q_net.quant, Q.QuantStub) and isinstance(q_net.linear, Q.Linear)
    assert isinstance(q_net.dequant, Q.DequantStub)
    # new layers start in training mode, whatever the QAT layers' (upstream 1.13 measured)
    assert q_net.linear.training and not qat_net.linear.training
    # the weight holds integers in the weight observer's dtype (qint8_narrow, [-127, 127]):
    # scale max(|min|, |max|) / 127
    w_scale = dtype.get_scale(q_net.linear.weight.dtype)
    np.testing.assert_allclose(w_scale, 50 / 127, rtol=1e-6)
    np.testing.assert_array_equal(
        q_net.linear.weight.numpy(),
        np.clip(_round_half_away(qat_net.linear.weight.numpy() / np.float32(w_scale)), -128,
                127))
    assert quantize(qat_net) is qat_net and isinstance(qat_net.linear, Q.Linear)


def _round_half_away(v):
    return np.trunc(v + np.copysign(0.5, v))


def test_quantize_with_a_mapping_a_qat_root_and_an_unknown_layer():
    class QLinearExample(Q.Linear):
        pass

    qat_net = init_qat_net()
    q_net = quantize(qat_net, inplace=False, mapping={QAT.Linear: QLinearExample})
    assert type(q_net.linear) is QLinearExample
    assert isinstance(quantize(qat_net.linear), Q.Linear)  # a QAT root is returned converted

    class QATExample(QAT.Linear):
        pass

    qat_net.linear = QATExample(3, 3)
    qat_net.linear.set_qconfig(min_max_fakequant_qconfig)
    with pytest.raises(TypeError, match="no quantized layer for QATExample.*mapping"):
        quantize(qat_net)


class _FourLayers(Float.Module):
    def __init__(self):
        super().__init__()
        self.a = Float.Linear(3, 3)
        self.b = Float.Linear(3, 3)
        self.c = Float.Conv2d(3, 3, 1)
        self.d = Float.Linear(3, 3)

    def forward(self, x):
        return x


class _FailsToConvert(Float.Module):
    @classmethod
    def from_float_module(cls, module):
        raise RuntimeError("this layer cannot be converted")

    from_qat_module = from_float_module


def _layers_and_values(net):
    return ([(name, type(m)) for name, m in net.named_modules()],
            {k: np.asarray(v).copy() for k, v in net.state_dict().items()})


def _assert_unchanged(before, after):
    assert before[0] == after[0]
    assert before[1].keys() == after[1].keys()
    for k, v in before[1].items():
        np.testing.assert_array_equal(v, after[1][k])


def test_a_layer_that_fails_to_convert_leaves_the_network_as_it_was():
    # upstream 1.13 measured: quantize_qat with {Conv2d: a class whose from_float_module
    # raises} left a and b QAT layers and c, d float; quantize likewise left a and b quantized.
    # Here every layer is converted before any is replaced.
    net = _FourLayers()
    before = _layers_and_values(net)
    with pytest.raises(RuntimeError, match="cannot be converted"):
        quantize_qat(net, mapping={Float.Conv2d: _FailsToConvert})
    _assert_unchanged(before, _layers_and_values(net))

    quantize_qat(net)
    before = _layers_and_values(net)
    with pytest.raises(RuntimeError, match="cannot be converted"):
        quantize(net, mapping={QAT.Conv2d: _FailsToConvert})
    _assert_unchanged(before, _layers_and_values(net))
    quantize(net)  # the same network still converts
    assert [type(m) for m in (net.a, net.b, net.c, net.d)] == [Q.Linear, Q.Linear, Q.Conv2d,
                                                               Q.Linear]


def test_quantized_layers_refuse_training_and_qat_layers_without_observers():
    q_net = quantize(init_qat_net(), inplace=False)
    q_net.train()
    with pytest.raises(ValueError, match="only support inference.*eval"):
        q_net(mge.tensor(np.ones((2, 3), np.float32)))
    bare = QAT.Linear(3, 3)  # no qconfig: no observer gives an output dtype
    with pytest.raises(ValueError, match="no activation observer.*qconfig"):
        Q.Linear.from_qat_module(bare)


class Mixed(Float.Module):
    """conv-bn-relu and conv-relu branches joined by a fused add-relu and a concat, then
    linear-relu and linear, between the stubs."""

    def __init__(self):
        super().__init__()
        self.quant = Float.QuantStub()
        self.conv1 = Float.ConvBnRelu2d(2, 4, 3, padding=1)
        self.conv2 = Float.ConvRelu2d(2, 4, 3, padding=1)
        self.add = Float.Elemwise("FUSE_ADD_RELU")
        self.cat = Float.Concat()
        self.fc1 = Float.LinearRelu(8 * 5 * 5, 6)
        self.fc2 = Float.Linear(6, 3)
        self.dequant = Float.DequantStub()

    def forward(self, x):
        x = self.quant(x)
        a, b = self.conv1(x), self.conv2(x)
        y = self.cat([self.add(a, b), a], axis=1)
        return self.dequant(self.fc2(self.fc1(F.flatten(y, 1))))


def _calibrated_mixed(x):
    net = quantize_qat(Mixed(), qconfig=ema_fakequant_qconfig)
    for _ in range(3):  # the observers and BatchNorm statistics see some batches
        net(x)
    net.eval()
    return net


def test_a_quantized_network_computes_what_the_qat_network_does():
    x = mge.tensor(np.random.RandomState(1).randn(8, 2, 5, 5).astype(np.float32))
    qat_net = _calibrated_mixed(x)
    expected = qat_net(x).numpy()
    q_net = quantize(qat_net, inplace=False)
    q_net.eval()
    got = q_net(x)
    assert got.dtype == np.float32
    # same formulas in integers: at most one step of the output scale apart (float sums in
    # another order may move a value sitting on a rounding edge); here they agree exactly
    step = float(qat_net.fc2.act_observer.get_qparams().scale.numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=step + 1e-6)
    assert np.mean(np.abs(got.numpy() - expected) > 1e-6) < 0.05
    # inside, the tensors are integers of each QAT layer's activation dtype
    inner = q_net.conv1(q_net.quant(x))
    assert dtype.is_quantize(inner.dtype) and inner.dtype == np.int8
    assert dtype.get_scale(inner.dtype) == pytest.approx(
        float(qat_net.conv1.act_observer.get_qparams().scale.numpy()), rel=1e-6)
    assert inner.numpy().min() >= 0  # the fused relu


def test_calibration_observes_batches_run_in_eval_mode_too():
    # upstream's histogram observers record every batch, also in eval() (where calibration
    # scripts run the network); earlier versions of this fork skipped eval-mode batches, so
    # here the larger second batch saturated after quantize()
    net = Float.Sequential(Float.QuantStub(), Float.Linear(4, 3), Float.DequantStub())
    net[1].weight[...] = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
    net[1].bias[...] = np.zeros(3, np.float32)
    quantize_qat(net, qconfig=calibration_qconfig)
    net.train()
    net(mge.tensor(np.random.RandomState(0).randn(16, 4).astype(np.float32)))
    net.eval()
    x = mge.tensor(3 * np.random.RandomState(1).randn(16, 4).astype(np.float32))
    expected = net(x).numpy()
    # upstream 1.13 measured: 0.05417962744832039 (input), 0.03051876462996006 (output)
    np.testing.assert_allclose(net[0].act_observer.get_qparams().scale.numpy(),
                               0.05417962744832039, rtol=1e-6)
    np.testing.assert_allclose(net[1].act_observer.get_qparams().scale.numpy(),
                               0.03051876462996006, rtol=1e-6)
    quantize(net)
    net.eval()
    got = net(x).numpy()
    # upstream 1.13 measured a largest difference of 0.0502 from the float output
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.06)


def test_a_quantized_network_survives_save_load_and_trace_dump(tmp_path):
    from megengine.jit import trace
    from megengine.utils.comp_graph_tools import GraphInference

    x = mge.tensor(np.random.RandomState(2).randn(4, 2, 5, 5).astype(np.float32))
    q_net = quantize(_calibrated_mixed(x))
    q_net.eval()
    expected = q_net(x).numpy()
    mge.save(q_net, tmp_path / "q.pkl")
    loaded = mge.load(tmp_path / "q.pkl")
    assert dtype.is_dtype_equal(loaded.conv1.weight.dtype, q_net.conv1.weight.dtype)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)

    @trace(symbolic=True, capture_as_const=True)
    def infer(inp):
        return q_net(inp)

    np.testing.assert_array_equal(infer(x).numpy(), expected)
    np.testing.assert_array_equal(infer(x).numpy(), expected)  # the replay
    infer.dump(str(tmp_path / "q.mge"), arg_names=["x"])
    (out,) = GraphInference(str(tmp_path / "q.mge")).run(x.numpy()).values()
    np.testing.assert_array_equal(out, expected)


def test_quantable_names_exist_as_float_and_qat_layers():
    for name in _get_quantable_module_names():
        qat_cls, float_cls = getattr(QAT, name), getattr(Float, name)
        assert issubclass(qat_cls, QAT.QATModule) and qat_cls is not QAT.QATModule
        assert issubclass(float_cls, Float.Module) and not issubclass(float_cls, QAT.QATModule)


def test_hook_qat_module_reaches_every_qat_layer():
    net = init_qat_net()
    seen = []
    handles = hook_qat_module(net, lambda m, i, o: seen.append(type(m).__name__))
    net(mge.tensor(np.ones((2, 3), np.float32)))
    assert sorted(seen) == ["DequantStub", "Linear", "QuantStub"] and len(handles) == 3


def test_apply_easy_quant_keeps_scales_in_the_search_range():
    qat_net = init_qat_net()
    eq_net = reset_qconfig(qat_net, passive_qconfig, inplace=False)
    before = float(eq_net.linear.weight_observer.scale.numpy())
    apply_easy_quant(eq_net, mge.tensor(np.random.rand(4, 3).astype(np.float32)), 0.9, 1.1, 5)
    after = float(eq_net.linear.weight_observer.scale.numpy())
    assert 0.9 * before - 1e-7 <= after <= 1.1 * before + 1e-7
    assert isinstance(eq_net.quant.act_observer, PassiveObserver)
    assert eq_net.dequant.act_observer is None
    assert not eq_net.linear._forward_hooks  # the search removes its hooks


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_apply_easy_quant_keeps_the_candidate_closest_to_the_float_output():
    np.random.seed(7)
    x = mge.tensor(np.random.randn(6, 3).astype(np.float32))
    net = quantize_qat(Net(), qconfig=min_max_fakequant_qconfig)
    net(x)  # the min-max observers calibrate on the data
    net = reset_qconfig(net, passive_qconfig, inplace=False)
    layer, observer = net.linear, net.linear.weight_observer
    original = observer.orig_scale.copy()
    candidates = np.linspace(0.5 * original, 1.5 * original, 7)
    # by hand, as upstream's search runs in the weight pass: the QuantStub (no weight scale to
    # search) hands on its fake-quantized x; the layer's float output is its own fake
    # quantization off on that input, and each candidate's output is compared with it
    quant_in = net.quant(x)
    disable_fake_quant(layer)
    reference = layer(quant_in).numpy()
    enable_fake_quant(layer)
    scores = []
    for scale in candidates:
        observer.scale = scale
        scores.append(_cosine(reference, layer(quant_in).numpy()))
    observer.scale = original
    assert max(scores) > min(scores)  # the candidates differ, so the choice means something
    apply_easy_quant(net, x, 0.5, 1.5, 7)
    np.testing.assert_allclose(observer.scale.numpy(), candidates[int(np.argmax(scores))],
                               rtol=1e-6)
    assert layer.weight_fake_quant.enabled  # fake quantization is on afterwards


class _TwoLayers(Float.Module):
    def __init__(self):
        super().__init__()
        self.q, self.l1, self.l2 = Float.QuantStub(), Float.LinearRelu(5, 6), Float.Linear(6, 2)
        self.dq = Float.DequantStub()

    def forward(self, x):
        return self.dq(self.l2(self.l1(self.q(x))))


def test_apply_easy_quant_chooses_upstreams_scales():
    # upstream 1.13 searches a layer with the earlier layers at their original scales (each
    # hands on the fake-quantized output it computed before its search), on the data twice
    # over; earlier versions of this fork searched with the scales already chosen and gave
    # other scales (the activation scales below: 0.0110977 and 0.00205949)
    net, rs = _TwoLayers(), np.random.RandomState(3)
    for _, p in sorted(net.named_parameters()):
        p._reset(rs.uniform(-0.5, 0.5, p.shape).astype("float32"))
    x = mge.tensor(rs.uniform(-1, 1, (6, 5)).astype("float32"))
    qat = quantize_qat(net, qconfig=ema_fakequant_qconfig)
    qat(x), qat(x * 0.8)
    reset_qconfig(qat, passive_qconfig)
    qat.eval()
    apply_easy_quant(qat, x, 0.8, 1.2, 9)
    got = [float(o.scale.numpy()) for o in (qat.l1.weight_observer, qat.l1.act_observer,
                                            qat.l2.weight_observer, qat.l2.act_observer,
                                            qat.q.act_observer)]
    # upstream 1.13 measured on the same weights and data (RandomState's draws)
    np.testing.assert_allclose(got, [0.00412299, 0.0100888, 0.00283885, 0.00187227, 0.00833719],
                               rtol=2e-6)


def test_apply_easy_quant_refuses_bad_ranges_and_non_passive_observers():
    with pytest.raises(ValueError, match="0 < start <= stop"):
        apply_easy_quant(init_qat_net(), mge.tensor(np.ones((2, 3), np.float32)), 1.2, 0.8)
    with pytest.raises(TypeError, match="needs PassiveObservers.*passive_qconfig"):
        apply_easy_quant(init_qat_net(), mge.tensor(np.ones((2, 3), np.float32)))


class CNN(Float.Module):
    def __init__(self):
        super().__init__()
        self.quant = Float.QuantStub()
        self.conv1 = Float.ConvBnRelu2d(1, 4, 3, padding=1)
        self.conv2 = Float.ConvRelu2d(4, 4, 3, stride=2)
        self.fc = Float.Linear(16, 3)
        self.dequant = Float.DequantStub()

    def forward(self, x):
        x = self.conv2(self.conv1(self.quant(x)))
        return self.dequant(self.fc(F.flatten(x, 1)))


def _fq(a, qparams):
    """Upstream's fake quantization in numpy: round halves away from zero, clip, dequantize."""
    scale = qparams.scale.numpy()
    zp = qparams.zero_point.numpy() if qparams.zero_point is not None else 0.0
    v = a / scale
    q = np.clip(np.trunc(v + np.copysign(0.5, v)) + zp, qparams.dtype_meta.qmin,
                qparams.dtype_meta.qmax)
    return ((q - zp) * scale).astype(np.float32)


def _fq_bias(b, s_in, s_w):
    step = s_in.scale.numpy() * s_w.scale.numpy()
    v = b / step
    return (np.trunc(v + np.copysign(0.5, v)) * step).astype(np.float32)


def _conv(x, w, b, **kw):
    return torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b.ravel()),
                                      **kw).numpy()


def _reference(net, x):
    """The QAT network in eval mode, recomputed from its float parameters and its observers'
    qparams with numpy and torch's float conv: each layer fake-quantizes its (folded) weight,
    its qint32 bias and its output."""
    a_q = net.quant.act_observer.get_qparams()
    h = _fq(x, a_q)
    c1 = net.conv1
    istd = 1 / np.sqrt(c1.bn.running_var.numpy() + c1.bn.eps)
    gamma, beta = c1.bn.weight.numpy(), c1.bn.bias.numpy()
    w = c1.conv.weight.numpy() * (gamma * istd).reshape(-1, 1, 1, 1)
    b = beta + gamma * (c1.conv.bias.numpy() - c1.bn.running_mean.numpy()) * istd
    w_q = c1.weight_observer.get_qparams()
    h_next = _conv(h, _fq(w, w_q), _fq_bias(b, a_q, w_q), padding=1)
    a_q, h = c1.act_observer.get_qparams(), None
    h = _fq(np.maximum(h_next, 0), a_q)
    c2 = net.conv2
    w_q = c2.weight_observer.get_qparams()
    h_next = _conv(h, _fq(c2.weight.numpy(), w_q), _fq_bias(c2.bias.numpy(), a_q, w_q), stride=2)
    a_q = c2.act_observer.get_qparams()
    h = _fq(np.maximum(h_next, 0), a_q).reshape(len(x), -1)
    fc = net.fc
    w_q = fc.weight_observer.get_qparams()
    out = h @ _fq(fc.weight.numpy(), w_q).T + _fq_bias(fc.bias.numpy(), a_q, w_q)
    return _fq(out, fc.act_observer.get_qparams())


def test_a_small_cnn_trains_with_qat_and_matches_fake_quantized_float_layers():
    rng = np.random.RandomState(0)
    x = rng.randn(32, 1, 6, 6).astype(np.float32)
    teacher = rng.randn(36, 3).astype(np.float32)
    labels = mge.tensor((x.reshape(32, -1) @ teacher).argmax(1).astype(np.int32))
    net = quantize_qat(CNN(), qconfig=ema_fakequant_qconfig)
    assert isinstance(net.conv1, QAT.ConvBnRelu2d) and isinstance(net.fc, QAT.Linear)
    gm = GradManager().attach(net.parameters())
    opt = SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(x)), labels)
            gm.backward(loss)
        opt.step().clear_grad()
        losses.append(float(loss.numpy()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])

    net.eval()  # observers freeze, BatchNorm folds with its running statistics
    got = net(mge.tensor(x)).numpy()
    ref = _reference(net, x)
    # the same formulas; float sums in another order may flip a value sitting on a rounding
    # edge by one step of the output scale
    step = float(net.fc.act_observer.get_qparams().scale.numpy())
    diff = np.abs(got - ref)
    assert diff.max() <= 2 * step + 1e-6 and (diff > 1e-5).mean() < 0.03
    # and the outputs are on the output's quantization grid
    q = got / step
    np.testing.assert_allclose(q, np.round(q), atol=1e-3)


def test_a_qat_network_survives_save_and_load(tmp_path):
    net = init_qat_net()
    x = mge.tensor(np.random.rand(2, 3).astype(np.float32))
    before = net(x).numpy()
    mge.save(net, tmp_path / "qat.pkl")
    loaded = mge.load(tmp_path / "qat.pkl")
    # the dtype metas come back as the built-in objects, so identity checks still pass
    assert loaded.linear.weight_fake_quant.dtype is min_max_fakequant_qconfig.weight_fake_quant()\
        .dtype
    np.testing.assert_allclose(loaded(x).numpy(), before)
    reset_qconfig(loaded, passive_qconfig)  # PassiveObserver compares dtype metas by identity
    np.testing.assert_allclose(loaded(x).numpy(), before)
    assert loaded.linear.get_weight_qparams() == net.linear.get_weight_qparams()


class Block(Float.Module):
    """The basic block of MegEngine/Models' quantization ResNet: relu on a quantized sum."""

    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv_bn_relu1 = Float.ConvBnRelu2d(cin, c, 3, stride, padding=1, bias=False)
        self.conv_bn2 = Float.ConvBn2d(c, c, 3, 1, padding=1, bias=False)
        self.downsample = Float.Identity() if cin == c and stride == 1 else \
            Float.ConvBn2d(cin, c, 1, stride, bias=False)
        self.add = Float.Elemwise("ADD")

    def forward(self, x):
        y = self.conv_bn2(self.conv_bn_relu1(x))
        return F.relu(self.add(y, self.downsample(x)))


class TinyResNet(Float.Module):
    """Models' quantization ResNet in small: max pooling and average pooling of quantized
    tensors, a float classifier after the DequantStub (``disable_quantize``)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = Float.QuantStub(), Float.DequantStub()
        self.stem = Float.ConvBnRelu2d(3, 4, 3, 2, padding=1, bias=False)
        self.maxpool = Float.MaxPool2d(3, 2, 1)
        self.layer = Float.Sequential(Block(4, 4, 1), Block(4, 8, 2))
        self.fc = Float.Linear(8, 5)
        self.fc.disable_quantize()

    def forward(self, x):
        x = self.layer(self.maxpool(self.stem(self.quant(x))))
        return self.fc(self.dequant(F.flatten(F.avg_pool2d(x, x.shape[2]), 1)))


def test_models_resnet_shape_quantizes_with_pooling_and_a_float_head():
    assert isinstance(quantize(quantize_qat(TinyResNet())).stem, Q.ConvBnRelu2d)  # uncalibrated
    x = mge.tensor(np.random.RandomState(3).randn(4, 3, 16, 16).astype(np.float32))
    net = quantize_qat(TinyResNet())
    for _ in range(3):
        net(x)
    net.eval()
    q_net = quantize(net, inplace=False)
    q_net.eval()
    assert type(q_net.fc) is Float.Linear
    feats = {}
    for name, model in (("qat", net), ("q", q_net)):
        model.fc.register_forward_hook(lambda m, i, o, name=name: feats.setdefault(name,
                                                                                  i[0].numpy()))
        model(x)
    # up to the average pooling both compute the same integers; the quantized pooling then
    # rounds the mean to the grid, which QAT's float pooling does not: half a step apart
    step = float(net.layer[1].add.act_observer.get_qparams().scale.numpy())
    np.testing.assert_allclose(feats["q"], feats["qat"], rtol=0, atol=0.5 * step + 1e-6)


def test_a_quantized_state_dict_loads_into_a_fresh_quantized_network_with_its_scales():
    # upstream's hub recipe: quantize_qat + quantize an uncalibrated network, then load the
    # quantized checkpoint, whose integer weights carry their own scales
    x = mge.tensor(np.random.RandomState(4).randn(4, 2, 5, 5).astype(np.float32))
    q_net = quantize(_calibrated_mixed(x))
    q_net.eval()
    fresh = quantize(quantize_qat(Mixed(), qconfig=ema_fakequant_qconfig))
    fresh.eval()
    assert not dtype.is_dtype_equal(fresh.conv1.weight.dtype, q_net.conv1.weight.dtype)
    fresh.load_state_dict(q_net.state_dict())
    assert dtype.is_dtype_equal(fresh.conv1.weight.dtype, q_net.conv1.weight.dtype)
    # the output dtypes are the layers' configuration, not state: copy them as a checkpoint's
    # loader would rebuild the network from the same QAT calibration
    for mine, theirs in zip(fresh.modules(), q_net.modules()):
        if hasattr(theirs, "output_dtype"):
            mine.output_dtype = theirs.output_dtype
    np.testing.assert_array_equal(fresh(x).numpy(), q_net(x).numpy())
