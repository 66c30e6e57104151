"""Tests of megengine/module/quantized/elemwise.py and concat.py: Elemwise's quantized modes and
Concat of inputs with different scales, against the QAT layers."""
import pytest

from megengine.module import qat as QAT
from megengine.module import quantized as Q
from quantized_oracle import ConcatAlong, check_against_qat, fixed_qat, quantized_input


@pytest.mark.parametrize("method", ["ADD", "FUSE_ADD_RELU", "MUL", "SUB", "RELU", "ABS"])
def test_quantized_elemwise_matches_the_qat_layer(method):
    qat = fixed_qat(QAT.Elemwise(method))
    q = Q.Elemwise.from_qat_module(qat)
    q.eval()
    a, b = quantized_input((3, 5), seed=1), quantized_input((3, 5), seed=2, scale=0.03)
    check_against_qat(qat, q, *((a,) if method in ("RELU", "ABS") else (a, b)))


def test_quantized_concat_requantizes_each_input_to_the_output_scale():
    qat = fixed_qat(QAT.Concat())
    q = Q.Concat.from_qat_module(qat)
    q.eval()
    check_against_qat(ConcatAlong(qat, axis=1), ConcatAlong(q, axis=1),
                      quantized_input((2, 3), seed=3), quantized_input((2, 2), seed=4, scale=0.01))
