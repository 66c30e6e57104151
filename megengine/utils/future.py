"""`Future`: a value handed from one thread to another once; with ``ack`` the producer waits
until the consumer has taken it (upstream's ``megengine.utils.future``)."""
import threading

__all__ = ["Future"]


class Future:
    """``set(value)`` in one thread, ``get()`` in another. ``ack=True``: ``set`` returns only
    after ``get`` took the value. ``timeout`` (seconds, default none) bounds each wait; a wait
    that runs out raises TimeoutError."""

    def __init__(self, ack=True):
        self.ready = threading.Event()
        self.ack = threading.Event() if ack else None

    def set(self, value, timeout=None):
        self.value = value
        self.ready.set()
        if self.ack is not None and not self.ack.wait(timeout):
            raise TimeoutError(f"Future.set: nobody took the value within {timeout} s")

    def get(self, timeout=None):
        if not self.ready.wait(timeout):
            raise TimeoutError(f"Future.get: no value was set within {timeout} s")
        if self.ack is not None:
            self.ack.set()
        return self.value
