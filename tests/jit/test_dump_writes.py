"""Tests for megengine/jit/dump_writes.py: a traced function that writes into its arguments or
into captured Parameters and tensors dumps as upstream's dump makes it, the writes dataflow
within one run: each run of the loaded file gives what eager execution of the function gives
on fresh copies of the tensors it writes (the oracle), and holds no state between runs."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import ShapeGuardError, trace
from megengine.jit.dump import DumpError
from megengine.utils.comp_graph_tools import GraphInference

W0 = np.array([1.0, 2.0, 3.0], "float32")
X_TRACED = np.array([10.0, 20.0, 30.0], "float32")
X_RUN = np.array([-1.0, 0.5, 4.0], "float32")

# writes into a tensor ``w`` that the function reads before and after
WRITES = {
    "set_value": lambda w, x: w.set_value(w * 0.5 + x.mean()),
    "_reset": lambda w, x: w._reset(w + x),
    "setitem": lambda w, x: w.__setitem__(slice(0, 2), x[:2] * 3),
    "setitem ellipsis": lambda w, x: w.__setitem__(Ellipsis, w * x),
    "iadd": lambda w, x: w.__iadd__(x),
    "twice": lambda w, x: (w._reset(w + x), w.__imul__(w)),
    "set_value of an array": lambda w, x: w.set_value(np.array([7.0, 8.0, 9.0])),
    "set_value of a number": lambda w, x: w.set_value(5),
}


def body(w, x, write):
    before = w * 1.5
    write(w, x)
    return w * 2 + before, x + w


def run_file(f, *feeds):
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], output_names=["y", "z"])
    file.seek(0)
    net = GraphInference(file)
    return [net.run(inp_dict={"x": x}) for x in feeds]


def eager(make_w, x, write):
    """The function's outputs in eager code, on a fresh copy of the written tensor."""
    return [t.numpy() for t in body(make_w(), mge.tensor(x), write)]


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("how", sorted(WRITES))
@pytest.mark.parametrize("kind", ["Parameter", "Tensor"])
def test_a_write_into_a_captured_tensor_is_dataflow_of_the_file(kind, how, symbolic):
    # upstream 1.13 measured: w = [1, 2, 3]; w._reset(w + x); return w * 2 dumps a program that
    # gives (w + x) * 2 on every run; earlier versions of this fork refused the dump
    def make_w():
        return (mge.Parameter if kind == "Parameter" else mge.tensor)(W0.copy())

    write = WRITES[how]
    w = make_w()
    f = trace(lambda x: body(w, x, write), symbolic=symbolic, capture_as_const=True)
    traced = f(mge.tensor(X_TRACED))
    for got, want in zip(traced, eager(make_w, X_TRACED, write)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    runs = run_file(f, X_RUN, X_RUN, X_TRACED)
    want = eager(make_w, X_RUN, write)
    for out in runs[:2]:  # each run starts from the captured value
        np.testing.assert_allclose(out["y"], want[0], rtol=1e-6)
        np.testing.assert_allclose(out["z"], want[1], rtol=1e-6)
    np.testing.assert_allclose(runs[2]["y"], eager(make_w, X_TRACED, write)[0], rtol=1e-6)


ARG_WRITES = {k: WRITES[k] for k in ("set_value", "_reset", "setitem", "iadd", "twice")}


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("how", sorted(ARG_WRITES))
def test_a_write_into_an_argument_is_dataflow_of_the_file_and_of_replays(how, symbolic):
    # upstream: ``x += 1; return x * 2`` dumps (x + 1) * 2. A set_value of an argument used to
    # leave the later reads of it to a constant captured from the first call (a second call
    # raised "tensors not equals"; a dump would have kept the first call's value)
    write = ARG_WRITES[how]
    w = mge.Parameter(W0.copy())

    def f(x):
        before = x * 1.5
        write(x, w)
        return x * 2 + before, x + w

    def want(x):
        return [t.numpy() for t in f(mge.tensor(x))]

    traced = trace(f, symbolic=symbolic, capture_as_const=True)
    for x in (X_TRACED, X_RUN, X_TRACED * 2):  # the first records, the others replay
        for got, expected in zip(traced(mge.tensor(x)), want(x)):
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    for out in run_file(traced, X_RUN, X_RUN):
        np.testing.assert_allclose(out["y"], want(X_RUN)[0], rtol=1e-6)
        np.testing.assert_allclose(out["z"], want(X_RUN)[1], rtol=1e-6)


def test_a_written_tensor_returned_is_the_value_written():
    w = mge.Parameter(W0.copy())

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        w._reset(w * x)
        return w

    f(mge.tensor(X_TRACED))
    file = io.BytesIO()
    f.dump(file, arg_names=["x"])
    file.seek(0)
    (out,) = GraphInference(file).run(inp_dict={"x": X_RUN}).values()
    np.testing.assert_array_equal(out, W0 * X_RUN)


def test_a_detach_after_a_write_and_a_written_value_of_another_shape():
    # w.detach() after the first write reads the value written; concat makes w longer
    def body(w, x):
        n = w.shape[0]
        w[...] -= x * 0.5
        d = w.detach()
        y = d * 2 + d
        w._reset(F.concat([w, x]))
        return y, w.sum(axis=0) * n, w

    def make_w():
        return mge.Parameter(np.arange(6, dtype="float32").reshape(2, 3))

    w = make_w()
    f = trace(lambda x: body(w, x), symbolic=True, capture_as_const=True)
    f(mge.tensor(np.ones((2, 3), "float32")))
    file = io.BytesIO()
    f.dump(file, arg_names=["x"])
    file.seek(0)
    x = np.arange(6, dtype="float32").reshape(2, 3) * 3
    got = list(GraphInference(file).run(inp_dict={"x": x}).values())
    want = [t.numpy() for t in body(make_w(), mge.tensor(x))]
    assert [g.shape for g in got] == [(2, 3), (3,), (4, 3)]
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-6)


