"""`Pad`: F.nn.pad as a layer."""
from typing import Tuple

from .. import functional as F
from ..functional.tensor import _pad_width_argument
from .module import Module

__all__ = ["Pad"]


class Pad(Module):
    """Pad the input by ``pad_width``, one ``(before, after)`` pair per leading dimension.

    ``mode``: "constant" (filled with ``constant_val``), "reflect" (mirrored without repeating
    the edge) or "replicate" (the edge value repeated).
    """

    def __init__(self, pad_width: Tuple[Tuple[int, int], ...] = None, mode: str = "constant",
                 constant_val: float = 0.0, *, pad_witdth=None, **kwargs):
        super().__init__(**kwargs)
        # pad_witdth: upstream 1.8-1.9's spelling of this keyword, still found in programs
        self.pad_width = _pad_width_argument(pad_width, pad_witdth, "Pad")
        self.mode = mode
        self.pad_val = constant_val

    def forward(self, src):
        return F.pad(src, pad_width=self.pad_width, mode=self.mode, constant_value=self.pad_val)
