"""Tests for megengine.module.qat: with fake quantization off each QAT layer equals its float
layer (train and eval, running statistics included); with it on, a conv, a linear layer and a
conv+bn (training and folded evaluation) equal the same computation written with torch's
fake_quantize on the same scales, gradients included; conversion keeps the parameters."""
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.module as Float
from megengine.autodiff import GradManager
from megengine.module import qat as QAT
from megengine.quantization import min_max_fakequant_qconfig
from megengine.quantization.quantize import disable_fake_quant, disable_observer, quantize_qat
from megengine.quantization.utils import QuantMode, create_qparams

QMAX32 = 2 ** 31 - 1


@pytest.mark.parametrize("groups,bias", list(product([1, 2], [True, False])))
def test_qat_convbn2d_without_fake_quant_equals_the_float_layer(groups, bias):
    module = Float.ConvBn2d(4, 6, 3, groups=groups, bias=bias)
    module.train()
    qat_module = quantize_qat(module, inplace=False)
    assert isinstance(qat_module, QAT.ConvBn2d)
    disable_fake_quant(qat_module)
    x = mge.tensor(np.random.randn(2, 4, 6, 6).astype(np.float32))
    np.testing.assert_allclose(qat_module(x).numpy(), module(x).numpy(), atol=5e-6)
    np.testing.assert_allclose(qat_module.bn.running_mean.numpy(),
                               module.bn.running_mean.numpy(), atol=5e-8)
    np.testing.assert_allclose(qat_module.bn.running_var.numpy(),
                               module.bn.running_var.numpy(), atol=5e-7)
    module.eval(), qat_module.eval()
    np.testing.assert_allclose(qat_module(x).numpy(), module(x).numpy(), atol=5e-6)


@pytest.mark.parametrize("groups,bias", list(product([1, 2], [True, False])))
def test_qat_conv_layers_without_fake_quant_equal_the_float_layers(groups, bias):
    class TestNet(Float.Module):
        def __init__(self):
            super().__init__()
            self.quant = Float.QuantStub()
            self.dequant = Float.DequantStub()
            self.conv = Float.Conv2d(4, 6, 3, groups=groups, bias=bias)
            self.conv_relu = Float.ConvRelu2d(6, 4, 3, groups=groups, bias=bias)
            self.conv_bn_relu = Float.ConvBnRelu2d(4, 4, 1, bias=bias)

        def forward(self, inp):
            out = self.conv_relu(self.conv(self.quant(inp)))
            return self.dequant(self.conv_bn_relu(out))

    x = mge.tensor(np.random.randn(2, 4, 7, 7).astype(np.float32))
    net = TestNet()
    qat_net = quantize_qat(net, inplace=False)
    disable_fake_quant(qat_net)
    np.testing.assert_allclose(qat_net(x).numpy(), net(x).numpy(), atol=1e-5)
    net.eval(), qat_net.eval()
    np.testing.assert_allclose(qat_net(x).numpy(), net(x).numpy(), atol=1e-5)


def _torch_fq(t, scale, qmin=-128, qmax=127):
    return torch.fake_quantize_per_tensor_affine(t, scale, 0, qmin, qmax)


def _set_range(observer, lo, hi):
    observer.min_val._reset(np.float32(lo))
    observer.max_val._reset(np.float32(hi))


def _quantized_input(x, scale):
    t = mge.tensor(x)
    t.qparams.update(create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(scale)))
    return t


