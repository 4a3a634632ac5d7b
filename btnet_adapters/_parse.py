"""Argument parsing helpers shared by every ``btnet`` command group: option types and
plain-text ``--help``.

They are pure functions over :mod:`argparse` and import nothing of the package above
:mod:`btnet_adapters.errors` and :mod:`btnet_adapters.resize`, so a module's
``register(subparsers)`` at any layer can use them without importing the command line
(:mod:`btnet_adapters.cli`), which sits above everything.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data.degrade import DegradationSpec
    from .resize import ResizeSpec

__all__ = ["degradation_arg", "int_list", "plain_help", "plain_text", "resize_arg"]


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers (``"7,14,28"`` → ``[7, 14, 28]``)."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def resize_arg(text: str) -> "ResizeSpec":
    """argparse type of a ``backend:filter:aa|noaa`` resize option (see :meth:`ResizeSpec.parse`)."""
    from .errors import BTNetError
    from .resize import ResizeSpec

    try:
        return ResizeSpec.parse(text)
    except BTNetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


#: A Sphinx role: ``:func:`~a.b```, ``:class:`title <target>``` (groups: tilde, title, target).
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const|ref|doc|term):"
                   r"`(~?)([^`<]*?)\s*(?:<([^`>]*)>)?`")


def degradation_arg(text: str) -> "DegradationSpec":
    """argparse type of a degradation kept at the low resolution: a preset name (``realistic``,
    ``paper``) or a JSON object of fields (:meth:`DegradationSpec.parse`)."""
    from .data.degrade import DegradationSpec
    from .errors import BTNetError

    try:
        return DegradationSpec.parse(text)
    except BTNetError as err:
        raise argparse.ArgumentTypeError(f"{err} (e.g. --degradation realistic)") from None


def plain_text(text: str | None) -> str | None:
    """Sphinx/reST markup of a docstring as plain text for ``--help``: a role such as
    ``:func:`~a.b.f``` becomes ``f`` (``:class:`a.B``` → ``a.B``, ``:ref:`title <target>``` →
    ``title``) and double-backquoted literals lose their backquotes."""
    if not text:
        return text

    def role(match: re.Match) -> str:
        tilde, title, target = match.groups()
        name = title or target or ""
        return name.rsplit(".", 1)[-1] if tilde else name

    text = _ROLE.sub(role, text)
    return re.sub(r"``(.+?)``", r"\1", text, flags=re.S)


def plain_help(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Turn the description, epilog and option help of ``parser`` and of all its sub-command
    parsers into plain text (:func:`plain_text`); many come from docstrings."""
    parser.description, parser.epilog = plain_text(parser.description), plain_text(parser.epilog)
    for action in parser._actions:
        action.help = plain_text(action.help) if isinstance(action.help, str) else action.help
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help) if isinstance(choice.help, str) else choice.help
            for sub in {id(p): p for p in action.choices.values()}.values():
                plain_help(sub)
    return parser
