"""The data-parallel page (docs/distributed.rst, and its Chinese twin) runs as written."""
import re
from pathlib import Path

import numpy as np

from devices import skip_if_forked_torch_autograd_fails

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"\.\. code-block:: (python|bash)\n\n((?:    .*\n|[ \t]*\n)+)")


def _blocks(page):
    return [(kind, re.sub(r"^    ", "", body, flags=re.M).rstrip() + "\n") for kind, body in
            BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))]


def test_the_launcher_example_trains_on_two_processes(capsys):
    kind, code = _blocks("distributed.rst")[0]
    assert kind == "python" and "dist.launcher(train, n_gpus=2)" in code
    # CPU processes here (on a GPU machine the example would take two GPUs)
    code = code.replace("dist.launcher(train, n_gpus=2)",
                        "dist.launcher(train, n_gpus=2, device_type='cpu', timeout=120)")
    skip_if_forked_torch_autograd_fails()  # (its ranks train a PyTorchModule)
    scope = {"__name__": "docs_distributed_example"}
    exec(compile(code, "docs/distributed.rst", "exec"), scope)
    results = scope["results"]
    assert [r[0] for r in results] == [0, 1]
    assert all(np.isfinite(r[1]) for r in results)
    assert "[(0, " in capsys.readouterr().out


def test_the_chinese_page_shows_the_same_code():
    assert _blocks("zh/distributed.rst") == _blocks("distributed.rst")
