"""``--help`` is plain text: no Sphinx markup from the docstrings argparse texts come from."""

from __future__ import annotations

import argparse
import re

import pytest

from btnet_adapters import cli
from btnet_adapters.cli import plain_text
from btnet_adapters.train import cli as train_cli

MARKUP = re.compile(r"``|:(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|ref):`")


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def test_plain_text() -> None:
    assert plain_text("see ``x=1`` and :func:`~btnet_adapters.hub.save_pretrained`") == "see x=1 and save_pretrained"
    assert plain_text(":class:`btnet_adapters.BTNet`, :meth:`BTNet.embed`, :data:`HEADS`") == \
        "btnet_adapters.BTNet, BTNet.embed, HEADS"
    assert plain_text(":ref:`the guide <guide-label>` :py:func:`f`") == "the guide f"
    assert plain_text("a `single` b, 100 %") == "a `single` b, 100 %"
    assert plain_text(None) is None and plain_text("") == ""


def test_no_help_output_has_sphinx_markup() -> None:
    seen = []
    for path, parser in parsers(cli.build_parser()):
        text = parser.format_help()
        assert not MARKUP.search(text), f"btnet {' '.join(path)} --help: {MARKUP.findall(text)}"
        seen.append(path)
    assert ("train", "trunk") in seen and ("eval", "verify") in seen and len(seen) > 15


def test_train_options_keep_their_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "trunk", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    # from ``"reference"`` / :data:`btnet_adapters.heads.HEADS` in the config docstrings
    assert "margin head (btnet_adapters.heads.HEADS)" in out and "``" not in out
    with pytest.raises(SystemExit):  # the standalone parser too
        train_cli.main(["branch", "--help"])
    assert not MARKUP.search(capsys.readouterr().out)
