"""The names the extension and the server share (mirrored in package.json), and request validation.

Kept apart from ``server.py`` so the checks are testable without a running server.
"""

from __future__ import annotations

from collections.abc import Sequence

from lsprotocol import types

ACCEPT_COMMAND = "greentrack.accept"
ENERGY_NOTIFICATION = "greentrack/energy"
STATUS_NOTIFICATION = "greentrack/status"
#: How a ``greentrack/status`` error's message starts when, in remote mode, the server cannot be reached.
UNREACHABLE_PREFIX = "server unreachable"

#: Settings whose change needs the model reloaded; the others apply to the next request.
RELOAD_FIELDS: tuple[str, ...] = ("model", "backend", "device")


def completion_position_error(lines: Sequence[str], position: types.Position) -> str | None:
    """Why ``position`` cannot be completed in a document of ``lines`` (None when it can).

    ``lines`` keep their line endings (pygls ``TextDocument.lines``). Characters are counted in code points
    here, a safe upper bound for UTF-16 columns on the same line.
    """
    if position.line < 0 or position.character < 0:
        return f"negative position {position.line}:{position.character}"
    if position.line > len(lines) or (position.line == len(lines) and position.character > 0):
        return f"line {position.line} is past the end of the document ({len(lines)} lines)"
    if position.line < len(lines):
        content = lines[position.line].rstrip("\r\n")
        if position.character > len(content.encode("utf-16-le")) // 2:
            return f"character {position.character} is past the end of line {position.line}"
    return None
