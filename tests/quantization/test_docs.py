"""The QAT and quantize example in docs/api/quantization.rst runs as written."""
import re
from pathlib import Path

from megengine.core.tensor import dtype
from megengine.module import qat as QAT
from megengine.module import quantized as Q

import pytest

from devices import host_default_device  # noqa: F401  (the fixture below)

# quantized tensors live on CPU devices only: on a CUDA machine these tests run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api" / "quantization.rst"
BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)")


def test_the_qat_example_runs():
    (block,) = BLOCK.findall(PAGE.read_text())
    code = "\n".join(line[4:] for line in block.splitlines())
    scope = {}
    exec(compile(code, str(PAGE), "exec"), scope)

    net = scope["net"]
    assert isinstance(net.conv, QAT.ConvBnRelu2d) and isinstance(net.fc, QAT.Linear)
    assert float(scope["scale"].numpy()) > 0 and not net.conv.act_observer.enabled
    q_net = scope["q_net"]
    assert isinstance(q_net.conv, Q.ConvBnRelu2d) and isinstance(q_net.fc, Q.Linear)
    assert dtype.is_quantize(scope["w"].dtype) and scope["w"].dtype == "int8"
    step = dtype.get_scale(q_net.fc.output_dtype)
    assert abs(scope["out"].numpy() - net(scope["x"]).numpy()).max() <= step * 1.001
