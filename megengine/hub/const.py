"""Names and defaults `megengine.hub` shares with upstream (cache layout, hubconf file, protocol)."""
DEFAULT_BRANCH_NAME = "master"
HUBCONF = "hubconf.py"
HUBDEPENDENCY = "dependencies"
DEFAULT_GIT_HOST = "github.com"
ENV_MGE_HOME = "MGE_HOME"
ENV_XDG_CACHE_HOME = "XDG_CACHE_HOME"
DEFAULT_CACHE_DIR = "~/.cache"
DEFAULT_PROTOCOL = "HTTPS"
HTTP_CONNECTION_TIMEOUT = 5
HTTP_READ_TIMEOUT = 120
CHUNK_SIZE = 1 << 20
