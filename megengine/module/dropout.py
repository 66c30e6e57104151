"""`Dropout`: zero elements at random while training, scaling the rest by 1 / (1 - drop_prob)."""
from .. import functional as F
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Each element is zeroed with probability ``drop_prob`` in training mode; in eval mode
    the input passes through unchanged."""

    def __init__(self, drop_prob: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"Dropout: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, inputs):
        if self.training:
            return F.dropout(inputs, self.drop_prob, training=True)
        return inputs

    def _module_info_string(self) -> str:
        return f"drop_prob={self.drop_prob}"
