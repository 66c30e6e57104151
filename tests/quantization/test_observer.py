"""Tests for megengine.quantization.observer: running min/max and moving averages, scale and zero
point by upstream's formulas (hand-computed), the synchronised observers on two gloo ranks, the
histogram observer's outlier cut, the passive observer, enable/disable and train/eval."""
import numpy as np
import pytest

import megengine as mge
import megengine.quantization.observer as ob
from megengine.quantization.utils import QuantMode, _builtin_quant_dtypes, create_qparams


def test_min_max_observer_records_the_running_range():
    x = np.random.rand(3, 3, 3, 3).astype("float32")
    m = ob.MinMaxObserver()
    out = m(mge.tensor(x))
    assert out.numpy() is not None and float(m.min_val.numpy()) == x.min()
    assert float(m.max_val.numpy()) == x.max()
    m(mge.tensor([-5.0, 0.5]))
    assert float(m.min_val.numpy()) == -5.0 and float(m.max_val.numpy()) == x.max()


def test_symmetric_scale_by_hand():
    m = ob.MinMaxObserver(dtype="qint8")
    m(mge.tensor([-3.0, 1.0, 2.0]))
    qp = m.get_qparams()
    # max(|-3|, 2) / ((127 - -128) / 2) = 3 / 127.5
    np.testing.assert_allclose(qp.scale.numpy(), 3 / 127.5, rtol=1e-6)
    assert qp.zero_point is None and qp.mode == QuantMode.SYMMERTIC
    assert qp.dtype_meta is _builtin_quant_dtypes["qint8"]
    narrow = ob.MinMaxObserver(dtype="qint8_narrow")
    narrow(mge.tensor([0.5, 2.54]))
    np.testing.assert_allclose(narrow.get_qparams().scale.numpy(), 2.54 / 127, rtol=1e-6)


def test_asymmetric_scale_and_zero_point_by_hand():
    m = ob.MinMaxObserver(mode=QuantMode.ASYMMERTIC, dtype="quint8")
    m(mge.tensor([-1.0, 3.0]))
    qp = m.get_qparams()
    scale = 4.0 / 255
    np.testing.assert_allclose(qp.scale.numpy(), scale, rtol=1e-6)
    # qmin - round(min / scale) = 0 - round(-63.75) = 64
    np.testing.assert_allclose(qp.zero_point.numpy(), 64)
    # a range that excludes 0 is widened to include it: [0, 3] for [1, 3]
    m2 = ob.MinMaxObserver(mode=QuantMode.ASYMMERTIC, dtype="quint8")
    m2(mge.tensor([1.0, 3.0]))
    np.testing.assert_allclose(m2.get_qparams().scale.numpy(), 3.0 / 255, rtol=1e-6)
    np.testing.assert_allclose(m2.get_qparams().zero_point.numpy(), 0)


def test_a_fresh_or_constant_observer_gives_the_eps_scale():
    m = ob.MinMaxObserver(eps=1e-3)
    np.testing.assert_allclose(m.get_qparams().scale.numpy(), 1e-3, rtol=1e-6)
    m(mge.tensor([0.0, 0.0]))
    np.testing.assert_allclose(m.get_qparams().scale.numpy(), 1e-3, rtol=1e-6)


def test_ema_observer_starts_at_the_first_batch_then_averages():
    m = ob.ExponentialMovingAverageObserver(momentum=0.8)
    m(mge.tensor([-1.0, 2.0]))
    np.testing.assert_allclose([m.min_val.numpy(), m.max_val.numpy()], [-1.0, 2.0])
    m(mge.tensor([-3.0, 7.0]))
    np.testing.assert_allclose([m.min_val.numpy(), m.max_val.numpy()],
                               [0.8 * -1 + 0.2 * -3, 0.8 * 2 + 0.2 * 7], rtol=1e-6)
    m.set_momentum(0.5)
    m(mge.tensor([0.0, 0.0]))
    np.testing.assert_allclose(m.max_val.numpy(), 0.5 * (0.8 * 2 + 0.2 * 7), rtol=1e-6)


