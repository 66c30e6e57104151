"""Shared test setup: deterministic seeds on every device, one torch thread (the oracle), the device in the header."""
import importlib.util
import os

import numpy as np
import pytest

# MGE_TEST_WITHOUT_TORCH=1 on a Python with no torch installed (a cheap CI job on a Python for
# which no CPU torch wheel is at hand: PyPI's wheels pull multi-GB CUDA libraries): a test or test
# file that fails only because torch is missing is reported as skipped, everything else must pass.
# Without the variable, or with torch installed, nothing is skipped this way.
_NO_TORCH = "No module named 'torch'"
_SKIP_TORCHLESS = os.environ.get("MGE_TEST_WITHOUT_TORCH") == "1" and importlib.util.find_spec("torch") is None
_SKIP_REASON = "Skipped: needs torch (MGE_TEST_WITHOUT_TORCH=1 and torch is not installed)"


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    _seed_gpus(0)  # dropout on a GPU draws from CuPy's generator, not numpy's
    yield


def _seed_gpus(value):
    from megengine.random.rng import _seed_cuda_generators

    _seed_cuda_generators(value)  # nothing to do (and no CuPy import) on a machine without CUDA


def pytest_report_header(config):
    import megengine as mge
    from megengine.device import canonical_device

    return (f"megengine default device: {mge.get_default_device()} -> "
            f"{canonical_device(None)} (CUDA usable: {mge.is_cuda_available()})")


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # The oracle is float32 on the CPU. On a GPU the engine's convolutions run on cuDNN, which
    # torch lets use TF32 by default (a 10-bit mantissa: ~1e-3 relative error, above the
    # tests' tolerances); the tests check the arithmetic, so they run without it.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _failed_for_want_of_torch(report):
    return _SKIP_TORCHLESS and report.failed and _NO_TORCH in str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _failed_for_want_of_torch(report):  # a test file that imports torch at the top
        report.outcome, report.result = "skipped", []
        report.longrepr = (str(collector.path), 0, _SKIP_REASON)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _failed_for_want_of_torch(report):  # torch imported by the test, a fixture or a subprocess
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, _SKIP_REASON)
