"""megengine.tools._common: what the command-line tools share (here: `tool_parser`)."""
import importlib

import pytest

from megengine.tools._common import tool_parser


@pytest.mark.parametrize("name", ["draw_graph", "dump_with_testcase_mge", "load_network_and_run",
                                  "network_visualize", "profile_analyze"])
def test_each_tool_parser_names_its_command_and_shows_defaults(name):
    parser = importlib.import_module(f"megengine.tools.{name}").build_parser()
    assert parser.prog == f"python3 -m megengine.tools.{name}"
    assert parser.description
    assert "(default: " in parser.format_help()  # every tool has an option with a default


def test_tool_parser_shows_each_options_default():
    parser = tool_parser("some_tool", "does something")
    parser.add_argument("--count", type=int, default=3, help="how many")
    assert parser.prog == "python3 -m megengine.tools.some_tool"
    assert parser.description == "does something"
    assert "how many (default: 3)" in parser.format_help()
