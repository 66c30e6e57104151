"""Upstream's older home of the collectives: re-exports `megengine.functional.distributed`."""
import importlib


def __getattr__(name):
    # Resolved on first use, not at import: `megengine.functional.distributed` imports this
    # package while it loads, so copying its names here at import time would read a half-made
    # module whenever it is the first of the two to be imported.
    return getattr(importlib.import_module("megengine.functional.distributed"), name)
