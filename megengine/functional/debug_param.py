"""`F.debug_param`: upstream's algorithm-selection strategy, kept as the config's kernel switches.

Upstream chooses each operator's algorithm by a strategy: ``HEURISTIC`` (a rule picks it) or
``PROFILE`` (candidates are timed on the device), optionally ``REPRODUCIBLE`` (only
bit-reproducible algorithms). Its ``megengine.config.benchmark_kernel`` and
``deterministic_kernel`` are views of the same strategy, and so they are here: PROFILE is
``benchmark_kernel``, REPRODUCIBLE is ``deterministic_kernel``, and both reach cuDNN through
the ATen kernels (see ``megengine.core._config``). ``OPTIMIZED`` is accepted and changes
nothing (this engine has one set of kernels).
"""
from ..core import _config
from ..utils.deprecation import deprecated

__all__ = ["get_execution_strategy", "set_execution_strategy", "get_conv_execution_strategy",
           "set_conv_execution_strategy"]

_FLAGS = ("HEURISTIC", "PROFILE", "REPRODUCIBLE", "OPTIMIZED")
# upstream's older spellings: one string per combination
_NAMED = {"PROFILE_HEURISTIC": {"PROFILE", "HEURISTIC"},
          "PROFILE_REPRODUCIBLE": {"PROFILE", "REPRODUCIBLE"},
          "HEURISTIC_REPRODUCIBLE": {"HEURISTIC", "REPRODUCIBLE"}}


def get_execution_strategy() -> str:
    """The current strategy as a string: ``"HEURISTIC"`` or ``"PROFILE"``, with
    ``"_REPRODUCIBLE"`` appended when only reproducible algorithms are allowed."""
    name = "PROFILE" if _config._benchmark_kernel else "HEURISTIC"
    return name + "_REPRODUCIBLE" if _config._deterministic_kernel else name


def set_execution_strategy(option: str):
    """Set how algorithms are chosen.

    ``option``: ``"HEURISTIC"``, ``"PROFILE"``, ``"REPRODUCIBLE"``, ``"OPTIMIZED"``, a
    combination joined by ``|`` (``"PROFILE|REPRODUCIBLE"``), or one of upstream's older
    names ``"PROFILE_HEURISTIC"``, ``"PROFILE_REPRODUCIBLE"``, ``"HEURISTIC_REPRODUCIBLE"``.
    A strategy with ``PROFILE`` times the candidates (a heuristic picks among what it
    cannot time); one without ``REPRODUCIBLE`` allows any algorithm.
    """
    if not isinstance(option, str):
        raise TypeError(f"set_execution_strategy: option must be a string such as "
                        f"'PROFILE|REPRODUCIBLE', got {type(option).__name__}")
    flags = _NAMED.get(option.upper().strip())
    if flags is None:
        flags = {part.strip().upper() for part in option.split("|")}
        unknown = sorted(flags - set(_FLAGS))
        if unknown:
            raise ValueError(f"set_execution_strategy: unknown strategy {option!r}; use "
                             f"{' / '.join(_FLAGS)}, combined with '|', or one of "
                             f"{sorted(_NAMED)}")
    _config._reset_execution_config(benchmark_kernel="PROFILE" in flags,
                                    deterministic_kernel="REPRODUCIBLE" in flags)


# upstream 1.0-1.3 names: the strategy was documented for convolutions, and applied to all;
# deprecated since 1.3, each call warns as upstream's
@deprecated(version="1.3", reason="use get_execution_strategy() instead")
def get_conv_execution_strategy() -> str:
    """`get_execution_strategy` under its 1.0-1.3 name."""
    return get_execution_strategy()


@deprecated(version="1.3", reason="use set_execution_strategy() instead")
def set_conv_execution_strategy(option: str):
    """`set_execution_strategy` under its 1.0-1.3 name."""
    return set_execution_strategy(option)


# Upstream's debug_param module also holds megengine.get_logger at module level
from ..logger import get_logger  # noqa: E402,F401
