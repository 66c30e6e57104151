"""megengine.logger (megengine/logger.py): upstream's logger functions on Python's logging."""
import io
import itertools
import logging
import subprocess
import sys

import pytest

import megengine as mge
from megengine import logger as mlog


_names = itertools.count()


@pytest.fixture
def console():
    """A fresh megengine logger whose console output goes to a StringIO."""
    before = mlog._default_level
    name = f"megengine.test.{next(_names)}"
    log = mge.get_logger(name)
    out = io.StringIO()
    log.handlers[0].setStream(out)
    yield log, out
    mge.set_log_level(before)
    mge.set_log_file(None)
    mlog._all_loggers.remove(log)


def test_get_logger_sets_up_once(console):
    log, _ = console
    handlers = list(log.handlers)
    assert mge.get_logger(log.name) is log and log.handlers == handlers  # nothing added twice
    assert sum(type(h) in (logging.StreamHandler, mlog._LogFileHandler) for h in handlers) == 2
    assert log.propagate is False and log.level == logging.INFO  # upstream's default level


def test_levels_and_tags(console):
    log, out = console
    log.debug("hidden")
    log.info("plain")
    log.warning("careful")
    log.error("broken")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # INFO is the default: debug is dropped
    assert lines[0].endswith(" plain") and "WRN careful" in lines[1] and "ERR broken" in lines[2]


def test_critical_is_untagged_and_a_traceback_is_indented_as_upstream(console):
    # upstream 1.13 measured (colours aside): "<date> crit" for CRITICAL, and a logged
    # exception's traceback indented by two spaces ("  Traceback ...", "    File ...",
    # "  ValueError: boom"); earlier versions of this fork tagged CRITICAL "ERR" and left the
    # traceback at the margin
    log, out = console
    log.critical("crit")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("exc")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" crit") and "ERR" not in lines[0]
    assert lines[1].endswith(" ERR exc")
    assert lines[2] == "  Traceback (most recent call last):"
    assert lines[3].startswith("    File ") and lines[-1] == "  ValueError: boom"


def test_set_log_level_returns_the_previous_and_updates_existing(console):
    log, out = console
    assert mge.set_log_level(logging.ERROR) == logging.INFO
    log.warning("dropped")
    assert out.getvalue() == "" and log.level == logging.ERROR
    assert mge.get_logger("megengine.test.later").level == logging.ERROR  # new loggers too
    mlog._all_loggers.remove(logging.getLogger("megengine.test.later"))
    assert mge.set_log_level(logging.INFO, update_existing=False) == logging.ERROR
    assert log.level == logging.ERROR
    assert mge.set_log_level("warning") == logging.INFO
    with pytest.raises(ValueError, match="unknown level"):
        mge.set_log_level("LOUD")


def test_enable_debug_log(console):
    log, out = console
    mge.enable_debug_log()
    log.debug("details")
    assert "DBG details" in out.getvalue()
    assert logging.getLogger("megbrain").level == logging.DEBUG
    mlog.set_mgb_log_level(logging.INFO)


def test_set_log_file_gets_every_message_with_its_origin(console, tmp_path):
    log, out = console
    path = tmp_path / "run.log"
    mge.set_log_file(str(path))
    log.warning("to both")
    mge.set_log_file(None)
    log.warning("console only")
    text = path.read_text()
    assert "WRN to both" in text and "console only" not in text
    assert "@test_logger.py:" + log.name in text  # the long layout: line@file:logger
    assert "\x1b[" not in text  # no colours in files
    assert "to both" in out.getvalue() and "console only" in out.getvalue()
    stream = io.StringIO()
    mge.set_log_file(stream)
    log.info("into a stream")
    assert "into a stream" in stream.getvalue()
    with pytest.raises(TypeError, match="file"):
        mge.set_log_file(42)


def test_long_messages_keep_head_and_tail_on_the_console(console):
    log, out = console
    log.info("\n".join(f"line {i}" for i in range(1000)))
    text = out.getvalue()
    assert "line 0" in text and "line 999" in text and "line 500" not in text
    assert "log lines omitted" in text


def test_environment_sets_the_default_level():
    code = ("import logging, megengine as mge; "
            "print(mge.get_logger('x').level == logging.WARNING)")
    env = {**__import__("os").environ, "MEGENGINE_LOGGING_LEVEL": "warning"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "True"


def test_replace_mgb_log_level_restores():
    before = logging.getLogger("megbrain").level
    with mlog.replace_mgb_log_level(logging.ERROR):
        assert logging.getLogger("megbrain").level == logging.ERROR
    assert logging.getLogger("megbrain").level == before