def test_disabled_and_eval_observers_do_not_update_and_pass_the_input_through():
    m = ob.MinMaxObserver()
    m(mge.tensor([1.0]))
    m.disable()
    x = mge.tensor([100.0])
    assert m(x) is x and float(m.max_val.numpy()) == 1.0
    m.train()
    assert m.enabled
    m.eval()
    m(x)
    assert not m.enabled and float(m.max_val.numpy()) == 1.0


def test_sync_min_max_observer_records_in_eval_mode_and_when_disabled_as_upstream():
    # upstream 1.13's SyncMinMaxObserver tests ``self.enable`` (the method: always true), so
    # it records every batch; its EMA twin and the local observers test ``enabled`` (found by
    # tests/fuzz/upstream_quant.py, seed 135: sync_ema_fakequant_qconfig's weight scale after
    # an eval pass)
    m, e = ob.SyncMinMaxObserver(), ob.SyncExponentialMovingAverageObserver()
    for o in (m, e):
        o(mge.tensor([1.0, -1.0]))
        o.eval()
        o(mge.tensor([3.0]))
        o.train()
        o.disable()
        o(mge.tensor([-5.0]))
    assert (float(m.min_val.numpy()), float(m.max_val.numpy())) == (-5.0, 3.0)
    assert (float(e.min_val.numpy()), float(e.max_val.numpy())) == (-1.0, 1.0)
    assert not m.enabled


@pytest.mark.parametrize("cls", ["MinMaxObserver", "SyncMinMaxObserver",
                                 "ExponentialMovingAverageObserver", "HistogramObserver",
                                 "PassiveObserver", "FakeQuantize", "TQT", "LSQ"])
def test_observers_and_fake_quantizers_take_each_others_arguments_as_upstream(cls):
    # upstream 1.13's take **kwargs and leave unknown ones unused, so one set of arguments
    # (a program's QConfig built by partial(cls, dtype=..., mode=...) for every part) builds
    # each; here an argument no observer or fake quantizer takes is refused by name (found by
    # tests/fuzz/upstream_quant.py: PassiveObserver(dtype="quint8", mode=...) raised
    # "Module.__init__() got an unexpected keyword argument 'mode'")
    import megengine.quantization as Q

    shared = dict(mode=QuantMode.ASYMMERTIC, eps=1e-3, momentum=0.5, bins=16, upsample_rate=4,
                  enable=True)
    plain, given = getattr(Q, cls)(dtype="qint8"), getattr(Q, cls)(dtype="qint8", **{
        k: v for k, v in shared.items() if k not in getattr(Q, cls).__init__.__code__.co_varnames})
    assert (given.qmin, given.qmax, getattr(given, "mode", None)) == \
        (plain.qmin, plain.qmax, getattr(plain, "mode", None))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['momentm'\]"):
        getattr(Q, cls)(dtype="qint8", momentm=0.5)


def test_histogram_observer_records_in_eval_mode_and_when_disabled_as_upstream():
    # upstream's HistogramObserver records every batch (calibration runs the network in
    # eval()); earlier versions of this fork skipped them and quantize() then gave NaNs
    x = np.linspace(-1.0, 2.0, 31).astype("float32")
    h = ob.HistogramObserver(bins=64)
    h.eval()
    assert h(mge.tensor(x)) is not None and not h.enabled
    assert (float(h.min_val.numpy()), float(h.max_val.numpy())) == (-1.0, 2.0)
    # upstream 1.13 measured 0.015318627469241619 (below min/max's 2 / 127.5: outliers cut)
    np.testing.assert_allclose(h.get_qparams().scale.numpy(), 0.015318627469241619, rtol=1e-6)
    h.disable()
    h(mge.tensor(x * 2))
    assert (float(h.min_val.numpy()), float(h.max_val.numpy())) == (-2.0, 4.0)
    assert float(h.histogram.numpy().sum()) == 62.0
    # upstream 1.13 measured 0.030637254938483238
    np.testing.assert_allclose(h.get_qparams().scale.numpy(), 0.030637254938483238, rtol=1e-6)


