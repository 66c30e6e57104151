"""0.x compatibility: `megengine.core.graph.get_default_device` as the PyTorch-embedding guide uses it."""
from ..device import get_default_device, set_default_device

__all__ = ["get_default_device", "set_default_device"]
