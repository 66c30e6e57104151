"""`TensorSanityCheck`: inside its ``with`` block, every op's inputs are checksummed before and
after the op runs; an op that changed an input behind the engine's back (an op class whose
``forward`` writes into its input arrays, ``a += 1``) raises at once, naming the op and the
input.

Upstream also remembers each tensor's checksum between ops and complains when a tensor changed
before its next use. Here Parameters and buffers are legitimately updated in place by the
engine itself (optimizer steps, ``set_value``, a torch module's running statistics, which
share memory with megengine), so only the change made by an op during its own run is
reported. The check goes through the dispatcher's profile hook (one global read per op when
off); it cannot run while a `~megengine.utils.profiler.Profiler` does.
"""
import zlib

from ..core import dispatch

__all__ = ["TensorSanityCheck", "TensorModifiedError"]


class TensorModifiedError(RuntimeError):
    """An op changed one of its input tensors in place."""


def _checksum(array):
    """A CRC of the array's bytes (GPU arrays are copied to the host first)."""
    if type(array).__module__.startswith("cupy"):
        array = array.get()
    try:
        view = memoryview(array).cast("B")  # contiguous: no copy
    except (TypeError, ValueError):
        view = array.tobytes()  # strided views: copied once for the sum
    return zlib.crc32(view)


class TensorSanityCheck:
    r"""A ``with`` block (or ``enable()``/``disable()``) in which ops may not modify their inputs.

    Example::

        from megengine import tensor
        from megengine.utils.tensor_sanity_check import TensorSanityCheck

        with TensorSanityCheck() as checker:
            a = tensor([1, 2])
            b = tensor([3, 4])
            c = a + b          # fine; an op writing into a or b would raise TensorModifiedError

    Every input is read twice per op, so a checked block runs several times slower: use it to
    find a culprit, not in training runs.
    """

    def __init__(self):
        self._hook = self._on_apply  # made once: installed again after every op
        self._enabled = False
        self.checked_ops = 0  # how many ops ran under the check (a test can see it worked)

    def enable(self):
        if dispatch._profile_hook is not None:
            raise RuntimeError("TensorSanityCheck: the dispatcher's op hook is in use (a Profiler "
                               "or another check is running); run them one after the other")
        dispatch._profile_hook = self._hook
        self._enabled = True
        return self

    def disable(self):
        self._enabled = False
        if dispatch._profile_hook is self._hook:
            dispatch._profile_hook = None

    def __enter__(self):
        return self.enable()

    def __exit__(self, *exc):
        self.disable()
        return False

    def _on_apply(self, op, inputs):
        dispatch._profile_hook = None  # the op's own apply (and any it makes) runs plainly
        try:
            before = [_checksum(t._data) for t in inputs]
            out = dispatch.apply(op, *inputs)
            for i, (t, crc) in enumerate(zip(inputs, before)):
                if _checksum(t._data) != crc:
                    raise TensorModifiedError(
                        f"tensor modified after exec {op!r}: its input {i} (shape {t.shape}, "
                        f"{t.dtype}) changed while the op ran; an op must not write into its "
                        "inputs (write into a copy, or into the output)")
        finally:
            if self._enabled:
                dispatch._profile_hook = self._hook
        self.checked_ops += 1
        return out