def test_histogram_observer_that_saw_nothing_refuses_to_give_a_scale():
    with pytest.raises(ValueError, match="observed no data"):
        ob.HistogramObserver().get_qparams()


def test_sync_observers_without_a_process_group_equal_the_local_ones():
    x = mge.tensor(np.random.randn(10).astype("float32"))
    for sync, local in ((ob.SyncMinMaxObserver(), ob.MinMaxObserver()),
                        (ob.SyncExponentialMovingAverageObserver(),
                         ob.ExponentialMovingAverageObserver())):
        sync(x), local(x), sync(x * 2), local(x * 2)
        np.testing.assert_allclose(sync.get_qparams().scale.numpy(),
                                   local.get_qparams().scale.numpy())


def _sync_worker():
    import megengine.distributed as dist

    rank = dist.get_rank()
    data = np.arange(12, dtype=np.float32).reshape(2, 6) - 4  # rank 0: -4..1, rank 1: 2..7
    m = ob.SyncMinMaxObserver()
    m(mge.tensor(data[rank]))
    e = ob.SyncExponentialMovingAverageObserver(momentum=0.5)
    e(mge.tensor(data[rank]))
    e(mge.tensor(data[rank] * 3))
    return [float(m.min_val.numpy()), float(m.max_val.numpy()),
            float(e.min_val.numpy()), float(e.max_val.numpy())]


def test_sync_observers_share_min_and_max_over_two_ranks():
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    import megengine.distributed as dist

    run = dist.launcher(_sync_worker, n_gpus=2, device_type="cpu", timeout=90,
                        collective_timeout=20)
    results = run()
    # both ranks see the global range; the EMA averages the global min/max of each step
    assert results[0] == results[1] == [-4.0, 7.0, 0.5 * -4 + 0.5 * -12, 0.5 * 7 + 0.5 * 21]


def test_histogram_observer_clips_a_sparse_tail_when_that_lowers_the_error():
    from megengine.quantization.utils import fake_quant_tensor

    x = np.random.RandomState(0).exponential(1.0, 6000).astype("float32")
    h = ob.HistogramObserver(bins=256, mode=QuantMode.ASYMMERTIC, dtype="quint4")
    m = ob.MinMaxObserver(mode=QuantMode.ASYMMERTIC, dtype="quint4")
    data = mge.tensor(x)
    h(data), m(data)
    assert float(h.min_val.numpy()) == x.min() and float(h.max_val.numpy()) == x.max()
    hq, mq = h.get_qparams(), m.get_qparams()
    # with 16 levels the rare large values are not worth the resolution they cost: a smaller
    # step, and a smaller quantization error on the data than min/max's
    assert float(hq.scale.numpy()) < 0.8 * float(mq.scale.numpy())

    def mse(qp):
        return float(((fake_quant_tensor(data, qp) - data) ** 2).mean().numpy())

    assert mse(hq) < 0.9 * mse(mq)


def test_histogram_observer_rebins_its_history_when_the_range_grows():
    x = np.random.RandomState(1).standard_normal(8000).astype("float32")
    first, second = x[:4000] * 0.5, x[4000:]
    h = ob.HistogramObserver(bins=64, upsample_rate=32)
    h(mge.tensor(first))
    h(mge.tensor(second))
    lo, hi = float(h.min_val.numpy()), float(h.max_val.numpy())
    # the combined range is widened to a whole number of the old histogram's fine bins
    assert lo <= min(first.min(), second.min()) and hi >= max(first.max(), second.max())
    assert hi - lo < 1.05 * (x.max() - min(first.min(), second.min()))
    expected = np.histogram(np.concatenate([first, second]), 64, (lo, hi))[0]
    got = h.histogram.numpy()
    np.testing.assert_allclose(got.sum(), 8000, rtol=1e-5)
    # re-binning spreads each old bin's count uniformly: close to the exact histogram
    assert np.abs(got - expected).sum() < 0.05 * 8000


