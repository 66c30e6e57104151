"""benchmarks/gpu_check.py (`make gpu-check`): refuses quickly without CUDA; its parts work, checked on the CPU."""
import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import megengine as mge

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(mge.is_cuda_available(), reason="checks the refusal on machines without CUDA")
def test_without_cuda_it_says_so_and_exits_nonzero_quickly():
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "cannot run the GPU check" in run.stderr and "CuPy" in run.stderr
    assert time.perf_counter() - start < 20
    assert "passed" not in run.stdout  # nothing ran


def test_parse_pytest_reads_counts_and_failed_ids(gpu_check):
    output = "\n".join([
        "..F.s",
        "=========================== short test summary info ============================",
        "FAILED tests/a.py::test_x - AssertionError: boom",
        "ERROR tests/b.py::test_y",
        "1 failed, 3 passed, 1 skipped, 1 error in 2.01s",
    ])
    counts, failures = gpu_check.parse_pytest(output)
    assert counts == {"passed": 3, "failed": 1, "error": 1, "skipped": 1}
    assert failures == ["tests/a.py::test_x", "tests/b.py::test_y"]


def test_parse_pytest_counts_a_killed_run_from_its_per_test_lines(gpu_check):
    output = "\n".join([
        "[gw1] [  3%] PASSED tests/a.py::test_x",
        "[gw0] [  6%] FAILED tests/a.py::test_y[cpu0-1] ",
        "[gw2] [  9%] SKIPPED tests/b.py::test_z",
        "tests/c.py::test_one PASSED                                [ 50%]",
        "tests/c.py::test_two ERROR                                 [100%]",
        "[gpu-check] TIMEOUT after 200 s: counted from the tests that ended",
    ])
    counts, failures = gpu_check.parse_pytest(output)
    assert counts == {"passed": 2, "failed": 1, "error": 1, "skipped": 1}
    assert failures == ["tests/a.py::test_y[cpu0-1]", "tests/c.py::test_two"]


def test_a_run_past_its_timeout_is_stopped_and_counted_so_far(gpu_check, tmp_path):
    (tmp_path / "test_slow.py").write_text(
        "import time\n\ndef test_ok():\n    assert True\n\n"
        "def test_hangs():\n    time.sleep(120)\n")
    args = argparse.Namespace(workers=1, test_timeout=5, tests=[str(tmp_path / "test_slow.py")])
    start = time.perf_counter()
    result = gpu_check.run_suite("slow run", {"MGE_DEFAULT_DEVICE": "cpu0"}, args, tmp_path)
    assert time.perf_counter() - start < 30
    assert not result["ok"] and result["code"] == -1
    assert result["counts"]["passed"] == 1  # test_ok ended before the timeout
    assert "TIMEOUT after 5 s" in Path(result["log"]).read_text()


def test_a_killed_run_still_says_why_its_tests_failed(gpu_check, tmp_path):
    # pytest prints tracebacks at its end, which a run stopped by its time limit never reaches
    (tmp_path / "test_fail_then_hang.py").write_text(
        "import time\n\ndef test_bad():\n    assert 6 * 7 == 41, 'the planted failure'\n\n"
        "def test_hangs():\n    time.sleep(120)\n")
    args = argparse.Namespace(workers=1, test_timeout=8,
                              tests=[str(tmp_path / "test_fail_then_hang.py")])
    result = gpu_check.run_suite("killed run", {"MGE_DEFAULT_DEVICE": "cpu0"}, args, tmp_path)
    assert result["code"] == -1 and result["counts"]["failed"] == 1
    log = Path(result["log"]).read_text()
    assert "each failure as it ended" in log and "the planted failure" in log
    assert "test_fail_then_hang.py:4: AssertionError" in log  # (the whole report)


