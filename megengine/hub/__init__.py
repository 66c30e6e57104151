"""`megengine.hub`: models from a git repository's hubconf.py, and pretrained weights from URLs."""
from .exceptions import (FetcherError, GitCheckoutError, GitPullError, HTTPDownloadError,
                         InvalidGitHost, InvalidProtocol, InvalidRepo)
from .hub import help, import_module, list, load, load_serialized_obj_from_url, pretrained

__all__ = ["help", "import_module", "list", "load", "load_serialized_obj_from_url", "pretrained",
           "FetcherError", "InvalidRepo", "InvalidGitHost", "GitPullError", "GitCheckoutError",
           "InvalidProtocol", "HTTPDownloadError"]
