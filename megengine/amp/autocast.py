"""`autocast`: a context manager and decorator that turns mixed precision on (or off) inside."""
import functools

from ..core import _config
from ..core import amp as _state


class autocast:
    """Run the ops upstream's amp covers in low precision inside a ``with`` block or a decorated
    function (upstream's ``megengine.amp.autocast``).

    ``enabled``: turn autocast on (or, with False, off inside an outer autocast; the dtypes
    are then left as they are, as upstream's disabled autocast leaves them).
    ``low_prec_dtype``: the compute dtype of matmul, linear and convolutions, and the
    ``torch.autocast`` dtype of PyTorchModule calls (default ``"float16"``; ``"bfloat16"`` works
    for PyTorchModule calls only, numpy has no bfloat16).
    ``high_prec_dtype``: the dtype of the float functions upstream's autocast keeps precise
    (``exp``, ``log``, ``sqrt``, true division, ``**``, ``logsoftmax``, ``cross_entropy``, layer
    norm, ...: float16 operands give float32; default ``"float32"``; ``"bfloat16"`` is accepted
    as upstream's, and those ops then refuse it). Other ops keep their inputs' dtypes; see
    docs/api/amp.rst for the list. Both precisions are one of upstream's ``"float16"``,
    ``"bfloat16"`` and ``"float32"``.

    Parameters stay float32: each covered op casts its inputs (an op, so gradients are cast
    back), which makes float32 master weights with float16 compute. Use `GradScaler` against
    float16 gradient underflow. The state is global (not per thread), as upstream's. Inside
    an enabled autocast ``megengine.config._compute_mode`` is ``"float32"``, as upstream sets it.
    """

    def __init__(self, enabled: bool = True, low_prec_dtype: str = "float16",
                 high_prec_dtype: str = "float32"):
        # refused here, not at the first covered op as upstream's, so a typo points at its
        # own line
        _state._check_prec_dtype(low_prec_dtype, "low_prec_dtype")
        _state._check_prec_dtype(high_prec_dtype, "high_prec_dtype")
        self.enabled = enabled
        self.low_prec_dtype = low_prec_dtype
        self.high_prec_dtype = high_prec_dtype
        self._saved = []  # a stack: one autocast object may be entered again inside itself

    def __enter__(self):
        # (returns None, as upstream's: ``with autocast() as a`` binds None)
        mode = None
        if self.enabled:  # as upstream, an enabled autocast runs in compute mode "float32"
            mode = _config._reset_execution_config(compute_mode="float32")[3]
        self._saved.append((_state._enabled, _state._low_prec_dtype, _state._high_prec_dtype,
                            mode))
        _state._set_amp_dtype_autocast(self.enabled)
        if self.enabled:
            _state._low_prec_dtype = self.low_prec_dtype
            _state._high_prec_dtype = self.high_prec_dtype

    def __exit__(self, *exc):
        enabled, _state._low_prec_dtype, _state._high_prec_dtype, mode = self._saved.pop()
        _state._set_amp_dtype_autocast(enabled)
        if mode is not None:
            _config._reset_execution_config(compute_mode=mode)
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self:
                return func(*args, **kwargs)

        return wrapper