def test_a_suite_run_counts_what_pytest_reports(gpu_check, tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "def test_ok():\n    assert True\n\ndef test_bad():\n    assert 1 == 2\n")
    args = argparse.Namespace(workers=1, test_timeout=60, tests=[str(tmp_path / "test_sample.py")])
    result = gpu_check.run_suite("sample run", {"MGE_DEFAULT_DEVICE": "cpu0"}, args, tmp_path)
    assert not result["ok"] and result["counts"]["passed"] == 1 and result["counts"]["failed"] == 1
    assert len(result["failures"]) == 1 and result["failures"][0].endswith("test_sample.py::test_bad")
    assert Path(result["log"]).read_text().count("test_bad") >= 1
    text = gpu_check.summary([result], [], 1.0)
    assert "FAIL: 1 passed, 1 failed" in text and "::test_bad" in text


def test_the_benchmarks_run_end_to_end_when_pointed_at_the_cpu(gpu_check, monkeypatch):
    # the same code the GPU run executes, on small sizes and on the CPU
    monkeypatch.setattr(gpu_check, "DEVICES", {"torch": "cpu", "megengine": "cpu0"})
    monkeypatch.setattr(gpu_check, "CASES", [("hybrid LeNet, batch 64", "hybrid", None, 8),
                                             ("engine MLP 784-256-10, batch 64", "mlp", 32, 16)])
    monkeypatch.setattr(gpu_check, "_sync", lambda: None)
    held = iter([100, 100 + (2 << 20)])  # the second snapshot holds 2 MiB more: growth
    monkeypatch.setattr(gpu_check, "_memory_snapshot", lambda: dict(
        cupy_used=0, cupy_held=next(held), torch_allocated=0, torch_reserved=0))
    default = mge.get_default_device()
    args = argparse.Namespace(steps=2, repeats=1, memory_steps=4)
    results = gpu_check.run_benchmarks(args)
    assert mge.get_default_device() == default  # restored
    timed = [r for r in results if "ratio" in r]
    assert [r["name"] for r in timed] == ["hybrid LeNet, batch 64", "engine MLP 784-256-10, batch 64"]
    assert all(r["ok"] and r["ratio"] > 0 for r in timed), results  # same work as torch
    memory = results[-1]
    assert memory["grew"] == ["cupy_held"]
    text = gpu_check.summary([], results, 1.0)
    json.dumps(results, default=str)  # what main() writes to results.json
    assert "aim <= 1.15x" in text and "aim <= 1.20x" in text and "GROWS (cupy_held): MISSED" in text
    assert not any(r["name"].startswith("bridge") for r in results)  # CUDA views: GPU runs only
    calls = dict(name="bridge per call (us)", ok=True, calls={"from_torch": 5.0, "to_torch": 4.25})
    assert "from_torch 5.0 us, to_torch 4.2 us" in gpu_check.summary([], [calls], 1.0)


_API_OK = dict(name="API check (tests/simcuda/api_check.py)", ok=True, verdict="api-check: no "
               "mismatches", mismatches=[], log="log")


