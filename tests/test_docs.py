"""The embedding guide's code, English and Chinese pages, runs as written (docs stay honest)."""
import doctest
import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)")


def python_blocks(page):
    return ["\n".join(line[4:] for line in b.splitlines()) for b in BLOCK.findall(page.read_text())]


@pytest.mark.parametrize("page", ["pytorch_embedding.rst", "zh/pytorch_embedding.rst"])
def test_guide_code_blocks_run(page, monkeypatch):
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 4, "the extractor, the model, training, saving"
    # a real module, as a reader's script is: the saving block pickles the page's classes by name
    module = types.ModuleType("guide_page_" + page.replace("/", "_").replace(".", "_"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    scope = module.__dict__
    for i, block in enumerate(blocks):  # in page order, as a reader runs them
        if block.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(block, scope, page, page, 0)
            runner = doctest.DocTestRunner()
            runner.run(test)
            assert runner.failures == 0, f"{page}: doctest block {i} failed"
        else:
            exec(compile(block, f"{page} block {i}", "exec"), scope)
        if i == 1:
            assert "lenet" in scope, "the second block builds `lenet`"
    assert "restored" in scope and "twin" in scope, "the saving block ran"


def test_legacy_page_names_exist():
    """docs/api/legacy.rst: every 0.x ``F.``/``Tensor.``/``dist.``/``megengine.core`` name in the
    "Provided" table resolves, and none in "Not provided" does (the page stays true)."""
    import megengine as mge
    import megengine.core as core
    import megengine.distributed as dist
    import megengine.functional as F

    text = (DOCS / "api" / "legacy.rst").read_text()
    provided, missing = text.split("Not provided, and why")
    roots = {"F": F, "Tensor": mge.Tensor, "dist": dist}
    names = re.findall(r"``(F|Tensor|dist)\.(\w+)", provided)
    assert len(names) > 30
    for root, name in names:
        assert hasattr(roots[root], name), f"legacy.rst lists {root}.{name}, which is missing"
    core_row = provided.split("``megengine.core.Tensor``")[1].split("     - ")[0]
    for name in ["Tensor"] + re.findall(r"``(\w+)``", core_row):
        assert hasattr(core, name), f"legacy.rst lists megengine.core.{name}, which is missing"
    for name in ("add_extra_vardep",):  # (core.Graph: eager_evaluation=True is provided)
        assert not hasattr(core, name) and not hasattr(F, name)
    import megengine.module as M

    assert "``F.add_extra_vardep``" in missing and "``M.ParamPack``" in missing
    assert not hasattr(M, "ParamPack")
