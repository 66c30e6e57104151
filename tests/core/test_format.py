"""Tests for megengine/core/format.py and the format label on Tensor: ``Tensor(array,
format="nhwc")`` is the tensor ``array`` (upstream's CreateTensor rule in
imperative/src/impl/transformations/format.cpp), stored in NHWC memory; it behaves as the
unlabelled tensor (values, shapes, gradients checked against numpy and PyTorch), labels pass
through ops by upstream's rules, and with ``_auto_format_convert`` off the tensor shows, and
layout ops see, its NHWC array."""
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine import Tensor
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.core._config import set_auto_format_convert

from devices import child_env, host


@pytest.fixture
def auto_convert_off():
    previous = set_auto_format_convert(False)
    try:
        yield
    finally:
        set_auto_format_convert(previous)


def _pair(shape=(2, 3, 4, 5)):
    """(plain NCHW tensor, the same tensor made "nhwc", the NCHW array)."""
    nchw = np.random.rand(*shape).astype(np.float32)
    return Tensor(nchw), Tensor(nchw, format="nhwc"), nchw


# ----- what an "nhwc" tensor is -----

def test_an_nhwc_tensor_is_the_array_given_stored_channels_last():
    # upstream's test_formatted_tensor: tensor(data, format="nhwc") has data's shape and value
    plain, x, nchw = _pair()
    assert x.format == "nhwc" and plain.format == "default"
    assert x.shape == (2, 3, 4, 5) and x._tuple_shape == (2, 3, 4, 5) and x.ndim == 4
    np.testing.assert_array_equal(x.numpy(), nchw)
    # the memory is NHWC: the channel stride is the element size
    if isinstance(x._data, np.ndarray):
        assert x._data.strides[1] == 4 and x._data.transpose(0, 2, 3, 1).flags["C_CONTIGUOUS"]
    # a grouped convolution weight (G, O/G, I/G, kh, kw) is stored as (G, O/G, kh, kw, I/G)
    w = np.random.rand(2, 3, 4, 5, 6).astype(np.float32)  # G=2, O/G=3, I/G=4, kh=5, kw=6
    t = Tensor(w, format="nhwc")
    assert t.shape == w.shape
    np.testing.assert_array_equal(t.numpy(), w)
    if isinstance(t._data, np.ndarray):
        assert t._data.transpose(0, 1, 3, 4, 2).flags["C_CONTIGUOUS"]


def test_labels_from_tensors_and_setting_a_label_keep_the_value():
    plain, x, nchw = _pair()
    for t in (Tensor(x), Tensor(x, format="nhwc"), x.detach()):
        assert t.format == "nhwc"
        np.testing.assert_array_equal(t.numpy(), nchw)
    y = Tensor(nchw)
    y.format = "nhwc"  # upstream's SetFormat converts the memory, the value stays
    np.testing.assert_array_equal(y.numpy(), nchw)
    y.format = "nchw"
    assert y.format == "nchw" and y.shape == nchw.shape


@pytest.mark.parametrize("label,given", [("default", "nhwc"), ("nchw", "nhwc"),
                                         ("nhwc", "nchw")])
def test_a_tensor_made_from_a_tensor_of_another_label_is_refused_as_upstream(label, given):
    # upstream's TensorWrapper asserts "format mismatch" (its test_formatted_tensor leaves
    # tensor(a, format="nchw") of an "nhwc" a as a TODO); earlier versions of this fork
    # relabelled the new tensor
    t = Tensor(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), format=label)
    with pytest.raises(RuntimeError, match=f"format='{given}'.*labelled '{label}'.*y.format"):
        Tensor(t, format=given)
    assert t.format == label


@pytest.mark.parametrize("make", [
    lambda: Tensor(np.zeros((2, 3, 4), np.float32), format="nhwc"),
    lambda: setattr(Tensor(np.zeros((2, 3), np.float32)), "format", "nhwc"),
    lambda: setattr(Tensor(np.zeros((1, 2, 3, 4), np.float32)), "format", "NHWC"),
])
def test_a_label_that_cannot_hold_is_refused_with_the_reason(make):
    with pytest.raises(ValueError, match="format"):
        make()


