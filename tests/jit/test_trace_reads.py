"""Values read to the host while a traced function records (megengine/jit/record.py `read`,
the argument-value cache keys of tracing.py, the replay guards of replay.py): a read argument's
value selects the program, any other read value is checked on a without_host replay. The
oracle is the same function run eagerly (or numpy)."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.jit import TraceMismatchError, exclude_from_trace, trace

ALL_MODES = [{"symbolic": False}, {"symbolic": True}, {"without_host": True}]
MODE_IDS = ["checked", "symbolic", "without_host"]


@pytest.mark.parametrize("options", ALL_MODES, ids=MODE_IDS)
def test_a_shape_tensor_argument_selects_its_own_program(options):
    # upstream's test_broadcast_on_trace: the same argument signature (a (3,) int32 tensor)
    # with other values must broadcast to the new shape, never replay the first one
    runs = []

    def fn(x, shape):
        runs.append(1)
        return F.broadcast_to(x, shape)

    f = trace(fn, **options)
    x = mge.tensor(np.arange(3, dtype="float32"))
    shapes = [(2, 1, 3), (1, 2, 3), (2, 2, 3), (2, 1, 3)]
    for shape in shapes:
        out = f(x, mge.tensor(shape))
        np.testing.assert_array_equal(out.numpy(), np.broadcast_to(np.arange(3.0), shape))
    assert len(f._programs) == 3  # (2, 1, 3) came back: its program serves it
    assert len(runs) == (3 if options.get("without_host") else 4)


@pytest.mark.parametrize("options", ALL_MODES, ids=MODE_IDS)
def test_tensor_shape_entries_k_and_reshape_targets_from_arguments(options):
    @trace(**options)
    def fn(x, k, rows, dims):
        values, _ = F.topk(x, k, descending=True)  # int(k) reads k
        return values, x.reshape(rows, -1), F.broadcast_to(x[:1], (dims[0], None))

    data = np.array([[3.0, 1.0, 2.0, 5.0], [0.0, 7.0, 4.0, 6.0]], "float32")
    x = mge.tensor(data)
    for k, rows, d in [(1, 1, 2), (3, 4, 3), (1, 1, 2), (2, 2, 1)]:
        dims = (mge.tensor(d), None)
        values, reshaped, wide = fn(x, mge.tensor(k), mge.tensor(rows), dims)
        np.testing.assert_array_equal(values.numpy(), -np.sort(-data, axis=1)[:, :k])
        np.testing.assert_array_equal(reshaped.numpy(), data.reshape(rows, -1))
        np.testing.assert_array_equal(wide.numpy(), np.broadcast_to(data[:1], (d, 4)))
    assert len(fn._programs) == 3


def _counting_steps():
    """A training step whose loss is read to the host inside (a value, not an argument)."""
    w = mge.Parameter(np.ones(3, "float32"))
    gm = GradManager().attach(w)
    seen = []

    def step(x):
        with gm:
            loss = (w * x).sum()
            n = int(loss.item())  # the Python code makes a shape from it
            out = F.broadcast_to(loss, (n,))
            gm.backward(loss)
        seen.append(n)
        w.grad = None
        return out

    return step, gm, seen


def test_a_changed_intermediate_read_raises_on_replay_and_the_trace_stays_usable():
    step, gm, _ = _counting_steps()
    f = trace(step, without_host=True)
    assert f(mge.tensor([1.0, 1.0, 1.0])).shape == (3,)
    assert f(mge.tensor([2.0, 0.0, 1.0])).shape == (3,)  # the same value read: a replay
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([2.0, 2.0, 1.0]))  # loss 5: the recorded broadcast to (3,) would be wrong
    assert str(info.value) == "trace error because tensors not equals"
    detail = info.value.detail
    assert "read output 0 of op #1" in detail
    assert "value 3.0" in detail and "now it is 5.0" in detail
    assert "exclude_from_trace" in detail and "symbolic=True" in detail
    assert not gm._recording and not dispatch.is_recording()  # the with block's release ran
    assert f(mge.tensor([0.0, 3.0, 0.0])).shape == (3,)  # usable: loss 3 again


@pytest.mark.parametrize("symbolic", [False, True])
def test_checked_calls_rerun_the_python_that_used_a_read_value(symbolic):
    step, _, seen = _counting_steps()
    f = trace(step, symbolic=symbolic)
    f(mge.tensor([1.0, 1.0, 1.0]))
    out = f(mge.tensor([0.0, 3.0, 0.0]))  # the same n: checked, and the Python ran
    assert out.shape == (3,) and seen == [3, 3]
    with pytest.raises(TraceMismatchError) as info:
        f(mge.tensor([2.0, 2.0, 1.0]))  # n = 5 changes an op's parameters: the check sees it
    assert str(info.value) == "trace error because operator mismatch"
    assert "shape=(3,)" in info.value.detail and "shape=(5,)" in info.value.detail


@pytest.mark.parametrize("options", ALL_MODES, ids=MODE_IDS)
def test_values_only_logged_do_not_stop_a_trace(options):
    logged = []

    @trace(**options)
    def fn(x):
        y = (x * 2).sum()
        with exclude_from_trace():
            logged.append(y.item())  # side work: not guarded
        return y * 3

    for v in (1.0, 2.0, 3.0):
        assert fn(mge.tensor([v, v])).item() == 12 * v
    assert logged == ([4.0] if options.get("without_host") else [4.0, 8.0, 12.0])


def test_a_read_parameter_is_checked_on_every_later_call():
    # the Python float made from the parameter is baked into the recorded op: a replay checks
    # the parameter's value (the guard), a checked call sees a constant that changed; neither
    # returns the stale product
    p = mge.Parameter([2.0])

    def fn(x):
        return x * float(p.item())

    replayed, checked = trace(fn, without_host=True), trace(fn, symbolic=True)
    x = mge.tensor([1.0, 3.0])
    for f in (replayed, checked):
        assert f(x).numpy().tolist() == [2.0, 6.0]
    p._reset([5.0])
    assert fn(x).numpy().tolist() == [5.0, 15.0]  # eager
    with pytest.raises(TraceMismatchError, match="tensors not equals") as info:
        replayed(x)
    assert "Parameter" in info.value.detail and "value [2.0]" in info.value.detail
    with pytest.raises(TraceMismatchError, match="tensors not equals") as info:
        checked(x)
    assert "constant" in info.value.detail and "5.0" in info.value.detail
    p._reset([2.0])
    for f in (replayed, checked):
        assert f(x).numpy().tolist() == [2.0, 6.0]


def test_argument_checks_and_printing_are_not_part_of_the_signature(capsys):
    # roi_align validates its rois on the host (Tensor._peek): new rois values replay the same
    # program and still give eager's values; printing a tensor bakes nothing either
    @trace(without_host=True)
    def fn(inp, rois):
        print(rois)
        return F.vision.roi_align(inp, rois, (2, 2), spatial_scale=1.0, sample_points=2,
                                  aligned=True)

    rng = np.random.RandomState(0)
    inp = mge.tensor(rng.rand(2, 1, 6, 6).astype("float32"))
    for k in range(3):
        rois = mge.tensor(np.array([[k % 2, 0.5 + k, 1.0, 4.0, 4.5 - k / 2]], "float32"))
        expect = F.vision.roi_align(inp, rois, (2, 2), spatial_scale=1.0, sample_points=2,
                                    aligned=True)
        np.testing.assert_allclose(fn(inp, rois).numpy(), expect.numpy(), rtol=1e-6)
    assert len(fn._programs) == 1


def test_a_nan_read_replays_and_the_read_costs_nothing_untraced():
    @trace(without_host=True)
    def fn(x):
        m = x.max()
        _ = m.numpy()  # NaN here: the same NaN on replay is the same value
        return x + 1

    x = mge.tensor([np.nan, 1.0])
    for _ in range(2):
        np.testing.assert_array_equal(fn(x).numpy(), [np.nan, 2.0])
    assert dispatch._trace_hook is None
    t = mge.tensor([1.0])
    a = t.numpy()
    a.flags.writeable = True  # numpy() is still a copy (read-only, as upstream's, until made
    a[0] = 7.0  # writable: it owns its memory)
    assert t.item() == 1.0


def test_arguments_read_only_on_some_calls_join_the_key_when_first_read():
    # the count n is read from ``a``; only when n > 1 is ``b`` read too: once a recording has
    # read ``b``, both values select programs (older programs, keyed by ``a`` alone, go)
    runs = []

    def fn(x, a, b):
        runs.append((int(a._peek()), int(b._peek())))
        n = int(a.item())
        if n > 1:
            n *= int(b.item())
        return F.broadcast_to(x, (n, 2))

    f = trace(fn, without_host=True)
    x = mge.tensor([1.0, 2.0])
    calls = [(1, 5), (1, 6), (2, 5), (2, 5), (2, 6), (1, 7), (1, 7)]
    for a, b in calls:
        out = f(x, mge.tensor(a), mge.tensor(b))
        expect = fn(x, mge.tensor(a), mge.tensor(b))  # eager (appends to runs too)
        runs.pop()
        np.testing.assert_array_equal(out.numpy(), expect.numpy())
    # (1, 6) reuses (1, 5)'s program (b unread); (2, 5) reads b; (2, 5) again replays
    assert runs == [(1, 5), (2, 5), (2, 6), (1, 7)]


@pytest.mark.parametrize("options", ALL_MODES, ids=MODE_IDS)
def test_a_read_argument_is_kept_once_by_the_trace(options):
    # its value keys the program (held as bytes by the cache key); the program kept another
    # copy of it, which nothing read again. Values still select programs (numpy the oracle)
    import gc
    import tracemalloc

    f = trace(lambda x: x * float(x.numpy().max()), **options)
    data = np.random.RandomState(0).rand(512, 512).astype("float32")  # (1 MiB)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        np.testing.assert_array_equal(f(mge.tensor(data)).numpy(), data * data.max())
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert data.nbytes <= kept < 1.5 * data.nbytes
    for d in (data * 2, data):
        np.testing.assert_array_equal(f(mge.tensor(d)).numpy(), d * d.max())
    assert len(f._programs) == 2
