"""Helpers for dataset files: the default dataset directory, md5 sums and downloads with a progress bar."""
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request

__all__ = ["default_dataset_root", "calculate_md5", "download_file"]


def default_dataset_root():
    """``$XDG_CACHE_HOME/megengine`` (``~/.cache/megengine`` by default)."""
    return os.path.expanduser(os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "megengine"))


def calculate_md5(filename, chunk_size=1 << 20):
    md5 = hashlib.md5()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            md5.update(chunk)
    return md5.hexdigest()


def download_file(url, target, md5=None, timeout=500):
    r"""Download ``url`` to the file ``target``, checking ``md5``; with a progress bar where tqdm
    is installed.

    The file is written under a temporary name and moved into place only when complete
    and matching ``md5``. Raises ``OSError`` (``urllib.error.URLError``) when the URL
    cannot be read and ``RuntimeError`` on a checksum mismatch.
    """
    try:
        from tqdm import tqdm
    except ImportError:  # a declared dependency, but a bare PYTHONPATH may lack it
        tqdm = None

    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".part", dir=directory)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            bar = None
            if tqdm is not None:
                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           unit_divisor=1024, desc=os.path.basename(target))
            try:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        if md5 is not None and digest.hexdigest() != md5:
            raise RuntimeError(
                "{} was downloaded from {} but its md5 is {}, not the expected {}; the file is "
                "corrupt or the mirror serves another version. Try again, or place a good copy "
                "at {} yourself".format(os.path.basename(target), url, digest.hexdigest(), md5, target)
            )
        shutil.move(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
