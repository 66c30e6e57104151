"""docs/api/tools.rst: every command it shows parses with the tool's own options, and every
tool module has the page's entry point (main(argv)) and a section."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api" / "tools.rst"
TOOLS = ["load_network_and_run", "network_visualize", "draw_graph", "profile_analyze",
         "profiler", "dump_with_testcase_mge"]


def commands():
    text = PAGE.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"\.\. code-block:: bash\n\n((?:    .*\n|[ \t]*\n)+)", text):
        for line in block.splitlines():
            words = shlex.split(line.strip())
            if words[:2] == ["python3", "-m"]:
                out.append((words[2], words[3:]))
    return out


def test_every_tool_has_a_section_and_an_example():
    shown = {name.split(".")[-1] for name, _ in commands()}
    assert shown == set(TOOLS)
    for tool in TOOLS:
        assert f".. automodule:: megengine.tools.{tool}" in PAGE.read_text()


@pytest.mark.parametrize("name,argv", commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_page_commands_parse(name, argv):
    module = importlib.import_module(name)
    args = module.build_parser().parse_args(argv)  # an unknown option would exit here
    assert args is not None
