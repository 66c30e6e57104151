"""Tests for megengine.core._trace_option: the symbolic-shape switch is off by default and on
when MEGENGINE_USE_SYMBOLIC_SHAPE is set, as upstream's."""
import os
import subprocess
import sys

import megengine
from megengine.core._trace_option import set_symbolic_shape, use_symbolic_shape


def _default_in_child(env_value):
    env = {k: v for k, v in os.environ.items() if k != "MEGENGINE_USE_SYMBOLIC_SHAPE"}
    # the child imports the same megengine as this process
    root = os.path.dirname(os.path.dirname(os.path.abspath(megengine.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    if env_value is not None:
        env["MEGENGINE_USE_SYMBOLIC_SHAPE"] = env_value
    code = "from megengine.core._trace_option import use_symbolic_shape as u; print(u())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_default_follows_the_environment():
    assert _default_in_child(None) == "False"
    assert _default_in_child("1") == "True"


def test_set_returns_the_previous_value():
    old = set_symbolic_shape(True)
    try:
        assert use_symbolic_shape() is True
        assert set_symbolic_shape(False) is True and use_symbolic_shape() is False
    finally:
        set_symbolic_shape(old)
