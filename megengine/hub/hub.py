"""`megengine.hub`: list/load/help/import_module over hubconf.py, pretrained weights by URL."""
import functools
import hashlib
import os
import sys
import types
import urllib.parse
from typing import Any, List

from ..logger import get_logger
from .const import (DEFAULT_CACHE_DIR, DEFAULT_GIT_HOST, DEFAULT_PROTOCOL, ENV_MGE_HOME,
                    ENV_XDG_CACHE_HOME, HUBCONF, HUBDEPENDENCY)
from .fetcher import download_from_url, fetch_git
from .tools import check_module_exists, load_module

__all__ = ["list", "load", "help", "load_serialized_obj_from_url", "pretrained", "import_module"]

logger = get_logger(__name__)


def _get_megengine_home() -> str:
    """``$MGE_HOME``, else ``$XDG_CACHE_HOME/megengine``, else ``~/.cache/megengine``."""
    default = os.path.join(os.getenv(ENV_XDG_CACHE_HOME, DEFAULT_CACHE_DIR), "megengine")
    return os.path.expanduser(os.getenv(ENV_MGE_HOME, default))


def _repo_dir(repo_info, git_host, use_cache, commit, protocol):
    """The directory holding the repository's hubconf.py: ``repo_info`` itself when it is a
    local directory with one, else a clone of the git repository in the hub cache."""
    if not isinstance(repo_info, str):
        raise TypeError(f"repo_info must be a string, got {type(repo_info).__name__}")
    local = os.path.expanduser(repo_info)
    if os.path.isfile(os.path.join(local, HUBCONF)):
        return os.path.abspath(local)
    from .. import __version__

    cache_dir = os.path.join(_get_megengine_home(), "hub")
    return fetch_git(git_host, repo_info, use_cache, commit, protocol, cache_dir, __version__)


def _init_hub(repo_info, git_host=DEFAULT_GIT_HOST, use_cache=True, commit=None,
              protocol=DEFAULT_PROTOCOL) -> types.ModuleType:
    repo_dir = _repo_dir(repo_info, git_host, use_cache, commit, protocol)
    hubconf = os.path.join(repo_dir, HUBCONF)
    if not os.path.isfile(hubconf):
        raise FileNotFoundError(f"{repo_info!r} has no {HUBCONF} at its top level ({repo_dir})")
    # hubconf.py imports its sibling modules by plain `import`: the repo is on sys.path while
    # it runs, and only then
    sys.path.insert(0, repo_dir)
    try:
        return load_module(HUBCONF[:-3], hubconf)
    finally:
        sys.path.remove(repo_dir)


def import_module(repo_info: str, git_host: str = DEFAULT_GIT_HOST, use_cache: bool = True,
                  commit: str = None, protocol: str = DEFAULT_PROTOCOL) -> types.ModuleType:
    """The hubconf.py of a repository, imported as a module.

    Args:
        repo_info: ``"owner/name[:branch]"`` (a tag or branch, ``master`` if not given), or a
            local directory that holds a hubconf.py (used as it is, nothing is fetched).
        git_host: host of the git repository, e.g. ``"github.com"``; or the absolute path
            (or ``file://`` URL) of a local directory whose ``owner/name`` is a git repository.
        use_cache: reuse the code fetched before instead of fetching again.
        commit: a commit to check out instead of the branch head.
        protocol: ``"HTTPS"`` or ``"SSH"`` (``git@host:owner/name.git``).

    Fetching runs the ``git`` command; the code goes to ``$MGE_HOME/hub``.
    """
    return _init_hub(repo_info, git_host, use_cache, commit, protocol)


def list(repo_info: str, git_host: str = DEFAULT_GIT_HOST, use_cache: bool = True,
         commit: str = None, protocol: str = DEFAULT_PROTOCOL) -> List[str]:
    """Names of the entrypoints (public callables) in the repository's hubconf.py.
    Arguments as :func:`import_module`."""
    hubmodule = _init_hub(repo_info, git_host, use_cache, commit, protocol)
    return [name for name in dir(hubmodule)
            if not name.startswith("__") and callable(getattr(hubmodule, name))]


def _entry(hubmodule, entry):
    fn = getattr(hubmodule, entry, None)
    if not callable(fn):
        offered = [n for n in dir(hubmodule)
                   if not n.startswith("_") and callable(getattr(hubmodule, n))]
        raise RuntimeError(f"Cannot find callable {entry} in hubconf.py; the repository offers "
                           f"{offered}")
    return fn


