"""Packaging: the pure-Python engine plus the C++ bridge source, compiled on first use (not here)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "megengine" / "__init__.py").read_text()).group(1)

setup(
    name="megengine-fork",
    version=version,
    description="MegEngine's Python API on a numpy engine, with PyTorch modules embeddable inside",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megengine", "megengine.*"]) + ["megengine._csrc"],
    # The C++ bridge ships as source inside the package and is compiled with ninja on first use.
    package_dir={"megengine._csrc": "csrc"},
    package_data={"megengine._csrc": ["*.cpp", "*.h"]},
    install_requires=["numpy>=1.23", "torch>=2.1", "ninja", "tqdm"],
    extras_require={
        "dev": ["pytest"],
        "demo": ["scikit-learn", "matplotlib"],
        "cuda": ["cupy-cuda12x"],
    },
)
