"""Tests for megengine/jit/dump_testcases.py: ``trace.dump(input_data=...)`` in each of upstream's
forms stores inputs with the outputs the dumped program computes from them, which
`megengine.utils.comp_graph_tools.load_and_inference` reruns and checks."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.jit import trace
from megengine.jit.dump import DumpError
from megengine.utils.comp_graph_tools import GraphInference

from jit_nets import exp_trace


def test_dump_stores_test_cases_that_load_and_inference_checks(tmp_path):
    from megengine.utils.comp_graph_tools import load_and_inference
    f = exp_trace()
    file = io.BytesIO()
    f.dump(file, arg_names=["x"], input_data=["#rand(0, 1)", "x:#rand(-1, 1, 4, ...)"])
    file.seek(0)
    cases = GraphInference(file).testcases
    assert [c[0]["x"].shape for c in cases] == [(2, 3), (4, 3)]
    for inputs, outputs in cases:  # numpy is the oracle of the stored outputs
        x = inputs["x"]
        assert x.dtype == np.float32 and 0 <= x.min() + 1 and x.max() <= 1
        np.testing.assert_allclose(outputs["MUL"], np.exp(x) * 2, rtol=1e-6)
    file.seek(0)
    results = load_and_inference(file)
    np.testing.assert_allclose(results[1]["MUL"], np.exp(cases[1][0]["x"]) * 2, rtol=1e-6)
    # a file whose stored outputs are wrong fails the check, unless dumped with no_assert
    path = tmp_path / "x.npy"
    np.save(path, np.full((2, 3), 0.5, "float32"))
    lines = tmp_path / "cases.txt"
    lines.write_text(f"{path}\narg_0:{path}\n")
    file = io.BytesIO()
    f.dump(file, input_data=[f"@{lines}", {"arg_0": np.ones((2, 3))}, np.zeros((2, 3))],
           input_transform="data * 2", no_assert=True, maxerr=0.5)
    file.seek(0)
    g = GraphInference(file)
    assert [float(c[0]["arg_0"].max()) for c in g.testcases] == [1.0, 1.0, 2.0, 0.0]
    assert g._program.testcase_options == {"maxerr": 0.5, "no_assert": True, "silent": False}
    np.testing.assert_allclose(g.testcases[2][1]["MUL"], np.exp(np.full((2, 3), 2.0)) * 2,
                               rtol=1e-6)


def test_stored_test_cases_are_checked_on_load(monkeypatch):
    from megengine.jit import dump as dump_mod
    from megengine.utils.comp_graph_tools import load_and_inference
    f = exp_trace()
    file = io.BytesIO()
    real = dump_mod.make_testcases

    def wrong(*args, **kwargs):  # a file whose stored outputs disagree with its program
        return [(ins, {k: v + 1 for k, v in outs.items()}) for ins, outs in real(*args, **kwargs)]

    monkeypatch.setattr(dump_mod, "make_testcases", wrong)
    f.dump(file, input_data="#rand(0, 1)")
    file.seek(0)
    with pytest.raises(AssertionError, match="differs from the stored one"):
        load_and_inference(file)


def test_equal_infs_and_nans_in_stored_outputs_are_no_difference():
    from megengine.utils.comp_graph_tools import load_and_inference

    f = trace(lambda x: (F.log(x) * 2, F.log(x).min()), symbolic=True, capture_as_const=True)
    x = np.array([0.0, -1.0, 1.0, 2.0], "float32")  # log: -inf, nan, 0, log 2; a 0-d output
    with np.errstate(divide="ignore", invalid="ignore"):
        f(mge.tensor(x))
        file = io.BytesIO()
        f.dump(file, arg_names=["x"], input_data=[x])
        file.seek(0)
        (out,) = load_and_inference(file)  # inf - inf is nan, which once failed the check
        values, low = out.values()
        np.testing.assert_array_equal(values, np.log(x) * 2)
        np.testing.assert_array_equal(low, np.log(x).min())


def test_test_case_errors_are_clear():
    f = exp_trace()
    with pytest.raises(DumpError, match="no input named 'y'"):
        f.dump(io.BytesIO(), input_data="y:#rand(0, 1)")
    with pytest.raises(DumpError, match="resize"):
        f.dump(io.BytesIO(), input_data="#rand(0, 1)", resize_input=True)
    with pytest.raises(DumpError, match="cannot run through the traced ops"):
        g = trace(lambda x: x.reshape(6), symbolic=True, capture_as_const=True)
        g(mge.tensor(np.zeros((2, 3), "float32")))
        g.dump(io.BytesIO(), input_data="#rand(0, 1, 5)")
    # upstream 1.13 measured: without input_data these options are accepted (and ignored)
    with pytest.warns(UserWarning, match="input_data=..., which was not given"):
        f.dump(io.BytesIO(), repeat=2, no_assert=True)
    with pytest.raises(DumpError, match="gives 2 arrays"):
        f.dump(io.BytesIO(), input_data=[[np.zeros((2, 3)), np.zeros((2, 3))]])


def test_one_random_spec_is_the_data_of_every_input():
    """Upstream's dump_with_testcase: a lone '#rand(...)' with several inputs feeds each one."""
    @trace(symbolic=True, capture_as_const=True)
    def f(a, b):
        return a * 2 + b

    f(mge.tensor(np.zeros((2, 3), "float32")), mge.tensor(np.zeros((1, 3), "float32")))
    file = io.BytesIO()
    f.dump(file, arg_names=["a", "b"], input_data=["#rand(0, 1)"])
    file.seek(0)
    (inputs, outputs), = GraphInference(file).testcases
    assert {k: v.shape for k, v in inputs.items()} == {"a": (2, 3), "b": (1, 3)}
    assert not np.array_equal(inputs["a"][:1], inputs["b"])  # each input its own draw
    np.testing.assert_allclose(list(outputs.values())[0], inputs["a"] * 2 + inputs["b"],
                               rtol=1e-6)


def test_test_cases_of_another_rank_run_a_program_that_reads_no_shape():
    """Upstream's test_dump_with_testcase: traced at a 0-d input, a '#rand(0, 255, 1)' case
    (shape (1,)) runs the recorded ops. A program whose ops were built from sizes refuses a
    case of another rank (a rank is no expression), and so does a run at another rank."""
    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.exp(x)

    f(mge.tensor(1.0))
    file = io.BytesIO()
    f.dump(file, input_data=["#rand(0, 3, 1)"])
    file.seek(0)
    (inputs, outputs), = GraphInference(file).testcases
    assert inputs["arg_0"].shape == (1,)
    np.testing.assert_allclose(list(outputs.values())[0], np.exp(inputs["arg_0"]), rtol=1e-6)
    file.seek(0)
    with pytest.raises(ValueError, match="its number of dims may not"):
        GraphInference(file).run(np.ones((1,), "float32"))

    @trace(symbolic=True, capture_as_const=True)
    def g(x):
        return x.reshape(x.shape[0], -1) * 2

    g(mge.tensor(np.ones((2, 3), "float32")))
    with pytest.raises(DumpError, match="its number of dims may not"):
        g.dump(io.BytesIO(), input_data=["#rand(0, 1, 2, 3, 4)"])
