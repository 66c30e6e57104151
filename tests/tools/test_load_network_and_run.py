"""megengine.tools.load_network_and_run: outputs against the eager model, the input forms, the
stored test cases, --profile, the float16 options, refused C++-runtime options and bad input."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.jit.dump import read_file, write_file
from megengine.jit.dump_format import _Writer
from megengine.tools import load_network_and_run as lnr
from megengine.utils.comp_graph_tools import load_and_inference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def eager(net, x):
    return net(mge.tensor(x)).numpy()


def test_npy_input_gives_the_eager_models_outputs(tiny, tmp_path, capsys):
    net, plain, _ = tiny
    x = np.random.RandomState(0).uniform(-1, 1, (1, 2, 4, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    for spec in (f"data:{tmp_path / 'x.npy'}", str(tmp_path / "x.npy")):
        out = lnr.main([plain, "--input", spec, "--iter", "2", "--warm-up", "1"])
        np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)
    text = capsys.readouterr().out
    assert text.count("iter 0: duration=") == 2 and "iter 1: duration=" in text
    assert "avg_speed=" in text and "sample/s" in text  # an input named "data": samples/s
    assert "logits" in text and "(1, 5)" in text  # the output summary


def test_random_inputs_are_upstreams_seeded_uniform_data(tiny):
    net, plain, _ = tiny
    out = lnr.main([plain, "--seed", "7"])
    x = np.random.RandomState(7).uniform(size=(1, 2, 4, 4)).astype("float32")
    np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)


def test_pickled_dict_and_batchsize_repeat(two_inputs, tmp_path):
    a = np.arange(3, dtype="float32").reshape(1, 3)
    b = np.full((1, 3), 10, "float32")
    mge.save({"a": a, "b": b}, str(tmp_path / "ab.pkl"))
    out = lnr.main([two_inputs, "--load-input-data", str(tmp_path / "ab.pkl"),
                    "--batchsize", "4"])
    np.testing.assert_array_equal(out["s"], np.repeat(a * 2 + b, 4, axis=0))
    # the same dict through --input, unnamed
    with open(tmp_path / "ab2.pkl", "wb") as f:
        pickle.dump({"a": a, "b": b}, f)
    out = lnr.main([two_inputs, "--input", str(tmp_path / "ab2.pkl")])
    np.testing.assert_array_equal(out["d"], a - b)


def test_rand_spec_rng_and_input_desc(two_inputs, tmp_path):
    a = np.random.RandomState(1).uniform(size=(2, 3)).astype("float32")
    np.save(tmp_path / "a.npy", a)
    # b from --rng: randint(0, 1) is all zeros, so s = 2a and d = a
    out = lnr.main([two_inputs, "--input", f"a:{tmp_path / 'a.npy'}",
                    "--rng", "b:randint(low=0,high=1,size={})"])
    np.testing.assert_array_equal(out["s"], 2 * a)
    np.testing.assert_array_equal(out["d"], a)
    # #rand(min, max, shape...) with '...' keeping the rest of the (--input-desc) shape
    out = lnr.main([two_inputs, "--input-desc", "a:5,3;b:5,3", "--input",
                    "a:#rand(2,3,5,...);b:#rand(-1,0)"])
    assert out["s"].shape == (5, 3)
    d_min = out["d"].min()  # a in [2, 3), b in [-1, 0): a - b in (2, 4)
    assert 2 < d_min and out["d"].max() < 4


def test_stored_test_cases_are_run_and_checked(tiny, capsys):
    _, _, cases = tiny
    out = lnr.main([cases, "--iter", "2"])
    want = load_and_inference(cases)  # the oracle: comp_graph_tools' own check
    np.testing.assert_array_equal(out["logits"], want[-1]["logits"])
    text = capsys.readouterr().out
    assert "test case 0: outputs match" in text and "test case 1: outputs match" in text


def test_a_wrong_stored_output_is_reported(tiny, tmp_path, capsys):
    _, _, cases = tiny
    graph, arrays = read_file(cases)
    w = _Writer()
    w.arrays = [arrays[i] for i in range(len(arrays))]
    case = graph["testcases"]["cases"][1]
    w.arrays[case["outputs"]["logits"]] = w.arrays[case["outputs"]["logits"]] + 0.5
    bad = tmp_path / "bad.mge"
    write_file(graph, w, str(bad))
    with pytest.raises(SystemExit) as e:
        lnr.main([str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "test case 1: output 'logits' differs from the stored one by 0.5" in err
    lnr.main([str(bad), "--no-check-testcases"])  # runs without comparing


def test_output_name_selects_an_inner_var(tiny):
    net, plain, _ = tiny
    x = np.random.RandomState(2).uniform(size=(1, 2, 4, 4)).astype("float32")
    out = lnr.main([plain, "--seed", "2", "--output-name", "RELU", "logits"])
    assert list(out) == ["RELU", "logits"]
    want = F.relu(net.bn(net.conv(mge.tensor(x)))).numpy()
    np.testing.assert_allclose(out["RELU"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)


def test_profile_holds_each_timed_run(tiny, tmp_path):
    _, plain, _ = tiny
    path = tmp_path / "prof.json"
    lnr.main([plain, "--iter", "3", "--warm-up", "2", "--profile", str(path)])
    events = json.loads(path.read_text())["traceEvents"]
    ops = [e["name"] for e in events if e.get("ph") == "X"]
    assert ops.count("Convolution") == 3  # the timed runs only, not the warm-up
    assert ops.count("BatchNorm") == 3 and ops.count("Pool2d") == 3


def float16_oracle(a, b):
    """(a * 2 + b, a - b) of two_inputs' program in numpy's float16 arithmetic, back in float32."""
    h = np.float16
    return ((a.astype(h) * h(2) + b.astype(h)).astype("float32"),
            (a.astype(h) - b.astype(h)).astype("float32"))


@pytest.mark.parametrize("flag", ["--enable-ioc16", "--enable-io16xc32"])
def test_float16_options_run_the_program_in_float16(two_inputs, tmp_path, flag, caplog):
    rng = np.random.RandomState(0)
    a, b = (rng.uniform(-3, 3, (2, 3)).astype("float32") for _ in range(2))
    mge.save({"a": a, "b": b}, str(tmp_path / "ab.pkl"))
    # without --optimize-for-inference upstream's tool ignores them (its run_model applies the
    # --enable-* options only with it): the float32 program, and a warning says so
    out = lnr.main([two_inputs, "--load-input-data", str(tmp_path / "ab.pkl"), flag])
    np.testing.assert_array_equal(out["s"], a * 2 + b)
    assert f"{flag} has no effect without --optimize-for-inference" in caplog.text
    flag = ["--optimize-for-inference", flag]
    out = lnr.main([two_inputs, "--load-input-data", str(tmp_path / "ab.pkl"), *flag])
    want_s, want_d = float16_oracle(a, b)
    assert out["s"].dtype == np.float32 and out["d"].dtype == np.float32  # outputs as dumped
    np.testing.assert_array_equal(out["s"], want_s)
    np.testing.assert_array_equal(out["d"], want_d)
    assert not np.array_equal(out["s"], a * 2 + b)  # not the float32 program
    # other outputs by name are converted too
    out = lnr.main([two_inputs, "--load-input-data", str(tmp_path / "ab.pkl"), *flag,
                    "--output-name", "d"])
    np.testing.assert_array_equal(out["d"], want_d)


def test_float16_options_exclude_each_other(two_inputs, capsys):
    with pytest.raises(SystemExit) as e:
        lnr.main([two_inputs, "--enable-ioc16", "--enable-io16xc32"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_layout_and_fusion_options_are_accepted_with_a_note(tiny, caplog):
    # upstream's `load_network_and_run m.mge --optimize-for-inference --enable-nchw44
    # --enable-fuse-conv-bias-nonlinearity` converts the graph for its ARM kernels, same values
    _, plain, _ = tiny
    want = lnr.main([plain])
    got = lnr.main([plain, "--optimize-for-inference", "--enable-nchw44",
                    "--enable-fuse-conv-bias-nonlinearity"])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert "--enable-nchw44 has no effect here: a memory layout of upstream's ARM" in caplog.text
    caplog.clear()
    lnr.main([plain, "--enable-nchw4"])
    assert "--enable-nchw4 has no effect without --optimize-for-inference" in caplog.text


@pytest.mark.parametrize("flag", [["--embed-input"], ["--dump-cpp-model", "x"],
                                  ["--get-static-mem-info", "x"]])
def test_cpp_runtime_options_are_refused(tiny, capsys, flag):
    _, plain, _ = tiny
    with pytest.raises(SystemExit) as e:
        lnr.main([plain] + flag)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} is not supported by this fork" in err


def test_kernel_choice_options_are_accepted_with_a_note(tiny, tmp_path):
    # upstream 1.13 measured: a deployment check's `load_network_and_run model.mge --fast-run
    # --iter 60 --profile mma.json --weight-preprocess` runs and writes the profile
    net, plain, _ = tiny
    log = tmp_path / "run.log"
    flags = ["--fast-run", "--reproducible", "--weight-preprocess"]
    out = lnr.main([plain, "--iter", "2", "--profile", str(tmp_path / "p.json"),
                    "--log", str(log)] + flags)
    x = np.random.RandomState(0).uniform(size=(1, 2, 4, 4)).astype("float32")
    np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "p.json").exists()
    text = log.read_text()
    for flag in flags:
        assert f"{flag} has no effect here" in text


def test_bad_input_gives_clear_errors(tiny, two_inputs, tmp_path, capsys):
    _, plain, _ = tiny
    (tmp_path / "up.mge").write_bytes(b"mgb0001" + bytes(range(200)))  # not our format
    np.save(tmp_path / "a.npy", np.zeros((2, 3), "float32"))
    cases = [
        ([str(tmp_path / "missing.mge")], "no such model file"),
        ([str(tmp_path / "up.mge")], "nor an upstream MegEngine .mge file"),
        ([plain, "--input", "image:#rand(0,1)"], "no input named 'image'; its inputs are ['data']"),
        ([two_inputs, "--input", str(tmp_path / "a.npy")], "names no input"),
        ([two_inputs, "--input", "a:#rand(1)"], "bad random spec"),
        ([plain, "--input", f"data:{tmp_path / 'nope.npy'}"], "no such file"),
        ([plain, "--output-name", "nothing"], "no outputs or vars named ['nothing']"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            lnr.main(argv)
        assert e.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_other_batch_sizes_run_where_the_program_allows(tiny, tmp_path, capsys):
    """A program dumped with symbolic shapes (the default) runs at another --batchsize, with the
    eager model's outputs; one traced with fixed shapes says to trace and dump the new shape."""
    from megengine.jit import trace

    net, plain, _ = tiny
    x = np.random.RandomState(5).uniform(-1, 1, (3, 2, 4, 4)).astype("float32")
    np.save(tmp_path / "x3.npy", x)
    out = lnr.main([plain, "--input", f"data:{tmp_path / 'x3.npy'}"])
    np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)
    assert lnr.main([plain, "--batchsize", "4"])["logits"].shape == (4, 5)

    @trace(symbolic=True, capture_as_const=True, symbolic_shape=False)
    def fixed(data):
        return net(data)

    fixed(mge.tensor(np.zeros((1, 2, 4, 4), "float32")))
    fixed.dump(str(tmp_path / "fixed.mge"), arg_names=["data"], output_names=["logits"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        lnr.main([str(tmp_path / "fixed.mge"), "--batchsize", "2"])
    assert e.value.code == 2
    assert "traced with the input shapes" in capsys.readouterr().err


def test_module_entry_point(tiny):
    _, plain, _ = tiny
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "megengine.tools.load_network_and_run", plain,
                          "--iter", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "iter 1: duration=" in run.stdout and "logits" in run.stdout
    run = subprocess.run([sys.executable, "-m", "megengine.tools.load_network_and_run", plain,
                          "--embed-input"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "--embed-input is not supported" in run.stderr


def test_device_option(tiny, capsys):
    import megengine.device as device

    net, plain, _ = tiny
    before = device.get_default_device()
    x = np.random.RandomState(0).uniform(size=(1, 2, 4, 4)).astype("float32")
    out = lnr.main([plain, "--device", "cpu0"])
    np.testing.assert_allclose(out["logits"], eager(net, x), rtol=1e-5, atol=1e-6)
    assert device.get_default_device() == before  # restored after the run
    bad = [("tpu3", "unknown device 'tpu3'")]
    if not device.is_cuda_available():
        bad.append(("gpu0", "needs CUDA"))
    for name, message in bad:
        with pytest.raises(SystemExit) as e:
            lnr.main([plain, "--device", name])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--device {name!r}" in err and message in err


def test_unreadable_input_files(tiny, tmp_path, capsys):
    _, plain, _ = tiny
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04not a pickle at all")
    (tmp_path / "t.txt").write_text("1 2 3")
    mge.save([1, 2], str(tmp_path / "list.pkl"))
    for argv, message in (
            (["--input", f"data:{tmp_path / 'x.pkl'}"], "neither a .npy file nor a pickled"),
            (["--load-input-data", str(tmp_path / "t.txt")], "neither a .npy file nor a pickled"),
            (["--input", f"data:{tmp_path / 'list.pkl'}"], "should be a numpy array, got list")):
        with pytest.raises(SystemExit) as e:
            lnr.main([plain] + argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv
