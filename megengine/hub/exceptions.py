"""Errors `megengine.hub` raises (upstream's classes, plus the download error upstream keeps in utils)."""


class FetcherError(Exception):
    """Fetching a repository failed."""


class InvalidRepo(FetcherError):
    """``repo_info`` is not ``"owner/name[:branch]"`` (or a local directory with hubconf.py)."""


class InvalidGitHost(FetcherError):
    """``git_host`` is neither a host name, an IPv4 address nor a local directory."""


class GitPullError(FetcherError):
    """``git clone`` failed (wrong name or branch, no network, no access)."""


class GitCheckoutError(FetcherError):
    """``git checkout`` of the requested commit failed."""


class InvalidProtocol(FetcherError):
    """``protocol`` is not one of "HTTPS" and "SSH"."""


class HTTPDownloadError(RuntimeError):
    """Downloading a file (pretrained weights) failed; the message names the URL."""