def test_histogram_observer_rebins_without_the_fine_grid():
    # by hand, upstream's way: each old count repeated over upsample_rate fine bins at its
    # offset in the combined range, summed downsample_rate fine bins at a time
    h = ob.HistogramObserver(bins=16, upsample_rate=4)
    rs = np.random.RandomState(4)
    for downsample, start in ((4, 0), (5, 10), (7, 40), (40, 500)):
        old, new = rs.randint(0, 50, 16).astype(np.float64) * 0.37, rs.randint(0, 9, 16) * 1.0
        fine = np.zeros(16 * downsample)
        fine[start:start + 64] = np.repeat(old, 4)
        expected = new + fine.reshape(16, downsample).sum(axis=1) / 4
        np.testing.assert_allclose(h._combine_histograms(new, old, downsample, start), expected,
                                   rtol=1e-12)
    # a batch whose range is 1e6 times the earlier ones' (a diverged layer): the fine grid
    # would hold ~2.6e11 numbers (upstream 1.13 raises MemoryError); here 2048 new bins
    h = ob.HistogramObserver()
    x = np.random.RandomState(5).uniform(-1, 1, 1000).astype("float32")
    h(mge.tensor(x))
    h(mge.tensor(x * 1e6))
    assert float(h.histogram.numpy().sum()) == pytest.approx(2000, rel=1e-6)
    assert float(h.get_qparams().scale.numpy()) > 1.0


@pytest.mark.parametrize("first", [np.zeros(50, "float32"), np.full(50, 2.0, "float32")])
def test_histogram_observer_after_batches_of_one_value_keeps_their_count(first):
    # a first batch of one value (a ReLU that gave zeros) has a histogram of no width; the next
    # batch's range holds it, and its count lands in that value's bin (upstream 1.13 divided by
    # the old width, 0, and raised; earlier versions of this fork raised ZeroDivisionError)
    second = np.random.RandomState(2).uniform(-1.0, 3.0, 400).astype("float32")
    h = ob.HistogramObserver(bins=64)
    h(mge.tensor(first))
    h(mge.tensor(second))
    lo, hi = float(h.min_val.numpy()), float(h.max_val.numpy())
    assert (lo, hi) == (min(second.min(), first[0]), max(second.max(), first[0]))
    expected = np.histogram(np.concatenate([first, second]), 64, (lo, hi))[0]
    np.testing.assert_array_equal(h.histogram.numpy(), expected)
    assert float(h.get_qparams().scale.numpy()) > 0


def test_histogram_observer_takes_a_range_narrower_than_its_float32_bins():
    # a layer whose outputs lie within a few float32 steps of each other: numpy 1.25+ refuses
    # 2048 float32 bins over that range ("Too many bins for data range"); upstream's numpy
    # (1.23) counts each value into a bin whose float32 edges hold it, as done here (found by
    # tests/fuzz/upstream_quant.py, seed 5: a layer's outputs in -0.22524913 .. -0.2252323)
    c = np.float32(-0.22524913)
    steps = np.random.RandomState(3).randint(0, 12, 60)
    x = (c + steps.astype(np.float32) * np.spacing(c)).astype(np.float32)
    h = ob.HistogramObserver()
    h(mge.tensor(x))
    lo, hi = x.min(), x.max()
    assert (float(h.min_val.numpy()), float(h.max_val.numpy())) == (lo, hi)
    edges = np.linspace(float(lo), float(hi), 2049, dtype=np.float32)
    expected, last = np.zeros(2048), -1
    for v in np.unique(x):  # each value alone: one bin whose edges hold it, bins in its order
        (b,) = ob._histogram(np.array([v]), 2048, float(lo), float(hi)).nonzero()[0]
        assert edges[b] <= v <= edges[b + 1] and b > last
        expected[b], last = (x == v).sum(), b
    np.testing.assert_array_equal(h.histogram.numpy(), expected)
    scale = float(h.get_qparams().scale.numpy())
    assert 0 < scale <= 2 * abs(float(lo)) / 255 * (1 + 1e-6)
    h(mge.tensor(x[::-1] + np.spacing(c)))  # a second such batch, the range grown by a step
    assert h.histogram.numpy().sum() == 120


