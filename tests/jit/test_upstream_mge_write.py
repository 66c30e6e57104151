"""Writing upstream MegEngine's .mge format (megengine/jit/upstream_mge_write/,
``trace.dump(dump_format="FBS_V2")``). The oracle is a real upstream MegEngine 1.13: the files
tests/data/upstream_mge/written_*.mge were written by this fork and run by upstream
(tests/data/upstream_mge/written.py, which stores upstream's outputs beside them); this test
checks that the fork still writes those very bytes, and that they give upstream's outputs."""
import importlib.util
import io
import os
import struct
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace
from megengine.jit.dump import DumpError, load
from megengine.jit.upstream_mge import _model
from megengine.jit.upstream_mge_write import _Encoder, _type_id

from devices import host_default_device  # noqa: F401  (the fixture: quantized tests on cpu0)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "upstream_mge")
_spec = importlib.util.spec_from_file_location("written", os.path.join(DATA, "written.py"))
written = importlib.util.module_from_spec(_spec)  # (the models, as written.py builds them)
_spec.loader.exec_module(written)


def _close(got, up):
    """Upstream's values to 1e-5 of the larger of 1 and their largest magnitude (measured on
    this machine: 3e-6 at most; quantized outputs equal), in upstream's shape (a 0-d value is
    a vector of one item there)."""
    assert up.shape == (got.shape or (1,)), f"upstream's shape {up.shape}, here {got.shape}"
    scale = max(1.0, float(np.max(np.abs(up)))) if up.size else 1.0
    np.testing.assert_allclose(got.reshape(up.shape), up, rtol=0, atol=1e-5 * scale)


