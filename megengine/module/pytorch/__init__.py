"""Embed PyTorch modules in megengine networks: `PyTorchModule` (imports torch; megengine does not)."""
from ...core.torch_bridge import cache_dir, from_torch, to_torch
from .module import PyTorchModule

__all__ = ["PyTorchModule", "cache_dir", "to_torch", "from_torch"]
