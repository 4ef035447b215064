"""Text from untrusted sources (HTTP requests, input tables): what counts as blank, and how to quote
it in a message.

Shared by the Serve schema (prompts) and the data pipeline (captions, paths in error messages), so
that "empty" and "printable" mean the same thing everywhere.
"""

from __future__ import annotations

import unicodedata

# Categories that draw nothing: control (Cc), format (Cf: zero-width space/joiners, BOM, bidi
# marks), unassigned (Cn), private use (Co), surrogates (Cs) and separators (Z*).
_INVISIBLE = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace, zero-width or other invisible characters
    (``str.strip`` keeps U+200B ZERO WIDTH SPACE, so ``"\\u200b"`` is not "empty" to it)."""
    return all(unicodedata.category(char) in _INVISIBLE for char in text)


def visible(text: str) -> str:
    """``text`` without leading and trailing invisible characters (see ``is_blank``)."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]) in _INVISIBLE:
        start += 1
    while end > start and unicodedata.category(text[end - 1]) in _INVISIBLE:
        end -= 1
    return text[start:end]


def lone_surrogate(text: str) -> str | None:
    """The first unpaired UTF-16 surrogate in ``text`` as ``U+D800``, or None. Python strings can
    hold them (JSON ``"\\ud800"`` decodes to one) but UTF-8 cannot encode them, so tokenizers and
    JSON encoders raise on them."""
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            return f"U+{ord(char):04X}"
    return None


def control_character(text: str) -> str | None:
    """The first control or line-breaking character in ``text`` (``\\n``, ``\\r``, ``\\x00``,
    U+2028...) as ``U+000A``, or None."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def quote(text: str, limit: int = 200) -> str:
    """``text`` as a one-line, printable Python literal for messages: control characters, line
    breaks and lone surrogates escaped (``'a\\nb'``), cut after ``limit`` characters."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown).encode("utf-8", "backslashreplace").decode("utf-8")
