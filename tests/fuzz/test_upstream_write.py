"""CI slice of tests.fuzz.upstream_write: random inference programs dumped in upstream's format
read back here to eager's values, at the traced input shape and at the batch one larger (the
upstream side runs offline, with ``--upstream``)."""
import subprocess

import numpy as np

import megengine as mge
from tests.fuzz import upstream_write


def test_written_programs_read_back_to_eager_values(tmp_path, capsys):
    stats, refused, wrong, batch = upstream_write.write(range(1000, 1012), str(tmp_path))
    assert wrong == [] and batch["wrong"] == []
    assert len(batch["right"]) >= 4  # (the others hold traced sizes, or raise: see below)
    assert stats.get("written", 0) >= 6  # (most of these programs have writers)
    assert len(list(tmp_path.glob("w*.mge"))) == stats["written"]
    assert upstream_write.main(["--seeds", "2", "--start", "1000"]) == 0
    out = capsys.readouterr().out
    assert "read back here to other values: none" in out
    assert "batch+1, read back here: " in out and "0 wrong: none" in out


def test_a_value_off_by_more_than_the_tolerance_is_a_finding():
    import numpy as np

    w = [np.array([1.0, 2.0])]
    assert upstream_write._close([np.array([1.0, 2.00001])], w)
    assert not upstream_write._close([np.array([1.0, 2.01])], w)
    big = [np.array([0.0, 100.0])]  # (to 1e-4 of the output's largest magnitude)
    assert upstream_write._close([np.array([0.005, 100.0])], big)
    assert not upstream_write._close([np.array([0.02, 100.0])], big)
    assert not upstream_write._close([np.array([1.0])], w)  # (a size of its own)
    assert not upstream_write._close([], w)


def test_only_an_exp_that_overflowed_eagerly_is_set_apart(tmp_path):
    import numpy as np

    # program 3518: log(exp(h) + 1) of h near 368, inf eagerly, upstream's exp 2.4e38 (mostly)
    np.savez(tmp_path / "w1.npz", want0=np.float32([np.nan, 1.0]), want1=np.int32(2))
    np.savez(tmp_path / "w2.npz", want0=np.float32([0.5, 1.0]))
    assert upstream_write._overflows("h = F.log(F.exp(h) + 1.0)", str(tmp_path), 1)
    assert not upstream_write._overflows("h = F.log(h + 1.0)", str(tmp_path), 1)
    assert not upstream_write._overflows("h = F.exp(h)", str(tmp_path), 2)


def test_a_count_of_a_data_decided_size_that_the_data_makes_zero_reads_back(tmp_path):
    # program 3795 (--dyn): upstream's graph counts arange(v.shape[0]) as MAX(CEIL(n), 0.0);
    # read back here, max(0.0, n) was an int where n was, so the count was rounded only where
    # the traced value was a float, and the data's n of 0 gave linspace a count of 0.0
    # (TypeError)
    stats, refused, wrong, _ = upstream_write.write([3795], str(tmp_path), dyn=True)
    assert stats == {"written": 1} and wrong == []


def test_the_traces_rewrites_of_what_overflowed_eagerly_are_not_findings(tmp_path):
    import numpy as np

    # program 4153: F.log(F.exp(h)) of h near 500 is h in the file (the trace's rewrite, as
    # upstream's), inf eagerly
    stats, refused, wrong, _ = upstream_write.write([4153], str(tmp_path))
    assert stats == {"written": 1} and wrong == []
    w = [np.float32([np.inf, 1.0])]
    assert upstream_write._close([np.float32([502.0, 1.0])], w, rewrites=True)
    assert not upstream_write._close([np.float32([502.0, 1.0])], w)
    assert not upstream_write._close([np.float32([502.0, 1.5])], w, rewrites=True)


