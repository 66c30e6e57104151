"""The QAT example in docs/api/quantization.rst runs as written."""
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api" / "quantization.rst"
BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)")


def test_the_qat_example_runs():
    (block,) = BLOCK.findall(PAGE.read_text())
    code = "\n".join(line[4:] for line in block.splitlines())
    scope = {}
    exec(compile(code, str(PAGE), "exec"), scope)
    from megengine.module import qat as QAT

    net = scope["net"]
    assert isinstance(net.conv, QAT.ConvBnRelu2d) and isinstance(net.fc, QAT.Linear)
    assert float(scope["scale"].numpy()) > 0 and not net.conv.act_observer.enabled
