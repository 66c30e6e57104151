"""Upstream's ``megengine.quantization.internal_fake_quant`` path, kept for programs and tests
that ``from megengine.quantization.internal_fake_quant import *``.

Upstream's module defines nothing of its own since 1.4 (its backward-graph fake quantizer was
removed); a star import of it hands out the names it imports, which older code relies on (an
upstream 1.3 test calls ``F.round`` with no other import of ``F``). This module re-exports the
same objects: the fork's ``functional``, ``Function``, ``MinMaxObserver``, ``QConfig`` and
``QParams``.
"""
from .. import functional as F
from ..autodiff import Function
from .observer import MinMaxObserver
from .qconfig import QConfig
from .utils import QParams

__all__ = ["F", "Function", "MinMaxObserver", "QConfig", "QParams"]
