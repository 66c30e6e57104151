"""Quantized `BatchMatMulActivation`: per-batch integer weight matrices times a quantized input,
plus a qint32 bias, activation fused, requantized."""
import numpy as np

from ...functional.quantized import batch_conv_bias_activation
from .. import batch_matmul_activation as Float
from ..qat import batch_matmul_activation as QAT
from ...core.tensor import Parameter
from .conv import bias_as_qint32, float_bias, quantized_weight
from .module import QuantizedModule, output_dtype_of

__all__ = ["BatchMatMulActivation"]


class BatchMatMulActivation(Float.BatchMatMulActivation, QuantizedModule):
    """Quantized :class:`~.qat.BatchMatMulActivation`: ``weight[b] @ x[b] + bias`` for
    ``x`` (batch, in_features, n), with int32 accumulation, as one batched 1x1 convolution
    (``batch_conv_bias_activation``), output in ``dtype``."""

    _quantized_input = True

    def __init__(self, batch, in_features, out_features, bias=True, nonlinear_mode="identity",
                 dtype=None, **kwargs):
        super().__init__(batch, in_features, out_features, bias, nonlinear_mode, **kwargs)
        self.output_dtype = dtype

    def calc_bmm_quantized(self, inp):
        """The layer's output for ``inp`` (upstream's name for what forward computes)."""
        if inp.ndim != 3 or inp.shape[0] != self.batch or inp.shape[1] != self.in_features:
            raise ValueError(f"BatchMatMulActivation: input must be (batch={self.batch}, "
                             f"in_features={self.in_features}, n), got shape {inp.shape}")
        bias = None if self.bias is None else bias_as_qint32(self.bias, inp, self.weight)
        weight = self.weight if self.weight.ndim == 5 else \
            self.weight.reshape(*self.weight.shape, 1, 1)  # (batch, out, in, 1, 1)
        out = batch_conv_bias_activation(inp.reshape(*inp.shape, 1), weight, bias,
                                         dtype=self.output_dtype,
                                         nonlinear_mode=self.nonlinear_mode)
        return out.reshape(out.shape[:3])

    def forward(self, inp):
        return self.calc_bmm_quantized(inp)

    def _upstream_state(self, prefix, state_dict):
        """Weights and biases of the other layout load (converted layers keep upstream's
        (batch, out, in, 1, 1) and (1, out, 1, 1); a layer made directly, and this fork's earlier
        versions, the float layer's (batch, out, in) and (out,)): reshaped where only the shape
        differs (`Module._from_upstream_layouts`)."""
        out = None
        for name in ("weight", "bias"):
            mine, value = getattr(self, name), state_dict.get(prefix + name)
            if mine is None or value is None or tuple(value.shape) == tuple(mine.shape) or \
                    int(np.prod(value.shape)) != int(np.prod(mine.shape)):
                continue
            out = dict(state_dict) if out is None else out
            out[prefix + name] = value.reshape(mine.shape)
        return state_dict if out is None else out

    @classmethod
    def from_qat_module(cls, qat_module: QAT.BatchMatMulActivation):
        what = cls.__name__
        qmod = cls(qat_module.batch, qat_module.in_features, qat_module.out_features,
                   qat_module.bias is not None, qat_module.nonlinear_mode,
                   dtype=output_dtype_of(qat_module, what), name=qat_module.name)
        # upstream's shapes, so that state dicts and saved modules load on either side: the
        # weight (batch, out, in, 1, 1) in integers, the bias (1, out, 1, 1), zeros where the
        # QAT layer has none (measured on upstream 1.13)
        w = quantized_weight(qat_module, qat_module.weight, what)
        qmod.weight = Parameter(w.numpy().reshape(*w.shape, 1, 1), name=w.name)
        qmod.bias = float_bias(qat_module.bias, (1, qmod.out_features, 1, 1))
        if qat_module.bias is not None and qat_module.bias.name:
            qmod.bias.name = qat_module.bias.name
        return qmod
