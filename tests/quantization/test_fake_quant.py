"""Tests for megengine.quantization.fake_quant: FakeQuantize with an observer's qparams (torch's
fake_quantize as oracle), enable/disable, TQT and LSQ learning their scale (gradient reaches the
Parameter and an optimizer step changes it), set_qparams and get_qparams."""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.autodiff import GradManager
from megengine.optimizer import SGD
from megengine.quantization.fake_quant import LSQ, TQT, FakeQuantize
from megengine.quantization.observer import MinMaxObserver
from megengine.quantization.utils import LSQParams, QuantMode, create_qparams


def test_fake_quantize_with_observer_qparams_matches_torch():
    x = np.random.randn(4, 6).astype(np.float32) * 2
    obs, fq = MinMaxObserver(mode=QuantMode.ASYMMERTIC, dtype="quint8"), FakeQuantize("quint8")
    t = obs(mge.tensor(x))
    qp = obs.get_qparams()
    y = fq(t, qp).numpy()
    scale, zp = float(qp.scale.numpy()), int(qp.zero_point.numpy())
    ref = torch.fake_quantize_per_tensor_affine(torch.tensor(x), scale, zp, 0, 255).numpy()
    # x / scale (ours) and x * (1 / scale) (torch's) may land on either side of a .5 edge
    # for an inexact scale: at most one step apart, and almost everywhere equal
    diff = np.abs(y - ref)
    assert diff.max() <= scale * 1.001 and (diff > 1e-6).mean() < 0.05


def test_disabled_fake_quantize_is_the_identity():
    fq = FakeQuantize("qint8", enable=False)
    x = mge.tensor([0.123, 4.56])
    assert fq(x, None) is x
    fq.enable()
    with pytest.raises(ValueError, match="needs qparams"):
        fq(x, None)
    fq.disable()
    assert not fq.enabled


def test_fake_quantize_refuses_qparams_of_another_dtype():
    fq = FakeQuantize("qint8_narrow")
    with pytest.raises(ValueError, match="dtype"):
        fq(mge.tensor([1.0]), create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.1)))
    with pytest.raises(ValueError, match="unknown dtype"):
        FakeQuantize("int7")


def test_tqt_learns_its_log2_scale():
    tqt = TQT("qint8")
    tqt.set_qparams(create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.25)))
    np.testing.assert_allclose(tqt.scale.numpy(), -2.0)
    np.testing.assert_allclose(tqt.get_qparams().scale.numpy(), 0.25)
    x = mge.tensor(np.linspace(-50, 50, 101).astype(np.float32))
    gm = GradManager().attach(tqt.parameters())
    opt = SGD(tqt.parameters(), lr=1e-3)
    with gm:
        loss = ((tqt(x) - x) ** 2).mean()
        gm.backward(loss)
    # values beyond 127 * 0.25 = 31.75 are clipped: the loss wants a larger scale
    assert float(tqt.scale.grad.numpy()) < 0
    opt.step()
    assert float(tqt.scale.numpy()) > -2.0
    dtype = tqt.get_quantized_dtype()
    assert dtype == np.int8 and dtype.metadata["mgb_dtype"]["scale"] > 0.25
    with pytest.raises(ValueError, match="symmetric"):
        tqt.set_qparams(create_qparams(QuantMode.ASYMMERTIC, "qint8", mge.tensor(1.0),
                                       mge.tensor(0.0)))


def test_tqt_disabled_passes_values_and_has_upstreams_qparams():
    tqt = TQT("qint8_narrow", enable=False)
    x = mge.tensor([0.3, 700.0])
    assert tqt(x) is x
    tqt.enable()
    np.testing.assert_allclose(tqt(x).numpy(), [0.0, 127.0])  # 2 ** 0 = 1: round and clip
    assert tqt.get_qparams().mode == QuantMode.SYMMERTIC


def test_lsq_starts_from_an_observer_scale_and_learns_it():
    lsq = LSQ("qint8", eps=1e-5)
    qp = LSQParams(QuantMode.ASYMMERTIC, lsq.dtype, mge.tensor(0.05), mge.tensor(3.0),
                   mge.tensor(0.5))
    lsq.set_qparams(qp)
    np.testing.assert_allclose(lsq.get_qparams().scale.numpy(), 0.05, rtol=1e-6)
    assert lsq.get_qparams().mode == QuantMode.ASYMMERTIC
    x = np.array([0.0123, 1.0, -9.0], np.float32)
    # (floor(clip(x / 0.05 + 3, -128, 127) + 0.5) - 3) * 0.05
    v = x / np.float32(0.05) + 3
    np.testing.assert_allclose(lsq(mge.tensor(x)).numpy(),
                               (np.floor(np.clip(v, -128, 127) + 0.5) - 3) * 0.05, atol=1e-6)
    gm = GradManager().attach([lsq.step_size])
    with gm:
        gm.backward(((lsq(mge.tensor(x)) - mge.tensor(x)) ** 2).sum())
    assert lsq.step_size.grad is not None and float(lsq.step_size.grad.numpy()) != 0


