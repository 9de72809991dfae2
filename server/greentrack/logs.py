"""Log records as one line each: what the command line and the servers write to stderr (and to the editor).

Place in the flow: ``cli.py`` calls ``configure_logging`` once; the language server adds its handler to the
client with the same formatter. An exception logged with ``log.exception`` shows as ``message: Type: text`` on
that line; its traceback follows only at debug level (``--verbose``), so a bad input never floods the log.
"""

from __future__ import annotations

import logging
import sys

#: The format of every stderr line (the editor's output channel adds its own time stamps).
LINE_FORMAT = "%(levelname)s %(name)s: %(message)s"


def exception_summary(error: BaseException) -> str:
    """``Type: message`` on one line (``Type`` alone when the message is empty)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OneLineFormatter(logging.Formatter):
    """Formats a record on one line: embedded newlines become `` | ``; an exception becomes its summary.

    With ``tracebacks`` (debug level), the full traceback is kept after the line, as the standard formatter does.
    """

    def __init__(self, fmt: str = LINE_FORMAT, *, tracebacks: bool = False) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks:
            return super().format(record)
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {exception_summary(record.exc_info[1])}"
        flat = logging.makeLogRecord(record.__dict__)
        flat.msg, flat.args = " | ".join(line for line in message.splitlines() if line.strip()), None
        flat.exc_info, flat.exc_text, flat.stack_info = None, None, None
        return super().format(flat)


def configure_logging(verbose: bool = False) -> None:
    """Root logging to stderr, one line per record: WARNING and up; ``verbose``: DEBUG, tracebacks included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(tracebacks=verbose))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True)


def log_package_info(name: str = "greentrack") -> None:
    """Let the package's INFO lines through (a server's log is its record: "replayed N spooled write(s)").

    Third-party loggers stay at the root's level; a more verbose level already set is kept.
    """
    logger = logging.getLogger(name)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def tracebacks_enabled() -> bool:
    """Whether the root logger is at debug level (then formatters keep tracebacks)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)
