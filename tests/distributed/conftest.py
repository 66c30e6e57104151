"""Shared helpers of the distributed tests: run a function on N local gloo ranks, bounded in time."""
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)


def _run_ranks(func, n, *args, timeout=90, start_method=None, **kwargs):
    """``func(*args, **kwargs)`` on ``n`` CPU ranks (gloo; forked, or ``start_method``'s); the
    list of return values."""
    import megengine.distributed as dist

    run = dist.launcher(func, n_gpus=n, device_type="cpu", timeout=timeout, collective_timeout=20,
                        start_method=start_method)
    return run(*args, **kwargs)


@pytest.fixture(scope="session")
def run_ranks():
    return _run_ranks