def test_a_file_computing_the_traces_rewrite_that_a_later_step_amplifies_is_set_apart(
        tmp_path, monkeypatch):
    # program 22132: F.sign(F.log(1 + h * h)) of a tiny h is 0 eagerly (1 + h * h rounds to 1)
    # and 1 in the file, whose log1p is the trace's rewrite (upstream's own dump computes 1
    # too): the file gives the trace's values, not eager's
    stats, refused, wrong, _ = upstream_write.write([22132], str(tmp_path))
    assert stats == {"written": 1, "the trace's rewrites": 1} and wrong == []
    saved = np.load(tmp_path / "w22132.npz")
    assert not upstream_write._close([saved["traced0"]], [saved["want0"]])
    # a file that gives neither eager's nor the trace's values is still a finding
    from megengine.jit import dump

    real = dump.load

    def load(file, device=None):
        prog = real(file, device)
        run = prog.run
        prog.run = lambda feed: {k: mge.tensor(v.numpy() + 1) for k, v in run(feed).items()}
        return prog

    monkeypatch.setattr(dump, "load", load)
    stats, refused, wrong, _ = upstream_write.write([22132], str(tmp_path))
    assert stats == {"written": 1} and wrong == [22132]


def _off_at_other_batches(monkeypatch, how):
    """This fork's reader of written files, changed to compute other values (``how`` "values")
    or raise ("raise") at any batch but the traced 2."""
    from megengine.jit import dump

    real = dump.load

    def load(file, device=None):
        prog = real(file, device)
        run = prog.run

        def run_off(feed):
            out = run(feed)
            if feed["x"].shape[0] == 2:
                return out
            if how == "raise":
                raise RuntimeError("the batch changed")
            return {k: mge.tensor(v.numpy() + 1) for k, v in out.items()}

        prog.run = run_off
        return prog

    monkeypatch.setattr(dump, "load", load)


