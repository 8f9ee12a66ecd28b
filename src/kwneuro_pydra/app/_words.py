"""Counts in words, as the app's summaries and the command line write them."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 entry``, ``2 entries``: the count with the right form of ``word``.

    Args:
        count: How many.
        word: The singular.
        many: The plural when it is not ``word + "s"`` (``entries``, ``series``).

    Returns:
        The phrase.
    """
    return f"{count} {word if count == 1 else (many or word + 's')}"
