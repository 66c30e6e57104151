"""Tests for the layers in megengine/module/: values and gradients vs torch.nn with equal weights."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager
from module_oracle import randn, run_both


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    m = M.Linear(5, 3, bias=bias)
    assert m.weight.shape == (3, 5)
    run_both(m, torch.nn.Linear(5, 3, bias=bias), randn(2, 4, 5))


def test_linear_relu_takes_upstreams_keyword():
    # upstream's LinearRelu.forward(self, inp): m(inp=x) works there
    m = M.LinearRelu(5, 3)
    m.bias[...] = np.array([0.5, -0.5, 0.0], np.float32)
    x = randn(2, 5)
    expected = np.maximum(x @ m.weight.numpy().T + m.bias.numpy(), 0)
    np.testing.assert_allclose(m(inp=mge.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_calc_linear_is_the_hook_forward_goes_through():
    # upstream's calc_linear(x, weight, bias): a subclass's transformed weight reaches the map
    class Tied(M.LinearRelu):  # a layer whose weight is kept row-normalized
        def calc_linear(self, x, weight, bias):
            return super().calc_linear(x, weight / (weight ** 2).sum(axis=1, keepdims=True) ** 0.5,
                                       bias)

    m = Tied(5, 3)
    m.bias[...] = np.array([0.5, -0.5, 0.0], np.float32)
    x, w = randn(4, 5), m.weight.numpy()
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    expected = np.maximum(x @ unit.T + m.bias.numpy(), 0)
    np.testing.assert_allclose(m(mge.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    given = randn(3, 5)
    np.testing.assert_allclose(M.Linear(5, 3).calc_linear(mge.tensor(x), mge.tensor(given),
                                                          None).numpy(), x @ given.T, rtol=1e-5)


def test_conv1d():
    m = M.Conv1d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    assert m.weight.shape == (2, 3, 2, 3)
    run_both(m, torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), randn(2, 4, 9))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=1, groups=4, bias=False),  # depthwise
])
def test_conv2d(kwargs):
    m = M.Conv2d(4, 8, **kwargs)
    g = kwargs.get("groups", 1)
    k = kwargs["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    assert m.weight.shape == ((8, 4) + k if g == 1 else (g, 8 // g, 4 // g) + k)
    run_both(m, torch.nn.Conv2d(4, 8, **kwargs), randn(2, 4, 7, 6), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_conv_padding_modes(mode):
    run_both(M.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode),
             torch.nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode), randn(2, 2, 5, 6),
             rtol=1e-4, atol=1e-4)
    run_both(M.Conv1d(2, 3, 3, padding=2, padding_mode=mode),
             torch.nn.Conv1d(2, 3, 3, padding=2, padding_mode=mode), randn(2, 2, 5),
             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1, output_padding=1, groups=2),
    dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2), bias=False),
])
def test_conv_transpose2d(kwargs):
    m = M.ConvTranspose2d(4, 6, **kwargs)
    g = kwargs.get("groups", 1)
    assert m.weight.shape[:-2] == ((4, 6) if g == 1 else (g, 2, 3))  # (in, out) swapped
    run_both(m, torch.nn.ConvTranspose2d(4, 6, **kwargs), randn(2, 4, 5, 5), rtol=1e-4, atol=1e-4)


def test_conv_layers_carry_upstreams_attributes():
    # upstream 1.13 measured: every convolution has output_padding (0 unless transposed) and
    # LocalConv2d a padding_mode of "zeros"; code that reads them failed here before
    for m in [M.Conv1d(2, 4, 3), M.Conv2d(2, 4, 3), M.Conv3d(2, 4, 3), M.LocalConv2d(2, 4, 5, 5, 3),
              M.DeformableConv2d(2, 4, 3), M.RegionRestrictedConv(4, 4, 3, groups=4)]:
        assert m.output_padding == 0, type(m).__name__
    assert M.ConvTranspose2d(2, 4, 3, output_padding=(1, 0), stride=2).output_padding == (1, 0)
    assert M.LocalConv2d(2, 4, 5, 5, 3).padding_mode == "zeros"


def test_conv_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"divisible by groups \(3\)"):
        M.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="kernel_size"):
        M.Conv2d(4, 6, (3, 0))
    with pytest.raises(ValueError, match="'circular'"):
        M.Conv2d(4, 6, 3, padding_mode="circular")
    assert repr(M.Conv2d(4, 6, 3, stride=2, bias=False)) == \
        "Conv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), bias=False)"


def test_reprs_of_layers_that_print_no_arguments():
    # upstream 1.13 measured: these layers' repr names no argument (their Module's default)
    layers = [M.LeakyReLU(0.2), M.PReLU(3), M.AdaptiveAvgPool2d((2, 3)), M.AdaptiveMaxPool2d(2),
              M.Embedding(10, 3), M.PixelShuffle(2), M.Pad(((0, 0), (1, 1))),
              M.LocalResponseNorm()]
    assert [repr(m) for m in layers] == [
        "LeakyReLU()", "PReLU()", "AdaptiveAvgPool2d()", "AdaptiveMaxPool2d()", "Embedding()",
        "PixelShuffle()", "Pad()", "LocalResponseNorm()"]
    # and these name theirs (upstream 1.13 measured)
    assert repr(M.Softmax(axis=1)) == "Softmax(axis=1)"
    assert repr(M.Dropout(0.3)) == "Dropout(drop_prob=0.3)"


def test_max_pool2d():
    run_both(M.MaxPool2d(3, stride=2, padding=1), torch.nn.MaxPool2d(3, stride=2, padding=1),
             randn(2, 3, 7, 8))
    run_both(M.MaxPool2d(2), torch.nn.MaxPool2d(2), randn(1, 2, 6, 6))  # stride defaults to kernel


@pytest.mark.parametrize("mode,include_pad", [("average", True),
                                               ("average_count_exclude_padding", False),
                                               ("AVERAGE", True),
                                               ("Average_Count_Exclude_Padding", False)])
def test_avg_pool2d(mode, include_pad):
    # the layer takes every mode F.avg_pool2d takes, in any case, as upstream's (earlier
    # versions of this fork refused all but the two lower-case averages when built)
    run_both(M.AvgPool2d(3, stride=2, padding=1, mode=mode),
             torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=include_pad),
             randn(2, 3, 7, 8))


@pytest.mark.parametrize("mode", ["max", "MAX"])
def test_avg_pool2d_in_max_mode_is_a_max_pooling(mode):
    # upstream 1.13's Pooling op reads the mode: "max" pools the maximum (measured)
    run_both(M.AvgPool2d(3, stride=2, padding=1, mode=mode),
             torch.nn.MaxPool2d(3, stride=2, padding=1), randn(2, 3, 7, 8))


def test_avg_pool2d_refuses_an_unknown_mode_when_built():
    with pytest.raises(ValueError, match=r"AvgPool2d: mode must be one of .*got 'sum'") as e:
        M.AvgPool2d(2, mode="sum")
    assert isinstance(e.value, (AssertionError, RuntimeError))  # (also upstream's types)


def test_adaptive_pooling():
    # upstream derives one window and stride from the sizes; that equals torch's adaptive
    # windows when the input size is a multiple of the output size
    run_both(M.AdaptiveAvgPool2d((2, 3)), torch.nn.AdaptiveAvgPool2d((2, 3)), randn(2, 3, 8, 9))
    run_both(M.AdaptiveMaxPool2d(2), torch.nn.AdaptiveMaxPool2d(2), randn(2, 3, 6, 4))


def _copy_running_stats_check(bn, tbn):
    np.testing.assert_allclose(bn.running_mean.numpy().reshape(-1), tbn.running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy().reshape(-1), tbn.running_var.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_batchnorm2d_train_then_eval_matches_torch_momentum():
    bn = M.BatchNorm2d(3, momentum=0.8)
    bn.weight._reset(randn(1, 3, 1, 1))
    bn.bias._reset(randn(1, 3, 1, 1))
    # upstream: running = momentum * running + (1 - momentum) * batch, i.e. torch's 1 - momentum
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2)
    assert bn.running_mean.shape == (1, 3, 1, 1)
    for step in range(2):
        run_both(bn, tbn, randn(4, 3, 5, 5) * 2 + step, rtol=1e-4, atol=1e-4)
        _copy_running_stats_check(bn, tbn)
    bn.eval()
    tbn.eval()
    before = bn.running_mean.numpy()
    run_both(bn, tbn, randn(4, 3, 5, 5), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(bn.running_mean.numpy(), before)  # eval: no update


@pytest.mark.parametrize("shape", [(6, 4), (5, 4, 3)])
def test_batchnorm1d(shape):
    bn, tbn = M.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    ym, _ = run_both(bn, tbn, randn(*shape), rtol=1e-4, atol=1e-4)
    assert ym.shape == shape
    _copy_running_stats_check(bn, tbn)
    with pytest.raises(ValueError, match="2-d or 3-d"):
        bn(mge.tensor(randn(2, 4, 3, 3)))


@pytest.mark.parametrize("cls, shape", [(M.BatchNorm1d, (0, 4, 0)), (M.BatchNorm1d, (0, 4)),
                                        (M.BatchNorm2d, (0, 4, 0, 0)), (M.BatchNorm2d, (2, 4, 0, 3))])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_of_an_empty_batch_is_empty_and_leaves_the_statistics(cls, shape, training):
    # An empty batch has no statistics to normalize with or to learn: the output is the empty
    # input, the running statistics stay as they were, and weight/bias get zero gradients.
    bn = cls(4)
    bn.train(training)
    mean, var = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    gm = GradManager().attach(bn.parameters())
    with gm:
        y = bn(mge.tensor(np.zeros(shape, np.float32)))
        gm.backward(y.sum())
    assert y.shape == shape
    np.testing.assert_array_equal(bn.running_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.running_var.numpy(), var)
    np.testing.assert_array_equal(bn.weight.grad.numpy(), np.zeros((1, 4, 1, 1), np.float32))
    np.testing.assert_array_equal(bn.bias.grad.numpy(), np.zeros((1, 4, 1, 1), np.float32))
    with pytest.raises(ValueError, match="expected 4 channels"):
        bn(mge.tensor(np.zeros((0, 3) + shape[2:], np.float32)))


def test_batchnorm_without_running_stats_or_affine():
    bn = M.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert bn.weight is None and bn.running_mean is None and list(bn.state_dict()) == []
    bn.eval()  # no running stats: batch statistics even in eval
    tbn = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False).eval()
    run_both(bn, tbn, randn(4, 3, 2, 2), rtol=1e-4, atol=1e-4)


def test_frozen_batchnorm_uses_running_stats_and_does_not_learn():
    bn = M.BatchNorm2d(2, freeze=True)
    bn.running_mean._reset(np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1))
    bn.running_var._reset(np.array([4.0, 0.25], np.float32).reshape(1, 2, 1, 1))
    bn.weight._reset(np.full((1, 2, 1, 1), 2, np.float32))
    x = randn(3, 2, 2, 2)
    gm = GradManager().attach(bn.parameters())
    with gm:
        y = bn(mge.tensor(x))
        gm.backward(y.sum())
    scale = 2 / np.sqrt(np.array([4.0, 0.25]) + 1e-5).reshape(1, 2, 1, 1)
    expected = (x - np.array([1.0, -1.0]).reshape(1, 2, 1, 1)) * scale
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert bn.weight.grad is None  # frozen: detached
    np.testing.assert_array_equal(bn.running_mean.numpy().reshape(-1), [1.0, -1.0])


@pytest.mark.parametrize("affine", [True, False])
def test_frozen_batchnorm_in_training_is_torchs_inference_batch_norm(affine):
    # upstream: freeze acts in training mode: running statistics, a detached affine map, no
    # update; the input's gradient is that of inference batch norm
    m = M.BatchNorm2d(3, freeze=True, affine=affine)
    t = torch.nn.BatchNorm2d(3, affine=affine).eval()
    rng = np.random.RandomState(0)
    mean, var = rng.randn(3).astype("float32"), rng.uniform(0.5, 2, 3).astype("float32")
    m.running_mean._reset(mean.reshape(1, 3, 1, 1))
    m.running_var._reset(var.reshape(1, 3, 1, 1))
    with torch.no_grad():
        t.running_mean.copy_(torch.from_numpy(mean))
        t.running_var.copy_(torch.from_numpy(var))
        if affine:
            w, b = rng.uniform(0.5, 2, 3).astype("float32"), rng.randn(3).astype("float32")
            m.weight._reset(w.reshape(1, 3, 1, 1))
            m.bias._reset(b.reshape(1, 3, 1, 1))
            t.weight.copy_(torch.from_numpy(w))
            t.bias.copy_(torch.from_numpy(b))
    x0 = randn(4, 3, 5, 7)
    g0 = randn(4, 3, 5, 7)
    x = mge.tensor(x0)
    gm = GradManager().attach([x] + list(m.parameters()))
    with gm:
        y = m(x)
        gm.backward(y, mge.tensor(g0))
    tx = torch.tensor(x0, requires_grad=True)
    ty = t(tx)
    ty.backward(torch.tensor(g0))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in m.parameters())
    np.testing.assert_array_equal(m.running_mean.numpy().reshape(-1), mean)
    np.testing.assert_array_equal(m.running_var.numpy().reshape(-1), var)


@pytest.mark.parametrize("layer", ["BatchNorm2d", "SyncBatchNorm"])
def test_frozen_batchnorm_in_eval_mode_learns_nothing_either(layer):
    # upstream 1.13 detaches a frozen layer's weight and bias in eval mode too (measured: no
    # gradient; its integration test_frozen_bn trains eval-mode frozen layers and expects the
    # loss unchanged); earlier versions of this fork let them learn there
    m = getattr(M, layer)(2, freeze=True)
    m.eval()
    t = torch.nn.BatchNorm2d(2).eval()
    x = randn(3, 2, 4, 4)
    gm = GradManager().attach(m.parameters())
    with gm:
        y = m(mge.tensor(x))
        gm.backward(y.sum())
    np.testing.assert_allclose(y.numpy(), t(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    assert m.weight.grad is None and m.bias.grad is None


def test_norm_layers_save_1d_state_and_load_either_shape():
    bn = M.BatchNorm2d(3)
    sd = bn.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "bias": (3,), "running_mean": (3,), "running_var": (3,), "weight": (3,)}
    target = M.BatchNorm2d(3)
    target.load_state_dict({k: np.arange(3, dtype=np.float32) + 1 for k in sd})
    assert target.running_var.shape == (1, 3, 1, 1)
    assert target.running_var.numpy().reshape(-1).tolist() == [1, 2, 3]
    target.load_state_dict({k: np.full((1, 3, 1, 1), 5, np.float32) for k in sd})
    assert (target.weight.numpy() == 5).all()
    with pytest.raises(ValueError, match=r"running_mean: expected shape \(1, 3, 1, 1\), got \(4,\)"):
        target.load_state_dict({k: np.zeros(4, np.float32) for k in sd})
    assert M.LayerNorm((2, 3)).state_dict()["weight"].shape == (6,)  # upstream flattens it too
    assert M.Linear(2, 3).state_dict()["weight"].shape == (3, 2)


def test_layer_norm():
    m = M.LayerNorm((4, 5))
    m.weight._reset(randn(4, 5))
    m.bias._reset(randn(4, 5))
    run_both(m, torch.nn.LayerNorm((4, 5)), randn(3, 4, 5), rtol=1e-4, atol=1e-4)
    run_both(M.LayerNorm(6, affine=False), torch.nn.LayerNorm(6, elementwise_affine=False),
             randn(2, 3, 6), rtol=1e-4, atol=1e-4)


def test_layer_norm_of_channels_as_upstream_1_0():
    # upstream 1.0-1.3's LayerNorm(C) on (N, C, H, W): each sample over (C, H, W), per-channel
    # affine, which is torch's GroupNorm with one group
    m = M.LayerNorm(3)
    m.weight._reset(randn(3))
    m.bias._reset(randn(3))
    run_both(m, torch.nn.GroupNorm(1, 3), randn(2, 3, 4, 5), rtol=1e-4, atol=1e-4)
    # a last axis of C is the newer API's case, even with C channels
    m = M.LayerNorm(3)
    m.weight._reset(randn(3))
    run_both(m, torch.nn.LayerNorm(3), randn(2, 3, 4, 3), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not match the trailing dims") as error:
        M.LayerNorm(3)(mge.tensor(randn(2, 3, 4)))  # not 4-d: only the newer API applies
    assert isinstance(error.value, RuntimeError)  # (upstream 1.13's kernel: an AsyncError)


def test_group_norm_and_instance_norm():
    m = M.GroupNorm(2, 6)
    m.weight._reset(randn(6))
    m.bias._reset(randn(6))
    run_both(m, torch.nn.GroupNorm(2, 6), randn(3, 6, 4, 5), rtol=1e-4, atol=1e-4)
    run_both(M.GroupNorm(3, 6), torch.nn.GroupNorm(3, 6), randn(2, 6, 7), rtol=1e-4, atol=1e-4)
    inorm = M.InstanceNorm(4)
    inorm.weight._reset(randn(4))
    run_both(inorm, torch.nn.InstanceNorm2d(4, affine=True), randn(2, 4, 3, 5), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="divisible"):
        M.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"\(N, 6, \.\.\.\) input, got shape \(2, 5, 3\)"):
        M.GroupNorm(2, 6)(mge.tensor(randn(2, 5, 3)))


def test_embedding():
    m = M.Embedding(7, 4)
    idx = np.array([[0, 3, 3], [6, 0, 1]], np.int32)
    run_both(m, torch.nn.Embedding(7, 4), idx)  # repeated indices accumulate in the grad
    w = randn(5, 2)
    pre = M.Embedding.from_pretrained(mge.tensor(w))
    assert pre.freeze and np.array_equal(pre(mge.tensor([4, 1])).numpy(), w[[4, 1]])
    gm = GradManager().attach(pre.parameters())
    with gm:
        gm.backward(pre(mge.tensor([4, 1])).sum())
    assert pre.weight.grad is None  # frozen
    with pytest.raises(ValueError, match=r"initial_weight has shape \(5, 2\), expected"):
        M.Embedding(5, 3, initial_weight=w)
    with pytest.raises(ValueError, match="padding_idx"):
        M.Embedding(5, 2, padding_idx=0)


def test_embedding_advances_numpys_global_generator_as_upstream():
    # upstream 1.13 measured: after np.random.seed(0), M.Embedding(10, 4) leaves
    # np.random.rand() at 0.359507900573786 (it draws a throwaway uniform weight first); given
    # its weight (initial_weight, from_pretrained) it draws nothing: 0.5488135039273248
    np.random.seed(0)
    M.Embedding(10, 4)
    assert np.random.rand() == 0.359507900573786
    w = mge.tensor(np.ones((3, 5), np.float32))
    np.random.seed(0)
    M.Embedding(3, 5, initial_weight=w)
    assert np.random.rand() == 0.5488135039273248
    np.random.seed(0)
    M.Embedding.from_pretrained(w)
    assert np.random.rand() == 0.5488135039273248
    # a table larger than one chunk of the draw leaves the generator where numpy's one draw does
    np.random.seed(1)
    np.random.uniform(size=(1100, 1000))
    expected = np.random.rand()
    np.random.seed(1)
    M.Embedding(1100, 1000)
    assert np.random.rand() == expected


def test_dropout_statistics_and_modes():
    m = M.Dropout(0.3)
    x = mge.tensor(np.ones((200, 200), np.float32))
    gm = GradManager().attach([x])
    with gm:
        y = m(x)
        gm.backward(y.sum())
    out = y.numpy()
    kept = out != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), out)  # grad = mask / (1 - p)
    m.eval()
    assert np.array_equal(m(x).numpy(), x.numpy())


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_checks_drop_prob_where_a_training_call_uses_it(p):
    # upstream 1.13 builds Dropout(1.0) and runs it in eval mode; its training call asserts
    # (measured). Earlier versions of this fork refused the layer when built.
    m = M.Dropout(p)
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match=r"dropout: drop_prob must be in \[0, 1\)") as e:
        m(x)
    assert isinstance(e.value, AssertionError)
    m.eval()
    np.testing.assert_array_equal(m(x).numpy(), x.numpy())


@pytest.mark.parametrize("ours,theirs", [
    (M.ReLU(), torch.nn.ReLU()),
    (M.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    (M.Sigmoid(), torch.nn.Sigmoid()),
    (M.SiLU(), torch.nn.SiLU()),
    (M.GELU(), torch.nn.GELU()),
    (M.Softmax(axis=1), torch.nn.Softmax(dim=1)),
    (M.Softmax(axis=-1), torch.nn.Softmax(dim=-1)),
    (M.PReLU(), torch.nn.PReLU()),
    (M.PReLU(3, init=0.1), torch.nn.PReLU(3, init=0.1)),
])
def test_activations(ours, theirs):
    run_both(ours, theirs, randn(2, 3, 4, 5), rtol=1e-5, atol=1e-6)


def test_identity_returns_a_copy_with_gradient():
    run_both(M.Identity(), torch.nn.Identity(), randn(3, 2))
    x = mge.tensor([1.0, 2.0])
    y = M.Identity()(x)
    y[0] = 5.0
    assert x.numpy().tolist() == [1.0, 2.0]


def test_sequential_network_matches_torch():
    net = M.Sequential(OrderedDict([
        ("conv", M.Conv2d(3, 4, 3, padding=1)), ("bn", M.BatchNorm2d(4)), ("relu", M.ReLU()),
        ("pool", M.MaxPool2d(2)),
    ]))
    tnet = torch.nn.Sequential(OrderedDict([
        ("conv", torch.nn.Conv2d(3, 4, 3, padding=1)), ("bn", torch.nn.BatchNorm2d(4)),
        ("relu", torch.nn.ReLU()), ("pool", torch.nn.MaxPool2d(2)),
    ]))
    run_both(net, tnet, randn(2, 3, 6, 6), rtol=1e-4, atol=1e-4)
    assert list(net.state_dict()) == [
        "bn.bias", "bn.running_mean", "bn.running_var", "bn.weight", "conv.bias", "conv.weight"]


def test_general_norm_layer_as_upstream_documents():
    inp = mge.tensor(np.arange(2 * 3 * 4 * 4).astype(np.float32).reshape(2, 3, 4, 4))
    m = M.GeneralNorm((2, 3), (0, 1))
    assert m.weight.shape == (2, 3) and m.bias.shape == (2, 3)
    out = m(inp).numpy()
    x = inp.numpy()
    want = (x - x.mean((0, 1), keepdims=True)) / np.sqrt(x.var((0, 1), keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert M.GeneralNorm((3, 4), (1, -2))(inp).shape == (2, 3, 4, 4)
    # upstream's "incorrect initialization" examples construct, and fail in forward
    bad = M.GeneralNorm((2, 4, 3), (0, 2, 1))
    with pytest.raises(ValueError):
        bad(inp)
    with pytest.raises(ValueError, match="repeats"):
        M.GeneralNorm((3, 3), (1, 1))


def test_general_norm_keeps_its_arguments_as_given_in_its_repr():
    # upstream 1.13's reprs (measured): lists stay lists, tuples tuples, an int axis is a list
    # of it where the layer is affine and stays an int where not (this fork printed tuples)
    assert repr(M.GeneralNorm((2,))) == \
        "GeneralNorm(normalized_shape=(2,), normalized_axis=[0], eps=1e-05, affine=True)"
    assert repr(M.GeneralNorm([2], normalized_axis=[0])) == \
        "GeneralNorm(normalized_shape=[2], normalized_axis=[0], eps=1e-05, affine=True)"
    assert repr(M.GeneralNorm((2, 3), normalized_axis=(1, 2))) == \
        "GeneralNorm(normalized_shape=(2, 3), normalized_axis=(1, 2), eps=1e-05, affine=True)"
    plain = M.GeneralNorm(normalized_axis=1, affine=False)
    assert repr(plain) == \
        "GeneralNorm(normalized_shape=None, normalized_axis=1, eps=1e-05, affine=False)"
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    for m in (plain, M.GeneralNorm([3], normalized_axis=[1])):
        np.testing.assert_allclose(m(mge.tensor(x)).numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: M.BatchNorm2d(4, track_running_stats=False, freeze=True), "freeze=True needs"),
    (lambda: M.MultiHeadAttention(16, 5), "must be divisible by num_heads"),
    (lambda: M.MultiHeadAttention(16, 4, add_bias_kv=True), "add_bias_kv"),
    (lambda: M.GroupNorm(3, 8), "must be divisible by num_groups"),
])
def test_bad_layer_arguments_raise_upstreams_assertion_error_too(make, match):
    # upstream 1.13 asserts these in its constructors (measured); the error is a ValueError too
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match=match):
            make()