def _differing_floats(data, stored):
    """The float32 words (4-byte aligned) in which ``data`` differs from ``stored``, as pairs;
    None where anything else differs (the length, or bytes outside such words)."""
    if len(data) != len(stored):
        return None
    a, b = np.frombuffer(data, np.uint8), np.frombuffer(stored, np.uint8)
    words = np.unique(np.flatnonzero(a != b) // 4) * 4
    if words.size and words[-1] + 4 > len(data):
        return None
    return [(np.frombuffer(data, "<f4", 1, w)[0], np.frombuffer(stored, "<f4", 1, w)[0])
            for w in words]


@pytest.mark.parametrize("name", sorted(written.models()))
def test_written_files_are_what_upstream_ran(name):
    data, inputs, outs = written.write(name, written.models()[name])
    with open(os.path.join(DATA, f"written_{name}.mge"), "rb") as f:
        stored = f.read()
    # the same bytes, but for float32 values a few units in the last place apart: a quantized
    # network's scales come from its calibration's sums, which another CPU's kernels round
    # otherwise (an AMD EPYC's oneDNN against the Intel machine that wrote the files: 9 scales
    # of the qint8 fixture one ulp apart); the outputs below still match upstream's
    # (an int field read as float32 is a denormal, or NaN where it is huge: never taken)
    floats = _differing_floats(data, stored)
    assert floats is not None and all(
        np.isfinite(y) and abs(y) > 1e-30 and
        abs(int(x.view(np.int32)) - int(y.view(np.int32))) <= 4 for x, y in floats), (
        "the writer's bytes changed: run tests/data/upstream_mge/written.py (write, then run "
        "with upstream) to check them")
    ref = np.load(os.path.join(DATA, f"written_{name}.npz"))
    ups = [ref[f"up_{k}"] for k in range(sum(k.startswith("up_") for k in ref))]
    assert len(ups) == len(outs)
    for got, up in zip(outs, ups):  # upstream's outputs from these bytes: the traced values
        assert got.dtype == up.dtype
        _close(got, up)  # (a 0-d value is a vector of one item in upstream's graph)
    # this fork's loader reads the file it wrote (upstream's format) to the same values
    prog = load(io.BytesIO(data))
    got = [v.numpy() for v in prog.run(inputs).values()]
    for g, up in zip(got, ups):
        _close(g, up)
    if name in written.OTHER_BATCH:  # at another batch: upstream follows the input's shape
        feeds = {k[4:]: ref[k] for k in ref if k.startswith("in2_")}
        ups2 = [ref[f"up2_{k}"] for k in range(len(ups))]
        _, want = written.other_batch(name, written.models()[name])
        got = [v.numpy() for v in prog.run(feeds).values()]
        for g, w, up in zip(got, want, ups2):
            _close(w, up)
            _close(g, up)


def test_operator_ids_are_upstreams():
    # the ids upstream 1.13 wrote for these operators (tests/data/upstream_mge/cnn.mge):
    # version 1 operators hash their name without the version suffix, version 2 with a NUL
    with open(os.path.join(DATA, "cnn.mge"), "rb") as f:
        model, _ = _model(f.read())
    ids = {op.string(0): (op.scalar(1, "Q"), op.scalar(12, "I")) for op in model.tables(2)}
    for name in ("MatrixMulV2", "Elemwise", "PoolingV1", "Convolution", "Softmax",
                 "Host2DeviceCopy", "ImmutableTensor", "ReshapeV1", "Concat"):
        type_id, version = ids[name]
        assert _type_id(name, version) == type_id, name


def test_encoder_lays_out_a_valid_buffer():
    enc = _Encoder()
    data = enc.finish({0: ("Q", 2 ** 63 + 5), 1: ("str", "ab"), 2: ("B", 7), 3: ("d", 0.5),
                       4: ("tables", [{0: ("i", -3)}, {1: ("u32s", [1, 2, 3])}]),
                       5: ("table", {0: ("Q", 9), 1: ("structs <Ii", [(1, -2), (0, 5)])})},
                      b"mgv2")
    assert struct.unpack_from("<I", data)[0] == len(data) - 4 and data[8:12] == b"mgv2"
    assert len(data) % 8 == 0
    root, _ = _model(data)
    buf = root.buf
    # (8-byte scalars at a multiple of 8 from the start of the size prefix: 4 before buf)
    for table, field in ((root, 0), (root, 3), (root.table(5), 0)):
        assert (table.pos + table.offsets[field] + 4) % 8 == 0
    assert root.scalar(0, "Q") == 2 ** 63 + 5 and root.string(1) == "ab"
    assert root.scalar(2, "B") == 7 and root.scalar(3, "d") == 0.5
    first, second = root.tables(4)
    assert first.scalar(0, "i") == -3 and second.scalars(1, "I") == [1, 2, 3]
    assert root.table(5).scalar(0, "Q") == 9
    assert root.table(5).structs(1, "<Ii") == [(1, -2), (0, 5)]
    assert buf[root.pos + root.offsets[1] + struct.unpack_from(
        "<I", buf, root.pos + root.offsets[1])[0] + 4 + 2] == 0  # (the string's NUL)
    for table in (root, first, second, root.table(5)):  # (each vtable before its table)
        vtable = table.pos - struct.unpack_from("<i", buf, table.pos)[0]
        assert 0 <= vtable < table.pos and vtable % 2 == 0 and (table.pos + 4) % 4 == 0


def _dumped(fn, *xs, **options):
    traced = trace(fn, symbolic=True, capture_as_const=True)
    traced(*(mge.tensor(x) for x in xs))
    buf = io.BytesIO()
    traced.dump(buf, dump_format="FBS_V2", **options)
    return buf


def test_what_has_no_writer_is_refused_by_name_before_writing():
    x = np.random.RandomState(0).randn(2, 4).astype("float32")
    w = mge.tensor(np.ones((1, 2, 2, 3, 3), "float32"))
    rin, rout = mge.tensor(np.zeros((1, 4, 4), "int32")), mge.tensor(np.zeros((1, 2, 2), "int32"))
    with pytest.raises(DumpError, match=r"_dense_region_ids.*no writer.*dump without dump_fo"):
        _dumped(lambda x: F.region_restricted_conv(x, w, rin, rout),
                np.zeros((1, 2, 4, 4), "float32"))  # (this fork's computation of region ids)
    with pytest.raises(DumpError, match=r"'CTC' \(CTC\) has no writer.*dump without dump_f"):
        _dumped(lambda p: F.nn.ctc_loss(p, mge.tensor([3, 3]), mge.tensor([[1, 2], [2, 1]]),
                                        mge.tensor([2, 2])), np.full((3, 2, 3), 1 / 3, "float32"))
    with pytest.raises(DumpError, match=r"indexes a value of 3 axes by a mask of 2 axes comp"):
        _dumped(lambda x: (lambda c: c[c[:, :, 0] > 0])(x.reshape(2, 2, 2)), x)
    with pytest.raises(DumpError, match=r"indexes by an empty index array"):
        _dumped(lambda x: x[np.array([], "int32"), 1:], x)
    with pytest.raises(DumpError, match=r"indexes with None; ints, slices, sizes"):
        _dumped(lambda x: x[:, None, 1:], x)
    with pytest.raises(DumpError, match=r"indexes with None; ints, slices, sizes"):
        _dumped(lambda x: x[np.array([1, 0]), None], x)  # (beside an index array)
    with pytest.raises(DumpError, match="8 axes, more than upstream's graphs hold .7.: "
                                        "reshape to fewer"):
        _dumped(lambda x: x.reshape(1, 1, 1, 1, 1, 2, 1, 4) * 2, x)
    with pytest.raises(DumpError, match="dtype int64|dtype float64"):
        _dumped(lambda x: x.astype("float64") * 2, x)
    bn = M.BatchNorm1d(4)  # (left in training mode: the batch's statistics)
    with pytest.raises(DumpError, match=r"training mode.*eval\(\)"):  # (as every dump)
        _dumped(bn, x)
    # a refused dump writes nothing into the file
    buf = io.BytesIO()
    traced = trace(lambda x: F.svd(x, full_matrices=True)[0], symbolic=True,
                   capture_as_const=True)
    traced(mge.tensor(x))
    with pytest.raises(DumpError, match="full_matrices=True .upstream's SVD kernel computes "
                                        "the reduced factors only"):
        traced.dump(buf, dump_format="FBS_V2")
    assert buf.getvalue() == b""


def test_targets_computed_from_a_data_sized_value_are_computed_in_the_file():
    # a reshape with an inferred axis or sizes from the value's shape, a fill and a broadcast
    # of a cond_take's values take their targets where the file runs (upstream's own dumps
    # compute them so), so the file follows the count; they were refused as traced shapes
    def fn(x):
        v = F.cond_take(x > 0, x)[0]
        rows = v.reshape(v.shape[0], 1) * F.ones((1, 2)) + F.zeros_like(v).reshape(-1, 1)
        return rows.sum(0) + F.broadcast_to(v.reshape(-1, 1), (v.shape[0], 2)).mean(0)

    r = np.random.RandomState(0)
    prog = load(io.BytesIO(_dumped(fn, r.randn(2, 5).astype("float32")).getvalue()))
    for n in (2, 3, 4):
        x = r.randn(n, 5).astype("float32")
        got = list(prog.run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5)


def test_one_hot_of_a_count_from_a_shape_computes_the_count_in_the_file():
    # F.one_hot's number of classes from x.shape (a size expression of the trace) is read
    # where the file runs (upstream 1.13 ran such a file at batches 2, 3 and 4 to eager's
    # values, measured); the writer raised AttributeError ("'Compute' object has no attribute
    # 'args'") before
    def fn(x):
        return F.one_hot(F.argmax(x[:, :2], axis=1), x.shape[0]) * 2 + x.shape[0]

    r = np.random.RandomState(0)
    prog = load(io.BytesIO(_dumped(fn, r.randn(2, 5).astype("float32")).getvalue()))
    for n in (2, 3, 4):
        x = r.randn(n, 5).astype("float32")
        got = list(prog.run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_array_equal(got, fn(mge.tensor(x)).numpy())
        assert got.shape == (n, n)


def test_non_zero_is_written_as_places_of_the_flattened_value():
    # this fork's non_zero and one-argument where (upstream 1.13 has neither) as upstream's
    # operators give them: CondTake's flat places turned into coordinates with the sizes read
    # where the file runs (upstream ran such files at batches 2 and 3 to eager's values,
    # measured); they were refused. -0.0 is zero and NaN is not, as numpy's nonzero
    fns = (lambda x: F.non_zero(x > 0.3), lambda x: F.non_zero(F.relu(x - 0.5)),
           lambda x: F.where(x[:, 0] > 0)[0] * 2,
           lambda x: F.non_zero((x * 3).astype("int32")))
    r = np.random.RandomState(0)
    for fn in fns:
        prog = load(io.BytesIO(_dumped(fn, r.randn(2, 5).astype("float32")).getvalue()))
        for n in (3, 2):
            x = r.randn(n, 5).astype("float32")
            x[0, :3] = (-0.0, np.nan, 1e-30)
            got = list(prog.run({"arg_0": x}).values())[0].numpy()
            np.testing.assert_array_equal(got, fn(mge.tensor(x)).numpy())


def test_what_upstream_would_compute_otherwise_is_refused():
    x = np.random.RandomState(0).randn(2, 4).astype("float32")
    # a cond_take's values have the shape the data gives them: a writer that takes the traced
    # shape (a reshape's constant target, a sort's rows) would write that one
    four = np.array([[1, -1, 2, -2], [3, -3, 4, -4]], "float32")  # (four values taken)
    with pytest.raises(DumpError, match=r"operator 'Reshape': it fails on the zero-valued "
                                         r"samples .* a value whose shape the data decides"):
        _dumped(lambda x: F.cond_take(x > 0, x)[0].reshape(2, 2), four)
    with pytest.raises(DumpError, match=r"ArgsortForward reads a value whose shape the data"):
        _dumped(lambda x: F.sort(F.cond_take(x > 0, x)[0]), x)
    # the Network knows shapes from zero-valued samples, where a cond_take's value is empty:
    # an op that fails on that is refused by name (it raised the op's IndexingError before)
    with pytest.raises(DumpError, match=r"fails on the zero-valued samples.*IndexingError"):
        _dumped(lambda x: F.cond_take(x > 0, x)[0][np.array([-1])], x)
    # upstream sums float16 in float16 (and rounds float32 to float16 ties away from zero)
    with pytest.raises(DumpError, match=r"cumsum of a float16 value.*cast to float32"):
        _dumped(lambda x: F.cumsum(x.astype("float16"), 1), x)
    # the descending order of unsigned values is that of their negation (an int64 here)
    with pytest.raises(DumpError, match=r"descending sort of uint8 values"):
        _dumped(lambda x: F.sort(x.astype("uint8"), descending=True), x)
    with pytest.raises(DumpError, match=r"ascending sort of bool values"):
        _dumped(lambda x: F.argsort(x > 0), x)
    with pytest.raises(DumpError, match=r"one_hot of a int32 value of shape \(\) into 4"):
        _dumped(lambda x: F.one_hot(F.argmax(x, axis=(0, 1)), 4), x)
    # (a cond_take's values through element-wise operators, reductions and indexing: written)
    buf = _dumped(lambda x: (lambda t: (t[0] * 2, t[0].sum(), x.reshape(-1)[t[1]]))(
        F.cond_take(x > 0, x)), x)
    got = [v.numpy() for v in load(io.BytesIO(buf.getvalue())).run({"arg_0": x}).values()]
    taken = x[x > 0]
    for g, w in zip(got, (taken * 2, taken.sum(), taken)):
        np.testing.assert_allclose(g.reshape(np.shape(w)), w, rtol=1e-6)


def _layout(data):
    """What upstream's test-case layout fixes of a file: the count, each AssertEqual's
    parameters, its inputs' names and the operators computing its error (type, mode), and
    each case's operators, comp nodes, shared-tensor count and values' names (by dtype)."""
    from megengine.core._imperative_rt.ops import _ELEMWISE_MODES
    from megengine.jit.upstream_mge import _Op

    assert data[:8] == b"mgbtest0"
    count, data = struct.unpack_from("<I", data, 8)[0], data[12:]
    model, end = _model(data)
    ops = [_Op(t, k) for k, t in enumerate(model.tables(2))]
    names = [t.string(0) for t in model.tables(3)]
    made = {v: op for op in ops for v in op.outputs}
    checks = []
    for a in (op for op in ops if op.type == "AssertEqual"):
        todo, error, seen = [a.inputs[2]], [], set()
        while todo:  # (the operators from the error back to the compared values)
            op = made[todo.pop()]
            if op.type == "Host2DeviceCopy" or op.outputs[0] == a.inputs[1] or op.index in seen:
                continue
            seen.add(op.index)
            mode = op.p(0, "I") if op.type in ("Elemwise", "ReduceV2") else None
            error.append((op.type, _ELEMWISE_MODES[mode] if op.type == "Elemwise" else mode))
            todo += op.inputs
        checks.append((round(a.p(0, "f"), 6), a.p(1, "B"), [names[v] for v in a.inputs[:2]],
                       sorted(error, key=str)))
    cases = []
    for _ in range(count):
        data = data[end:]
        case, end = _model(data)
        cases.append((case.scalar(6, "I"), [
            (op.string(0), [t.table(2).string(0) for t in op.tables(11)])
            for op in case.tables(2)], len(case.tables(4))))
    return checks, cases


def test_test_cases_are_written_in_upstreams_layout():
    # upstream 1.13's own dump(input_data=["#rand(0,1,2,4)"], maxerr=1e-3, silent=True) of
    # Linear(4, 3) + ReLU (testcase.mge): the output checked by an AssertEqual of its
    # expected value (an input "<output>:expect"), its error computed as upstream's
    # AssertEqual::make does; the case a model of SharedDeviceTensor values on cpux, one per
    # input. (The model itself is written as every FBS_V2 file here: upstream fuses more)
    net = M.Sequential(M.Linear(4, 3), M.ReLU())
    net.eval()
    x = np.random.RandomState(0).rand(2, 4).astype("float32")
    buf = _dumped(net, x, arg_names=["data"], input_data=[x], maxerr=1e-3, silent=True)
    got = _layout(buf.getvalue())
    with open(os.path.join(DATA, "testcase.mge"), "rb") as f:
        want = _layout(f.read())
    (maxerr, verbose, compared, error), = want[0]
    # (upstream's names: the expected value named after the output's name before fusion)
    assert compared == ["1.RELU:expect", "FUSE_ADD_RELU(0.bias,0.MatrixMul)[90]"]
    assert got[0] == [(maxerr, verbose, ["1.RELU:expect", "1.RELU"], error)]
    assert got[1] == want[1] == [(2, [("SharedDeviceTensor", ["cpux:0"])] * 2, 2)]
    # this fork reads it back: the case's input and the traced network's output
    prog = load(io.BytesIO(buf.getvalue()))
    assert prog.outputs == ["1.RELU"]
    assert prog.testcase_options == {"maxerr": pytest.approx(1e-3), "no_assert": False,
                                     "silent": True}
    (inputs, expected), = prog.testcases
    np.testing.assert_array_equal(inputs["data"], x)
    # (on a GPU the traced program's product may round otherwise than eager's: 1 ulp)
    np.testing.assert_allclose(expected["1.RELU"], net(mge.tensor(x)).numpy(), rtol=1e-6)


def test_test_cases_of_other_dtypes_and_without_checks():
    # upstream 1.13 ran these files' checks (tests/data/upstream_mge/check_testcases.py) and
    # failed them with any expected value changed: int32 divides with FLOOR_DIV (as upstream's
    # dump), bool compares as int32 (upstream's own dump writes ABS of bool, which its runtime
    # refuses), the error given as bool (AssertEqual's three inputs share a dtype)
    rng = np.random.RandomState(1)
    x, x2 = rng.rand(2, 4).astype("float32"), rng.rand(3, 4).astype("float32")
    fn = lambda x: ((x * 3).astype("int32"), x > 0.5, F.relu(x).astype("float16"))  # noqa
    data = _dumped(fn, x, arg_names=["data"], input_data=[x, x2]).getvalue()
    checks, cases = _layout(data)
    assert [c[2] for c in checks] == [[f"{n}:expect", n] for n in ("TypeCvt[0]", "GT",
                                                                      "TypeCvt[1]")]
    assert ("Elemwise", "FLOOR_DIV") in checks[0][3] and ("TypeCvtV2", None) in checks[1][3]
    assert ("Elemwise", "TRUE_DIV") in checks[2][3]
    assert [c[0] for c in cases] == [4, 4]  # (data and three expected values each)
    prog = load(io.BytesIO(data))
    for (inputs, expected), given in zip(prog.testcases, (x, x2)):
        np.testing.assert_array_equal(inputs["data"], given)
        for n, want in zip(prog.outputs, fn(mge.tensor(given))):
            np.testing.assert_array_equal(expected[n], want.numpy(), strict=True)
    # no_assert: the model as without test cases, the cases its inputs only
    data = _dumped(fn, x, arg_names=["data"], input_data=[x, x2], no_assert=True).getvalue()
    assert _layout(data) == ([], [(1, [("SharedDeviceTensor", ["cpux:0"])], 1)] * 2)
    assert data[12:12 + 4 + struct.unpack_from("<I", data, 12)[0]] == _dumped(
        fn, x, arg_names=["data"]).getvalue()


@pytest.mark.usefixtures("host_default_device")  # (quantized tensors live on CPU devices)
def test_test_cases_of_a_quantized_output_are_refused_with_checks():
    # upstream's element-wise operators cannot compare a quantized output
    x = np.random.RandomState(1).rand(2, 4).astype("float32")
    q = mge.core.tensor.dtype.qint8(0.1)
    with pytest.raises(DumpError, match=r"output .* is quantized.*no_assert=True"):
        _dumped(lambda x: x.astype(q), x, input_data=[x])
    _dumped(lambda x: x.astype(q), x, input_data=[x], no_assert=True)  # (the inputs alone)


def test_this_forks_format_stays_the_default():
    x = np.ones((2, 3), "float32")
    traced = trace(lambda x: x * 2, symbolic=True, capture_as_const=True)
    traced(mge.tensor(x))
    for fmt in (None, "FBS"):
        buf = io.BytesIO()
        traced.dump(buf, dump_format=fmt) if fmt else traced.dump(buf)
        assert buf.getvalue()[:7] == b"MGEFORK"
    with pytest.raises(DumpError, match="dump_format must be.*'FBS_V2'.*got 'fbs2'"):
        traced.dump(io.BytesIO(), dump_format="fbs2")
    with pytest.raises(DumpError, match="writes model_version 2.*not 1"):
        traced.dump(io.BytesIO(), dump_format="FBS_V2", model_version=1)


def test_network_dump_writes_upstreams_format_too(tmp_path):
    # Network.load of a dump, then dump(dump_format="FBS_V2"), as upstream's Network.dump
    from megengine.utils.network import Network

    name = "cnn"
    data, inputs, outs = written.write(name, written.models()[name])
    net = Network.load(io.BytesIO(data))
    path = tmp_path / "again.mge"
    net.dump(str(path), dump_format="FBS_V2")
    again = path.read_bytes()
    assert again[8:12] == b"mgv2"
    got = [v.numpy() for v in load(str(path)).run(inputs).values()]
    for g, w in zip(got, outs):
        np.testing.assert_allclose(g.reshape(w.shape), w, rtol=1e-5, atol=1e-6)
    with pytest.raises(DumpError, match="Network.dump: dump_format must be"):
        net.dump(str(path), dump_format="FBS3")


def test_a_concat_of_one_part_or_a_broadcast_to_its_own_shape_is_its_input():
    # upstream's Concat::make of one input gives the input itself, and its loader then asserts
    # ("got_type=Subtensor expected_type=Concat", measured with upstream 1.13): the file holds
    # no Concat of one input, whether the program made one or a shape of one item needs one
    x = np.random.RandomState(0).randn(2, 3).astype("float32")
    # Broadcast::make of a value of the target shape gives the value: no such Broadcast either
    # ("got_type=Reduce expected_type=Broadcast", tests.fuzz.upstream_write seed 1506)
    for fn in (lambda x: F.concat([x * 2]) + 1, lambda x: x.reshape(x.shape[0] * x.shape[1]),
               lambda x: F.broadcast_to(x.mean(1, keepdims=True), (2, 1)) + x):
        data = _dumped(fn, x).getvalue()
        model, _ = _model(data)
        concats = [op for op in model.tables(2) if op.string(0) == "Concat"]
        assert all(len(op.scalars(7, "I")) > 1 for op in concats)
        assert not any(op.string(0) == "Broadcast" for op in model.tables(2))
        want = fn(mge.tensor(x)).numpy()
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6)


def test_a_reshape_to_its_own_shape_is_its_input():
    # upstream's Reshape::make of a constant target equal to its input's shape gives the
    # input, and its loader then asserts ("got_type=Split expected_type=Reshape", measured:
    # M.MultiHeadAttention's biases, split from its packed weights and reshaped to their own
    # shape, made every file of it unloadable there): no such Reshape in the file
    from megengine.utils.network import Network

    x = np.random.RandomState(0).randn(2, 5, 8).astype("float32")
    mha = M.MultiHeadAttention(8, 2)
    mha.eval()
    for fn in (lambda x: mha(x, x, x)[0], lambda x: (x * 2).reshape(2, 5, 8) + 1):
        with warnings.catch_warnings():  # (the attention's widths cut its packed weights:
            warnings.simplefilter("error")  # no size of the input used as a Python value)
            data = _dumped(fn, x).getvalue()
        for op in Network.load(io.BytesIO(data)).all_oprs:
            if type(op).__name__ == "Reshape":
                assert tuple(op.inputs[0].shape) != tuple(op.outputs[0].shape)
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


def _write_last_row(x):
    y = x * 1
    y[x.shape[0] - 1] = 0.5  # (the row a size from a shape names: the loader read it as a
    return y  # size, where it refused a SymDim index before)


def test_sizes_computed_from_shapes_are_computed_in_the_file():
    # F.arange of a size from x.shape (a count clipped at 0 by MAX: the loader computes it on
    # the shapes), linspace of such a count, a value scaled by a size, a roll: this fork's
    # loader reads what the writer wrote to eager's values (upstream 1.13 ran the arange, the
    # scale and the rolls to them too, measured)
    x = np.random.RandomState(0).randn(2, 5).astype("float32")
    fns = (lambda x: x + F.arange(x.shape[1]).astype("float32"),
           lambda x: x * (x.shape[1] / 2),
           lambda x: x[:, : x.shape[1] // 2] + F.linspace(0, 5, x.shape[1] // 2),
           lambda x: F.linspace(1, x.shape[1], 3) + x[:, :3],
           lambda x: F.roll(x, (1, -2), (0, 1)) + F.roll(x, 3),
           _write_last_row)
    for fn in fns:
        data = _dumped(fn, x).getvalue()
        want = fn(mge.tensor(x)).numpy()
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-6)


def _number_writes(x):
    y = x * 1.0
    y[:, :2] = 0.5
    y[:, mge.tensor([4, 2], dtype="int32")] += 1.0
    y[y > 1.2] = 3.0  # (a mask of every axis: through the flattened value)
    return y


def _roll_whole_turn_at_batch_2(x):  # (and of the flattened x)
    return F.roll(x, (2, -1), (0, 1)) + F.roll(x, -7)


@pytest.mark.parametrize("fn", [
    _roll_whole_turn_at_batch_2, _number_writes,
    lambda x: F.split(x, [1], axis=0)[1] + F.split(x, 2, axis=0)[0].sum(0),
    lambda x: F.batch_norm(x, F.linspace(-1, 1, 5), F.linspace(0.5, 2, 5)),
    lambda x: F.topk(x.reshape(-1, 1, 5), 2)[0].sum(2) + F.sort(x.reshape(-1, 1, 5))[0][:, 0],
    lambda x: F.topk(x[:, 0], 2)[1]])
def test_files_follow_the_batch(fn):
    # sizes taken where the file runs (upstream's own dumps do so): traced at batch 2 (where a
    # shift of 2 along the batch is a whole turn), run at other batches by this fork's loader
    # against eager. The files kept traced sizes: they raised at batch 3 or, for the whole
    # turn, returned x unrolled; a write through a mask of every axis was refused
    r = np.random.RandomState(0)
    prog = load(io.BytesIO(_dumped(fn, r.randn(2, 5).astype("float32")).getvalue()))
    for n in (3, 2, 4):
        x = r.randn(n, 5).astype("float32")
        got = list(prog.run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_a_split_into_hundreds_of_parts_of_a_size_from_the_input_reads_back():
    # each part's size is written as its two bounds' difference (the file follows the input),
    # which the reader summed into cuts nested as deep as the parts: 600 parts read back past
    # Python's recursion limit (fuzz program 23185); the cuts are the bounds again now
    def fn(x):
        return F.concat(F.split(x, x.shape[1], axis=1)[::-1], axis=1) * 2
    r = np.random.RandomState(0)
    data = _dumped(fn, r.randn(2, 600).astype("float32")).getvalue()
    prog = load(io.BytesIO(data))
    for n in (2, 3):
        x = r.randn(n, 600).astype("float32")
        got = list(prog.run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_array_equal(got, x[:, ::-1] * 2)


def test_values_whose_shape_is_the_programs_again_after_a_mask_are_written():
    # an element-wise op that broadcasts a data-decided axis away (to the size of another
    # operand's) or a reduction over it gives a value of the program's shape: what reads it may
    # take the traced shape. Each such program was refused (its convolution, softmax, ... "reads
    # a value whose shape the data decides"). Read back where the mask keeps other counts
    r = np.random.RandomState(0)
    conv = M.Conv2d(4, 3, 3, padding=1)

    def folded(x):  # (x's axis 1 masked, folded back into x's shape)
        return x + x[:, x.mean(axis=(0, 2, 3)) > 0].mean(1, keepdims=True)

    def rows(x):  # (2-d: a sum over the masked axis broadcast to (N, 4))
        g = x[:, x.mean(axis=(0, 2, 3)) > 0]
        return x.mean((2, 3)) * F.sigmoid(g.sum((1, 2, 3)).reshape(-1, 1))

    def pooled(x):  # (of (N, 4, 1, 1): only the mask's axis is the data's, not the 1s)
        return F.relu(x + x[:, x.mean(axis=(0, 2, 3)) > 0].mean(1, keepdims=True))

    for fn, size in ((lambda x: conv(folded(x)), 3), (lambda x: F.softmax(folded(x), 1), 3),
                     (lambda x: F.topk(rows(x), 2)[0], 3),
                     (lambda x: F.stack([rows(x), rows(x)], 2), 3),
                     (lambda x: conv(pooled(x)), 1)):
        x = r.randn(2, 4, size, size).astype("float32")
        prog = load(io.BytesIO(_dumped(fn, x).getvalue()))
        kept = set()
        for n in (2, 3, 2, 2):
            x = r.randn(n, 4, size, size).astype("float32")
            kept.add(int((x.mean(axis=(0, 2, 3)) > 0).sum()))
            got = list(prog.run({"arg_0": x}).values())[0].numpy()
            np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)
        assert len(kept) > 1


def test_values_whose_axis_the_data_still_decides_are_refused_where_read_as_traced():
    # broadcast against a size of 1 the axis stays the data's: a softmax of it is refused
    with pytest.raises(DumpError, match=r"SoftmaxForward reads a value whose shape the data "):
        _dumped(lambda x: F.softmax(x[x > 0].reshape(-1, 1) + F.zeros((1, 3)), 1),
                np.random.RandomState(0).randn(2, 5).astype("float32"))
    with pytest.raises(DumpError, match=r"SoftmaxForward reads a value whose shape the data "):
        _dumped(lambda x: F.softmax(x[:, x.mean(0) > 0].mean(0, keepdims=True) * 2, 1),
                np.random.RandomState(0).randn(2, 5).astype("float32"))


def test_a_tile_of_many_axes_is_written_an_axis_at_a_time():
    # F.tile repeats every axis in one broadcast of (1, s) pairs: 8 axes for a 4-d value,
    # which upstream's graphs cannot hold (the dump refused it); now only repeated axes get a
    # pair, and where that still makes more than 7 axes, an axis at a time, as upstream's tile
    from megengine.utils.network import Network

    r = np.random.RandomState(0)
    for reps in ((2, 1, 3, 1), (2, 2, 2, 2), (3, 1, 2, 2, 2)):
        data = _dumped(lambda x: F.tile(x, reps), r.randn(2, 3, 2, 2).astype("float32"))
        assert max(len(v.shape) for op in Network.load(io.BytesIO(data.getvalue())).all_oprs
                   for v in op.outputs) <= 7
        x = r.randn(2, 3, 2, 2).astype("float32")
        got = list(load(io.BytesIO(data.getvalue())).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_array_equal(got, np.tile(x, reps))


def test_svd_is_written_as_upstreams_operator():
    # (was refused: no writer) upstream's SVD, one output without compute_uv (upstream's
    # loader refuses three there), integers cast to float32 first (its kernel takes float32
    # only: measured); read back here at another batch
    r = np.random.RandomState(0)
    for fn in (lambda x: F.svd(x, compute_uv=False) * 2,
               lambda x: F.svd((x * 3).astype("int32"), compute_uv=False),
               lambda x: F.matmul(F.svd(x)[0] * F.expand_dims(F.svd(x)[1], 1), F.svd(x)[2])):
        data = _dumped(fn, r.randn(2, 4, 3).astype("float32")).getvalue()
        x = r.randn(3, 4, 3).astype("float32")
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_cvt_color_of_uint8_images_is_written_as_upstreams_cvt_color():
    # (was refused: this fork's integer kernel had no writer) upstream's CvtColor in each mode,
    # which computes this fork's integers (every mode run by upstream 1.13 at two batches;
    # tests/data/upstream_mge/colors.mge is upstream's own dump of some); read back here
    from megengine.functional import vision
    from megengine.jit import upstream_mge

    r = np.random.RandomState(0)
    for mode in vision._UINT8_MODES:
        c = vision._IN_CHANNELS.get(mode, 1 if mode.startswith(
            ("YUV2GRAY", "YUV2RGB_", "YUV2BGR_", "YCrCb", "BT601")) else 3)
        data = _dumped(lambda x: F.vision.cvt_color(x, mode),
                       r.randint(0, 256, (2, 6, 4, c)).astype("uint8")).getvalue()
        model, _ = upstream_mge._model(data)
        assert [t.string(0) for t in model.tables(2)] == ["Host2DeviceCopy", "CvtColor"]
        x = r.randint(0, 256, (3, 6, 4, c)).astype("uint8")
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_array_equal(got, F.vision.cvt_color(mge.tensor(x), mode).numpy(),
                                      strict=True)


def test_float_mod_is_written_with_pythons_sign_rule():
    # upstream's MOD kernel computes C's fmod in its files (measured: 12 of 20 values of x % 0.7
    # of negative x were fmod's); the file adds the divisor where fmod and it differ in sign
    # (an inf divisor too: no 0 * inf); integers keep one MOD (upstream's rule is Python's)
    x = np.array([-7.5, -1.2, -0.0, 0.35, 7.5, 1e-30, -1e-30, np.inf, np.nan, 3.0, -3.0],
                 "float32")
    d = mge.tensor(np.array([2, 0.7, -0.7, -2, 0.5, 1e-20, 1e-20, 2, 1, np.inf, np.inf],
                            "float32"))
    for fn, modes in ((lambda x: x % 0.7, 6), (lambda x: F.mod(x, d), 6),  # (MOD, 2 SIGN,
                      (lambda x: (F.floor(x[:5]).astype("int32") % 3).astype("float32"), 2)):
        with np.errstate(all="ignore"):
            data = _dumped(fn, x).getvalue()
            want = fn(mge.tensor(x)).numpy()
        model, _ = _model(data)
        assert sum(op.string(0) == "Elemwise" for op in model.tables(2)) == modes  # MUL,
        # COND_LT_MOV, ADD; the int: FLOOR, MOD)
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_array_equal(got, want)


def test_a_roll_along_an_empty_axis_is_refused():
    # (its cut is a remainder of a division by the traced 0)
    with pytest.raises(DumpError, match=r"a roll along an axis of size 0 \(shape \(0, 5\)\)"):
        _dumped(lambda x: F.roll(x, 1, 0), np.zeros((0, 5), "float32"))


def test_matrix_products_are_written_as_upstreams_kernels_take_them():
    # upstream's MatrixMul takes two matrices and its BatchedMatrixMul two 3-d values of one
    # batch (its kernels assert so, measured: "matmul requires input to be 2-dimensional"),
    # where this fork's loader computes numpy's matmul of any ranks: a linear layer of a 3-d
    # input, 4-d batches, a vector or a matrix beside a batch, broadcast batches were written
    # as one such operator, which upstream refused to load. Every product in the file is of
    # the shapes upstream takes, and the file gives eager's values at another batch too.
    from megengine.utils.network import Network

    r = np.random.RandomState(0)
    w, mats = mge.tensor(r.randn(6, 3).astype("float32")), mge.tensor(
        r.randn(2, 6, 3).astype("float32"))
    lin = M.Linear(6, 3)
    fns = (lambda x: lin(x), lambda x: F.matmul(x, w), lambda x: F.matmul(x, w[:, 0]),
           lambda x: F.matmul(w[:4, 0], x), lambda x: F.matmul(w.T, x.transpose(0, 2, 1)),
           lambda x: F.matmul(x.reshape(-1, 2, 2, 6), x.reshape(-1, 2, 6, 2)),
           lambda x: F.matmul(x.reshape(-1, 1, 4, 6), mats),
           lambda x: F.matmul(x, x, transpose_b=True))
    for fn in fns:
        data = _dumped(fn, r.randn(2, 4, 6).astype("float32")).getvalue()
        for op in Network.load(io.BytesIO(data)).all_oprs:
            shapes = [tuple(v.shape) for v in op.inputs]
            if type(op).__name__ == "MatrixMul":
                assert [len(s) for s in shapes] == [2, 2], shapes
            elif type(op).__name__ == "BatchedMatrixMul":
                assert [len(s) for s in shapes] == [3, 3] and shapes[0][0] == shapes[1][0]
        x = r.randn(3, 4, 6).astype("float32")
        got = list(load(io.BytesIO(data)).run({"arg_0": x}).values())[0].numpy()
        np.testing.assert_allclose(got, fn(mge.tensor(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_sizes_used_as_python_values_are_named_in_a_warning():
    # this fork's format guards them (ShapeGuardError at other shapes); upstream's cannot, so
    # the file would compute with the traced value at any shape there: say so when writing
    x = np.zeros((2, 5), "float32")
    with pytest.warns(UserWarning, match=r"float\(\) of a size at .* \(traced 5\).*traced input "
                                         r"shapes") as record:
        _dumped(lambda x: x * float(x.shape[1]), x)
    assert record[0].filename == __file__  # (the caller's line: `_dumped` here)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (sizes the program computes with ops: no warning)
        _dumped(lambda x: x.reshape(x.shape[0], -1) * 2, x)


def test_metadata_reaches_upstreams_fields():
    # user_info pickled, the optimizer's options as upstream's bits (read back by name)
    x = np.ones((2, 3), "float32")
    buf = _dumped(lambda x: F.relu(x) * 2, x, user_info={"mean": [0.5, 0.25]},
                  enable_fuse_conv_bias_nonlinearity=True, enable_nchw44=True)
    meta = load(io.BytesIO(buf.getvalue())).metadata
    assert meta["user_info"] == {"mean": [0.5, 0.25]}
    assert meta["optimized_for_inference"] and meta["enable_fuse_conv_bias_nonlinearity"]
    assert meta["enable_nchw44"]


def test_vision_operators_upstream_computes_otherwise_are_refused():
    img = np.random.RandomState(0).rand(1, 3, 5, 6).astype("float32")
    mat = np.array([[[1.1, 0.1, 0.5], [0.05, 0.9, -0.3], [0.01, 0.02, 1.0]]], "float32")
    # upstream's NCHW warps interpolate linearly only (its kernels assert it)
    with pytest.raises(DumpError, match="nearest interpolation sampled NCHW.*WarpAffine"):
        _dumped(lambda x, m: F.vision.warp_perspective(x, m, (4, 4), interp_mode="nearest"),
                img, mat)
    with pytest.raises(DumpError, match="an image of dtype float16; float32 ones are written"):
        _dumped(lambda x, m: F.vision.warp_perspective(x.astype("float16"), m, (4, 4)), img,
                mat)
    rois = np.array([[0, 0.5, 0.5, 4, 3]], "float32")
    with pytest.raises(DumpError, match="ROIPooling.*an image of dtype float16"):
        _dumped(lambda x, r: F.vision.roi_pooling(x.astype("float16"), r, 2), img, rois)
    with pytest.raises(DumpError, match="Im2Col.*an input of dtype int32"):
        _dumped(lambda x: F.sliding_window(x.astype("int32"), 2), img)
    with pytest.raises(DumpError, match="interpolation of mode 'bicubic' of an image of dtype "
                                        "float16"):
        _dumped(lambda x: F.nn.interpolate(x.astype("float16"), scale_factor=2,
                                           mode="bicubic"), img)
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], "float32")
    with pytest.raises(DumpError, match="scores of dtype float16"):
        _dumped(lambda b, s: F.vision.nms(b, s.astype("float16"), 0.5), boxes,
                np.array([0.5, 0.7], "float32"))


def test_nms_written_follows_the_data_when_read_back():
    # the file keeps the first `count` positions NMSKeep gives: a size that follows the
    # data (this fork's loader reads upstream's NMSKeep and that slice back)
    rng = np.random.RandomState(3)
    boxes = rng.rand(10, 4).astype("float32") * 5
    boxes[:, 2:] += boxes[:, :2] + 0.5
    fn = lambda b, s: F.vision.nms(b, s, 0.2)  # noqa: E731
    data = _dumped(fn, boxes, rng.rand(10).astype("float32")).getvalue()
    prog = load(io.BytesIO(data))
    for k in range(4):
        b = boxes + rng.rand(10, 4).astype("float32") * k
        s = np.round(rng.rand(10) * 3).astype("float32")  # (equal scores: the lower index first)
        got = list(prog.run({"arg_0": b, "arg_1": s}).values())[0].numpy()
        want = fn(mge.tensor(b), mge.tensor(s)).numpy()
        np.testing.assert_array_equal(got, want)
def test_norms_losses_and_checks_refuse_what_they_cannot_write():
    # (their writers: tests/data/upstream_mge/written.py's "norms", run by upstream 1.13)
    x = np.random.RandomState(0).randn(3, 4).astype("float32")
    label = np.array([1.0, 0.0, 3.0], "float32")
    with pytest.raises(DumpError, match=r"cross_entropy of float32 labels.*integer labels"):
        _dumped(lambda x, y: F.loss.cross_entropy(x, y), x, label)
    with pytest.raises(DumpError, match=r"isinf of a bool value; numbers are written"):
        _dumped(lambda x: F.isinf(x > 0), x)
    with pytest.raises(DumpError, match=r"a norm of a 2-d value over axes \(\)"):
        _dumped(lambda x: F.norm(x, 3, axis=()), x)


def test_logsumexp_of_infinite_rows_and_checks_of_both_infinities():
    # hand-computed: a row of -inf gives -inf, a row holding +inf gives +inf (not the NaN of
    # inf - inf); isinf finds -inf too (upstream's own dump of F.isinf compares with +inf only)
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf] * 3, [np.inf, 2.0, -np.inf], [1.0, np.nan, 0]],
                 "float32")
    fn = lambda x: (F.logsumexp(x, 1), F.isinf(x), F.isnan(x))  # noqa: E731
    data = _dumped(fn, x).getvalue()
    got = [v.numpy() for v in load(io.BytesIO(data)).run({"arg_0": x}).values()]
    np.testing.assert_allclose(got[0].ravel(), [np.log(1 + np.e), -np.inf, np.inf, np.nan],
                               rtol=1e-6)
    np.testing.assert_array_equal(got[1], np.isinf(x))
    np.testing.assert_array_equal(got[2], np.isnan(x))


def test_a_range_over_a_size_the_data_decides_follows_the_data_when_read_back():
    # upstream's graph counts arange(n) with ceil, a float cast and MAX of sizes; reading the
    # file back keeps that expression (earlier: float() and max() of the traced sizes, a
    # ShapeGuardError once the data gave another count)
    def fn(x):
        t = F.cond_take(x > 0, x)[0]
        return t + F.arange(t.shape[0]) * 0.5, F.arange(1, t.shape[0] * 0.5, 0.5)

    rng = np.random.RandomState(0)
    prog = load(io.BytesIO(_dumped(fn, rng.randn(3, 4).astype("float32")).getvalue()))
    for k in range(4):  # (the last: no value taken, a count of 0)
        x = rng.randn(3, 4).astype("float32") if k < 3 else -np.ones((3, 4), "float32")
        got = [v.numpy() for v in prog.run({"arg_0": x}).values()]
        want = [v.numpy() for v in fn(mge.tensor(x))]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.reshape(w.shape), w)