def load(repo_info: str, entry: str, *args, git_host: str = DEFAULT_GIT_HOST,
         use_cache: bool = True, commit: str = None, protocol: str = DEFAULT_PROTOCOL,
         **kwargs) -> Any:
    """Call entrypoint ``entry`` of the repository's hubconf.py with ``*args, **kwargs``
    (e.g. ``pretrained=True``) and return what it returns, usually a model.

    The modules listed in hubconf's ``dependencies`` must be importable. Other arguments as
    :func:`import_module`.
    """
    hubmodule = _init_hub(repo_info, git_host, use_cache, commit, protocol)
    fn = _entry(hubmodule, entry)
    missing = [m for m in getattr(hubmodule, HUBDEPENDENCY, None) or ()
               if not check_module_exists(m)]
    if missing:
        raise RuntimeError(f"Missing dependencies: {', '.join(missing)} (needed by "
                           f"{repo_info}'s hubconf.py); install them first")
    return fn(*args, **kwargs)


def help(repo_info: str, entry: str, git_host: str = DEFAULT_GIT_HOST, use_cache: bool = True,
         commit: str = None, protocol: str = DEFAULT_PROTOCOL) -> str:
    """The docstring of entrypoint ``entry``. Arguments as :func:`import_module`."""
    hubmodule = _init_hub(repo_info, git_host, use_cache, commit, protocol)
    return _entry(hubmodule, entry).__doc__


def load_serialized_obj_from_url(url: str, model_dir=None) -> Any:
    """Load an object saved by ``megengine.save`` from ``url``, downloading it once.

    The file is cached in ``model_dir`` (default ``$MGE_HOME/serialized``) under the URL's
    file name prefixed with 6 hex digits of the URL's SHA-256 (upstream's cache names, so two
    URLs with one file name do not clash); later calls read the cached file. ``url`` may be
    http(s), ``file://`` or a local path. Offline, a missing file raises
    :class:`~megengine.hub.HTTPDownloadError` naming the URL and the path to put the file at.
    """
    from ..serialization import load as _load

    if model_dir is None:
        model_dir = os.path.join(_get_megengine_home(), "serialized")
    os.makedirs(model_dir, exist_ok=True)
    parts = urllib.parse.urlparse(url)
    if not parts.scheme:  # a local path: read it where it is
        return _load(os.path.expanduser(url))
    filename = os.path.basename(parts.path) or "download"
    cached_file = os.path.join(model_dir,
                               hashlib.sha256(url.encode()).hexdigest()[:6] + "_" + filename)
    if not os.path.exists(cached_file):
        logger.info("load_serialized_obj_from_url: downloading %s to %s", url, cached_file)
        download_from_url(url, cached_file)
    else:
        logger.debug("load_serialized_obj_from_url: using cached %s", cached_file)
    return _load(cached_file)


class pretrained:
    """Decorator for a model-building function: adds a ``pretrained=False`` argument; with
    ``pretrained=True`` the built model gets the weights saved at ``url``. As upstream's,
    ``pretrained`` is the decorated function's only positional argument (``resnet18(True)``
    loads the weights); the builder's own arguments are passed by keyword.

    .. code-block:: python

        @hub.pretrained("https://data.megengine.org.cn/models/weights/resnet18.pkl")
        def resnet18(**kwargs):
            return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)

        model = resnet18(pretrained=True)

    The weights are downloaded once (see :func:`load_serialized_obj_from_url`) and loaded
    with ``model.load_state_dict``.
    """

    def __init__(self, url: str):
        self.url = url

    def __call__(self, func):
        url = self.url

        # upstream's wrapper takes ``pretrained`` as its one positional argument, so that
        # ``resnet50(True)`` loads the weights (LightCNN-MegEngine's compare.py calls it so)
        @functools.wraps(func)
        def pretrained_model_func(pretrained=False, *args, **kwargs):
            if args:
                raise TypeError(
                    f"{func.__name__}() takes `pretrained` as its only positional argument (as "
                    f"upstream's hub.pretrained); pass {func.__name__}'s own arguments by keyword")
            model = func(**kwargs)
            if pretrained:
                model.load_state_dict(load_serialized_obj_from_url(url))
            return model

        pretrained_model_func.url = url
        return pretrained_model_func

