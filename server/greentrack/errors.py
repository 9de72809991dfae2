"""The package's own exceptions: vendor and I/O errors are translated into these once, ``raise ... from e``.

The command line prints ``str(error)`` as one line and exits 1; the language server logs it and keeps serving.
"""


class GreentrackError(Exception):
    """Base of every error greentrack reports to the user as one clear line."""


class MeterUnavailable(GreentrackError):
    """An energy meter cannot work on this machine; the message says exactly why."""


class StoreError(GreentrackError):
    """The database cannot be used (corrupt, foreign, locked past the timeout, read-only)."""


class ModelLoadError(GreentrackError):
    """The model cannot be found or loaded; the message says what to do."""


class BadInput(GreentrackError):
    """The document or position cannot be completed (past the end, binary, too large)."""


class BackendUnavailable(GreentrackError):
    """The requested backend is not installed (names the extra to install)."""


class UsageError(GreentrackError):
    """The command was used wrongly (exit status 2)."""
