"""One command for a machine with a CUDA GPU: the suite on CUDA and on the CPU, the GPU benchmarks, one summary.

    make gpu-check                       # the same as:
    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py [--workers 8] [--skip-tests] [--skip-bench]
                                                    [--quick] [--log-dir DIR]

What it does, in this order (about 5 minutes on one H200: the two runs 3 minutes, side by side):

0. ``tests/simcuda/api_check.py``: every CuPy / torch CUDA name and call the project uses,
   checked against the CuPy and torch installed here, and the fused kernels compiled (about
   10 s; the same check `make cuda-api-check` runs without a GPU).
1. ``pytest -n 8 tests`` with the default device ``xpux`` (so ``gpu0``): the suite on CUDA.
2. The same with ``MGE_DEFAULT_DEVICE=cpu0``: the suite on the CPU of a CUDA machine (CuPy and
   CUDA torch present, but the tensors on the host). Runs 1 and 2 run at the same time
   (``--serial``: one after the other).
3. The GPU benchmarks, this process, ratios against pure PyTorch on the same GPU:
   the guide's hybrid LeNet step (``PyTorchModule`` + ``M.Linear`` + SGD; bench_pytorch_module's
   variants) at batch 64 and 1024; the engine MLP (bench_engine's, SGD momentum 0.9) 784-256-10
   at batch 64 and 784-4096-10 at batch 4096; and the memory of CuPy's pool and torch's
   allocator over 5,000 hybrid steps (it must not grow); then, in a process of its own,
   ``bench_fused_kernels.py --quick`` (softmax / cross entropy / relu: the fused CUDA paths
   against the array code and torch; its gpu0 rows are shown, without aims); then
   ``profile_hybrid_step.py --device gpu0 --batch 64 --cprofile 25`` (the hybrid step phase by
   phase against PyTorch's, and the fork's host-side hot spots); then
   ``bench_threads.py --quick --threads 1,<cores>`` (the CPU side: the engine's training step
   against torch's at one thread and at every core, which a 2-core machine cannot show).
4. On a machine with two or more GPUs, also ``pytest tests/simcuda/multi_gpu_cases.py`` (engine
   work on gpu1 while gpu0 is current; the simulated run's cases on real GPUs), at the same time
   as runs 1 and 2; with one GPU the summary says it was not run and why.
5. One summary block: passed/failed per run, each ratio against its aim (issue 12's aims).

Every step is timed with a device synchronisation at its end (``torch.cuda.synchronize()``, which
waits for CuPy's streams too), the same for every variant. Before timing, each pair must do the
same work: the same, falling losses from the same weights on the same batches.

Each run has 300 s (``--test-timeout``): 16 workers on 16 cores, each starting torch and a
CUDA context and compiling the CuPy kernels its tests meet (CuPy's on-disk kernel cache and the
bridge's build lock are shared safely; each run has its own ``--basetemp``). A run that takes
longer is stopped with all its workers and counted from the per-test lines ``pytest -v``
printed so far; an error in any step still ends with the summary.

The full pytest output of each run, the summary (``summary.txt``) and every figure
(``results.json``) go to ``--log-dir`` (default ``$OUT`` when set, else a new temporary
directory); the summary names the failing tests. Exit status: 0 when the API check and both runs pass
and every benchmark did the same work as its PyTorch twin (a missed aim is reported, not an
error), 1 otherwise, 2 when this machine has no usable CUDA (said at once, before anything runs).
Only ``python3`` from PATH with PYTHONPATH at the checkout is needed (no .venv): torch with CUDA,
CuPy, numpy, pytest, and pytest-xdist for ``-n`` (without it the runs are serial and slower).
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIMS = {  # issue 12: ratio to pure PyTorch on the same GPU
    "hybrid LeNet, batch 64": 1.15,
    "hybrid LeNet, batch 1024": 1.05,
    "engine MLP 784-256-10, batch 64": 1.2,
    "engine MLP 784-4096-10, batch 4096": 1.05,
}
MEMORY_STEPS = 5000
MEMORY_SLACK = 1 << 20  # bytes: growth above this over the steps counts as growth
# where the benchmarks run; tests/test_gpu_check.py points them at the CPU to check the script
DEVICES = {"torch": "cuda:0", "megengine": "gpu0"}
# (name, kind, size, batch): the timed cases, in the order they run
CASES = [("hybrid LeNet, batch 64", "hybrid", None, 64),
         ("hybrid LeNet, batch 1024", "hybrid", None, 1024),
         ("engine MLP 784-256-10, batch 64", "mlp", 256, 64),
         ("engine MLP 784-4096-10, batch 4096", "mlp", 4096, 4096)]


MULTI_GPU_CASES = "tests/simcuda/multi_gpu_cases.py"  # needs two GPUs: run only where there are


def gpu_count():
    """How many CUDA devices CuPy sees (0 when it cannot tell)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001  (no CuPy or no driver: no GPUs to count)
        return 0