def test_qat_conv2d_equals_torch_fake_quantize_by_hand():
    # observer ranges chosen so every scale is a power of two: torch's x * (1 / scale) then
    # rounds exactly as upstream's x / scale, and the comparison can be exact
    conv = QAT.Conv2d.from_float_module(Float.Conv2d(2, 3, 3, padding=1))
    conv.set_qconfig(min_max_fakequant_qconfig)
    # coarse steps, so that every quantization (weight, bias, output) changes the result
    conv.weight._reset((np.random.randn(3, 2, 3, 3) * 3).astype(np.float32))
    conv.bias._reset((np.random.randn(1, 3, 1, 1) * 0.3).astype(np.float32))
    _set_range(conv.weight_observer, -0.5, 127.0)  # narrow int8: scale 127 / 127 = 1
    _set_range(conv.act_observer, -127.5 / 8, 2.0)  # int8: scale 127.5/8 / 127.5 = 1/8
    disable_observer(conv)
    x_np = (np.random.randn(2, 2, 5, 5)).astype(np.float32)
    x = _quantized_input(x_np, 0.25)
    w_grad = np.random.randn(2, 3, 5, 5).astype(np.float32)
    gm = GradManager().attach([conv.weight, conv.bias])
    with gm:
        out = conv(x)
        gm.backward(out, mge.tensor(w_grad))

    tw = torch.tensor(conv.weight.numpy(), requires_grad=True)
    tb = torch.tensor(conv.bias.numpy().ravel(), requires_grad=True)
    w_q = _torch_fq(tw, 1.0, -127, 127)
    b_q = _torch_fq(tb, 0.25 * 1.0, -2 ** 31, QMAX32)  # bias step: input scale * weight scale
    ref = _torch_fq(TF.conv2d(torch.tensor(x_np), w_q, b_q, padding=1), 1 / 8)
    ref.backward(torch.tensor(w_grad))
    np.testing.assert_array_equal(out.numpy(), ref.detach().numpy())
    np.testing.assert_allclose(conv.weight.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conv.bias.grad.numpy().ravel(), tb.grad.numpy(), rtol=1e-5,
                               atol=1e-6)
    # the output carries its qparams; the weight's dtype is upstream's qint8 with the scale
    assert 0 < (np.abs(ref.detach().numpy()) == 127 / 8).mean() < 0.5  # some clipped
    np.testing.assert_allclose(out.qparams.scale.numpy(), 1 / 8)
    assert conv.get_weight_dtype().metadata["mgb_dtype"] == {"name": "QuantizedS8",
                                                             "scale": 1.0}


def test_qat_linear_and_relu_conv_quantize_after_the_relu():
    lin = QAT.Linear.from_float_module(Float.Linear(4, 3))
    lin.set_qconfig(min_max_fakequant_qconfig)
    _set_range(lin.weight_observer, -1.0, 127 / 64)  # scale 1/64
    _set_range(lin.act_observer, -127.5 / 8, 0.0)  # scale 1/8
    disable_observer(lin)
    x_np = np.random.randn(5, 4).astype(np.float32)
    out = lin(_quantized_input(x_np, 2.0 ** -4))
    w_q = _torch_fq(torch.tensor(lin.weight.numpy()), 1 / 64, -127, 127)
    b_q = _torch_fq(torch.tensor(lin.bias.numpy()), 2.0 ** -4 / 64, -2 ** 31, QMAX32)
    ref = _torch_fq(TF.linear(torch.tensor(x_np), w_q, b_q), 1 / 8)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())

    conv = QAT.ConvRelu2d.from_float_module(Float.ConvRelu2d(1, 2, 1, bias=False))
    conv.set_qconfig(min_max_fakequant_qconfig)
    conv.weight._reset(np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1))
    x = mge.tensor(np.array([[[[0.3, -0.3]]]], np.float32))
    out = conv(x).numpy()
    # relu first: the negative half is exactly 0, the positive one is quantized
    assert out[0, 0, 0, 1] == 0 and out[0, 1, 0, 0] == 0 and out[0, 0, 0, 0] > 0


def test_qat_linearrelu_quantizes_after_the_relu():
    lin = quantize_qat(Float.LinearRelu(4, 3), qconfig=min_max_fakequant_qconfig)
    assert type(lin) is QAT.LinearRelu
    _set_range(lin.weight_observer, -1.0, 127 / 64)  # scale 1/64
    _set_range(lin.act_observer, -127.5 / 8, 0.0)  # scale 1/8
    disable_observer(lin)
    x_np = np.random.randn(5, 4).astype(np.float32)
    out = lin(_quantized_input(x_np, 2.0 ** -4)).numpy()
    w_q = _torch_fq(torch.tensor(lin.weight.numpy()), 1 / 64, -127, 127)
    b_q = _torch_fq(torch.tensor(lin.bias.numpy()), 2.0 ** -4 / 64, -2 ** 31, QMAX32)
    ref = _torch_fq(TF.relu(TF.linear(torch.tensor(x_np), w_q, b_q)), 1 / 8)
    np.testing.assert_array_equal(out, ref.numpy())
    assert out.min() == 0