def test_nms_without_max_output_warns_that_the_file_keeps_the_traced_count():
    # upstream's NMSKeep takes a fixed max_output; this fork's nms without one keeps up to
    # the number of boxes, which follows the input
    x = np.random.RandomState(1).rand(3, 5).astype("float32")

    def fn(x, limit=None):
        return F.vision.nms(F.concat([x[:, :2], x[:, :2] + 1], 1), x[:, 2], 0.5,
                            max_output=limit)

    with pytest.warns(UserWarning, match=r"nms without max_output.*at most 3.*give nms a "
                                         r"max_output"):
        _dumped(fn, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dumped(lambda x: fn(x, 4), x)
def test_recurrent_layers_upstream_has_no_operator_for_are_refused_by_name():
    # (M.LSTM / M.RNN and the cells are written: written.py's "recurrent", run by upstream)
    from megengine.functional.rnn import rnn_layer

    rng = np.random.RandomState(0)
    seq = rng.randn(5, 2, 3).astype("float32")
    w_ih, w_hh = rng.randn(16, 3).astype("float32"), rng.randn(16, 4).astype("float32")
    h, b = np.zeros((2, 4), "float32"), np.zeros(16, "float32")
    # one direction of one layer over a sequence (M.LSTM in training with dropout between
    # layers runs these): upstream's LSTMForward has no reverse-only direction
    with pytest.raises(DumpError, match=r"a recurrent layer over a whole sequence .*eval mode"):
        _dumped(lambda x: rnn_layer("lstm", x, mge.tensor(h), mge.tensor(h), mge.tensor(w_ih),
                                    mge.tensor(w_hh), mge.tensor(b), mge.tensor(b))[0], seq)
    layer = M.LSTM(3, 4)
    layer.eval()
    with pytest.raises(DumpError, match=r"'RecurrentStack'.*a recurrent network of float16"):
        _dumped(lambda x: layer(x)[0], seq.astype("float16"))
    cell = M.RNNCell(3, 4)
    with pytest.raises(DumpError, match=r"'RecurrentLayer'.*a recurrent cell of float16"):
        _dumped(lambda x: cell(x), seq[0].astype("float16"))


def test_recurrent_weights_are_one_flattened_weight_constant_or_computed():
    # upstream 1.13 ran these files too (outputs equal to the fork's, <= 1.2e-7): here the
    # fork's reader against the fork's eager values, and the constants the file holds
    from megengine.functional.rnn import rnn_stack
    from megengine.jit.upstream_mge import _read_v2

    rng = np.random.RandomState(4)
    m = M.LSTM(3, 4)
    m.eval()
    x, w = rng.randn(5, 2, 3).astype("float32"), rng.randn(4, 3).astype("float32")
    w_hh = mge.tensor(rng.randn(4, 4).astype("float32"))

    def shared(x):  # a module called twice, one of its weights read elsewhere too
        y1, (h1, _) = m(x)
        return y1, m(x * 2)[0], F.matmul(x[0], m.cells[0][0].weight_ih.transpose(1, 0)), h1

    def computed(x, w):  # a weight the program computes: flattened in the file
        b = F.ones((4,))
        return rnn_stack("tanh", x, None, [w * 2, w_hh, b, b + w.sum()], 1, False)

    for fn, xs in ((shared, (x,)), (computed, (x, w))):
        names = ["x", "w"][:len(xs)]
        want = [v.numpy() for v in fn(*map(mge.tensor, xs))]
        data = _dumped(fn, *xs, arg_names=names).getvalue()
        got = list(load(io.BytesIO(data)).run(dict(zip(names, xs))).values())
        for g, v in zip(got, want):
            np.testing.assert_allclose(g.numpy(), v, rtol=1e-5, atol=1e-6)
        ops, *_ = _read_v2(data)
        consts = [tuple(t.scalars(1, "I")) for op in ops if op.type == "ImmutableTensor"
                  for t in op.tensors]
        kinds = [op.type for op in ops if op.type.endswith("Forward")]
        if fn is shared:  # (each call's weight one constant, as upstream's; weight_ih kept)
            assert kinds == ["LSTMForward"] * 2
            assert consts.count((16, 9)) == 2 and consts.count((16, 3)) == 1
            assert (16, 4) not in consts and (16,) not in consts
        else:
            assert kinds == ["RNNForward"]


def test_batch_norm_refuses_other_dtypes_by_name():
    x = np.random.RandomState(0).randn(2, 4, 3, 3).astype("float16")
    stats = np.ones((1, 4, 1, 1), "float16")
    with pytest.raises(DumpError, match=r"a batch norm of float16 values"):
        _dumped(lambda x, m: F.nn.batch_norm(x, m, m, training=False), x, stats)


def test_convolutions_of_every_rank_read_back_to_the_forks_values():
    # (upstream 1.13 ran them: tests/data/upstream_mge/written.py's "layers"); here the
    # fork's reader, against the fork's eager values, for what "layers" does not hold
    rng = np.random.RandomState(3)
    x2, x3 = rng.randn(1, 2, 4, 5).astype("float32"), rng.randn(1, 4, 3, 3, 3).astype("float32")
    w2, w3 = rng.randn(2, 3, 3, 3).astype("float32"), rng.randn(2, 2, 3, 2, 2, 2).astype("float32")
    cases = [(lambda x: F.conv_transpose2d(x, mge.tensor(w2), stride=2, padding=1,
                                           output_padding=1), x2),
             (lambda x: F.conv_transpose3d(x, mge.tensor(w3), groups=2), x3)]
    for fn, x in cases:
        want = fn(mge.tensor(x)).numpy()
        got = list(load(io.BytesIO(_dumped(fn, x, arg_names=["x"]).getvalue())).run(
            {"x": x}).values())
        np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-5)


