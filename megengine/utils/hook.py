"""`HookHandler`: what registering a hook returns; ``remove()`` unregisters it (upstream's
``megengine.utils.hook``). It is the class `Module.register_forward_hook` uses."""
from ..module.module import HookHandler

__all__ = ["HookHandler"]