def test_main_writes_the_summary_and_fails_when_a_run_fails(gpu_check, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "cuda_problem", lambda: None)
    monkeypatch.setattr(gpu_check, "run_api_check", lambda log_dir: _API_OK)
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 1)  # the two suite runs only
    runs = []

    def fake_suite(label, env, args, log_dir):
        runs.append(env)
        failed = 1 if env else 0  # the cpu0 run fails one test
        return dict(label=label, ok=not failed, counts=dict(passed=5, failed=failed, error=0, skipped=0),
                    failures=["tests/x.py::test_y"] * failed, seconds=1.0, code=failed, log="log")

    monkeypatch.setattr(gpu_check, "run_suite", fake_suite)
    monkeypatch.setattr(gpu_check, "run_benchmarks", lambda args: [
        dict(name="engine MLP 784-256-10, batch 64", ok=True, ratio=1.5, torch_ms=1.0, mge_ms=1.5)])
    monkeypatch.setattr(gpu_check, "run_fused_bench", lambda args, log_dir: dict(
        name="fused kernels", ok=True, rows=["gpu0:", "  softmax row"],
        what="us per forward+backward, no aims", log="log"))
    monkeypatch.setattr(gpu_check, "run_threads_bench", lambda args, log_dir: dict(
        name="CPU threads (bench_threads.py)", ok=True, rows=["  threads  variant", "  1 row"],
        what="the script's table and verdict", log="log"))
    assert gpu_check.main(["--log-dir", str(tmp_path)]) == 1
    assert sorted(runs, key=len) == [{}, {"MGE_DEFAULT_DEVICE": "cpu0"}]  # (run at the same time)
    text = (tmp_path / "summary.txt").read_text()
    assert text.index("on CUDA (default xpux)") < text.index("MGE_DEFAULT_DEVICE=cpu0")
    assert "1.50x torch" in text and "aim <= 1.20x: MISSED" in text and "tests/x.py::test_y" in text
    assert "check, API check (tests/simcuda/api_check.py): PASS (api-check: no mismatches" in text
    assert "    gpu0:\n      softmax row" in text
    assert "CPU threads (bench_threads.py): the script's table and verdict" in text
    assert "      threads  variant\n      1 row" in text
    assert json.loads((tmp_path / "results.json").read_text())["benchmarks"][0]["ratio"] == 1.5
    assert text.strip() in capsys.readouterr().out


@pytest.mark.parametrize("n_gpus", [1, 2])
def test_the_multi_gpu_cases_run_beside_the_suite_only_with_two_gpus(gpu_check, monkeypatch,
                                                                     tmp_path, n_gpus):
    monkeypatch.setattr(gpu_check, "cuda_problem", lambda: None)
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: n_gpus)
    monkeypatch.setattr(gpu_check, "run_api_check", lambda log_dir: _API_OK)
    runs = []

    def fake_suite(label, env, args, log_dir, tests=None, workers=None):
        runs.append((label, tests or args.tests, args.workers if workers is None else workers))
        return dict(label=label, ok=True, counts=dict(passed=3, failed=0, error=0, skipped=0),
                    failures=[], seconds=1.0, code=0, log="log")

    monkeypatch.setattr(gpu_check, "run_suite", fake_suite)
    assert gpu_check.main(["--log-dir", str(tmp_path), "--skip-bench", "--serial"]) == 0
    text = (tmp_path / "summary.txt").read_text()
    multi = [r for r in runs if r[1] == ["tests/simcuda/multi_gpu_cases.py"]]
    assert (REPO / "tests/simcuda/multi_gpu_cases.py").exists()  # the path the run is given
    if n_gpus == 2:
        assert len(runs) == 3 and multi == [(multi[0][0], multi[0][1], 1)]
        assert "two GPUs (tests/simcuda/multi_gpu_cases.py)" in text and "PASS: 3 passed" in text
    else:
        assert len(runs) == 2 and not multi
        assert "multi_gpu_cases.py): not run, it needs 2 GPUs and this machine has 1" in text


def _fake_subprocess(gpu_check, monkeypatch, output, returncode=0):
    """gpu_check's subprocess.run answering ``output``; returns the list of commands it got."""
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode, stdout=output, stderr="")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    return calls


def test_the_fused_kernel_rows_come_from_the_scripts_output(gpu_check, monkeypatch, tmp_path):
    output = "machine line\ncpu0:\n  cpu row\ngpu0:\n  op shape arrays fused torch\n  softmax 1 2 3\n"
    calls = _fake_subprocess(gpu_check, monkeypatch, output)
    result = gpu_check.run_fused_bench(argparse.Namespace(quick=False), tmp_path)
    assert calls[0][1].endswith("bench_fused_kernels.py") and calls[0][2:] == ["--quick"]
    assert result["ok"] and result["rows"] == ["gpu0:", "  op shape arrays fused torch", "  softmax 1 2 3"]
    assert (tmp_path / "bench_fused_kernels.log").read_text().startswith("machine line")

    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="Traceback\nValueError: no")

    monkeypatch.setattr(gpu_check.subprocess, "run", failing_run)
    result = gpu_check.run_fused_bench(argparse.Namespace(quick=False), tmp_path)
    assert not result["ok"] and "exit 1: ValueError: no" in result["error"]
    assert "ERROR exit 1" in gpu_check.summary([], [result], 1.0)


