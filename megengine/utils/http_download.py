"""`download_from_url` under upstream's name for it: a URL fetched to a file, its MD5 returned
(the hub's downloader: `megengine.hub.fetcher`)."""
from ..hub.exceptions import HTTPDownloadError
from ..hub.fetcher import download_from_url

__all__ = ["HTTPDownloadError", "download_from_url"]
