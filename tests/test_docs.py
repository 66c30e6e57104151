"""The embedding guide's code, English and Chinese pages, runs as written (docs stay honest)."""
import doctest
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)")


def python_blocks(page):
    return ["\n".join(line[4:] for line in b.splitlines()) for b in BLOCK.findall(page.read_text())]


@pytest.mark.parametrize("page", ["pytorch_embedding.rst", "zh/pytorch_embedding.rst"])
def test_guide_code_blocks_run(page):
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 3, "the guide's model, extractor and training blocks"
    wrapper, extractor, *rest = blocks
    scope = {}
    # The guide shows the megengine model first and defines the torch extractor (and
    # `lenet_extractor`) after it, as the original does; run them in dependency order.
    exec(extractor, scope)
    exec(wrapper, scope)
    assert "lenet" in scope, "the first block builds `lenet`"
    for block in rest:
        if block.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(block, scope, page, page, 0)
            runner = doctest.DocTestRunner()
            runner.run(test)
            assert runner.failures == 0, f"{page}: a doctest block failed"
        else:
            exec(block, scope)
