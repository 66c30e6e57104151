"""A pytest plugin, ``-p tests.failure_log`` (benchmarks/gpu_check.py loads it): with
``MGE_FAILURE_LOG=<file>``, each failing test's report is appended to that file as the test
ends, so a run stopped by a time limit, or by an error of pytest itself, still says why its
tests failed (pytest prints the tracebacks only at the end)."""
import os


def pytest_runtest_logreport(report):
    path = os.environ.get("MGE_FAILURE_LOG")
    # (under pytest-xdist the controller writes each report once; its workers write nothing)
    if path and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n")
