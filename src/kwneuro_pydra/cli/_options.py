"""The BIDS app's DTI parameters as command-line options (`kwneuro_pydra.app.parameters`).

``run`` records the parameters it ran with in ``OUTPUT_DIR/logs/kwneuro-pydra-options.json``;
``status`` looks the cache up with them unless told otherwise, so it needs no option repeated.
"""

from __future__ import annotations

import argparse
from typing import Any

from kwneuro_pydra.app import parameters
from kwneuro_pydra.cli._common import argument_type

__all__ = ["add_dti_options", "parameters_of"]


def add_dti_options(parser: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """Add the pipeline's options (``run``'s; ``status`` looks up the same entries).

    Args:
        parser: The command's parser.
        recorded: The options default to what the last run recorded (``status``): an
            option left out is None in the parsed arguments.
    """
    group = parser.add_argument_group("DTI")
    for option in parameters():
        default = option.default_text
        if recorded:
            default = f"the run's, else {default}"
        group.add_argument(
            option.flag,
            dest=option.name,
            type=argument_type(option.convert),
            choices=option.choices,
            default=None if recorded else option.default,
            metavar=option.metavar,
            help=f"{option.help} (default: {default})",
        )


def parameters_of(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's parameters given by parsed arguments (those left out are None with
    ``recorded``).
    """
    return {option.name: getattr(args, option.name) for option in parameters()}