def test_a_file_that_gives_other_values_at_the_batch_one_larger_is_a_finding(
        tmp_path, monkeypatch, capsys):
    # program 1000 follows the batch (read back right at batch 3 as written)
    stats, _, wrong, batch = upstream_write.write([1000], str(tmp_path))
    assert wrong == [] and batch["right"] == [1000]
    _off_at_other_batches(monkeypatch, "values")
    stats, _, wrong, batch = upstream_write.write([1000], str(tmp_path))
    assert wrong == [] and batch["wrong"] == [1000] and batch["right"] == []
    assert upstream_write.main(["--seeds", "1", "--start", "1000", "--keep",
                                str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 wrong: [1000]" in out
    assert "program 1000: other values at batch+1 (read back here)" in out
    assert "def prog(x, m):" in out  # (the program, to reproduce it)


def test_a_file_that_raises_at_the_batch_one_larger_is_no_finding(tmp_path, monkeypatch,
                                                                    capsys):
    _off_at_other_batches(monkeypatch, "raise")
    stats, _, wrong, batch = upstream_write.write([1000], str(tmp_path))
    assert wrong == [] and batch["wrong"] == []
    assert batch["raised"] == {1000: "RuntimeError: the batch changed"}
    assert upstream_write.main(["--seeds", "1", "--start", "1000", "--keep",
                                str(tmp_path)]) == 0
    assert "0 right, 1 raised" in capsys.readouterr().out


def test_sizes_the_traced_code_fixed_skip_the_second_shape(tmp_path):
    # program 1005 loops over the batch (range(h.shape[0]), warned of by the dump); program
    # 5016 (--dyn) branches on a size that data decides (if g.shape[1] > 1), which the file
    # decides as traced (as upstream's own dumps do: not warned of), where eager at batch 3
    # takes the other branch
    batch = upstream_write.write([1005], str(tmp_path))[3]
    assert batch["traced size"] == [1005] and batch["right"] == batch["wrong"] == []
    batch = upstream_write.write([5016], str(tmp_path), dyn=True)[3]
    assert batch["traced decision"] == [5016] and batch["right"] == batch["wrong"] == []
    ref = np.load(tmp_path / "w5016.npz")
    assert "bx" not in ref and "x" in ref  # (upstream's side runs it at the traced shape only)


def test_upstream_side_at_the_batch_one_larger(tmp_path, monkeypatch):
    # `_run_upstream` with this fork's GraphInference (it reads upstream's format), changed to
    # give other values or raise at batch 3
    from megengine.utils import comp_graph_tools

    upstream_write.write([1000], str(tmp_path))
    ref = np.load(tmp_path / "w1000.npz")
    want = [ref[k] for k in sorted(ref.files) if k.startswith("bwant")]
    path = str(tmp_path / "w1000.mge")
    assert upstream_write._run_upstream(path, ref["bx"], want, raises=True) == "right"
    real = comp_graph_tools.GraphInference.run
    for how in ("values", "raise"):
        def run(self, *args, inp_dict=None, how=how):
            out = real(self, *args, inp_dict=inp_dict)
            if how == "raise":
                raise RuntimeError("assertion `m_layout.eq_shape(src.layout())' failed")
            return {k: np.asarray(v) + 1 for k, v in out.items()}

        monkeypatch.setattr(comp_graph_tools.GraphInference, "run", run)
        got = upstream_write._run_upstream(path, ref["bx"], want, raises=True)
        assert got == "wrong" if how == "values" else got.startswith("raised RuntimeError")


def test_main_reports_upstreams_other_values_at_the_batch_one_larger(tmp_path, monkeypatch,
                                                                      capsys):
    # what `serve` prints, as upstream's interpreter would
    def fake(stdout):
        return lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=stdout, stderr="")

    argv = ["--seeds", "1", "--start", "1000", "--upstream", "python", "--keep", str(tmp_path)]
    monkeypatch.setattr(upstream_write.subprocess, "run",
                        fake("START 1000\nBATCH 1000 wrong\nDONE\n"))
    assert upstream_write.main(argv) == 1
    out = capsys.readouterr().out
    assert "program 1000: other values at batch+1 (upstream)" in out and "def prog(" in out
    monkeypatch.setattr(upstream_write.subprocess, "run", fake(
        "START 1000\nBATCH 1000 raised RuntimeError: assertion failed\nDONE\n"))
    assert upstream_write.main(argv) == 0
    assert "0 right, 1 raised" in capsys.readouterr().out
    monkeypatch.setattr(upstream_write.subprocess, "run",
                        fake("START 1000\nBATCH 1000 right\nDONE\n"))
    assert upstream_write.main(argv) == 0


def test_a_crash_of_upstreams_process_is_told_apart(tmp_path, monkeypatch, capsys):
    # upstream 1.13's runtime segfaults on some sequences of files it runs alone (--dyn
    # 5101-5103, measured): the serving restarts past the file and runs it alone; a file it
    # also crashes on alone is a failure, one it runs alone is not, and a run that reports
    # fewer files than were written is a failure (it counted them as run right before)
    argv = ["--seeds", "1", "--start", "1000", "--upstream", "python", "--keep", str(tmp_path)]
    for alone_rc, result in ((0, 0), (-11, 1)):
        calls = []

        def run(args, *a, alone_rc=alone_rc, **k):
            calls.append(args[4:])
            if args[4:] == ["1000", "1000"]:  # (the file alone)
                return subprocess.CompletedProcess(args, alone_rc, stdout="START 1000\n",
                                                   stderr="")
            if args[4:] == ["1001"]:  # (the files after it: none)
                return subprocess.CompletedProcess(args, 0, stdout="DONE\n", stderr="")
            return subprocess.CompletedProcess(args, -11, stdout="START 1000\n", stderr="")

        monkeypatch.setattr(upstream_write.subprocess, "run", run)
        assert upstream_write.main(argv) == result
        out = capsys.readouterr().out
        assert "its process crashed on 1 after other files ([1000]" in out, out
        assert calls == [["0"], ["1000", "1000"], ["1001"]]
    monkeypatch.setattr(upstream_write.subprocess, "run", lambda args, *a, **k: (
        subprocess.CompletedProcess(args, 0, stdout="DONE\n", stderr="")))
    assert upstream_write.main(argv) == 1
    assert "upstream's side ran 0 files of 1" in capsys.readouterr().out


def test_a_layer_norm_upstream_rounds_within_ten_times_the_tolerance_is_set_apart(
        tmp_path, monkeypatch, capsys):
    # program 6449: a layer norm of rows of std 0.0019 about 1.005; upstream's LayerNorm kernel
    # gives 1.0e-4 off float64's (its eager layer_norm of the same input too), this fork and
    # torch 3.1e-5, and the program's outputs end 1.6e-4 apart: other values, within 10x TOL
    from megengine.utils import comp_graph_tools
    from tests.fuzz.jit_programs import draw

    upstream_write.write([1000], str(tmp_path))
    ref = np.load(tmp_path / "w1000.npz")
    want = [ref[k] for k in sorted(ref.files) if k.startswith("want")]
    real = comp_graph_tools.GraphInference.run
    for off, how in ((5, "rounds"), (20, "wrong")):
        def run(self, *args, inp_dict=None, off=off, **kw):
            out = {k: np.asarray(v) for k, v in real(self, *args, inp_dict=inp_dict,
                                                     **kw).items()}
            return {k: v + off * upstream_write.TOL * max(1.0, float(np.abs(v).max()))
                    if v.dtype.kind == "f" else v for k, v in out.items()}

        monkeypatch.setattr(comp_graph_tools.GraphInference, "run", run)
        assert upstream_write._run_upstream(str(tmp_path / "w1000.mge"), ref["x"], want) == how
    monkeypatch.undo()

    def fake(stdout):
        return lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=stdout, stderr="")

    for seed, result in ((6449, 0), (1000, 1)):  # (6449 takes a layer norm, 1000 none)
        assert ("F.layer_norm(" in draw(seed, train=False, dyn=False,
                                        writes=False).source) == (seed == 6449)
        argv = ["--seeds", "1", "--start", str(seed), "--upstream", "python"]
        monkeypatch.setattr(upstream_write.subprocess, "run", fake(
            f"START {seed}\nROUNDS {seed}\nBATCH {seed} rounds\nDONE\n"))
        assert upstream_write.main(argv) == result
        out = capsys.readouterr().out
        assert f"a layer norm of close values (upstream's rounds): {1 - result}" in out
        assert f"other: {[seed] if result else 'none'}" in out