def test_histogram_quantization_error_matches_numeric_integration():
    h = ob.HistogramObserver(bins=8, dtype="qint2")  # 4 destination levels
    hist = np.array([0, 1, 3, 2, 0, 5, 1, 0], np.float64)
    width, start, end = 0.5, 1, 6
    error = h._quantization_error(hist, width, start, end)
    # brute force: mass spread uniformly over each source bin, quantized to the nearest of the
    # 4 level centres spaced over bins start..end (values outside snap to the outer levels)
    dst = width * (end - start + 1) / 4
    centers = (np.arange(4) + 0.5) * dst
    total = 0.0
    for b, count in enumerate(hist):
        xs = (b - start) * width + (np.arange(20000) + 0.5) / 20000 * width
        idx = np.clip(np.floor(xs / dst), 0, 3).astype(int)
        total += count / width * np.mean((xs - centers[idx]) ** 2) * width
    np.testing.assert_allclose(error, total, rtol=1e-4)


def test_passive_observer_holds_set_qparams_and_its_scale():
    p = ob.PassiveObserver(dtype="qint8")
    with pytest.raises(ValueError, match="set_qparams"):
        p.scale
    qp = create_qparams(QuantMode.SYMMERTIC, "qint8", mge.tensor(0.5))
    p.set_qparams(qp)
    assert p.get_qparams() == qp and p.get_qparams() is not qp
    np.testing.assert_allclose(p.orig_scale, 0.5)
    p.scale = 0.25
    np.testing.assert_allclose(p.scale.numpy(), 0.25)
    np.testing.assert_allclose(qp.scale.numpy(), 0.5)  # the caller's qparams are untouched
    with pytest.raises(ValueError, match="positive"):
        p.scale = -1.0
    x = mge.tensor([3.0])
    assert p(x) is x
    with pytest.raises(ValueError, match="dtype"):
        p.set_qparams(create_qparams(QuantMode.SYMMERTIC, "quint8", mge.tensor(0.5)))
    with pytest.raises(ValueError, match="initialized scale"):
        p.set_qparams(create_qparams(QuantMode.SYMMERTIC, "qint8", None))


def test_observer_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown dtype"):
        ob.MinMaxObserver(dtype="int8")
    with pytest.raises(TypeError, match="QuantMode"):
        ob.MinMaxObserver(mode="symmetric")
    with pytest.raises(ValueError, match="signed dtype"):
        ob.MinMaxObserver(dtype="quint8", narrow_range=True)
    dtype = ob.MinMaxObserver(dtype="qint8").get_quantized_dtype()
    assert dtype == np.int8 and dtype.metadata["mgb_dtype"]["name"] == "QuantizedS8"


@pytest.mark.parametrize("cls", [ob.MinMaxObserver, ob.ExponentialMovingAverageObserver,
                                 ob.HistogramObserver, ob.PassiveObserver])
def test_narrow_range_flag_narrows_the_dtype(cls):
    # upstream 1.2-1.3's narrow_range=True: qmin = -qmax; qint8 becomes the built-in narrow meta
    narrow = cls(dtype="qint8", narrow_range=True)
    assert (narrow.qmin, narrow.qmax) == (-127, 127) and narrow.dtype.name == "qint8_narrow"
    assert cls(dtype="qint8", narrow_range=False).qmin == -128
    four = cls(dtype="qint4", narrow_range=True)
    assert (four.qmin, four.qmax) == (-7, 7)


def test_narrow_range_flag_gives_the_narrow_scale():
    # hand-computed: symmetric scale = max|x| / ((qmax - qmin) / 2) = 2.54 / 127 narrow,
    # 2.54 / 127.5 full range
    x = mge.tensor([0.5, -2.54])
    narrow, full = ob.MinMaxObserver(narrow_range=True), ob.MinMaxObserver()
    narrow(x)
    full(x)
    np.testing.assert_allclose(narrow.get_qparams().scale.numpy(), 2.54 / 127, rtol=1e-6)
    np.testing.assert_allclose(full.get_qparams().scale.numpy(), 2.54 / 127.5, rtol=1e-6)