def cuda_problem():
    """Why this machine cannot run the check (None when it can). Fast: CuPy is tried before torch."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy that finds no CUDA library
        return f"CuPy cannot be imported ({type(e).__name__}: {e}); install CuPy for the CUDA version here"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"CuPy finds no usable CUDA driver ({type(e).__name__}: {e})"
    if count < 1:
        return "CuPy sees no CUDA device"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no usable CUDA (a CPU build?)"
    return None


# ----- the two test runs --------------------------------------------------------------------------
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


# one test's result as `pytest -v` prints it while running: "[gw3] [ 12%] PASSED tests/a.py::t"
# (xdist) or "tests/a.py::t PASSED [ 12%]" (one process)
_VERBOSE = re.compile(r"^(?:\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)"
                      r"|(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b)")


def parse_pytest(output):
    """Counts from pytest's last summary line and the ids of the failed/erroring tests. A run
    killed before its summary (a timeout) is counted from the per-test lines ``-v`` printed."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    lines = output.splitlines()
    summary = [line for line in lines if re.search(r"\d+ (passed|failed|error)", line)
               and (" in " in line or line.startswith("="))]
    if summary:
        for number, kind in _COUNT.findall(summary[-1]):
            kind = "error" if kind.startswith("error") else kind
            if kind in counts:
                counts[kind] = int(number)
        failures = [line.split(" ", 1)[1].split(" - ")[0] for line in lines
                    if line.startswith(("FAILED ", "ERROR "))]
        return counts, failures
    failures = []
    for line in lines:
        m = _VERBOSE.match(line)
        if m is None:
            continue
        status, test = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        kind = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error",
                "SKIPPED": "skipped"}.get(status)
        if kind:
            counts[kind] += 1
        if kind in ("failed", "error"):
            failures.append(test)
    return counts, failures


def xdist_available():
    try:
        import xdist  # noqa: F401  (pytest-xdist)
    except ImportError:
        return False
    return True