def test_pickle_and_deepcopy_keep_label_and_value(auto_convert_off):
    _, x, nchw = _pair()
    for mode in (False, True):
        set_auto_format_convert(mode)
        for y in (pickle.loads(pickle.dumps(x)), copy.deepcopy(x)):
            assert y.format == "nhwc"
            set_auto_format_convert(True)
            np.testing.assert_array_equal(y.numpy(), nchw)
            set_auto_format_convert(mode)


def test_the_dispatcher_hook_waits_for_the_first_label():
    # a fresh process: programs that never label a tensor never pay for the hook
    code = (
        "import numpy as np, megengine as mge, megengine.functional as F\n"
        "from megengine.core import dispatch\n"
        "x = mge.tensor(np.ones((1, 2, 3, 4), 'float32'))\n"
        "y = F.relu(x + 1); y.format\n"
        "assert dispatch._format_hook is None\n"
        "x.format = 'nhwc'\n"
        "assert dispatch._format_hook is not None and (x + 1).format == 'nhwc'\n")
    root = os.path.dirname(os.path.dirname(mge.__file__))  # the megengine under test
    env = child_env(dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get(
        "PYTHONPATH", "")])))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


# ----- the label rules (upstream's format.cpp; ops it does not list give "default") -----

def _bn(x):
    c = x.shape[1]
    stats = [Tensor(np.ones((1, c, 1, 1), np.float32), format="nhwc") for _ in range(4)]
    return F.batch_norm(x, *stats, training=True, inplace=False)


RULES = [  # (name, function of the "nhwc" tensor x of shape (2, 3, 4, 5), expected label)
    ("transpose", lambda x: F.transpose(x, (0, 2, 3, 1)), "default"),
    ("reshape to 4-D", lambda x: F.reshape(x, (2, 3, 20, 1)), "nhwc"),
    ("reshape to 2-D", lambda x: F.reshape(x, (2, 60)), "default"),
    ("flatten", lambda x: F.flatten(x, 1), "default"),
    ("broadcast to 4-D", lambda x: F.broadcast_to(x[:, :1], (2, 3, 4, 5)), "nhwc"),
    ("broadcast to 5-D", lambda x: F.broadcast_to(x, (2, 2, 3, 4, 5)), "default"),
    ("slice", lambda x: x[:, 1:, ::2], "nhwc"),
    ("advanced index", lambda x: x[:, :Tensor(2), :2, [1, 2, 4]], "nhwc"),
    ("integer index", lambda x: x[0], "default"),
    ("elemwise with default", lambda x: x * Tensor(np.ones((2, 3, 4, 5), np.float32)) + 1,
     "nhwc"),
    ("elemwise with a (1, C, 1, 1) bias", lambda x: x + Tensor(np.ones((1, 3, 1, 1), "float32")),
     "nhwc"),
    ("unary and activation", lambda x: F.relu(F.exp(-x)), "nhwc"),
    ("compare", lambda x: x > 0.5, "nhwc"),
    ("where", lambda x: F.where(x > 0.5, x, 0 * x), "nhwc"),
    ("clip", lambda x: F.clip(x, 0.2, 0.8), "nhwc"),
    ("concat", lambda x: F.concat([x, x * 2], axis=1), "nhwc"),
    ("split", lambda x: F.split(x, 3, axis=1)[1], "nhwc"),
    ("astype", lambda x: x.astype("float16"), "nhwc"),
    ("copy", lambda x: F.copy(x), "nhwc"),
    ("dropout", lambda x: F.dropout(x, 0.5), "nhwc"),
    ("conv2d", lambda x: F.conv2d(x, Tensor(np.ones((4, 3, 3, 3), "float32"))), "nhwc"),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2), "nhwc"),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2), "nhwc"),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 2), "nhwc"),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2), "nhwc"),
    ("interpolate", lambda x: F.vision.interpolate(x, scale_factor=2), "nhwc"),
    ("batch_norm output", lambda x: _bn(x)[0], "nhwc"),
    ("batch_norm running mean", lambda x: _bn(x)[1], "nhwc"),
    ("reduction (not listed upstream)", lambda x: F.sum(x, axis=1, keepdims=True), "default"),
    ("matmul (not listed upstream)", lambda x: F.matmul(x, x.transpose(0, 1, 3, 2)), "default"),
    ("stack (not listed upstream)", lambda x: F.stack([x, x]), "default"),
]


