"""The app's errors: what was asked of it cannot be done (the CLI's exit status 2)."""

from __future__ import annotations

from kwneuro_pydra.bids import BidsError

__all__ = ["AppError", "BidsError"]


class AppError(ValueError):
    """An option of the app cannot be used (an unknown step or worker, a folder that cannot
    be written, a scheduler option without its worker); the message names it.
    """
