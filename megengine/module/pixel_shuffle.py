"""`PixelShuffle`: F.pixel_shuffle as a layer."""
from .. import functional as F
from .module import Module

__all__ = ["PixelShuffle"]


class PixelShuffle(Module):
    """Rearrange (*, C * r * r, H, W) into (*, C, H * r, W * r), ``r`` = ``upscale_factor``."""

    def __init__(self, upscale_factor: int, **kwargs):
        super().__init__(**kwargs)
        self.upscale_factor = upscale_factor

    def forward(self, x):
        return F.pixel_shuffle(x, self.upscale_factor)