@pytest.mark.parametrize("name,func,label", RULES, ids=[r[0] for r in RULES])
def test_labels_pass_as_upstreams_rules_and_values_stay_the_plain_ones(name, func, label):
    plain, x, _ = _pair()
    with _same_dropout():
        out = func(x)
    with _same_dropout():
        expected = func(plain)
    assert out.format == label, name
    # whatever the label, the value is the one the plain NCHW tensor gives
    np.testing.assert_allclose(host(out), host(expected), rtol=1e-6, atol=1e-6)


class _same_dropout:
    """Dropout draws from numpy's generator on the CPU: the same seed gives the same mask."""

    def __enter__(self):
        np.random.seed(7)
        mge.random.seed(7)

    def __exit__(self, *exc):
        return False


def test_setting_a_part_keeps_the_label_and_whole_assignment_takes_the_new_one():
    _, x, nchw = _pair()
    x[:, :1, :2] = 0
    expected = nchw.copy()
    expected[:, :1, :2] = 0
    assert x.format == "nhwc"
    np.testing.assert_array_equal(x.numpy(), expected)
    x[...] = Tensor(nchw, format="nchw")
    assert x.format == "nchw"


def test_a_label_is_kept_by_nchw_inputs_too_and_different_labels_are_refused():
    a = Tensor(np.ones((1, 2, 3, 4), np.float32), format="nchw")
    assert (a + 1).format == "nchw" and F.reshape(a, (1, 2, 12, 1)).format == "default"
    b = Tensor(np.ones((1, 2, 3, 4), np.float32), format="nhwc")
    with pytest.raises(ValueError, match="different format labels"):
        a + b


def test_outputs_without_n_c_h_w_stay_default():
    _, x, _ = _pair()
    stats = [Tensor(np.ones(3, np.float32)) for _ in range(2)]
    out, mean, var = F.batch_norm(x, *stats, training=True, inplace=False)
    assert out.format == "nhwc" and mean.format == "default" and mean.shape == (3,)


# ----- values and gradients of a formatted network against PyTorch -----

def test_a_formatted_network_gives_torchs_values_and_gradients():
    rng = np.random.RandomState(3)
    nchw = rng.rand(2, 4, 6, 6).astype(np.float32)
    w1 = rng.rand(6, 2, 3, 3).astype(np.float32) - 0.5  # groups=2
    b1 = rng.rand(1, 6, 1, 1).astype(np.float32)
    gamma, beta = rng.rand(1, 6, 1, 1).astype(np.float32), rng.rand(1, 6, 1, 1).astype(np.float32)

    def nhwc(a):
        return Tensor(a, format="nhwc")

    x = nhwc(nchw)
    w = nhwc(w1.reshape(2, 3, 2, 3, 3))  # grouped
    b, g, be = nhwc(b1), nhwc(gamma), nhwc(beta)
    gm = GradManager().attach([x, w, b, g, be])
    with gm:
        y = F.conv2d(x, w, b, padding=1, groups=2)
        y = F.batch_norm(y, weight=g, bias=be, training=True)
        y = F.relu(y)
        y = F.vision.interpolate(F.max_pool2d(y, 2), scale_factor=2, mode="bilinear")
        y = F.concat([y, y * 0.5], axis=1)
        loss = (y * y).sum()
        gm.backward(loss)
    assert y.format == "nhwc" and loss.format == "default"

    tx, tw, tb, tg, tbe = (torch.tensor(a, requires_grad=True) for a in
                           (nchw, w1, b1.reshape(6), gamma.reshape(6), beta.reshape(6)))
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1, groups=2)
    ty = torch.nn.functional.batch_norm(ty, None, None, tg, tbe, training=True, eps=1e-5)
    ty = torch.nn.functional.relu(ty)
    ty = torch.nn.functional.interpolate(torch.nn.functional.max_pool2d(ty, 2), scale_factor=2,
                                         mode="bilinear", align_corners=False)
    ty = torch.cat([ty, ty * 0.5], 1)
    (ty * ty).sum().backward()

    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    for t, ref in ((x, tx), (w, tw), (b, tb), (g, tg), (be, tbe)):
        assert t.grad.format == "nhwc"  # upstream: a gradient carries its tensor's label
        np.testing.assert_allclose(t.grad.numpy().reshape(-1), ref.grad.numpy().reshape(-1),
                                   rtol=1e-3, atol=1e-4)


