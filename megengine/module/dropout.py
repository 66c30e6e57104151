"""`Dropout`: zero elements at random while training, scaling the rest by 1 / (1 - drop_prob)."""
from .. import functional as F
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Each element is zeroed with probability ``drop_prob`` in training mode; in eval mode
    the input passes through unchanged. As upstream's, ``drop_prob`` is checked where it is
    used: a training call outside ``[0, 1)`` raises `F.nn.dropout`'s error (a ``ValueError``
    and upstream's ``AssertionError``), an eval call passes (earlier versions of this fork
    refused the layer when built, a model upstream builds and evaluates)."""

    def __init__(self, drop_prob: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.drop_prob = drop_prob

    def forward(self, inputs):
        if self.training:
            return F.dropout(inputs, self.drop_prob, training=True)
        return inputs

    def _module_info_string(self) -> str:
        return f"drop_prob={self.drop_prob}"
