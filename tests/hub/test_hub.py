"""megengine.hub (megengine/hub/): hubconf from a local dir or git repo, pretrained weights."""
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine import hub

HUBCONF = '''
"""a test repository"""
import megengine.module as M
from megengine import hub

from blocks import width  # a sibling module: the repo is on sys.path while hubconf runs

dependencies = {deps}


def tiny(out_features=3):
    """A {version} linear model."""
    return M.Linear(width(), out_features)


@hub.pretrained({url!r})
def tiny_pretrained(**kwargs):
    return tiny(**kwargs)


_private = 1
'''


def write_repo(root, version="first", deps=("numpy",), url="file:///nowhere/w.pkl"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text(HUBCONF.format(deps=list(deps), version=version, url=url))
    (root / "blocks.py").write_text("def width():\n    return 4\n")
    return root


@pytest.fixture(autouse=True)
def mge_home(tmp_path, monkeypatch):
    home = tmp_path / "mge_home"
    monkeypatch.setenv("MGE_HOME", str(home))
    return home


# ----- a local directory -----

def test_local_directory(tmp_path):
    repo = str(write_repo(tmp_path / "repo"))
    # as upstream: every callable whose name does not start with "__" (imports included)
    assert sorted(hub.list(repo)) == ["tiny", "tiny_pretrained", "width"]
    assert "first linear model" in hub.help(repo, "tiny")
    model = hub.load(repo, "tiny", out_features=2)
    assert isinstance(model, M.Linear) and model.weight.shape == (2, 4)
    module = hub.import_module(repo)
    assert module.__doc__ == "a test repository" and callable(module.tiny)
    assert str(tmp_path / "repo") not in sys.path  # only while hubconf ran


def test_missing_entry_and_dependencies(tmp_path):
    repo = str(write_repo(tmp_path / "repo", deps=("numpy", "surely_not_installed_pkg")))
    with pytest.raises(RuntimeError, match="Cannot find callable nope.*tiny"):
        hub.load(repo, "nope")
    with pytest.raises(RuntimeError, match="Missing dependencies: surely_not_installed_pkg"):
        hub.load(repo, "tiny")
    with pytest.raises(RuntimeError, match="Cannot find callable _private|Cannot find callable"):
        hub.help(repo, "missing")


# ----- a git repository (local, through the git command) -----

def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture
def git_host(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs the git command")
    host = tmp_path / "githost"
    repo = write_repo(host / "megengine" / "models")
    git("init", "-q", "-b", "master", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.strip()
    git("checkout", "-q", "-b", "dev", cwd=repo)
    write_repo(repo, version="dev")
    git("commit", "-q", "-am", "dev", cwd=repo)
    git("checkout", "-q", "master", cwd=repo)
    write_repo(repo, version="second")
    git("commit", "-q", "-am", "second", cwd=repo)
    return host, repo, first


def test_git_repository_branches_commits_and_cache(git_host, mge_home):
    host, repo, first = git_host
    for git_host_arg in (str(host), "file://" + str(host)):
        assert "second linear" in hub.help("megengine/models", "tiny", git_host=git_host_arg,
                                           use_cache=False)
    assert "dev linear" in hub.help("megengine/models:dev", "tiny", git_host=str(host))
    assert "first linear" in hub.help("megengine/models", "tiny", git_host=str(host),
                                      commit=first)
    model = hub.load("megengine/models", "tiny", git_host=str(host))
    assert model.weight.shape == (3, 4)
    cached = [d for d in os.listdir(mge_home / "hub") if not d.startswith(".")]
    assert len(cached) == 3 and all(d.startswith("1_13_0") for d in cached)  # no partial clones
    assert not any((mge_home / "hub" / d / ".git").exists() for d in cached)
    # use_cache: the fetched code is reused until use_cache=False fetches again
    write_repo(repo, version="third")
    git("commit", "-q", "-am", "third", cwd=repo)
    assert "second linear" in hub.help("megengine/models", "tiny", git_host=str(host))
    assert "third linear" in hub.help("megengine/models", "tiny", git_host=str(host),
                                      use_cache=False)


def test_git_errors_are_clear(git_host):
    host, _, _ = git_host
    with pytest.raises(hub.GitPullError, match="git clone of .*megengine/absent"):
        hub.list("megengine/absent", git_host=str(host))
    with pytest.raises(hub.GitPullError, match="branch nobranch"):
        hub.list("megengine/models:nobranch", git_host=str(host))
    with pytest.raises(hub.GitCheckoutError, match="deadbeef"):
        hub.list("megengine/models", git_host=str(host), commit="deadbeef")
    with pytest.raises(hub.InvalidRepo, match="owner/name"):
        hub.list("just-a-name", git_host=str(host))
    with pytest.raises(hub.InvalidProtocol, match="HTTPS"):
        hub.list("megengine/models", git_host=str(host), protocol="FTP")
    with pytest.raises(hub.InvalidGitHost, match="malformed"):
        hub.list("megengine/models", git_host="not a host!")
    # upstream 1.13 measured: the protocol is checked first, then the host, then repo_info
    with pytest.raises(hub.InvalidProtocol):
        hub.list("just-a-name", git_host="not a host!", protocol="FTP")
    with pytest.raises(hub.InvalidGitHost):
        hub.list("just-a-name", git_host="not a host!")


# ----- pretrained weights from a URL -----

@pytest.fixture
def weights(tmp_path):
    """A state dict saved with mge.save, and the model it belongs to."""
    model = M.Linear(4, 3)
    model.weight._reset(np.arange(12, dtype=np.float32).reshape(3, 4))
    model.bias._reset(np.array([1.0, 2.0, 3.0], np.float32))
    path = tmp_path / "served" / "tiny_weights.pkl"
    path.parent.mkdir()
    mge.save(model.state_dict(), str(path))
    return path, model


def test_pretrained_decorator_loads_weights_when_asked(weights, mge_home):
    path, trained = weights
    url = path.as_uri()

    @hub.pretrained(url)
    def tiny(out_features=3):
        """Builds the tiny model."""
        return M.Linear(4, out_features)

    assert tiny.__doc__ == "Builds the tiny model." and tiny.__name__ == "tiny"
    fresh = tiny()
    assert not np.array_equal(fresh.weight.numpy(), trained.weight.numpy())
    model = tiny(pretrained=True)
    np.testing.assert_array_equal(model.weight.numpy(), trained.weight.numpy())
    np.testing.assert_array_equal(model.bias.numpy(), trained.bias.numpy())
    # cached under upstream's name: 6 hex digits of the URL's sha256, then the file name
    cached = mge_home / "serialized" / (hashlib.sha256(url.encode()).hexdigest()[:6]
                                        + "_tiny_weights.pkl")
    assert cached.exists()
    os.remove(path)  # later loads read the cache, not the URL
    np.testing.assert_array_equal(tiny(pretrained=True).bias.numpy(), [1.0, 2.0, 3.0])


def test_pretrained_is_the_only_positional_argument(weights):
    # upstream's wrapper is (pretrained=False, **kwargs): resnet50(True) loads the weights, as
    # LightCNN-MegEngine's compare.py relies on; the builder's own arguments go by keyword
    path, trained = weights

    @hub.pretrained(path.as_uri())
    def tiny(out_features=3):
        return M.Linear(4, out_features)

    np.testing.assert_array_equal(tiny(True).weight.numpy(), trained.weight.numpy())
    assert tiny(False, out_features=5).weight.shape == (5, 4)
    with pytest.raises(TypeError, match=r"tiny\(\) takes `pretrained` as its only positional"):
        tiny(False, 5)


def test_hubconf_entry_with_pretrained_weights(tmp_path, weights):
    path, trained = weights
    repo = str(write_repo(tmp_path / "repo", url=path.as_uri()))
    model = hub.load(repo, "tiny_pretrained", pretrained=True)
    np.testing.assert_array_equal(model.weight.numpy(), trained.weight.numpy())


def test_load_from_a_local_http_server(weights, tmp_path):
    path, trained = weights

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(path.parent), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        state = hub.load_serialized_obj_from_url(url, model_dir=str(tmp_path / "cache"))
        with pytest.raises(hub.HTTPDownloadError, match=r"cannot download http://127\.0\.0\.1"):
            hub.load_serialized_obj_from_url(url.replace(path.name, "absent.pkl"),
                                             model_dir=str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(np.asarray(state["weight"]), trained.weight.numpy())
    assert os.listdir(tmp_path / "cache") == [
        hashlib.sha256(url.encode()).hexdigest()[:6] + "_" + path.name]  # nothing half-written


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: what a machine offline sees
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/resnet18.pkl"
    with pytest.raises(hub.HTTPDownloadError) as info:
        hub.load_serialized_obj_from_url(url, model_dir=str(tmp_path))
    message = str(info.value)
    assert url in message and "offline" in message and str(tmp_path) in message
    assert os.listdir(tmp_path) == []
    with pytest.raises(hub.HTTPDownloadError, match="only http, https and file"):
        hub.load_serialized_obj_from_url("ftp://example.com/w.pkl", model_dir=str(tmp_path))
    assert urllib.parse.urlparse(url).port == port


def test_a_fetch_that_loses_the_race_uses_the_winners_copy(git_host, monkeypatch):
    """Distributed ranks fetch at once: the first complete copy wins, the others use it."""
    from megengine.hub import fetcher

    host, _, _ = git_host
    real_replace = os.replace

    def another_process_finished_first(src, dst):
        write_repo(Path(dst), version="winner")  # dst now exists, non-empty
        return real_replace(src, dst)

    monkeypatch.setattr(fetcher.os, "replace", another_process_finished_first)
    assert "winner linear" in hub.help("megengine/models", "tiny", git_host=str(host),
                                       use_cache=False)


def test_http_download_fetches_to_a_file_and_returns_its_md5(tmp_path, monkeypatch):
    # upstream's megengine.utils.http_download: the hub's downloader, the MD5 hex of the bytes
    from megengine.utils.http_download import HTTPDownloadError, download_from_url

    data = bytes(range(256)) * 300
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    monkeypatch.setenv("HOME", str(tmp_path))
    md5 = download_from_url(src.as_uri(), "~/copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert md5 == hashlib.md5(data).hexdigest()
    assert HTTPDownloadError is hub.HTTPDownloadError
    with pytest.raises(HTTPDownloadError, match="put it at"):
        download_from_url((tmp_path / "absent.bin").as_uri(), str(tmp_path / "copy2.bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "src.bin"]