# ----- auto conversion off: the NHWC array (upstream's raw view) -----

def test_off_shows_the_nhwc_array(auto_convert_off):
    _, x, nchw = _pair()
    nhwc = nchw.transpose(0, 2, 3, 1)
    assert x.shape == (2, 4, 5, 3) and x._tuple_shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(x.numpy(), nhwc)
    w = np.random.rand(2, 3, 4, 5, 6).astype(np.float32)  # a grouped weight: I/G goes last
    np.testing.assert_array_equal(Tensor(w, format="nhwc").numpy(), w.transpose(0, 1, 3, 4, 2))
    plain = Tensor(nchw)
    assert plain.shape == nchw.shape  # unlabelled tensors are unaffected


def test_off_layout_ops_work_on_the_nhwc_array(auto_convert_off):
    _, x, nchw = _pair()
    nhwc = nchw.transpose(0, 2, 3, 1)
    r = F.reshape(x, (2, -1))
    assert r.format == "default"
    np.testing.assert_array_equal(r.numpy(), nhwc.reshape(2, -1))
    t = F.transpose(x, (0, 3, 1, 2))
    np.testing.assert_array_equal(t.numpy(), nchw)
    s = x[:, :, :, :1]  # the last dim is C here
    assert s.format == "nhwc"
    np.testing.assert_array_equal(s.numpy(), nhwc[..., :1])
    e = x * 2 + Tensor(np.arange(3, dtype=np.float32))  # broadcast along the stored C dim
    np.testing.assert_allclose(e.numpy(), nhwc * 2 + np.arange(3), rtol=1e-6)
    x[:, :, :, :1] = 0
    expected = nhwc.copy()
    expected[..., :1] = 0
    np.testing.assert_array_equal(x.numpy(), expected)
    set_auto_format_convert(True)  # back on: the same tensor is the NCHW one
    np.testing.assert_array_equal(x.numpy(), expected.transpose(0, 3, 1, 2))


def test_off_gradients_flow_through_the_reordering(auto_convert_off):
    _, x, nchw = _pair((1, 2, 2, 3))
    weights = np.arange(12, dtype=np.float32).reshape(1, 12)
    gm = GradManager().attach([x])
    with gm:
        loss = (F.reshape(x, (1, 12)) * Tensor(weights)).sum()  # flattens the NHWC array
        gm.backward(loss)
    # d loss / d x, shown as x is shown: the weights in the NHWC array's order
    np.testing.assert_array_equal(x.grad.numpy(), weights.reshape(1, 2, 3, 2))
    set_auto_format_convert(True)
    np.testing.assert_array_equal(x.grad.numpy(), weights.reshape(1, 2, 3, 2).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("options", [dict(symbolic=False), dict(symbolic=True),
                                     dict(without_host=True)], ids=["plain", "symbolic", "replay"])
def test_traced_functions_label_their_outputs_on_every_call(options):
    from megengine.jit import trace

    @trace(**options)
    def f(x):
        y = F.relu(x * 2)
        return F.reshape(y, (2, 3, 20, 1)), F.transpose(y, (0, 2, 3, 1))

    for _ in range(3):  # the first call records, the later ones check or replay
        plain, x, nchw = _pair()
        a, b = f(x)
        assert (a.format, b.format) == ("nhwc", "default")
        np.testing.assert_allclose(a.numpy(), (2 * nchw).reshape(2, 3, 20, 1), rtol=1e-6)
        np.testing.assert_allclose(b.numpy(), (2 * nchw).transpose(0, 2, 3, 1), rtol=1e-6)