def run_suite(label, env_extra, args, log_dir, tests=None, workers=None):
    """Run the suite (or ``tests``, with ``workers`` xdist workers) in a subprocess; returns a
    result dict for the summary (also when the run itself could not be started or ran out of
    time: then with what it reported so far)."""
    start = time.perf_counter()
    log = Path(log_dir) / ("pytest-" + re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-") + ".log")
    try:
        return _run_suite(label, env_extra, args, log, start, tests or args.tests,
                          args.workers if workers is None else workers)
    except Exception as e:  # noqa: BLE001  (the summary must still come)
        return dict(label=label, ok=False, counts={"passed": 0, "failed": 0, "error": 0, "skipped": 0},
                    failures=[f"(the run could not be made: {type(e).__name__}: {e})"],
                    seconds=time.perf_counter() - start, code=None, log=str(log))


def _run_suite(label, env_extra, args, log, start, tests, workers):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MGE_DEFAULT_DEVICE", None)
    env.update(env_extra)
    env["PYTHONUNBUFFERED"] = "1"  # a killed run's last lines must not die in a pipe buffer
    # each failure's traceback as it ends (tests/failure_log.py), whatever ends the run; added to
    # the run's log at the end (the device machine sends back 8 files at most)
    failure_log = Path(tempfile.mkdtemp(prefix="gpu-check-failures-")) / "failures.txt"
    env["MGE_FAILURE_LOG"] = str(failure_log)
    # 2 runs x 8 workers fill the cores already: a BLAS/OpenMP pool per worker sized to the whole
    # machine would put 16 threads on each core (the tests' torch runs one thread: conftest)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    # -v: each test's result is printed as it ends, so a run killed by the timeout still says
    # what passed and what failed. A temporary directory of its own: two runs at once must not
    # share (or clean up) each other's tmp_path trees; not under the log directory, which the
    # device machine sends back.
    basetemp = tempfile.mkdtemp(prefix="gpu-check-tmp-")
    # (-p no:benchmark: pytest-benchmark, if installed, owns a "benchmark" fixture name)
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:benchmark",
           "-p", "tests.failure_log", "--basetemp", basetemp, *tests]
    if workers > 1 and xdist_available():
        cmd[4:4] = ["-n", str(workers)]
    print(f"[gpu-check] {label}: {' '.join(cmd[1:])} (log: {log})", flush=True)
    # its own session: on a timeout the whole process group goes, xdist's workers included
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=args.test_timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = proc.communicate()
        output += f"\n[gpu-check] TIMEOUT after {args.test_timeout} s: counted from the tests that ended"
        code = -1
    seconds = time.perf_counter() - start
    shutil.rmtree(basetemp, ignore_errors=True)
    if failure_log.exists():
        output += "\n[gpu-check] each failure as it ended:\n" + failure_log.read_text(errors="replace")
    shutil.rmtree(failure_log.parent, ignore_errors=True)
    log.write_text(output)
    counts, failures = parse_pytest(output)
    ok = code == 0 and counts["failed"] == 0 and counts["error"] == 0 and counts["passed"] > 0
    print(f"[gpu-check] {label}: {counts} in {seconds:.0f} s, exit {code}", flush=True)
    return dict(label=label, ok=ok, counts=counts, failures=failures, seconds=seconds, code=code,
                log=str(log))


def run_api_check(log_dir, timeout=180):
    """tests/simcuda/api_check.py in a process of its own: a result dict for the summary."""
    name = "API check (tests/simcuda/api_check.py)"
    log = Path(log_dir) / "api_check.log"
    command = [sys.executable, str(REPO / "tests" / "simcuda" / "api_check.py"), "--quiet"]
    start = time.perf_counter()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return dict(name=name, ok=False, error=f"timed out after {timeout} s")
    log.write_text(run.stdout + run.stderr)
    mismatches = [line for line in run.stdout.splitlines() if line.startswith("MISMATCH")]
    last = (run.stdout.strip().splitlines() or run.stderr.strip().splitlines() or ["no output"])
    result = dict(name=name, ok=run.returncode == 0, seconds=time.perf_counter() - start,
                  verdict=last[-1], mismatches=mismatches, log=str(log))
    if run.returncode not in (0, 1):  # 1: mismatches found; anything else: it could not check
        result["error"] = f"exit {run.returncode}: {last[-1]} (log {log})"
    return result


# ----- the benchmarks -----------------------------------------------------------------------------
def _sync():
    import torch

    torch.cuda.synchronize()  # waits for every stream on the device: torch's and CuPy's


def _synced(step):
    def run():
        out = step()
        _sync()
        return out

    return run


def _loss_value(x):
    """A step's loss as a float: steps return floats, megengine Tensors or torch tensors."""
    if hasattr(x, "detach"):  # torch
        return float(x.detach())
    return float(x.numpy()) if hasattr(x, "numpy") else float(x)


def _same_work(steppers, steps=16, rtol=1e-3):
    """Run each stepper ``steps`` times from fresh state: the losses must agree and fall."""
    losses = {}
    for name, make in steppers.items():
        step = make()
        losses[name] = [_loss_value(step()) for _ in range(steps)]
    ref = losses["pure PyTorch"]
    worst = max(abs(a - r) / max(abs(r), 1e-6) for ls in losses.values() for a, r in zip(ls, ref))
    falls = all(ls[-1] < ls[0] for ls in losses.values())
    return worst < rtol and falls, worst, losses


