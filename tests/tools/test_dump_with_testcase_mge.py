"""megengine.tools.dump_with_testcase_mge: test cases added to a dumped file, checked by
load_and_inference and load_network_and_run; the stored outputs are the eager model's."""
import os

import numpy as np
import pytest

import megengine as mge
from megengine.tools import dump_with_testcase_mge as tool
from megengine.tools import load_network_and_run as lnr
from megengine.utils.comp_graph_tools import GraphInference, load_and_inference


def test_cases_hold_the_eager_models_outputs(tiny, tmp_path):
    net, plain, _ = tiny
    x = np.random.RandomState(5).uniform(-1, 1, (1, 2, 4, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "tc.mge"
    tool.main([plain, "-o", str(out), "-d", f"data:{tmp_path / 'x.npy'}", "-d", "#rand(0,1)"])
    cases = GraphInference(str(out)).testcases
    assert len(cases) == 2
    np.testing.assert_array_equal(cases[0][0]["data"], x)
    np.testing.assert_allclose(cases[0][1]["logits"], net(mge.tensor(x)).numpy(), rtol=1e-5,
                               atol=1e-6)
    r = cases[1][0]["data"]
    assert r.shape == (1, 2, 4, 4) and 0 <= r.min() and r.max() < 1
    np.testing.assert_allclose(cases[1][1]["logits"], net(mge.tensor(r)).numpy(), rtol=1e-5,
                               atol=1e-6)
    results = load_and_inference(str(out))  # checks each stored output, raises if one differs
    np.testing.assert_array_equal(results[1]["logits"], cases[1][1]["logits"])
    # the program itself is the original's
    a, b = GraphInference(plain).run(x), GraphInference(str(out)).run(x)
    np.testing.assert_array_equal(a["logits"], b["logits"])


def test_float16_option_writes_the_float16_program_and_its_cases(two_inputs, tmp_path):
    rng = np.random.RandomState(1)
    a, b = (rng.uniform(-3, 3, (2, 3)).astype("float32") for _ in range(2))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = tmp_path / "f16.mge"
    tool.main([two_inputs, "-o", str(out), "-d", f"a:{tmp_path / 'a.npy'};b:{tmp_path / 'b.npy'}",
               "--optimize-for-inference", "--enable-ioc16"])
    h = np.float16
    want_s = (a.astype(h) * h(2) + b.astype(h)).astype("float32")  # numpy's float16 arithmetic
    (ins, outs), = GraphInference(str(out)).testcases
    np.testing.assert_array_equal(outs["s"], want_s)
    assert not np.array_equal(outs["s"], a * 2 + b)
    results = load_and_inference(str(out))  # the file's program reproduces its cases
    np.testing.assert_array_equal(results[0]["s"], want_s)


def test_list_file_repeat_transform_and_replacing_cases(two_inputs, tmp_path, capsys):
    a = np.arange(6, dtype="float32").reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "list.txt").write_text(f"a:{tmp_path / 'a.npy'};b:#rand(0,1,4,3)\n\n"
                                       f"b:{tmp_path / 'a.npy'};a:{tmp_path / 'a.npy'}\n")
    out = tmp_path / "tc.mge"
    tool.main([two_inputs, "-o", str(out), "-d", f"@{tmp_path / 'list.txt'}", "--repeat", "2",
               "--input-transform", "data * 10", "--maxerr", "0.5", "--no-assert"])
    g = GraphInference(str(out))
    (ins0, outs0), (ins1, outs1) = g.testcases
    np.testing.assert_array_equal(ins0["a"], np.repeat(a, 2, axis=0) * 10)
    assert ins0["b"].shape == (4, 3) and ins0["b"].max() < 10  # random: not repeated
    np.testing.assert_array_equal(outs1["s"], np.repeat(a, 2, axis=0) * 30)  # 2a + b, a = b
    opts = g._program.testcase_options
    assert opts == {"maxerr": 0.5, "no_assert": True, "silent": False}
    assert "2 test case(s) written" in capsys.readouterr().out
    # cases given again replace the old ones, whose arrays leave the file; one random spec
    # alone is every input's data, as upstream
    again = tmp_path / "again.mge"
    tool.main([str(out), "-o", str(again), "-d", "#rand(0,1,3,...)"])
    ((ins, _),) = GraphInference(str(again)).testcases
    assert ins["a"].shape == ins["b"].shape == (3, 3)
    assert not np.array_equal(ins["a"], ins["b"])
    assert os.path.getsize(again) < os.path.getsize(out)
    lnr.main([str(again)])
    assert "test case 0: outputs match" in capsys.readouterr().out


def test_errors(tiny, two_inputs, tmp_path, capsys):
    _, plain, _ = tiny
    out = str(tmp_path / "o.mge")
    np.save(tmp_path / "a.npy", np.zeros((2, 3), "float32"))
    for argv, message in (
            ([plain, "-o", out], "the following arguments are required: -d/--data"),
            ([plain, "-o", out, "-d", "image:#rand(0,1)"], "no input named 'image'"),
            ([two_inputs, "-o", out, "-d", f"{tmp_path / 'a.npy'}"], "names no input"),
            ([plain, "-o", out, "-d", "#rand(0,1)", "--resize-input"],
             "--resize-input is not supported"),
            ([plain, "-o", out, "-d", "#rand(0,1)", "--enable-nchw4"],
             "--enable-nchw4 needs --optimize-for-inference"),  # (upstream's tool asserts so)
            ([plain, "-o", out, "-d", "#rand(0,1)", "--enable-ioc16"],
             "--enable-ioc16 needs --optimize-for-inference"),
            ([str(tmp_path / "none.mge"), "-o", out, "-d", "#rand(0,1)"], "no such model file"),
            ([plain, "-o", out, "-d", f"data:{tmp_path / 'none.npy'}"], "No such file")):
        with pytest.raises(SystemExit) as e:
            tool.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv
    assert not os.path.exists(out)


def test_layout_options_are_accepted_with_the_optimizer_and_a_note(two_inputs, tmp_path, capsys):
    out = tmp_path / "nchw44.mge"
    tool.main([two_inputs, "-o", str(out), "-d", "#rand(0,1)", "--optimize-for-inference",
               "--enable-nchw44", "--enable-fuse-conv-bias-nonlinearity"])
    said = capsys.readouterr().out
    assert "--enable-nchw44 has no effect here: a memory layout of upstream's ARM" in said
    (ins, outs), = GraphInference(str(out)).testcases  # (the program as it was: float32)
    np.testing.assert_array_equal(outs["s"], ins["a"] * 2 + ins["b"])