def test_qat_linear_with_only_the_input_scale_set_quantizes_its_bias():
    # upstream 1.3 code marks an input with x.q_dict["scale"] only; the bias is still
    # fake-quantized to qint32 with input scale * weight scale (torch's fake_quantize oracle).
    # Coarse steps (bias step 0.5 * 1, output step 1/8) make the bias rounding visible.
    lin = QAT.Linear.from_float_module(Float.Linear(4, 3))
    lin.set_qconfig(min_max_fakequant_qconfig)
    lin.weight._reset((np.random.randn(3, 4) * 2).astype(np.float32))
    lin.bias._reset(np.array([0.3, -0.7, 1.2], np.float32))
    _set_range(lin.weight_observer, -0.5, 127.0)  # scale 1
    _set_range(lin.act_observer, -127.5 / 8, 0.0)  # scale 1/8
    disable_observer(lin)
    x_np = np.random.randn(5, 4).astype(np.float32)
    x = mge.tensor(x_np)
    x.q_dict["scale"] = np.float32(0.5)
    w_q = _torch_fq(torch.tensor(lin.weight.numpy()), 1.0, -127, 127)
    b_q = _torch_fq(torch.tensor(lin.bias.numpy()), 0.5, -2 ** 31, QMAX32)
    assert not np.allclose(b_q.numpy(), lin.bias.numpy())
    ref = _torch_fq(TF.linear(torch.tensor(x_np), w_q, b_q), 1 / 8)
    np.testing.assert_array_equal(lin(x).numpy(), ref.numpy())


