"""Tests of megengine/module/conv.py's 3-d, local and deformable layers: upstream's parameter
shapes and init, values and gradients against torch with equal weights."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager


def randn(*shape):
    return np.random.randn(*shape).astype(np.float32)


def run(module, torch_fn, *inputs, rtol=1e-4, atol=1e-4):
    """``module(*inputs)`` against ``torch_fn(weight, bias, *inputs)`` (torch tensors holding the
    module's parameters): outputs, input and parameter gradients."""
    params = [module.weight] + ([module.bias] if module.bias is not None else [])
    xs = [mge.tensor(a) for a in inputs]
    gm = GradManager().attach(params + xs[:1])
    with gm:
        y = module(*xs)
        dy = randn(*y.shape)
        gm.backward(y, mge.tensor(dy))
    tp = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    tx = [torch.tensor(a, requires_grad=i == 0) for i, a in enumerate(inputs)]
    ty = torch_fn(tp[0], tp[1] if len(tp) > 1 else None, *tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(xs[0].grad.numpy(), tx[0].grad.numpy(), rtol=rtol, atol=atol)
    for p, t in zip(params, tp):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)


def _std_is(w, fan_in):
    # upstream 1.x: weight ~ N(0, 1 / fan_in)
    assert abs(float(w.numpy().std()) * np.sqrt(fan_in) - 1) < 0.1
    assert abs(float(w.numpy().mean())) < 0.05 / np.sqrt(fan_in) * 10


@pytest.mark.parametrize("groups", [1, 2])
def test_conv3d(groups):
    m = M.Conv3d(4, 6, (3, 2, 3), stride=(1, 2, 1), padding=1, dilation=(2, 1, 1), groups=groups)
    k = (3, 2, 3)
    assert m.weight.shape == ((6, 4) + k if groups == 1 else (2, 3, 2) + k)
    assert m.bias.shape == (1, 6, 1, 1, 1) and not m.bias.numpy().any()
    run(m, lambda w, b, x: TF.conv3d(x, w.reshape(6, 4 // groups, *k), b.reshape(-1),
                                     (1, 2, 1), 1, (2, 1, 1), groups), randn(2, 4, 6, 5, 6))


def test_conv3d_init():
    _std_is(M.Conv3d(16, 32, 3).weight, 16 * 27)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose3d(groups):
    m = M.ConvTranspose3d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups)
    assert m.weight.shape == ((4, 6, 3, 3, 3) if groups == 1 else (2, 2, 3, 3, 3, 3))
    run(m, lambda w, b, x: TF.conv_transpose3d(x, w.reshape(4, 6 // groups, 3, 3, 3),
                                               b.reshape(-1), 2, 1, 1, groups),
        randn(1, 4, 3, 4, 3))
    _std_is(M.ConvTranspose3d(16, 8, 3).weight, 16 * 27)


def test_local_conv2d():
    m = M.LocalConv2d(4, 6, 7, 6, 3, stride=2, padding=1, groups=2)
    assert m.weight.shape == (2, 4, 3, 2, 3, 3, 3) and m.bias is None
    _std_is(M.LocalConv2d(8, 8, 12, 12, 3).weight, 8 * 9)

    def torch_fn(w, b, x):  # each output position: its own kernel over its own window
        xp = TF.pad(x, (1, 1, 1, 1))
        out = torch.zeros(2, 6, 4, 3)
        for i in range(4):
            for j in range(3):
                win = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(2, 2, 2, 3, 3)
                out[:, :, i, j] = torch.einsum("ngcij,gcijo->ngo", win, w[:, i, j]).reshape(2, 6)
        return out

    run(m, torch_fn, randn(2, 4, 7, 6))
    with pytest.raises(ValueError, match="LocalConv2d: an input of 2x2 is too small"):
        M.LocalConv2d(1, 1, 2, 2, 3)


def test_deformable_conv2d_with_zero_offsets_and_unit_mask_is_conv2d():
    m = M.DeformableConv2d(4, 6, 3, padding=1, groups=2)
    assert m.weight.shape == (2, 3, 2, 3, 3) and m.bias.shape == (1, 6, 1, 1)
    _std_is(M.DeformableConv2d(8, 16, 3).weight, 8 * 9)
    offset, mask = np.zeros((2, 18, 5, 5), np.float32), np.ones((2, 9, 5, 5), np.float32)
    run(m, lambda w, b, x, o, k: TF.conv2d(x, w.reshape(6, 2, 3, 3), b.reshape(-1), 1, 1, 1, 2),
        randn(2, 4, 5, 5), offset, mask)


def test_deformable_conv2d_integer_offsets_shift_the_taps():
    # an offset of (+1, 0) on every tap reads one row lower: a conv2d of the input shifted up
    m = M.DeformableConv2d(2, 3, 3, padding=1, bias=False)
    offset = np.zeros((1, 18, 6, 6), np.float32)
    offset[:, 0::2] = 1.0
    mask = np.full((1, 9, 6, 6), 0.5, np.float32)

    def torch_fn(w, b, x, o, k):
        padded = TF.pad(x, (1, 1, 1, 1))  # the conv's own zero padding, then one row up
        return 0.5 * TF.conv2d(TF.pad(padded[:, :, 1:], (0, 0, 0, 1)), w)

    run(m, torch_fn, randn(1, 2, 6, 6), offset, mask)



def test_conv_relu_modules_are_the_conv_then_relu():
    # same parameters and state dict as the plain layer; the output is its relu
    import megengine.module as M_
    import megengine.functional as F_
    x = mge.tensor(np.random.randn(2, 3, 6, 6).astype(np.float32))
    for fused, plain in ((M_.ConvRelu2d(3, 4, 3, padding=1), M_.Conv2d(3, 4, 3, padding=1)),
                         (M_.ConvTransposeRelu2d(3, 4, 3, stride=2),
                          M_.ConvTranspose2d(3, 4, 3, stride=2))):
        plain.load_state_dict(fused.state_dict())
        y = fused(x)
        np.testing.assert_allclose(y.numpy(), np.maximum(plain(x).numpy(), 0), rtol=1e-6)
        assert (y.numpy() == 0).any() and (y.numpy() > 0).any()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_calc_conv_uses_the_given_weight_and_bias(dims):
    # upstream's hook: QAT layers and user code convolve with a transformed weight through
    # the layer's own stride/padding/dilation/groups (and padding mode)
    cls = {1: M.Conv1d, 2: M.Conv2d, 3: M.Conv3d}[dims]
    kw = dict(padding_mode="reflect") if dims == 2 else {}
    conv = cls(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, **kw)
    x = randn(2, 4, *([7] * dims))
    w = randn(*conv.weight.shape)
    b = randn(*conv.bias.shape)
    y = conv.calc_conv(mge.tensor(x), mge.tensor(w), mge.tensor(b)).numpy()
    tw = torch.tensor(w.reshape(6, 2, *([3] * dims)))  # grouped (G, O/G, I/G, k..) -> (O, I/G, k..)
    tx = torch.tensor(x)
    if dims == 2:
        tx, pad = TF.pad(tx, (1, 1, 1, 1), mode="reflect"), 0
    else:
        pad = 1
    torch_conv = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[dims]
    ref = torch_conv(tx, tw, torch.tensor(b.reshape(-1)), stride=2, padding=pad, groups=2)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv(mge.tensor(x)).numpy(),
                               conv.calc_conv(mge.tensor(x), conv.weight, conv.bias).numpy())


def test_pad_width_hook_pads_the_input_of_non_zero_padding_modes():
    # upstream's get_pad_witdth (its spelling): what F.pad gets; a subclass may pad otherwise
    conv = M.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="replicate")
    assert conv.get_pad_witdth() == ((0, 0), (0, 0), (1, 1), (2, 2))
    assert M.Conv1d(2, 3, 3, padding=2).get_pad_witdth() == ((0, 0), (0, 0), (2, 2))
    region = M.RegionRestrictedConv(2, 2, 3, groups=2, padding=1)
    assert region.get_pad_width() == ((0, 0), (0, 0), (1, 1), (1, 1))

    class Causal(M.Conv2d):  # pads the top only, as a causal image model would
        def get_pad_witdth(self):
            return ((0, 0), (0, 0), (2, 0), (1, 1))

    causal = Causal(2, 3, 3, padding_mode="reflect")
    x, b = randn(1, 2, 5, 6), causal.bias.numpy().reshape(-1)
    ref = TF.conv2d(TF.pad(torch.tensor(x), (1, 1, 2, 0), mode="reflect"),
                    torch.tensor(causal.weight.numpy()), torch.tensor(b))
    np.testing.assert_allclose(causal(mge.tensor(x)).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_transposed_and_deformable_calc_hooks_use_the_given_weight_and_bias():
    deconv = M.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    x, w, b = randn(2, 4, 5, 5), randn(*deconv.weight.shape), randn(*deconv.bias.shape)
    y = deconv.calc_conv_transpose2d(mge.tensor(x), mge.tensor(w), mge.tensor(b)).numpy()
    ref = TF.conv_transpose2d(torch.tensor(x), torch.tensor(w.reshape(4, 3, 3, 3)),
                              torch.tensor(b.reshape(-1)), stride=2, padding=1,
                              output_padding=1, groups=2)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)

    # zero offsets and a unit mask: the deformable convolution is a plain one (the oracle)
    dcn = M.DeformableConv2d(2, 3, 3, padding=1)
    x, w, b = randn(1, 2, 4, 4), randn(3, 2, 3, 3), randn(1, 3, 1, 1)
    offset, mask = np.zeros((1, 18, 4, 4), "float32"), np.ones((1, 9, 4, 4), "float32")
    y = dcn.calc_conv(*(mge.tensor(a) for a in (x, w, offset, mask, b))).numpy()
    ref = TF.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b.reshape(-1)), padding=1)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_region_restricted_conv_layer():
    # upstream's docstring example: groups and bias come right after kernel_size
    m = M.RegionRestrictedConv(in_channels=2, out_channels=2, kernel_size=2, groups=2)
    assert m.weight.shape == (2, 1, 1, 2, 2) and m.bias.shape == (1, 2, 1, 1)
    inp = mge.tensor(randn(1, 2, 2, 2))
    rin = mge.tensor(np.random.randn(1, 2, 2).astype(np.int32))
    rout = mge.tensor(np.random.randn(1, 1, 1).astype(np.int32))
    assert m(inp, rin, rout).shape == (1, 2, 1, 1)
    # against torch: the output pixel sums its kernel's taps of its own region, plus the bias
    m = M.RegionRestrictedConv(4, 4, 3, 2, True, padding=1)
    m.bias[...] = mge.tensor(randn(1, 4, 1, 1))
    x = randn(2, 4, 5, 5)
    rin_np = np.random.randint(0, 2, (2, 5, 5)).astype(np.int32)
    rout_np = np.random.randint(0, 2, (2, 5, 5)).astype(np.int32)
    got = m(mge.tensor(x), mge.tensor(rin_np), mge.tensor(rout_np)).numpy()
    w = torch.tensor(m.weight.numpy()).reshape(4, 2, 3, 3)
    want = torch.tensor(m.bias.numpy()).expand(2, 4, 5, 5).clone()
    for v in (0, 1):
        masked = torch.tensor(x) * torch.tensor(rin_np == v).unsqueeze(1)
        want += TF.conv2d(masked, w, None, 1, 1, 1, 2) * torch.tensor(rout_np == v).unsqueeze(1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        M.RegionRestrictedConv(2, 2, 3, 2, padding_mode="reflect")


@pytest.mark.parametrize("layer, dims, make", [
    ("Conv1d", 1, lambda **g: M.Conv1d(2, 2, **g)),
    ("Conv2d", 2, lambda **g: M.Conv2d(2, 2, **g)),
    ("ConvTranspose2d", 2, lambda **g: M.ConvTranspose2d(2, 2, **g)),
    ("Conv3d", 3, lambda **g: M.Conv3d(2, 2, **g)),
    ("ConvTranspose3d", 3, lambda **g: M.ConvTranspose3d(2, 2, **g)),
    ("LocalConv2d", 2, lambda **g: M.LocalConv2d(2, 2, 8, 8, **g)),
    ("DeformableConv2d", 2, lambda **g: M.DeformableConv2d(2, 2, **g)),
    ("RegionRestrictedConv", 2, lambda **g: M.RegionRestrictedConv(2, 2, groups=2, **g)),
])
def test_geometry_is_checked_and_kept_per_layer(layer, dims, make):
    """kernel_size, stride, padding and dilation: an int becomes an n-tuple (stays an int for
    Conv1d, as upstream); a value below 1 (padding: below 0) is refused naming the layer and
    the argument."""
    m = make(kernel_size=3, stride=2, padding=1, dilation=1)
    as_kept = (lambda v: v) if dims == 1 else (lambda v: (v,) * dims)
    assert (m.kernel_size, m.stride, m.padding, m.dilation) == \
        (as_kept(3), as_kept(2), as_kept(1), as_kept(1))
    m = make(kernel_size=3, padding=0)
    assert m.padding == as_kept(0)
    for name, bad in (("kernel_size", 0), ("stride", 0), ("padding", -1), ("dilation", 0)):
        lowest = 0 if name == "padding" else 1
        with pytest.raises(ValueError, match=rf"^{layer} {name} must be an int >= {lowest}"):
            make(**{"kernel_size": 3, name: bad})
        with pytest.raises(AssertionError):  # (upstream's layers assert: measured, Conv2d)
            make(**{"kernel_size": 3, name: bad})
