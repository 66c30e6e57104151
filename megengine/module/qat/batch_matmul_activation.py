"""QAT `BatchMatMulActivation`: batched matmul (+ bias, activation) with fake-quantized weight,
bias and output."""
from ... import functional as F
from .. import batch_matmul_activation as Float
from .module import QATModule

__all__ = ["BatchMatMulActivation"]


class BatchMatMulActivation(Float.BatchMatMulActivation, QATModule):
    """``act_fq(activation(weight_fq(W) @ x + bias_fq(b)))``."""

    def forward(self, inp):
        if inp.ndim != 3 or inp.shape[0] != self.batch or inp.shape[1] != self.in_features:
            raise ValueError(
                f"BatchMatMulActivation: input must be (batch={self.batch}, "
                f"in_features={self.in_features}, n), got shape {inp.shape}")
        w_qat = self.apply_quant_weight(self.weight)
        b_qat = self.apply_quant_bias(self.bias, inp, w_qat)
        out = F.matmul(w_qat, inp)
        if b_qat is not None:
            out = out + b_qat.reshape(1, self.out_features, 1)
        if self.nonlinear_mode == "relu":
            out = F.relu(out)
        return self.apply_quant_activation(out)

    @classmethod
    def from_float_module(cls, float_module: Float.BatchMatMulActivation):
        qat_module = cls(float_module.batch, float_module.in_features, float_module.out_features,
                         float_module.bias is not None, float_module.nonlinear_mode,
                         name=float_module.name)
        qat_module.weight = float_module.weight
        qat_module.bias = float_module.bias
        return qat_module
