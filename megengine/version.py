"""Upstream's ``megengine.version``: the package version (``__version__``, the one
``megengine.__version__`` gives) and ``git_version``, the commit a build came from (upstream
records it at build time; this fork's source tree does not, so it is ``"unknown"``)."""
from . import __version__  # noqa: F401

git_version = "unknown"
