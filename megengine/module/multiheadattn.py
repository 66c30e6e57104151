"""`MultiHeadAttention` (upstream 1.13): attention over projected query, key and value, weights packed in one parameter."""
from typing import Optional

import numpy as np

from .. import functional as F
from ..core.ops import ArgumentError  # (a ValueError, and upstream's AssertionError)
from ..core.tensor import Parameter, Tensor
from . import init
from .module import Module

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(Module):
    """Multi-head attention as upstream's layer: ``forward(query, key, value, ...)`` returns
    ``(output, weights)``, ``weights`` being ``None`` unless ``need_weights`` (see
    F.nn.multi_head_attention for the masks and the shapes).

    The four projections (query, key, value, output; ``(in, embed_dim)`` each, used as
    ``x @ W``) and, with ``bias``, their four biases live in one parameter, ``io_weight_bias``
    of shape (1, (embed_dim + kdim + vdim + embed_dim) * embed_dim + 4 * embed_dim), in that
    order, as upstream packs them for cuDNN. ``add_bias_kv`` and ``add_zero_attn`` must stay
    False, as upstream requires.
    """

    def __init__(self, embed_dim, num_heads, attn_dropout=0.0, out_dropout=0.0, bias=True,
                 add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None, **kwargs):
        super().__init__(**kwargs)
        if embed_dim % num_heads:
            raise ArgumentError(f"MultiHeadAttention: embed_dim ({embed_dim}) must be divisible "
                                f"by num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn:
            raise ArgumentError("MultiHeadAttention: add_bias_kv and add_zero_attn are not "
                                "supported (nor by upstream's layer); leave them False")
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_dropout = attn_dropout
        self.out_dropout = out_dropout
        self.add_bias_kv = add_bias_kv
        self.add_zero_attn = add_zero_attn
        self.bias = bias
        self.bias_k = self.bias_v = None
        self._weight_len = (2 * embed_dim + self.kdim + self.vdim) * embed_dim
        self.weight_bias_len = self._weight_len + (4 * embed_dim if bias else 0)
        self.io_weight_bias = Parameter(np.empty((1, self.weight_bias_len), np.float32))
        self.reset_parameters()

    def reset_parameters(self):
        # upstream's init: Glorot uniform over the whole packed (1, length) parameter, biases 0.
        # (Upstream's reset_parameters also zeroes attn_dropout and out_dropout, which makes the
        # dropout arguments dead; the probabilities given are kept here.)
        init.xavier_uniform_(self.io_weight_bias)
        if self.bias:
            self.io_weight_bias[0, self._weight_len:] = 0

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                need_weights: bool = False, average_attn_weights: bool = False,
                is_causal: bool = False, maybe_cudnn_style_mask: bool = False):
        e = self.embed_dim
        return F.nn.multi_head_attention(
            query, key, value, e, self.num_heads, self.attn_dropout, self.out_dropout,
            self.io_weight_bias, qproj_size=e, kproj_size=e, vproj_size=e, oproj_size=e,
            qbias=self.bias, kbias=self.bias, vbias=self.bias, obias=self.bias,
            key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=need_weights,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
            maybe_cudnn_style_mask=maybe_cudnn_style_mask, training=self.training,
        )

    def _module_info_string(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, attn_dropout="
                f"{self.attn_dropout}, out_dropout={self.out_dropout}, bias={self.bias}, "
                f"kdim={self.kdim}, vdim={self.vdim}")
