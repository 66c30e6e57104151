"""The package layout for setuptools (the metadata is pyproject.toml's [project] table).

The C++ bridge ships as source inside the package (csrc/ -> megengine/_csrc/) and is compiled
with ninja on first use or by ``python -m megengine.module.pytorch build``, never here.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["megengine", "megengine.*", "megenginelite"]) + ["megengine._csrc"],
    package_dir={"megengine._csrc": "csrc"},
    package_data={"megengine._csrc": ["*.cpp", "*.h"]},
)
