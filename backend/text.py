"""Text from clients made safe for terminals and logs."""
from __future__ import annotations


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every control character (C0, DEL, C1: ANSI escapes, newlines, carriage
    returns, backspaces) written as a visible escape such as ``\\x1b`` or ``\\n``, so that a
    label or client name can neither clear a terminal nor forge a log line. ``limit`` cuts the
    result to that many characters (with an ellipsis)."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}"))
        else:
            out.append(ch)
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[: max(limit - 1, 0)] + "…"
    return result
