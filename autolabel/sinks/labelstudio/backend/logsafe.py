"""Make request data safe to put in a log line or an error message.

Task data comes from whoever can create tasks: a 20 MB ``data:`` URL must not become a 20 MB log
line, and a newline in it must not start a forged log line.
"""

from __future__ import annotations

__all__ = ["safe"]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    # C0 and C1 controls, DEL, and the Unicode line/paragraph separators.
    if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029, 0x85):
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return char


def safe(value: object, limit: int = 200) -> str:
    """``value`` as one printable line of at most about ``limit`` characters.

    Strings are used as they are, anything else through ``str()`` (or ``repr()`` if that
    fails). Backslashes, newlines and other control characters are escaped, so the result never
    spans lines; beyond ``limit`` characters of the input it is cut and says how much was left
    off.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:  # a broken __str__ must not break the log call
            try:
                text = repr(value)
            except Exception:
                text = f"<{type(value).__name__}>"
    limit = max(0, int(limit))
    head = text[:limit]
    out = "".join(_escape(c) for c in head)
    if len(text) > limit:
        out += f"...[{len(text) - limit} more chars]"
    return out
