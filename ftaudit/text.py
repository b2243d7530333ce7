"""Untrusted strings (layer, device and file names) made safe for a terminal."""

from __future__ import annotations


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control and other non-printable characters (terminal escape sequences,
    NUL, CR, bidi overrides) shown as ``\\xNN``/``\\uNNNN`` instead of being sent to the
    terminal."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or (keep_newlines and ch == "\n")
        else (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        for ch in text
    )


def escape(text: str) -> str:
    """``printable`` (line breaks kept: table headers use them) then rich's markup escape:
    for names inside rich renderables."""
    from rich.markup import escape as escape_markup

    return escape_markup(printable(text, keep_newlines=True))
