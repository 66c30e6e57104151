"""Upstream's older home of the collectives: re-exports `megengine.functional.distributed`."""
from ..functional.distributed import *  # noqa: F401,F403
from ..functional.distributed import __all__  # noqa: F401
from ..functional.distributed import collective_comm  # noqa: F401  (outside upstream's __all__)