def _loaded_equals_eager(fn, traced_x, run_xs, make_w=lambda: None, symbolic=True):
    """Trace ``fn(x, w)`` (capture_as_const), dump it, and run the loaded file at each of
    ``run_xs``: shapes, dtypes and values as eager code on a fresh ``make_w()`` gives."""
    w = make_w()
    f = trace(lambda x: fn(x, w), symbolic=symbolic, capture_as_const=True)
    f(mge.tensor(traced_x))
    file = io.BytesIO()
    f.dump(file, arg_names=["x"])
    net = GraphInference(io.BytesIO(file.getvalue()))
    for x in run_xs:
        (got,) = net.run(inp_dict={"x": x}).values()
        want = fn(mge.tensor(x), make_w()).numpy()
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    return net


def _computed_number(x, w):
    z = x * 2
    z.set_value(np.zeros(3))  # (float64 array: z keeps its dtype, float32)
    return z + x


def _computed_half_number(x, w):
    z = x.astype("float16")
    z.set_value(3.0)
    return z + 1


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("fn", [_computed_number, _computed_half_number])
def test_a_number_written_into_a_computed_value_is_dumped_with_its_dtype(fn, symbolic):
    # (earlier versions of this fork refused it: the program did not know the value's dtype,
    # which the write event now records)
    _loaded_equals_eager(fn, X_TRACED, [X_RUN, X_TRACED], symbolic=symbolic)


DTYPE_WRITES = {
    # a number written after a write changed the dtype takes the dtype eager code has then
    "argument to float16": lambda x, w: (x.set_value(x.astype("float16")), x.set_value(1.5),
                                         x * 2)[-1],
    "argument to int32": lambda x, w: (x._reset(F.floor(x).astype("int32")), x.set_value(2.7),
                                       x + 1)[-1],
    "Parameter to int32": lambda x, w: (w.set_value(w.astype("int32")), w.set_value(7.9),
                                        w * 2 + x.shape[0])[-1],
    "Parameter to float16": lambda x, w: (w.set_value(w.astype("float16")), w.set_value(1.5),
                                          w * 2)[-1],
}


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("how", sorted(DTYPE_WRITES))
def test_a_dtype_changing_write_is_dumped_with_the_eager_dtype(how, symbolic):
    # (earlier versions of this fork wrote the number in the dtype the tensor was captured or
    # given with: float32 1.5 and 7.9 where eager code has float16 1.5 and int32 7)
    _loaded_equals_eager(DTYPE_WRITES[how], X_TRACED, [X_RUN, X_TRACED],
                         make_w=lambda: mge.Parameter(W0.copy()), symbolic=symbolic)


