"""Every shell line of README.md runs as written in bash.

Each command of each ```bash block (continuation lines joined) must parse (``bash -n``) and hold
no unquoted ``&`` inside its arguments (``--settings 112&7,...`` would put the command in the
background and run ``7,...`` as another). The ``--help`` of every ``btnet`` subcommand the
README uses is run: in-process (fast), and for real through bash and the ``btnet`` script.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from btnet_adapters import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_commands(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every ```bash block: continuation lines joined, comment-only
    and blank lines skipped."""
    out: list[tuple[int, str]] = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        first = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", 0
        for i, line in enumerate(block.group(1).splitlines()):
            if not pending:
                start = first + i
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command, pending = (pending + line).strip(), ""
            if command and not command.startswith("#"):
                out.append((start, command))
    return out


def unquoted_ampersands(command: str) -> list[str]:
    """Shell words around each lone ``&`` outside quotes (``&&`` is fine): ``["112 & 7,112"]``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    return [" ".join(tokens[max(i - 1, 0):i + 2]) for i, t in enumerate(tokens) if t == "&"]


def simple_commands(command: str) -> list[list[str]]:
    """The simple commands of a line (split at ``&&``, ``||``, ``|``, ``;``), comments dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", "|", ";", "&"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def subcommand_path(words: list[str]) -> tuple[str, ...]:
    """The ``btnet`` subcommand a command line names, e.g. ``("eval", "verify")``."""
    parser, path = cli.build_parser(), []
    for word in words[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        path.append(word)
    return tuple(path)


COMMANDS = bash_commands(README.read_text(encoding="utf-8"))


def readme_subcommands() -> list[tuple[str, ...]]:
    paths = {subcommand_path(words) for _, cmd in COMMANDS for words in simple_commands(cmd) if words[0] == "btnet"}
    return sorted(paths)


# --------------------------------------------------------------------------- the checkers themselves
def test_checkers_catch_the_broken_forms() -> None:
    assert unquoted_ampersands("btnet eval verify --settings 112&7,112&14") == ["112 & 7,112", "7,112 & 14"]
    assert unquoted_ampersands("btnet eval verify --settings '112&7,112&14' && echo ok") == []
    assert unquoted_ampersands('a "x&y" && b') == []
    assert subprocess.run(["bash", "-n", "-c", "btnet eval verify --settings '112&7"],
                          capture_output=True).returncode != 0  # an unclosed quote does not parse
    text = "x\n```bash\n# note\nbtnet a \\\n  --b 1   # c\n\nbtnet c\n```\n"
    assert bash_commands(text) == [(4, "btnet a    --b 1   # c"), (7, "btnet c")]


def test_readme_has_shell_commands() -> None:
    assert len(COMMANDS) > 15
    assert {("eval", "verify"), ("reproduce",), ("train", "trunk"), ("analyze", "cost")} <= set(readme_subcommands())


# --------------------------------------------------------------------------- every README line
@pytest.mark.parametrize(("line", "command"), COMMANDS, ids=[f"README.md:{n}" for n, _ in COMMANDS])
def test_line_parses_in_bash(line: int, command: str) -> None:
    result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, f"README.md line {line} does not parse in bash: {result.stderr}"
    bad = unquoted_ampersands(command)
    assert not bad, f"README.md line {line}: unquoted '&' in {bad} (quote the argument): {command}"


# --------------------------------------------------------------------------- --help of each subcommand
@pytest.mark.parametrize("path", readme_subcommands(), ids=" ".join)
def test_readme_subcommand_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*path, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: btnet {' '.join(path)}".rstrip())


@pytest.mark.slow  # one fresh interpreter per subcommand (torch + timm imports, ~5 s each)
def test_readme_subcommand_help_in_bash(tmp_path: Path) -> None:
    """``btnet <subcommand> --help`` for real: bash, the installed console script, exit status 0."""
    bindir = Path(sys.executable).parent
    if shutil.which("btnet", path=str(bindir)) is None:
        pytest.skip(f"no btnet console script next to {sys.executable} (package not installed)")
    paths = readme_subcommands()
    script = "set -e\n" + "".join(f"btnet {' '.join(p)} --help\n" for p in paths)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for p in paths:
        assert f"usage: btnet {' '.join(p)}" in result.stdout
