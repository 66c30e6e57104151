"""A pytest plugin, ``-p tests.failure_log`` (benchmarks/gpu_check.py loads it): with
``MGE_FAILURE_LOG=<file>``, each failing test's report is appended to that file as the test
ends, so a run stopped by a time limit, or by an error of pytest itself, still says why its
tests failed (pytest prints the tracebacks only at the end)."""
import os

_path = None  # the file, in the process that writes it


def pytest_configure(config):
    global _path
    # under pytest-xdist its controller writes each report once, its workers (which have
    # ``workerinput``) nothing; an environment variable would not tell, since a run started
    # from inside a worker (tests/test_gpu_check.py) inherits the worker's
    _path = None if hasattr(config, "workerinput") else os.environ.get("MGE_FAILURE_LOG")


def pytest_runtest_logreport(report):
    if _path and report.failed:
        with open(_path, "a", encoding="utf-8") as f:
            f.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n")
