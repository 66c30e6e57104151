"""MegEngine's loggers on `logging`: get_logger, set_log_level, set_log_file, enable_debug_log."""
import contextlib
import logging
import os
import sys

__all__ = ["get_logger", "set_log_level", "set_log_file", "enable_debug_log",
           "set_mgb_log_level", "replace_mgb_log_level", "MegEngineLogFormatter"]

_all_loggers = []
_default_level = logging.getLevelName(os.getenv("MEGENGINE_LOGGING_LEVEL", "INFO").upper())
if not isinstance(_default_level, int):  # an unknown name: getLevelName returns "Level X"
    _default_level = logging.INFO


_WHOLE = {"whole": True}  # ``logger.info(msg, extra=_WHOLE)``: the console shows all of msg


class MegEngineLogFormatter(logging.Formatter):
    """Upstream's layout: ``<date> <tag> <message>``, tags DBG/WRN/ERR, colours on terminals.

    The log file set by :func:`set_log_file` gets the long layout (date, line, file and logger
    name) without colours. Messages of more than ``max_lines`` lines keep their head and tail
    on the console, unless logged with ``extra=_WHOLE`` (module_stats' tables: upstream's
    module_stats lifts the limit for them).
    """

    date_full = "[%(asctime)s %(lineno)d@%(filename)s:%(name)s] "
    date = "%(asctime)s "
    msg = "%(message)s"
    max_lines = 256
    # (upstream tags these three levels only: CRITICAL prints as plainly as INFO)
    _TAGS = {logging.DEBUG: ("DBG ", "\x1b[36m"), logging.WARNING: ("WRN ", "\x1b[1;31m"),
             logging.ERROR: ("ERR ", "\x1b[1;4;31m")}

    def __init__(self, fmt=None, datefmt="%d %H:%M:%S", style="%", color=False, full=False):
        super().__init__(fmt, datefmt, style)
        self.color, self.full = color, full

    def format(self, record):
        tag, color = self._TAGS.get(record.levelno, ("", ""))
        if self.full:
            self._style._fmt = self.date_full + tag + self.msg
        elif self.color:
            body = f"{color}{tag}{self.msg}\x1b[0m" if color else tag + self.msg
            self._style._fmt = "\x1b[32m" + self.date + "\x1b[0m" + body
        else:
            self._style._fmt = self.date + tag + self.msg
        text = super().format(record)
        start = text.find("Traceback ")
        if not self.full and start != -1:  # a traceback on the console is indented, as upstream
            text = text[:start] + "  " + text[start:].replace("\n", "\n  ")
        lines = text.split("\n")
        if not self.full and len(lines) >= self.max_lines and not getattr(record, "whole", 0):
            keep = self.max_lines // 2
            omitted = len(lines) - 2 * keep
            text = "\n".join(lines[:keep] + [
                f"[{omitted} log lines omitted (set_log_file() keeps all of them; the limit is "
                "MegEngineLogFormatter.max_lines)]"] + lines[-keep:])
        return text


class _LogFileHandler(logging.StreamHandler):
    """Writes to the file :func:`set_log_file` gave, whatever that is at the time."""

    fout = None

    def emit(self, record):
        if _LogFileHandler.fout is not None:
            self.stream = _LogFileHandler.fout
            super().emit(record)


_file_handler = _LogFileHandler(stream=sys.stderr)
_file_handler.setFormatter(MegEngineLogFormatter(full=True))


def set_log_file(fout, mode="a"):
    """Also write every megengine logger's messages to ``fout``.

    ``fout`` is a file name (opened with ``mode``) or a file object with ``write`` and
    ``flush``; ``None`` stops writing to a file.
    """
    if isinstance(fout, (str, bytes, os.PathLike)):
        fout = open(fout, mode)
    elif fout is not None and not (hasattr(fout, "write") and hasattr(fout, "flush")):
        raise TypeError(f"set_log_file: fout must be a file name or a writable file object, "
                        f"got {type(fout).__name__}")
    _LogFileHandler.fout = fout


def get_logger(name=None, formatter=MegEngineLogFormatter):
    """The logger called ``name``, set up as megengine's: its own console handler with
    ``formatter``, the level :func:`set_log_level` set, no propagation to the root logger."""
    logger = logging.getLogger(name)
    if getattr(logger, "_megengine_init_done", False):
        return logger
    logger._megengine_init_done = True
    logger.propagate = False
    logger.setLevel(_default_level)
    handler = logging.StreamHandler()
    color = hasattr(handler.stream, "isatty") and handler.stream.isatty()
    try:
        handler.setFormatter(formatter(datefmt="%d %H:%M:%S", color=color))
    except TypeError:  # a user formatter that takes logging.Formatter's arguments only
        handler.setFormatter(formatter(datefmt="%d %H:%M:%S"))
    del logger.handlers[:]
    logger.addHandler(handler)
    logger.addHandler(_file_handler)
    _all_loggers.append(logger)
    return logger


def set_log_level(level, update_existing=True):
    """Set the level of loggers made from now on (and of existing ones when
    ``update_existing``); returns the previous default level."""
    global _default_level
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError("set_log_level: unknown level name; use DEBUG, INFO, WARNING, "
                             "ERROR or CRITICAL, or a number")
    previous, _default_level = _default_level, level
    if update_existing:
        for logger in _all_loggers:
            logger.setLevel(level)
    return previous


_megbrain_logger = get_logger("megbrain")


def set_mgb_log_level(level):
    """Set the level of the ``megbrain`` logger; returns the previous level.

    Upstream routes its C++ core's messages there; this engine has no C++ core, so the
    logger only carries what Python code logs to it.
    """
    previous = _megbrain_logger.level
    _megbrain_logger.setLevel(level)
    return previous


_set_mgb_log_level = set_mgb_log_level  # upstream's private spelling (its tests use it)


def __getattr__(name):
    if name == "_imperative_rt_logger":  # upstream's handle on its C++ core's log level
        from .core._imperative_rt import Logger

        return Logger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def replace_mgb_log_level(level):
    """Use ``level`` for the ``megbrain`` logger inside the block, then restore it."""
    previous = set_mgb_log_level(level)
    try:
        yield
    finally:
        set_mgb_log_level(previous)


def enable_debug_log():
    """Log everything, debug messages included, for every megengine logger."""
    set_log_level(logging.DEBUG)
    set_mgb_log_level(logging.DEBUG)
