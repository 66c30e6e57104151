"""`Embedding`: a lookup table from integer indices to learned vectors."""
from typing import Optional

import numpy as np

from .. import functional as F
from ..core.tensor import Parameter, Tensor
from . import init
from .module import Module

__all__ = ["Embedding"]


def _advance_numpy_global_rng(count: int, chunk: int = 1 << 20) -> None:
    """Draw ``count`` uniforms from numpy's global generator and drop them.

    Upstream's ``Embedding`` builds its weight from ``np.random.uniform(size=...)`` before
    ``reset_parameters`` overwrites it from ``megengine.random``, so a program's later
    ``np.random`` draws (after ``np.random.seed``) depend on it; the same draws here keep them
    upstream's. Drawn in chunks, which leave the generator where one draw would.
    """
    while count > 0:
        np.random.uniform(size=min(count, chunk))
        count -= chunk


class Embedding(Module):
    """``weight`` (num_embeddings, embedding_dim); ``forward(indices)`` returns its rows.

    As upstream, ``padding_idx``, ``max_norm`` and ``norm_type`` are not supported and must be
    None; ``freeze=True`` keeps the weight out of autodiff.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: Optional[int] = None, max_norm: Optional[float] = None,
                 norm_type: Optional[float] = None, initial_weight=None, freeze: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if padding_idx is not None:
            raise ValueError(f"Embedding: padding_idx is not supported, got {padding_idx}; "
                             "pass None")
        if max_norm is not None or norm_type is not None:
            raise ValueError(f"Embedding: max_norm/norm_type are not supported, got "
                             f"{max_norm}/{norm_type}; pass None")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.freeze = freeze
        shape = (num_embeddings, embedding_dim)
        if initial_weight is None:
            _advance_numpy_global_rng(num_embeddings * embedding_dim)
            self.weight = Parameter(np.zeros(shape, np.float32))
            self.reset_parameters()
        else:
            value = initial_weight.numpy() if isinstance(initial_weight, Tensor) \
                else np.asarray(initial_weight, np.float32)
            if value.shape != shape:
                raise ValueError(f"Embedding: initial_weight has shape {value.shape}, expected "
                                 f"(num_embeddings, embedding_dim) = {shape}")
            self.weight = Parameter(value)

    def reset_parameters(self) -> None:
        # Upstream: N(0, 1), like PyTorch.
        init.normal_(self.weight)

    def forward(self, inputs):
        weight = self.weight.detach() if self.freeze else self.weight
        return F.embedding(inputs, weight)

    @classmethod
    def from_pretrained(cls, embeddings, freeze: Optional[bool] = True,
                        padding_idx: Optional[int] = None, max_norm: Optional[float] = None,
                        norm_type: Optional[float] = None):
        """An Embedding whose weight is a copy of the 2-d ``embeddings``."""
        shape = tuple(embeddings.shape)
        if len(shape) != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-d, got shape {shape}")
        return cls(shape[0], shape[1], padding_idx=padding_idx, max_norm=max_norm,
                   norm_type=norm_type, initial_weight=embeddings, freeze=freeze)
