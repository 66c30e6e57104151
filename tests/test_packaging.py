"""Packaging: the wheel carries the PEP 621 metadata (Python 3.11+, Apache-2.0) and the C++ source."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    # build from a copy, so the checkout gets no build/ or *.egg-info
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "csrc", source / "csrc")
    for package in ("megengine", "megenginelite"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and "No module named pip" in run.stderr:
        pytest.skip("pip is not installed in this environment")
    assert run.returncode == 0, run.stderr
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_wheel_metadata_matches_the_readme(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(meta).decode()
    assert "Requires-Python: >=3.11" in text  # the README promises Python 3.11+
    assert "License-Expression: Apache-2.0" in text  # as upstream MegEngine
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "megengine" / "__init__.py").read_text())
    assert f"Version: {version.group(1)}" in text
    for dependency in ("numpy", "torch", "ninja", "tqdm"):
        assert re.search(rf"^Requires-Dist: {dependency}\b", text, re.M), dependency


def test_wheel_ships_the_cpp_source_the_license_and_the_build_command(wheel):
    names = wheel.namelist()
    assert wheel.read("megengine/_csrc/torch_bridge.cpp") == (REPO / "csrc" / "torch_bridge.cpp").read_bytes()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "megengine/module/pytorch/__main__.py" in names
    assert "megenginelite/network.py" in names  # upstream's wheel ships MegEngine Lite's API too
    assert not any(n.endswith(".so") for n in names), "the operator is compiled on the user's machine"


@pytest.mark.parametrize("package, old, module", [("numpy", "1.26.4", "megengine"),
                                                  ("torch", "2.5.1", "megengine.module.pytorch")])
def test_a_dependency_below_its_declared_floor_is_refused_at_import(tmp_path, package, old, module):
    # the floor pyproject.toml declares is the one the import enforces, with what to do about it;
    # a stand-in package that reports an old version comes first on the path
    floor = re.search(rf'"{package}>=([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(f"__version__ = {old!r}\n")
    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0
    assert f"ImportError: megengine needs {package} {floor} or newer, found {package} {old}" \
        in run.stderr
    assert f"pip install '{package}>={floor}'" in run.stderr