def _upstream_file(kind, params, n_out):
    """An upstream file of one recurrent operator ``kind`` of ``params`` over an input x of
    (5, 2, 3), a state of (1, 2, 4) and a weight of (gates * 4, 9) (written with the writer's
    parts, as upstream's dump lays them out)."""
    from megengine.jit.upstream_mge_write import _Graph, _operator, _tensor

    g = _Graph()
    x = g.var("x", (5, 2, 3))
    g.ops.append(_operator("Host2DeviceCopy", 2, (63, {}), [], [x], tensors=[
        _tensor((5, 2, 3), np.float32, None, "x", name="x")]))
    rows = 16 if kind == "LSTMForward" else 4
    h = g.const(np.zeros((1, 2, 4), np.float32), None, "h")
    w = g.const(np.ones((rows, 9), np.float32), None, "w")
    states = [h, h] if kind == "LSTMForward" else [h]
    out = g.op(kind, 1, 89 if kind == "LSTMForward" else 88, params, [x] + states + [w],
               [(f"o{k}", (1,)) for k in range(n_out)])
    model = {0: ("I", 101300), 1: ("I", 2), 2: ("tables", g.ops), 3: ("tables", g.middle),
             4: ("tables", [{0: ("I", out[0]), 1: ("I", out[0])}]), 5: ("tables", [])}
    return _Encoder().finish(model, b"mgv2")