def bench_hybrid(batch, args, timing):
    import bench_pytorch_module as bpm

    init = bpm.initial_weights()
    data = bpm.make_data(batch)
    makers = {"pure PyTorch": lambda: bpm.torch_variant(init, data, device=DEVICES["torch"]),
              "megengine": lambda: bpm.fork_variant(init, data)}
    ok, worst, _ = _same_work(makers, rtol=1e-3)  # TF32 is off, but cuDNN may pick other kernels
    ms = timing.time_steps({k: _synced(make()) for k, make in makers.items()},
                           args.steps, args.repeats)
    return ok, worst, ms["pure PyTorch"].median, ms["megengine"].median


def bench_mlp(hidden, batch, args, timing):
    import functools

    import bench_engine as be

    data = be.make_data((784,), 0.1, batch=batch)
    mge_cls = functools.partial(be.MgeMLP, hidden=hidden)
    torch_cls = functools.partial(be.TorchMLP, hidden=hidden)

    def mge_make():
        return be.mge_stepper(mge_cls, data, "eager")[0]

    def torch_make():
        init = be.mge_stepper(mge_cls, data, "eager")[1]
        return be.torch_stepper(torch_cls, data, init, device=DEVICES["torch"])[0]

    ok, worst, _ = _same_work({"pure PyTorch": torch_make, "megengine": mge_make})
    ms = timing.time_steps({"pure PyTorch": _synced(torch_make()), "megengine": _synced(mge_make())},
                           args.steps, args.repeats)
    return ok, worst, ms["pure PyTorch"].median, ms["megengine"].median


def bench_bridge(timing, calls=2000):
    """Microseconds per call of the CUDA views: from_torch (pointer-built CuPy view) against
    CuPy's DLPack import of the same tensor, and to_torch of a CuPy array."""
    import cupy
    import torch

    from megengine.core import torch_bridge as bridge

    from megengine.device import get_gpu_allocator

    t = torch.ones(64, 84, device=DEVICES["torch"])
    a = cupy.ones((64, 84), cupy.float32)
    figures = {"from_torch": timing.time_call_us(lambda: bridge.from_torch(t), calls, 5),
               "cupy.from_dlpack": timing.time_call_us(lambda: cupy.from_dlpack(t.detach()), calls, 5),
               "to_torch": timing.time_call_us(lambda: bridge.to_torch(a), calls, 5)}
    # what one CuPy allocation costs through the allocator in use (torch's caching allocator once
    # the bridge has met CUDA memory) against CuPy's own pool: the price of one shared pool
    alloc = lambda: cupy.empty(256, cupy.float32)  # noqa: E731
    figures[f"cupy.empty via {get_gpu_allocator()}"] = timing.time_call_us(alloc, calls, 5)
    with cupy.cuda.using_allocator(cupy.get_default_memory_pool().malloc):
        figures["cupy.empty via CuPy's pool"] = timing.time_call_us(alloc, calls, 5)
    return figures


def _memory_snapshot():
    import cupy
    import torch

    _sync()
    pool = cupy.get_default_memory_pool()
    return dict(cupy_used=pool.used_bytes(), cupy_held=pool.total_bytes(),
                torch_allocated=torch.cuda.memory_allocated(),
                torch_reserved=torch.cuda.memory_reserved())