def test_files_upstream_optimized_are_judged_against_eager_then_upstreams_file(tmp_path):
    import os
    import shutil

    import pytest

    # reopt_batch.mge: upstream 1.13's Network.load + dump of this fork's written_batch.mge
    data = os.path.join(os.path.dirname(__file__), "..", "data", "upstream_mge")
    ref = np.load(os.path.join(data, "written_batch.npz"))
    values = [ref[f"fork_{i}"] for i in range(sum(k.startswith("fork_") for k in ref))]
    off = [v + 1 if v.dtype.kind == "f" else v for v in values]
    cases = {1: (values, values), 2: (off, values), 3: (off, off), 4: (values, values)}
    for seed, (want, theirs) in cases.items():
        shutil.copy(os.path.join(data, "reopt_batch.mge"), tmp_path / f"r{seed}.mge")
        np.savez(tmp_path / f"w{seed}.npz", x=ref["in_x"],
                 **{f"want{i}": w for i, w in enumerate(want)})
        np.savez(tmp_path / f"r{seed}.npz", **{f"every{i}": w for i, w in enumerate(theirs)},
                 **{f"shape{i}": np.array(w.shape) for i, w in enumerate(theirs)})
    (tmp_path / "r4.mge").write_bytes(b"mgv2 not a graph")
    lines = [["START", "1"], ["REOPT", "1", "written"], ["REOPT", "2", "written"],
             ["REOPT", "3", "written"], ["REOPT", "4", "written"], ["REOPT", "5", "unoptimized"],
             ["REOPT", "6", "unrun"]]
    got = upstream_write._read_reoptimized(str(tmp_path), lines)
    assert got["right"] == [1] and got["theirs"] == [2] and got["wrong"] == [3]
    assert list(got["refused"]) == [4] and got["unoptimized"] == [5] and got["unrun"] == [6]
    with pytest.raises(SystemExit):  # (upstream's optimizer makes the files)
        upstream_write.main(["--seeds", "1", "--reoptimize", "plain"])


def test_a_normalize_of_rounding_residues_is_flagged_and_only_that(tmp_path):
    # program 25095: h - mean(h) of rows of equal values is 3e-8 here (numpy's sum), 0 in
    # upstream's file, and F.normalize makes the residues unit rows: flagged, set apart
    stats, refused, wrong, _ = upstream_write.write([25095], str(tmp_path))
    assert stats == {"written": 1} and wrong == []
    assert upstream_write._flagged(str(tmp_path), 25095, "normalize_tiny")
    assert not upstream_write._flagged(str(tmp_path), 25095, "softmax_low")
    import megengine.functional as F

    with upstream_write._ill_conditioned() as flags:
        F.normalize(mge.tensor([[3e-8, -3e-8], [1.0, 2.0]]), axis=-1)
        F.normalize(mge.tensor([[0.0, 0.0], [1e-3, 0.0]]), axis=1)  # (zero rows are exact)
        F.softmax(mge.tensor([[-90.0, -88.0]]))
    assert flags == {"normalize_tiny": [True, False], "softmax_low": [True]}