def test_reader_refuses_recurrent_operators_this_fork_does_not_compute():
    from megengine.jit.upstream_mge import UpstreamFormatError

    base = {3: ("I", 4), 6: ("I", 1)}
    x = {"x": np.zeros((5, 2, 3), "float32")}
    got = load(io.BytesIO(_upstream_file("RNNForward", {**base, 5: ("I", 2)}, 3))).run(x)
    assert list(got.values())[0].shape == (5, 2, 4)  # (tanh of the ones weight: read)
    cases = [("RNNForward", {**base, 5: ("I", 0)}, 3, r"RNN nonlinearity 0"),  # (IDENTITY)
             ("LSTMForward", {**base, 4: ("I", 2)}, 4, r"an LSTM of projection size 2"),
             ("RNNForward", {**base, 0: ("I", 2), 5: ("I", 1)}, 3,
              r"a flattened weight of 36 values for 2 layers"),
             ("LSTMForward", {**base, 0: ("I", 2), 5: ("f", 0.5), 6: ("I", 0)}, 4,
              r"dropout between layers in training mode")]
    for kind, params, n, match in cases:
        with pytest.raises(UpstreamFormatError, match=match):
            load(io.BytesIO(_upstream_file(kind, params, n))).run(x)


def test_interpolation_sizes_computed_from_shapes_follow_the_input():
    # an FPN's upsampling to its lateral's size, and a scale_factor's floor(h * 2): computed
    # in the file (upstream 1.13 ran such a file traced at 8x8 at 16x12 to these values too)
    def fpn(x):
        top = F.max_pool2d(x, 2) * 2
        return (x + F.nn.interpolate(top, size=x.shape[2:]),
                F.nn.interpolate(top, scale_factor=2.0, mode="bilinear"),
                F.nn.interpolate(x[:, 0], size=x.shape[2], mode="linear"),
                # align_corners: its scaling matrix computed in the file too (an output of 1
                # scales by 0), as upstream's interpolate builds it
                F.nn.interpolate(top, size=x.shape[2:], align_corners=True),
                F.nn.interpolate(top, size=(1, x.shape[3]), align_corners=True),
                F.nn.interpolate(x[:, 0], size=x.shape[3] * 2 - 1, mode="linear",
                                 align_corners=True))

    rng = np.random.RandomState(2)
    prog = load(io.BytesIO(_dumped(fpn, rng.rand(2, 3, 8, 8).astype("float32")).getvalue()))
    x = rng.rand(3, 3, 16, 12).astype("float32")
    got = [v.numpy() for v in prog.run({"arg_0": x}).values()]
    for g, w in zip(got, fpn(mge.tensor(x))):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("host_default_device")  # (quantized tensors live on CPU devices)
def test_quantized_transposed_convolution_with_a_bias_to_qint32_is_refused():
    # (written_qtranspose: a bias to an 8-bit output, which upstream computed to the last bit;
    # the qint32 accumulator plus a bias has no operator of upstream's that sums integers)
    from megengine.core.tensor import dtype

    x = np.random.RandomState(0).randn(1, 2, 3, 3).astype("float32")
    w = mge.tensor(np.ones((2, 3, 2, 2), "float32")).astype(dtype.qint8(0.5))
    b = mge.tensor(np.ones((1, 3, 1, 1), "int32")).astype(dtype.qint32(0.05))
    with pytest.raises(DumpError, match=r"transposed convolution .*1 bias inputs to int32.*"
                                        r"with a bias to an 8-bit quantized output"):
        _dumped(lambda x: F.quantized.conv_transpose2d(x.astype(dtype.qint8(0.1)), w, b), x)
