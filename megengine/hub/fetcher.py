"""Getting code and files for `megengine.hub`: git clones of model repositories, URL downloads."""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from ..logger import get_logger
from .const import CHUNK_SIZE, DEFAULT_BRANCH_NAME, HTTP_CONNECTION_TIMEOUT, HTTP_READ_TIMEOUT
from .exceptions import (GitCheckoutError, GitPullError, HTTPDownloadError, InvalidGitHost,
                         InvalidProtocol, InvalidRepo)

logger = get_logger(__name__)

_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-_]{0,61}[a-z0-9])?\.)+[a-z0-9][a-z0-9-_]{0,61}[a-z]$")
PROTOCOLS = ("HTTPS", "SSH")


def parse_repo_info(repo_info: str):
    """``"owner/name[:branch]"`` -> (owner, name, branch); the branch defaults to master."""
    prefix, _, branch = repo_info.partition(":")
    parts = prefix.split("/")
    if len(parts) != 2 or not all(parts) or (":" in repo_info and not branch):
        raise InvalidRepo(
            f"repo_info {repo_info!r} is invalid: expected 'owner/name' or 'owner/name:branch' "
            "(or a local directory holding a hubconf.py)"
        )
    return parts[0], parts[1], branch or DEFAULT_BRANCH_NAME


def _local_host(git_host: str):
    """The directory a local ``git_host`` names (a path or a file:// URL), else None."""
    if git_host.startswith("file://"):
        return urllib.parse.urlparse(git_host).path
    if os.path.isabs(os.path.expanduser(git_host)) and os.path.isdir(os.path.expanduser(git_host)):
        return os.path.expanduser(git_host)
    return None


def _is_ipv4(s: str) -> bool:
    nums = s.split(".")
    return len(nums) == 4 and all(n.isdigit() and 0 <= int(n) < 256 for n in nums)


def check_host(git_host: str, protocol: str):
    """Raise unless ``protocol`` and ``git_host`` are valid (checked in upstream's order: the
    protocol, then the host, before ``repo_info``); return the directory a local host names,
    else None."""
    if protocol not in PROTOCOLS:
        raise InvalidProtocol(f"protocol {protocol!r} is invalid; use one of {PROTOCOLS}")
    local = _local_host(git_host)
    if local is not None:
        return local
    try:
        host_ok = bool(_DOMAIN.match(git_host.encode("idna").decode("ascii")))
    except UnicodeError:
        host_ok = False
    if not (host_ok or _is_ipv4(git_host)):
        raise InvalidGitHost(
            f"git_host {git_host!r} is malformed: give a host name such as 'github.com', an "
            "IPv4 address, or the absolute path (or file:// URL) of a local directory"
        )
    return None


def git_url(git_host: str, local, owner: str, name: str, protocol: str) -> str:
    """Where to clone ``owner/name`` from: the local directory ``local`` (what `check_host`
    returned), or the host over HTTPS/SSH."""
    if local is not None:
        return os.path.join(local, owner, name)
    if protocol == "SSH":
        return f"git@{git_host}:{owner}/{name}.git"
    return f"https://{git_host}/{owner}/{name}.git"


def _git(args, cwd=None):
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise GitPullError("megengine.hub needs the `git` command to fetch repositories; "
                           "install git, or pass a local directory holding hubconf.py") from None


def fetch_git(git_host, repo_info, use_cache, commit, protocol, cache_dir, version):
    """Clone ``repo_info`` into ``cache_dir`` (reusing a cached copy when ``use_cache``) and
    return the directory. The cache name depends on the version, repo, branch and commit,
    as upstream's does."""
    local = check_host(git_host, protocol)
    owner, name, branch = parse_repo_info(repo_info)
    url = git_url(git_host, local, owner, name, protocol)
    raw = f"{owner}_{name}_{branch.replace('/', '_')}" + (f"_{commit}" if commit else "")
    repo_dir = os.path.join(cache_dir, "_".join(version.split(".")) + "_"
                            + hashlib.sha1(raw.encode()).hexdigest()[:16])
    if use_cache and os.path.isdir(repo_dir):
        logger.debug("hub: using cached %s", repo_dir)
        return repo_dir
    os.makedirs(cache_dir, exist_ok=True)
    # clone next to the target and move it in when complete: an interrupted clone never
    # leaves a half-filled cache entry behind
    work = tempfile.mkdtemp(prefix=".clone_", dir=cache_dir)
    try:
        target = os.path.join(work, "repo")
        if commit is None:
            p = _git(["clone", "--depth=1", "-b", branch, url, target])
        else:
            p = _git(["clone", url, target])
        if p.returncode:
            raise GitPullError(f"git clone of {url} (branch {branch}) failed; check repo_info, "
                               f"git_host and the network:\n{p.stderr.strip()}")
        if commit is not None:
            p = _git(["checkout", commit], cwd=target)
            if p.returncode:
                raise GitCheckoutError(f"git checkout {commit} in {url} failed; check the "
                                       f"commit id:\n{p.stderr.strip()}")
        shutil.rmtree(os.path.join(target, ".git"), ignore_errors=True)
        shutil.rmtree(repo_dir, ignore_errors=True)
        try:
            os.replace(target, repo_dir)
        except OSError:
            # several processes (distributed ranks) fetching at once: one copy is as good as
            # another, so the first to finish wins and the others use it
            if not os.path.isdir(repo_dir):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return repo_dir


def download_from_url(url: str, dst: str) -> str:
    """Download ``url`` (http, https or file) to the file ``dst`` (``~`` expanded),
    atomically, and return the MD5 of its bytes (hex), as upstream's.

    A failure raises :class:`HTTPDownloadError` naming the URL and ``dst``, where a copy
    fetched by other means can be put.
    """
    dst = os.path.expanduser(dst)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise HTTPDownloadError(f"cannot download {url!r}: only http, https and file URLs are "
                                "supported")
    fd, tmp = tempfile.mkstemp(prefix=".download_", dir=os.path.dirname(dst) or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                timeout = HTTP_CONNECTION_TIMEOUT + HTTP_READ_TIMEOUT
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or 0)
                    md5 = _copy(resp, out, total, url)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise HTTPDownloadError(
                    f"cannot download {url} ({reason}); if this machine is offline, fetch the "
                    f"file elsewhere and put it at {dst}"
                ) from None
        os.replace(tmp, dst)
        return md5
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _copy(resp, out, total, url):
    """Write ``resp``'s bytes to ``out``; their MD5 (hex)."""
    md5 = hashlib.md5()
    bar = None
    if total > 8 * CHUNK_SIZE:  # a progress bar only for downloads that take a while
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="iB", unit_scale=True, desc=os.path.basename(url))
        except ImportError:
            pass
    try:
        while True:
            chunk = resp.read(CHUNK_SIZE)
            if not chunk:
                break
            out.write(chunk)
            md5.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return md5.hexdigest()
