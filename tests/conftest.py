"""Shared test setup: deterministic seeds on every device, one torch thread (the oracle), the
device in the header, garbage collections kept to one test file's objects."""
import gc

import numpy as np
import pytest

import simcuda

# MGE_SIM_CUDA=<n>: n simulated CUDA devices (tests/simcuda), in place before megengine loads
simcuda.install_from_environment()


@pytest.fixture(autouse=True, scope="module")
def _freeze_survivors():
    # What the earlier test files left alive is collected once here, then frozen (never
    # scanned again): the gc.collect() calls of the tests, and Python's own full collections,
    # then cost what one file holds, not what the whole run has accumulated (about 0.7 s each
    # late in a run without this)
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _seed():
    from megengine.random import seed

    np.random.seed(0)  # the tests' own data draws
    seed(0)  # megengine.random's generator (module initialisers, dropout) and CuPy's on each GPU
    yield
    # a test that failed while a GradManager recorded leaves it recording: released here, so
    # the next tests of this process do not record too (and fail for this one's reason)
    from megengine.autodiff import grad_manager

    for gm in list(grad_manager._recording_managers):
        gm.release()


def pytest_report_header(config):
    import megengine as mge
    from megengine.device import canonical_device

    return (f"megengine default device: {mge.get_default_device()} -> "
            f"{canonical_device(None)} (CUDA usable: {mge.is_cuda_available()}"
            + (f", simulated: {simcuda.device_count()} device(s))" if simcuda.installed() else ")"))


def pytest_configure(config):
    if simcuda.installed() is not None:  # what cannot be simulated is reported as skipped
        from simcuda import plugin

        config.pluginmanager.register(plugin, "simcuda")
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