@pytest.mark.parametrize("cls", [FakeQuantize, TQT, LSQ])
def test_narrow_range_flag_clips_at_minus_qmax(cls):
    # upstream 1.2-1.3's narrow_range=True is honoured: qint8 weights stay in [-127, 127]
    fq = cls("qint8", narrow_range=True)
    assert (fq.qmin, fq.qmax) == (-127, 127)
    with pytest.raises(ValueError, match="signed dtype"):
        cls("quint8", narrow_range=True)


def test_narrow_range_fake_quantize_matches_torch():
    # a power-of-two scale and x / scale never on a .5 tie (torch rounds ties to even,
    # upstream away from zero), from below the clip point -127 * 0.25 to above 127 * 0.25
    x = (np.arange(-140, 141, 7) * 0.25 + 0.05).astype(np.float32)
    fq = FakeQuantize("qint8", narrow_range=True)
    qp = create_qparams(QuantMode.SYMMERTIC, fq.dtype, mge.tensor(0.25))
    y = fq(mge.tensor(x), qp).numpy()
    ref = torch.fake_quantize_per_tensor_affine(torch.tensor(x), 0.25, 0, -127, 127).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert y.min() == pytest.approx(-127 * 0.25)


def test_qparams_of_another_dtype_raise_upstreams_assertion_error_too():
    # upstream 1.13 asserts the dtype (measured): the error is an AssertionError and a ValueError
    from megengine.quantization.observer import PassiveObserver

    q4 = create_qparams(QuantMode.SYMMERTIC, "qint4", scale=mge.tensor(1.0))
    v = mge.tensor(np.float32([1.0]))
    for call in (lambda: FakeQuantize(dtype="qint8").fake_quant_forward(v, q4),
                 lambda: PassiveObserver(dtype="qint8").set_qparams(q4)):
        with pytest.raises(AssertionError, match="dtype is not equal to self.dtype"):
            call()
        with pytest.raises(ValueError, match="dtype is not equal to self.dtype"):
            call()


def test_qparams_tqt_lsq_and_passive_observers_refuse_assert_as_upstream():
    # upstream 1.13 asserts each (measured): the errors are AssertionErrors and ValueErrors
    from megengine.quantization.observer import PassiveObserver

    asym = create_qparams(QuantMode.ASYMMERTIC, "qint8", mge.tensor(1.0), mge.tensor(0.0))
    unset = create_qparams(QuantMode.SYMMERTIC, "qint8", None)
    for call, match in [(lambda: TQT(dtype="qint8").set_qparams(asym), "only symmetric"),
                        (lambda: TQT(dtype="qint8").set_qparams(unset), "scale is None"),
                        (lambda: LSQ(dtype="qint8").set_qparams(unset), "scale is None"),
                        (lambda: setattr(PassiveObserver(dtype="qint8"), "scale", -1.0),
                         "a scale must be positive")]:
        for error in (ValueError, AssertionError):
            with pytest.raises(error, match=match):
                call()


def test_fake_quant_forward_is_the_hook_forward_calls_when_enabled():
    # hand-computed (upstream 1.13 measured the same values): scale 1, qint8, halves away
    # from zero; TQT's scale is log2 of the step (0: a step of 1); LSQ's step is its own
    # step_size plus eps (1 + 1e-5 here: the products show it)
    v = mge.tensor(np.float32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 63.5, -64.5, 300.0]))
    qparams = create_qparams(QuantMode.SYMMERTIC, "qint8", scale=mge.tensor(1.0))
    halves_away = [-3, -2, -1, 1, 2, 3, 64, -65, 127]
    np.testing.assert_array_equal(FakeQuantize(dtype="qint8").fake_quant_forward(v, qparams)
                                  .numpy(), halves_away)
    np.testing.assert_array_equal(TQT(dtype="qint8").fake_quant_forward(v).numpy(), halves_away)
    lsq = LSQ(dtype="qint8")
    step = float(np.abs(lsq.step_size.numpy()) + lsq.eps.numpy())
    want = np.clip(np.round(v.numpy() / step), -128, 127) * step  # (no value lands on a half)
    np.testing.assert_allclose(lsq.fake_quant_forward(v).numpy(), want, rtol=1e-6)

    class Halved(FakeQuantize):
        def fake_quant_forward(self, inp, qparams=None):
            return inp / 2

    fq = Halved(dtype="qint8")
    np.testing.assert_array_equal(fq(v, qparams).numpy(), v.numpy() / 2)
    fq.disable()
    np.testing.assert_array_equal(fq(v, qparams).numpy(), v.numpy())
