"""Text from outside (scan titles, names, exception messages) made safe for a log line.

A newline in a scan title forged a whole log line, and HDF5's errors are stacks of lines:
every such text is logged through `one_line`, which keeps it on one line and shows control
characters escaped, so that one event is one line whatever the data says."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: object, limit: int = 500) -> str:
    """`text` as one line: runs of whitespace (newlines included) to one space, other
    control characters escaped (\\x1b), at most `limit` characters."""
    value = " ".join(str(text).split())
    value = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value if len(value) <= limit else value[: limit - 1] + "…"
