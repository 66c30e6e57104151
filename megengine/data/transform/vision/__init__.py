"""Vision transforms and the numpy image functions behind them."""
from . import functional
from .transform import *  # noqa: F401,F403
