"""`Pad`: F.nn.pad as a layer."""
from typing import Tuple

from .. import functional as F
from .module import Module

__all__ = ["Pad"]


class Pad(Module):
    """Pad the input by ``pad_width``, one ``(before, after)`` pair per leading dimension.

    ``mode``: "constant" (filled with ``constant_val``), "reflect" (mirrored without repeating
    the edge) or "replicate" (the edge value repeated).
    """

    def __init__(self, pad_width: Tuple[Tuple[int, int], ...], mode: str = "constant",
                 constant_val: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.pad_width = pad_width
        self.mode = mode
        self.pad_val = constant_val

    def forward(self, src):
        return F.pad(src, pad_width=self.pad_width, mode=self.mode, constant_value=self.pad_val)

    def _module_info_string(self) -> str:
        return f"pad_width={self.pad_width}, mode={self.mode!r}, constant_val={self.pad_val}"
