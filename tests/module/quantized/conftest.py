"""The quantized layers' tests run with cpu0 as the default device, also on a CUDA machine: quantized tensors live on CPU devices only."""
import pytest

from devices import host_default_device  # noqa: F401  (used by the fixture below)


@pytest.fixture(autouse=True)
def _quantized_on_the_host(host_default_device):
    yield