@pytest.mark.parametrize("training", [True, False])
def test_qat_convbnrelu2d_folds_bn_into_the_fake_quantized_weight(training):
    float_mod = Float.ConvBnRelu2d(2, 3, 3, padding=1)
    float_mod.bn.running_mean._reset(np.random.randn(1, 3, 1, 1).astype(np.float32) * 0.1)
    float_mod.bn.running_var._reset(np.random.rand(1, 3, 1, 1).astype(np.float32) + 0.5)
    float_mod.bn.weight._reset(np.random.rand(1, 3, 1, 1).astype(np.float32) + 0.5)
    float_mod.bn.bias._reset(np.random.randn(1, 3, 1, 1).astype(np.float32) * 0.1)
    float_mod.conv.bias._reset(np.random.randn(1, 3, 1, 1).astype(np.float32) * 0.1)
    mod = QAT.ConvBnRelu2d.from_float_module(float_mod)
    mod.set_qconfig(min_max_fakequant_qconfig)
    mod.train(training)
    _set_range(mod.weight_observer, -1.0, 127 / 32)  # scale 1/32
    _set_range(mod.act_observer, -127.5 / 16, 0.0)  # scale 1/16
    disable_observer(mod)
    x_np = np.random.randn(4, 2, 5, 5).astype(np.float32)
    rm, rv = mod.bn.running_mean.numpy().ravel(), mod.bn.running_var.numpy().ravel()
    out = mod(_quantized_input(x_np, 2.0 ** -4)).numpy()

    gamma = torch.tensor(mod.bn.weight.numpy().ravel())
    beta = torch.tensor(mod.bn.bias.numpy().ravel())
    b = torch.tensor(mod.conv.bias.numpy().ravel())
    istd = 1 / torch.sqrt(torch.tensor(rv) + mod.bn.eps)
    factor = gamma * istd
    w_q = _torch_fq(torch.tensor(mod.conv.weight.numpy()) * factor.reshape(-1, 1, 1, 1),
                    1 / 32, -127, 127)
    x = torch.tensor(x_np)
    if training:
        # the fake-quantized folded conv is scaled back and batch-normalized (batch statistics)
        conv = TF.conv2d(x, w_q, None, padding=1) / factor.reshape(1, -1, 1, 1) \
            + b.reshape(1, -1, 1, 1)
        mean, var = torch.tensor(rm.copy()), torch.tensor(rv.copy())
        pre = TF.batch_norm(conv, mean, var, gamma, beta, training=True, momentum=0.1,
                            eps=mod.bn.eps)
        np.testing.assert_allclose(mod.bn.running_mean.numpy().ravel(), mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(mod.bn.running_var.numpy().ravel(), var.numpy(), rtol=1e-5)
    else:
        b_fold = beta + gamma * (b - torch.tensor(rm)) * istd
        pre = TF.conv2d(x, w_q, _torch_fq(b_fold, 2.0 ** -4 / 32, -2 ** 31, QMAX32), padding=1)
    ref = _torch_fq(torch.relu(pre), 1 / 16).numpy()
    # batch statistics are sums in another order: a value on a rounding edge may flip a step
    diff = np.abs(out - ref)
    assert diff.max() <= 1 / 16 + 1e-6 and (diff > 1e-6).mean() < 0.02


def test_qat_elemwise_concat_and_stubs():
    add = QAT.Elemwise.from_float_module(Float.Elemwise("add"))
    add.set_qconfig(min_max_fakequant_qconfig)
    assert add.weight_observer is None and add.act_observer is not None
    a, b = np.array([0.11, -0.52], np.float32), np.array([0.2, 0.04], np.float32)
    _set_range(add.act_observer, -127.5 / 8, 0.0)
    disable_observer(add)
    np.testing.assert_array_equal(add(mge.tensor(a), mge.tensor(b)).numpy(),
                                  _torch_fq(torch.tensor(a + b), 1 / 8).numpy())

    cat = QAT.Concat.from_float_module(Float.Concat())
    cat.set_qconfig(min_max_fakequant_qconfig)
    _set_range(cat.act_observer, -127.5 / 4, 0.0)
    disable_observer(cat)
    np.testing.assert_array_equal(cat([mge.tensor(a), mge.tensor(b)]).numpy(),
                                  _torch_fq(torch.tensor(np.concatenate([a, b])), 1 / 4).numpy())

    quant = QAT.QuantStub.from_float_module(Float.QuantStub(name="q"))
    quant.set_qconfig(min_max_fakequant_qconfig)
    assert quant.name == "q" and quant.weight_observer is None
    y = quant(mge.tensor(a))
    assert y.qparams.scale is not None and y.qparams.dtype_meta.name == "qint8"
    dequant = QAT.DequantStub.from_float_module(Float.DequantStub())
    dequant.set_qconfig(min_max_fakequant_qconfig)
    x = mge.tensor(a)
    assert dequant(x) is x and dequant.act_observer is None


def test_from_float_module_shares_parameters_and_prints_as_qat():
    lin = Float.Linear(3, 2, bias=False, name="fc")
    qat = QAT.Linear.from_float_module(lin)
    assert qat.weight is lin.weight and qat.bias is None and qat.name == "fc"
    assert repr(qat).startswith("QAT.Linear")
    conv = Float.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    qconv = QAT.Conv2d.from_float_module(conv)
    assert qconv.padding_mode == "reflect" and qconv.weight is conv.weight
    x = mge.tensor(np.random.randn(1, 2, 4, 4).astype(np.float32))
    qconv.set_qconfig(min_max_fakequant_qconfig)
    disable_fake_quant(qconv)
    np.testing.assert_allclose(qconv(x).numpy(), conv(x).numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="QConfig"):
        qconv.set_qconfig(None)


def test_exact_folding_with_batch_statistics_equals_the_float_layer():
    float_mod = Float.ConvBn2d(2, 4, 3, groups=2)
    qat = QAT.ConvBn2d.from_float_module(Float.ConvBn2d(2, 4, 3, groups=2))
    qat.conv.weight, qat.conv.bias = float_mod.conv.weight, float_mod.conv.bias
    qat.set_qconfig(min_max_fakequant_qconfig)
    disable_fake_quant(qat)
    x = mge.tensor(np.random.randn(3, 2, 6, 6).astype(np.float32))
    # upstream's approx=False: the conv weight is folded with this batch's statistics
    got = qat.calc_conv_bn_qat(x, approx=False).numpy()
    np.testing.assert_allclose(got, float_mod(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(qat.bn.running_mean.numpy(), float_mod.bn.running_mean.numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(qat.bn.running_var.numpy(), float_mod.bn.running_var.numpy(),
                               rtol=1e-5)


def _float_layers():
    return {
        "ConvTranspose2d": (lambda: Float.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1,
                                                          groups=2), (2, 4, 5, 5)),
        "ConvTransposeRelu2d": (lambda: Float.ConvTransposeRelu2d(3, 2, 3, padding=1),
                                (2, 3, 4, 4)),
        "ConvTransposeBn2d": (lambda: Float.ConvTransposeBn2d(4, 6, 3, groups=2), (3, 4, 5, 5)),
        "ConvTransposeBnRelu2d": (lambda: Float.ConvTransposeBnRelu2d(3, 4, 2, stride=2,
                                                                      bias=False), (3, 3, 4, 4)),
        "LinearRelu": (lambda: Float.LinearRelu(5, 4), (6, 5)),
        "LinearBn1d": (lambda: Float.LinearBn1d(5, 4), (6, 5)),
        "LinearBnRelu1d": (lambda: Float.LinearBnRelu1d(5, 4, bias=False), (6, 5)),
        "BatchMatMulActivation": (lambda: Float.BatchMatMulActivation(
            2, 3, 4, nonlinear_mode="relu"), (2, 3, 5)),
    }


@pytest.mark.parametrize("name", sorted(_float_layers()))
def test_every_other_qat_layer_without_fake_quant_equals_its_float_layer(name):
    make, shape = _float_layers()[name]
    module = make()
    for p in module.parameters():  # non-trivial biases and affine parameters
        p._reset(p.numpy() + np.random.randn(*p.shape).astype(np.float32) * 0.1)
    qat = quantize_qat(module, inplace=False)
    assert type(qat) is getattr(QAT, name)
    disable_fake_quant(qat)
    x = mge.tensor(np.random.randn(*shape).astype(np.float32))
    np.testing.assert_allclose(qat(x).numpy(), module(x).numpy(), atol=1e-5)
    if hasattr(module, "bn"):
        np.testing.assert_allclose(qat.bn.running_mean.numpy(), module.bn.running_mean.numpy(),
                                   atol=1e-6)
        np.testing.assert_allclose(qat.bn.running_var.numpy(), module.bn.running_var.numpy(),
                                   rtol=1e-5)
    module.eval(), qat.eval()
    np.testing.assert_allclose(qat(x).numpy(), module(x).numpy(), atol=1e-5)


def test_qat_linearbnrelu1d_folded_evaluation_equals_torch_fake_quantize():
    float_mod = Float.LinearBnRelu1d(4, 3)
    float_mod.bn.running_mean._reset(np.random.randn(1, 3, 1, 1).astype(np.float32) * 0.2)
    float_mod.bn.running_var._reset(np.random.rand(1, 3, 1, 1).astype(np.float32) + 0.5)
    float_mod.bn.weight._reset(np.random.rand(1, 3, 1, 1).astype(np.float32) + 0.5)
    float_mod.linear.bias._reset(np.random.randn(3).astype(np.float32) * 0.3)
    mod = QAT.LinearBnRelu1d.from_float_module(float_mod)
    mod.set_qconfig(min_max_fakequant_qconfig)
    mod.eval()
    _set_range(mod.weight_observer, -1.0, 127 / 16)  # scale 1/16
    _set_range(mod.act_observer, -127.5 / 8, 0.0)  # scale 1/8
    x_np = np.random.randn(6, 4).astype(np.float32)
    out = mod(_quantized_input(x_np, 0.5)).numpy()
    bn = mod.bn
    gamma, beta = (torch.tensor(t.numpy().ravel()) for t in (bn.weight, bn.bias))
    istd = 1 / torch.sqrt(torch.tensor(bn.running_var.numpy().ravel()) + bn.eps)
    w_q = _torch_fq(torch.tensor(mod.linear.weight.numpy()) * (gamma * istd).reshape(-1, 1),
                    1 / 16, -127, 127)
    b = beta + gamma * (torch.tensor(mod.linear.bias.numpy())
                        - torch.tensor(bn.running_mean.numpy().ravel())) * istd
    ref = _torch_fq(torch.relu(TF.linear(torch.tensor(x_np), w_q,
                                         _torch_fq(b, 0.5 / 16, -2 ** 31, QMAX32))), 1 / 8)
    diff = np.abs(out - ref.numpy())
    assert diff.max() <= 1 / 8 + 1e-6 and (diff > 1e-6).mean() < 0.1


def test_qat_layers_compute_through_their_float_layers_hooks():
    # as upstream's: a QAT conv calls calc_conv, a folded conv+bn its conv's calc_conv, ...,
    # so what a program hangs on those hooks (megengine.experimental's weight scaling) applies
    seen = []

    def recorder(layer, name):
        own = getattr(layer, name)

        def hook(inp, weight, bias):
            seen.append(name)
            return own(inp, weight, bias)
        setattr(layer, name, hook)

    cases = [(Float.Conv2d(2, 2, 3), "calc_conv", (1, 2, 5, 5)),
             (Float.ConvTranspose2d(2, 2, 3), "calc_conv_transpose2d", (1, 2, 5, 5)),
             (Float.Linear(3, 2), "calc_linear", (1, 3)),
             (Float.ConvBn2d(2, 2, 3), "conv.calc_conv", (2, 2, 5, 5)),
             (Float.ConvTransposeBn2d(2, 2, 3), "conv_transpose2d.calc_conv_transpose2d",
              (2, 2, 5, 5)),
             (Float.LinearBn1d(3, 2), "linear.calc_linear", (4, 3))]
    for float_layer, path, shape in cases:
        qat = quantize_qat(Float.Sequential(float_layer))[0]
        *owner, name = path.split(".")
        recorder(getattr(qat, owner[0]) if owner else qat, name)
        seen.clear()
        qat(mge.tensor(np.random.randn(*shape).astype(np.float32)))
        assert seen and set(seen) == {name}, path


def test_calc_qat_hooks_are_the_forward_and_the_switches_reach_both_quantizers():
    # upstream 1.13's QAT layers run forward as apply_quant_activation of calc_conv_qat /
    # calc_linear_qat / calc_conv_transpose2d_qat (the layer with its weight and bias
    # fake-quantized): so composed they give forward's value (itself checked against torch
    # above; measured on upstream too), and an override of the hook is what forward runs
    cases = [(Float.Conv2d(2, 3, 3), "calc_conv_qat", (1, 2, 5, 5)),
             (Float.ConvTranspose2d(2, 3, 2), "calc_conv_transpose2d_qat", (1, 2, 4, 4)),
             (Float.Linear(3, 2), "calc_linear_qat", (2, 3))]
    rng = np.random.default_rng(0)
    for float_layer, name, shape in cases:
        qat = quantize_qat(Float.Sequential(float_layer), qconfig=min_max_fakequant_qconfig)[0]
        x = mge.tensor(rng.standard_normal(shape).astype(np.float32))
        disable_observer(qat)  # (the first call's observed ranges stay for the second)
        qat(x)
        hook = getattr(qat, name)(x)
        np.testing.assert_array_equal(qat.apply_quant_activation(hook).numpy(), qat(x).numpy(),
                                      name)
        assert not np.array_equal(hook.numpy(), qat(x).numpy()), name  # (unquantized output)
        setattr(qat, name, lambda inp: inp * 0)
        assert not qat(x).numpy().any(), name
    qat.set_fake_quant(False)
    assert not qat.weight_fake_quant.enabled and not qat.act_fake_quant.enabled
    qat.set_observer(True)
    assert qat.weight_observer.enabled and qat.act_observer.enabled
    qat.set_fake_quant(True)
    qat.set_observer(False)
    assert qat.weight_fake_quant.enabled and qat.act_fake_quant.enabled
    assert not qat.weight_observer.enabled and not qat.act_observer.enabled
