"""Sphinx configuration for the megengine fork's documentation (``make docs`` builds it with -W)."""
import os
import sys

# Document the checkout next to this file, not whatever megengine an environment happens to have.
sys.path.insert(0, os.path.abspath(".."))

import megengine  # noqa: E402

project = "MegEngine (fork)"
author = "the megengine fork's contributors"
copyright = "the megengine fork's contributors; upstream MegEngine by Megvii"
release = megengine.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# No network on the build machines: no intersphinx, no remote images, a builtin theme.
html_theme = "alabaster"
html_theme_options = {
    "description": "MegEngine's 1.x API on Python 3.11+, with PyTorch modules inside",
    "fixed_sidebar": True,
}
html_static_path = []
templates_path = []
exclude_patterns = ["_build"]
master_doc = "index"
language = "en"

# Docstrings are Google style ("Args:", "Returns:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "none"
autoclass_content = "both"

# Single backticks in the docstrings mean "code" (most name a Python identifier).
default_role = "code"

nitpicky = False