SHAPE_WRITES = {
    "argument": lambda x, w: (x.set_value(F.concat([x, x])), x * x.shape[0])[-1],
    "argument, an array": lambda x, w: (x.set_value(np.ones((2, 5), "float32")),
                                        x + x.shape[1])[-1],
    "Parameter": lambda x, w: (w.set_value(F.concat([w, x])), w * w.shape[0])[-1],
    "Parameter, a reshape": lambda x, w: (w.set_value(F.concat([w, x])),
                                          w.reshape(w.shape[0] // 2, 2) * 1)[-1],
    "Parameter written first": lambda x, w: (w.set_value(x[1:]), w * w.shape[0])[-1],
}


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("how", sorted(SHAPE_WRITES))
def test_shape_reads_after_a_shape_changing_write_follow_the_written_value(how, symbolic):
    # the file runs at other input sizes with the written value's sizes (earlier versions of
    # this fork kept a Parameter's traced size there: 6 where eager code has 9)
    _loaded_equals_eager(SHAPE_WRITES[how], np.arange(4, dtype="float32") + 0.5,
                         [np.arange(n, dtype="float32") - 2.25 for n in (6, 4, 2)],
                         make_w=lambda: mge.Parameter(np.array([1.0, 2.0], "float32")),
                         symbolic=symbolic)


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_guard_after_a_shape_changing_write_guards_the_written_size(symbolic):
    # the branch was decided by the written value's size (8 > 5): a run whose written value
    # has that size on the same side computes, one on the other side stops at the guard
    # (earlier versions of this fork guarded the input's size: the traced input itself stopped)
    def fn(x, w):
        x.set_value(F.concat([x, x]))
        return x * 2 if x.shape[0] > 5 else x

    net = _loaded_equals_eager(fn, np.arange(4, dtype="float32"),
                               [np.arange(n, dtype="float32") for n in (4, 3, 7)],
                               symbolic=symbolic)
    with pytest.raises(ShapeGuardError, match=r"x.shape\[0\] > 5"):
        net.run(inp_dict={"x": np.arange(2, dtype="float32")})


def test_a_value_read_to_the_host_after_a_write_from_the_input_is_refused():
    # the read is of the written value, which the input decides: the Python code that used it
    # would be baked into the file (as for any value read from an input)
    w = mge.Parameter(W0.copy())

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        w._reset(w + x)
        return w * float(w.numpy()[0])

    f(mge.tensor(X_TRACED))
    with pytest.raises(DumpError, match="read the value of .* to the host"):
        f.dump(io.BytesIO())


def test_batch_norm_in_training_mode_is_refused_as_upstream_refuses_it():
    # upstream 1.13: "can not dump BatchNorm in training mode, maybe you forget to do
    # model.eval()?" (a RuntimeError; DumpError is one)
    bn = M.BatchNorm1d(3)

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return bn(x)

    f(mge.tensor(np.random.RandomState(0).randn(4, 3).astype("float32")))
    with pytest.raises(RuntimeError, match=r"batch norm in training mode.*model\.eval\(\)"):
        f.dump(io.BytesIO())


@pytest.mark.parametrize("target", ["Parameter", "argument"])
def test_a_detach_before_a_write_dumps_the_value_before_the_write(target):
    # d is w's value at the detach(), as eagerly; recorded where it was first used (after the
    # write), an argument's detach() read the value written in each run of the file
    def body(w, x):
        d = w.detach()
        w._reset(w + x)
        return d * 2, w * 1

    if target == "argument":
        f = trace(body, symbolic=True, capture_as_const=True)
        f(mge.tensor(W0), mge.tensor(X_TRACED))
        names = ["w", "x"]
    else:
        w = mge.Parameter(W0.copy())
        f = trace(lambda x: body(w, x), symbolic=True, capture_as_const=True)
        f(mge.tensor(X_TRACED))
        names = ["x"]
    file = io.BytesIO()
    f.dump(file, arg_names=names, output_names=["y", "z"])
    file.seek(0)
    net = GraphInference(file)
    w_run = W0 * 3 if target == "argument" else W0  # (a captured w: its captured value)
    feed = {"w": w_run, "x": X_RUN} if target == "argument" else {"x": X_RUN}
    want = [t.numpy() for t in body(mge.tensor(w_run), mge.tensor(X_RUN))]
    for _ in range(2):  # each run starts from the captured value
        out = net.run(inp_dict=feed)
        np.testing.assert_allclose(out["y"], want[0], rtol=1e-6)
        np.testing.assert_allclose(out["z"], want[1], rtol=1e-6)


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("how", sorted(SHAPE_WRITES))
def test_checked_calls_read_sizes_after_a_shape_changing_write_as_recorded(how, symbolic,
                                                                           opt_level):
    # the recording built ops from a written Parameter's sizes (``w * w.shape[0]`` multiplies
    # by a size tensor): later checked calls make the same ops (they made a plain Mul:
    # "operator mismatch"); the Parameter gets its captured value back before each call
    fn = SHAPE_WRITES[how]
    w = mge.Parameter(np.array([1.0, 2.0], "float32"))
    f = trace(lambda x: fn(x, w), symbolic=symbolic, capture_as_const=True,
              opt_level=opt_level)
    for k in range(3):
        w._reset(mge.tensor(np.array([1.0, 2.0], "float32")))
        x = np.arange(4, dtype="float32") + k
        want = fn(mge.tensor(x), mge.Parameter(np.array([1.0, 2.0], "float32"))).numpy()
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), want, rtol=1e-6)