def bench_memory(steps):
    """Bytes in use / held by CuPy's pool and torch's allocator after 10% and after all of
    ``steps`` hybrid LeNet steps (batch 64)."""
    import bench_pytorch_module as bpm

    step = bpm.fork_variant(bpm.initial_weights(), bpm.make_data(64))
    warm = max(1, steps // 10)
    for _ in range(warm):
        step()
    before = _memory_snapshot()
    for _ in range(steps - warm):
        step()
    return before, _memory_snapshot()


def run_benchmarks(args):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import megengine as mge

    previous_device = mge.get_default_device()
    mge.set_default_device(DEVICES["megengine"])
    try:
        return _run_benchmarks(args)
    finally:
        mge.set_default_device(previous_device)


def _run_benchmarks(args):
    import _timing
    import torch

    where = torch.cuda.get_device_name(0) if DEVICES["torch"].startswith("cuda") else "the CPU"
    print(f"[gpu-check] benchmarks on {where}; torch {torch.__version__}, "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32} (torch's default: off), "
          f"CUPY_TF32={os.environ.get('CUPY_TF32', 'unset')} (CuPy's default: off)", flush=True)
    results = []
    for name, kind, size, batch in CASES:
        try:
            if kind == "hybrid":
                ok, worst, torch_ms, mge_ms = bench_hybrid(batch, args, _timing)
            else:
                ok, worst, torch_ms, mge_ms = bench_mlp(size, batch, args, _timing)
        except Exception as e:  # one broken case must not hide the others' figures
            print(f"[gpu-check] {name}: FAILED {type(e).__name__}: {e}", flush=True)
            results.append(dict(name=name, ok=False, error=f"{type(e).__name__}: {e}"))
            continue
        ratio = mge_ms / torch_ms
        print(f"[gpu-check] {name}: torch {torch_ms:.3f} ms, megengine {mge_ms:.3f} ms, "
              f"ratio {ratio:.2f}x; same work: {'ok' if ok else 'MISMATCH'} "
              f"(largest relative loss difference {worst:.1e})", flush=True)
        results.append(dict(name=name, ok=ok, ratio=ratio, torch_ms=torch_ms, mge_ms=mge_ms))
    if DEVICES["torch"].startswith("cuda"):
        try:
            results.append(dict(name="bridge per call (us)", ok=True, calls=bench_bridge(_timing)))
        except Exception as e:
            results.append(dict(name="bridge per call (us)", ok=False, error=f"{type(e).__name__}: {e}"))
    try:
        before, after = bench_memory(args.memory_steps)
        growth = {k: after[k] - before[k] for k in before}
        grew = [k for k in ("cupy_used", "cupy_held", "torch_allocated") if growth[k] > MEMORY_SLACK]
        results.append(dict(name=f"memory over {args.memory_steps} hybrid steps", ok=True,
                            memory=(before, after, growth), grew=grew))
    except Exception as e:
        results.append(dict(name=f"memory over {args.memory_steps} hybrid steps", ok=False,
                            error=f"{type(e).__name__}: {e}"))
    return results


def run_fused_bench(args, log_dir, timeout=240):
    """bench_fused_kernels.py (the fused paths against the array code and torch, per device) in a
    process of its own; its gpu0 rows go into the summary as they are (no aims: they are the
    evidence for keeping or dropping the fused paths on CUDA)."""
    # --quick (20 calls x 2 repeats): enough to see a factor, and it keeps the check short
    return _run_script("fused kernels (bench_fused_kernels.py)", "bench_fused_kernels.py",
                       ["--quick"], "gpu0", "us per forward+backward, no aims", log_dir, timeout)


def run_phase_profile(args, log_dir, timeout=240):
    """profile_hybrid_step.py on gpu0 at batch 64 in a process of its own: the hybrid step's
    phases against pure PyTorch's, each timed to the device's end, and cProfile's top functions
    of the fork's step (issue 12's speed aims: where the extra time goes). No aims: evidence."""
    steps = ["--steps", "30", "--repeats", "1"] if args.quick else ["--steps", "100", "--repeats", "3"]
    return _run_script("hybrid step by phase (profile_hybrid_step.py)", "profile_hybrid_step.py",
                       ["--device", DEVICES["megengine"], "--batch", "64", *steps, "--cprofile", "25"],
                       "hybrid LeNet step", "us per phase, each to the device's end; no aims",
                       log_dir, timeout)


def run_threads_bench(args, log_dir, timeout=240):
    """bench_threads.py --quick at one thread and at every core of this machine (its CPU side:
    the engine's step against torch's as the thread count grows; a 2-core machine cannot show
    it), in a process of its own after everything else; its table and verdict go into the
    summary (its aim is the script's own)."""
    cores = os.cpu_count() or 1
    return _run_script("CPU threads (bench_threads.py)", "bench_threads.py",
                       ["--quick", "--threads", f"1,{cores}"], "  threads",
                       "the script's table and verdict", log_dir, timeout)


def _run_script(name, script, script_args, first_row, what, log_dir, timeout):
    """Run benchmarks/``script`` with ``script_args`` (log in ``log_dir``); its output from the
    first line starting with ``first_row`` on becomes the summary's rows, headed by ``what``
    they are."""
    command = [sys.executable, str(REPO / "benchmarks" / script)] + script_args
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    log = Path(log_dir) / (Path(script).stem + ".log")
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                             cwd=REPO)
    except subprocess.TimeoutExpired as e:
        log.write_text((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                       else (e.stdout or ""))
        return dict(name=name, ok=False, error=f"timed out after {timeout} s (log {log})")
    log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        return dict(name=name, ok=False, error=f"exit {run.returncode}: {tail[0]} (log {log})")
    lines = run.stdout.splitlines()
    rows = lines[next((i for i, line in enumerate(lines) if line.startswith(first_row)),
                      len(lines)):]
    return dict(name=name, ok=True, rows=rows or [f"(no {first_row.strip()} rows: see the log)"],
                what=what, log=str(log))


# ----- the summary --------------------------------------------------------------------------------
def summary(suites, benches, seconds, notes=(), checks=()):
    """The summary block; ``notes``: lines about what was not run, and why; ``checks``: the API
    check's result (`run_api_check`)."""
    lines = ["", "=" * 30 + " gpu-check summary " + "=" * 30]
    for check in checks:
        if "error" in check:
            lines.append(f"check, {check['name']}: ERROR {check['error']}")
            continue
        lines.append(f"check, {check['name']}: {'PASS' if check['ok'] else 'FAIL'} "
                     f"({check['verdict']}; log {check['log']})")
        lines.extend("    " + m for m in check["mismatches"][:25])
    for s in suites:
        c = s["counts"]
        lines.append(f"tests, {s['label']:28s} {'PASS' if s['ok'] else 'FAIL'}: {c['passed']} passed, "
                     f"{c['failed']} failed, {c['error']} errors, {c['skipped']} skipped "
                     f"({s['seconds']:.0f} s; log {s['log']})")
        for f in s["failures"][:25]:
            lines.append(f"    {f}")
        if len(s["failures"]) > 25:
            lines.append(f"    ... and {len(s['failures']) - 25} more (see the log)")
    lines.extend(notes)
    for b in benches:
        if "error" in b:
            lines.append(f"bench, {b['name']:36s} ERROR {b['error']}")
        elif "calls" in b:
            figures = ", ".join(f"{k} {v:.1f} us" for k, v in b["calls"].items())
            lines.append(f"bench, {b['name']:36s} {figures} (no aim; the issue measured ~115 us "
                         "for from_torch through DLPack)")
        elif "rows" in b:
            lines.append(f"bench, {b['name']}: {b['what']} (log {b['log']})")
            lines.extend("    " + row for row in b["rows"])
        elif "memory" in b:
            before, after, growth = b["memory"]
            figures = ", ".join(f"{k} {before[k] / 2**20:.1f} -> {after[k] / 2**20:.1f} MiB" for k in before)
            verdict = "no growth: met" if not b["grew"] else "GROWS (" + ", ".join(b["grew"]) + "): MISSED"
            lines.append(f"bench, {b['name']:36s} {figures}; {verdict}")
        else:
            aim = AIMS.get(b["name"], float("inf"))
            lines.append(f"bench, {b['name']:36s} {b['ratio']:5.2f}x torch ({b['mge_ms']:.3f} vs "
                         f"{b['torch_ms']:.3f} ms/step), aim <= {aim:.2f}x: "
                         f"{'met' if b['ratio'] <= aim else 'MISSED'}"
                         + ("" if b["ok"] else "; SAME-WORK CHECK FAILED"))
    lines.append(f"total {seconds:.0f} s")
    lines.append("=" * 79)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8, help="pytest-xdist workers per run (default 8)")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument("--serial", action="store_true",
                        help="run the two test runs one after the other (default: at the same time)")
    parser.add_argument("--skip-bench", action="store_true", help="the two test runs only")
    parser.add_argument("--skip-api-check", action="store_true",
                        help="do not run tests/simcuda/api_check.py first")
    parser.add_argument("--quick", action="store_true", help="few timing steps and 500 memory steps")
    parser.add_argument("--log-dir", default=os.environ.get("OUT") or None,
                        help="where the pytest logs go (default: $OUT, else a new temporary directory)")
    parser.add_argument("--test-timeout", type=int, default=300,
                        help="seconds per test run (default 300); a run that takes longer is "
                             "stopped (all its workers) and counted from the tests that ended")
    parser.add_argument("--tests", nargs="+", default=["tests"], help="what pytest runs (default: tests)")
    args = parser.parse_args(argv)
    args.steps, args.repeats = (5, 2) if args.quick else (30, 5)
    args.memory_steps = 500 if args.quick else MEMORY_STEPS

    problem = cuda_problem()
    if problem is not None:
        print(f"gpu-check: this machine cannot run the GPU check: {problem}. Run it on a machine "
              "with an NVIDIA GPU, CuPy and a CUDA build of torch; here, `make test` runs the suite.",
              file=sys.stderr)
        return 2
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="gpu-check-")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    suites, notes, checks = [], [], []
    if not args.skip_api_check:
        checks.append(run_api_check(log_dir))
        print(f"[gpu-check] {checks[0]['name']}: {checks[0].get('verdict', checks[0].get('error'))}",
              flush=True)
    if not args.skip_tests:
        if args.workers > 1 and not xdist_available():
            print("[gpu-check] pytest-xdist is not installed: each run is one pytest process (slower)", flush=True)
        runs = [("on CUDA (default xpux)", {}, {}),
                ("MGE_DEFAULT_DEVICE=cpu0", {"MGE_DEFAULT_DEVICE": "cpu0"}, {})]
        n_gpus = gpu_count()
        if n_gpus >= 2:  # a few dozen cases: one process, beside the two runs
            runs.append((f"two GPUs ({MULTI_GPU_CASES})", {},
                         dict(tests=[MULTI_GPU_CASES], workers=1)))
        else:
            notes.append(f"tests, two GPUs ({MULTI_GPU_CASES}): not run, it needs 2 GPUs and this "
                         f"machine has {n_gpus}")
        if args.serial:
            suites = [run_suite(label, env, args, log_dir, **extra) for label, env, extra in runs]
        else:  # at once: 2 x 8 workers fit 16 cores, and it halves the wall time
            with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
                suites = list(pool.map(
                    lambda run: run_suite(run[0], run[1], args, log_dir, **run[2]), runs))
    benches = []
    if not args.skip_bench:
        for name, stage in (("GPU benchmarks", lambda: run_benchmarks(args)),
                            ("fused kernels (bench_fused_kernels.py)",
                             lambda: [run_fused_bench(args, log_dir)]),
                            ("hybrid step by phase (profile_hybrid_step.py)",
                             lambda: [run_phase_profile(args, log_dir)]),
                            ("CPU threads (bench_threads.py)",
                             lambda: [run_threads_bench(args, log_dir)])):
            try:
                benches += stage()
            except Exception as e:  # noqa: BLE001  (the summary must still come)
                benches.append(dict(name=name, ok=False, error=f"{type(e).__name__}: {e}"))
    text = summary(suites, benches, time.perf_counter() - start, notes, checks)
    print(text, flush=True)
    (Path(log_dir) / "summary.txt").write_text(text + "\n")
    (Path(log_dir) / "results.json").write_text(json.dumps(
        {"checks": checks, "suites": suites, "benchmarks": benches}, indent=1, default=str))
    ok = all(s["ok"] for s in suites + checks) and all(b["ok"] for b in benches)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
