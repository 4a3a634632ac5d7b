"""``btnet train trunk|branch``: the command line of :mod:`btnet_adapters.train`.

Every field of :class:`TrunkConfig` / :class:`BranchConfig` is an option (``batch_size`` →
``--batch-size``; booleans as ``--flip/--no-flip``; dictionaries and nested settings as
JSON); ``--config run/train_config.json`` starts from a saved configuration, and options
given on the command line override it. ``register(subparsers)`` adds the ``train`` group to
the ``btnet`` command; each leaf parser sets ``func``, to be called as ``args.func(args)``
(it returns the exit status). Standalone: ``python -m btnet_adapters.train.cli trunk ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .._parse import plain_help, plain_text, resize_arg
from ..errors import BTNetError
from .config import BranchConfig, RunConfig, TrunkConfig, fit_default_warmup, load_config

logger = logging.getLogger(__name__)

EXAMPLES = {
    "trunk": "example: btnet train trunk --model btnet_iresnet50 --data faces/ --out runs/trunk --epochs 25 --multires v1",
    "branch": "example: btnet train branch --trunk runs/trunk --resolution 14 --data faces/ --out runs/b14",
}


def _arg_docs(cls: type) -> dict[str, str]:
    """``name -> description`` from the Google-style ``Args:`` sections of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__doc__ or "")
        section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)*)", text, re.M)
        if not section:
            continue
        for match in re.finditer(r"^ {4}(\w+): (.*(?:\n {8,}.*)*)", section.group(1), re.M):
            docs[match.group(1)] = " ".join(match.group(2).split())
    return docs


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None


