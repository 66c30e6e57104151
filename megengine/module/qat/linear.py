"""QAT `Linear` and `LinearRelu`: a Linear layer (then relu) whose weight, bias and output are
fake-quantized."""
from ... import functional as F
from .. import linear as Float
from .module import QATModule

__all__ = ["Linear", "LinearRelu"]


class Linear(Float.Linear, QATModule):
    """``act_fq(x @ weight_fq(W)^T + bias_fq(b))``: the weight through its observer and fake
    quantizer, the bias fake-quantized to qint32 (scale: input scale * weight scale), the
    output through the activation observer and fake quantizer."""

    def calc_linear_qat(self, inp):
        """The linear map with the fake-quantized weight and bias (no output quantization)."""
        w_qat = self.apply_quant_weight(self.weight)
        b_qat = self.apply_quant_bias(self.bias, inp, w_qat)
        return self.calc_linear(inp, w_qat, b_qat)

    def forward(self, inp):
        return self.apply_quant_activation(self.calc_linear_qat(inp))

    @classmethod
    def from_float_module(cls, float_module: Float.Linear):
        qat_module = cls(float_module.in_features, float_module.out_features,
                         bias=float_module.bias is not None,
                         compute_mode=float_module.compute_mode, name=float_module.name)
        qat_module.weight = float_module.weight
        qat_module.bias = float_module.bias
        return qat_module


class LinearRelu(Linear):
    """``act_fq(relu(x @ weight_fq(W)^T + bias_fq(b)))``: relu before the output is quantized,
    so the negative half maps exactly to 0 (QAT version of :class:`~.module.LinearRelu`)."""

    def forward(self, inp):
        return self.apply_quant_activation(F.relu(self.calc_linear_qat(inp)))