def test_the_phase_profile_runs_on_the_benchmark_device_and_shows_its_tables(gpu_check, monkeypatch,
                                                                            tmp_path):
    # the script itself, on the CPU and briefly: its phase table and its cProfile rows
    monkeypatch.setattr(gpu_check, "DEVICES", {"torch": "cpu", "megengine": "cpu0"})
    result = gpu_check.run_phase_profile(argparse.Namespace(quick=True), tmp_path, timeout=180)
    assert result["ok"], result
    rows = result["rows"]
    assert rows[0].startswith("hybrid LeNet step, batch 64")
    phases = {row.split()[0] for row in rows[2:8]}
    assert phases == {"extractor", "linear", "cross", "backward", "step", "loss"}
    profile = next(i for i, row in enumerate(rows) if row.startswith("fork's step"))
    assert "ncalls" in rows[profile + 1] and len(rows) - profile - 2 == 25
    assert "megengine/" in "".join(rows[profile + 2:])  # the engine's own functions, named


def test_profile_hybrid_step_refuses_a_device_it_cannot_time():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_hybrid_step.py"),
                          "--device", "cuda:0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--device: give cpu0 or gpuN" in run.stderr


def test_the_threads_bench_runs_at_one_thread_and_every_core(gpu_check, monkeypatch, tmp_path):
    output = ("machine line\nshufflenet_v2 ...\n  threads  variant  ratio\n  1  megengine  1.1x\n"
              "  megengine / torch at 16 threads over the same at 1: 1.05x (aim <= 1.10x: met)\n")
    calls = _fake_subprocess(gpu_check, monkeypatch, output)
    monkeypatch.setattr(gpu_check.os, "cpu_count", lambda: 16)
    result = gpu_check.run_threads_bench(argparse.Namespace(quick=False), tmp_path)
    assert calls[0][1].endswith("bench_threads.py")
    assert calls[0][2:] == ["--quick", "--threads", "1,16"]
    assert result["ok"] and result["rows"][0] == "  threads  variant  ratio"
    assert result["rows"][-1].endswith("(aim <= 1.10x: met)")
    assert (tmp_path / "bench_threads.log").read_text().startswith("machine line")


def test_the_api_check_runs_first_and_its_mismatches_fail_the_check(gpu_check, monkeypatch,
                                                                    tmp_path):
    output = ("api-check: CuPy 14.2.0\nMISMATCH cupy cuda.Foo: cupy.cuda has no attribute 'Foo'  "
              "[megengine/x.py:3]\n\napi-check: 1 MISMATCH line(s)\n")
    calls = _fake_subprocess(gpu_check, monkeypatch, output, returncode=1)
    result = gpu_check.run_api_check(tmp_path)
    assert calls[0][1].endswith("tests/simcuda/api_check.py") and "--quiet" in calls[0]
    assert not result["ok"] and result["verdict"] == "api-check: 1 MISMATCH line(s)"
    text = gpu_check.summary([], [], 1.0, checks=[result])
    assert "check, API check (tests/simcuda/api_check.py): FAIL (api-check: 1 MISMATCH" in text
    assert "    MISMATCH cupy cuda.Foo" in text
    assert (tmp_path / "api_check.log").read_text() == output


def test_the_api_check_without_the_real_cupy_is_an_error_not_a_pass(gpu_check, tmp_path):
    # the real script, in this environment: without CuPy it cannot check and says so (exit 2)
    pytest.importorskip("numpy")
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: the script would check, not refuse")
    result = gpu_check.run_api_check(tmp_path)
    assert not result["ok"] and result["error"].startswith("exit 2")
    assert "cannot be imported" in (tmp_path / "api_check.log").read_text()
    assert "ERROR exit 2" in gpu_check.summary([], [], 1.0, checks=[result])