def _nested(cls: type, default: Any = None) -> Callable[[str], Any]:
    """Parse a JSON object of ``cls`` fields, or a preset name where ``cls`` has presets (a
    degradation: ``realistic``, up-sampled back like ``default`` is)."""

    def parse(text: str) -> Any:
        if hasattr(cls, "named"):  # a degradation: a preset name or JSON (DegradationSpec.parse)
            try:
                return cls.parse(text, upsample=bool(getattr(default, "upsample", False)))
            except BTNetError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        data = _json(text)
        if not isinstance(data, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object for {cls.__name__}")
        try:
            return cls.from_dict(data)
        except (BTNetError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = cls.__name__
    return parse


def _converter(hint: Any, default: Any = None) -> tuple[Callable[[str], Any] | None, bool]:
    """``(type converter, is_bool)`` for a field's type hint (``default``: the field's default)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if str in args and any(typing.get_origin(a) is list for a in args):  # a rule name or a JSON list of names
        return _optional(lambda text: _json(text) if text.lstrip().startswith("[") else text), False
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else hint
    if base is bool:
        return None, True
    if typing.get_origin(base) is dict:
        convert: Callable[[str], Any] = _json
    elif hasattr(base, "from_dict"):
        convert = _nested(base, default)
    else:
        convert = base
    return (_optional(convert) if optional else convert), False


def add_config_options(parser: argparse.ArgumentParser, cls: type[RunConfig], skip: frozenset[str] = frozenset()) -> None:
    """One option per configuration field but those in ``skip`` (defaults suppressed: unset
    options keep the configuration's value)."""
    hints = typing.get_type_hints(cls)
    docs = _arg_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = json.dumps(default.to_dict()) if hasattr(default, "to_dict") else default
        note = "(required)" if default == "" else f"(default: {shown})"
        help_text = f"{plain_text(docs.get(f.name, ''))} {note}".strip().replace("%", "%%")
        convert, is_bool = _converter(hints[f.name], default)
        if is_bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=convert, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help_text)


def _build_parser(parser: argparse.ArgumentParser, kind: str) -> None:
    cls = TrunkConfig if kind == "trunk" else BranchConfig
    parser.add_argument("--config", metavar="JSON", help="start from a saved configuration "
                        "(e.g. a run's train_config.json); options given here override it")
    parser.add_argument("--resize", type=resize_arg, metavar="BACKEND:FILTER:AA",
                        help="shortcut for the degradation's down-sampling, e.g. torch:bilinear:noaa, "
                             "pil:bilinear:aa, cv2:bilinear:noaa")
    if kind == "trunk":
        parser.add_argument("--resolutions", type=int, nargs="+", metavar="R",
                            help="with --multires mm: train one independent trunk per resolution "
                                 "(φ_mm), each in OUT/r<R>")
    if kind == "branch":
        parser.add_argument("--unlabeled", metavar="DIR", dest="unlabeled_data",
                            help="train from any folder of aligned faces without identities (sub-folders "
                                 "searched; a .tsv/.rec works too, its labels ignored): distillation from the "
                                 "trunk only, no classifier (sets data=DIR, unlabeled, cls_weight 0)")
    add_config_options(parser, cls, skip=frozenset({"unlabeled"}))
    parser.set_defaults(func=partial(run_command, kind))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train trunk`` and ``train branch`` to a ``btnet`` sub-command set."""
    train = subparsers.add_parser("train", help="train a trunk or a branch (BTNet)",
                                  description="Train a trunk (margin head, φ_hr/φ_mr/φ_mm) or a branch "
                                              "(distillation from the frozen trunk) on aligned faces.")
    kinds = train.add_subparsers(dest="train_command", metavar="{trunk,branch}", required=True)
    helps = {"trunk": "train a trunk with a margin head", "branch": "train one branch (adapter) for a resolution"}
    for kind in ("trunk", "branch"):
        leaf = kinds.add_parser(kind, help=helps[kind], description=helps[kind], epilog=EXAMPLES[kind])
        _build_parser(leaf, kind)


def config_from_args(kind: str, args: argparse.Namespace) -> RunConfig:
    """The configuration a parsed command line describes."""
    cls = TrunkConfig if kind == "trunk" else BranchConfig
    base = load_config(args.config) if getattr(args, "config", None) else cls()
    if not isinstance(base, cls):
        raise BTNetError(f"{args.config} is a {base.kind} configuration; use `btnet train {base.kind}`")
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "unlabeled_data", None) is not None:
        if "data" in changes:
            raise BTNetError("give the faces once: --unlabeled DIR or --data DIR")
        changes.update(data=args.unlabeled_data, unlabeled=True, cls_weight=changes.get("cls_weight", 0.0))
    if getattr(args, "resize", None) is not None:
        changes["degradation"] = dataclasses.replace(changes.get("degradation", base.degradation), resize=args.resize)
    config = dataclasses.replace(base, **changes)
    # The default warm-up yields to an explicit --epochs; one the user set (here or in --config) does not.
    in_file = bool(getattr(args, "config", None)) and "warmup_epochs" in json.loads(
        Path(args.config).read_text(encoding="utf-8"))
    explicit = "warmup_epochs" in changes or in_file
    config, note = fit_default_warmup(config, explicit=explicit)
    if note:
        logger.warning(note)
    return config


def run_command(kind: str, args: argparse.Namespace) -> int:
    """Run ``btnet train <kind>``; returns the exit status (128 + signal when interrupted)."""
    from .branch import train_branch
    from .trunk import train_independent, train_trunk

    if not logging.getLogger().handlers:  # progress messages (fit, resume, signals) on stderr
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(kind, args)
        if kind == "branch":
            results = [train_branch(config)]  # type: ignore[arg-type]
        elif getattr(args, "resolutions", None):
            results = train_independent(config.replace(multires="mm", resolution=None), args.resolutions)  # type: ignore[arg-type]
        else:
            results = [train_trunk(config)]  # type: ignore[arg-type]
    except BTNetError as err:
        print(f"btnet train {kind}: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        for result in results:
            print(result.summary())
    last = results[-1]
    return 128 + int(last.signal) if last.interrupted and last.signal else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m btnet_adapters.train.cli trunk|branch ...``."""
    parser = argparse.ArgumentParser(prog="btnet train", description="Train BTNet trunks and branches.")
    kinds = parser.add_subparsers(dest="train_command", metavar="{trunk,branch}", required=True)
    for kind in ("trunk", "branch"):
        _build_parser(kinds.add_parser(kind, epilog=EXAMPLES[kind]), kind)
    args = plain_help(parser).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
