"""A release of trained adapters, written from a finished ``btnet reproduce`` run on a given trunk.

:func:`write_release` loads the run's trunk and branches, and writes an adapters-only Hub folder
(``adapters/r<r>/``, bound to the trunk by its fingerprint) with a model card that states the
training data, the recipe, the run's test table and the weights' licence, plus ``release.json``:
the machine-readable record of the same run (per-fold accuracies and thresholds of every
setting, so that anyone can check the card on part of the protocol without rerunning all of it).

Command line: ``python -m btnet_adapters.reproduce.release --run RUN --card CARD.json --out FOLDER``
(``CARD.json``: the texts of :func:`write_release`: title, license, training_data, usage, rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import hub
from .._atomic import write_text_atomic
from .._json import jsonable
from ..errors import BTNetError, ConfigError
from ..evaluate.report import markdown_table
from ..model import BTNet
from .config import ReproduceConfig
from .trunks import TrunkSource

RELEASE_RECORD = "release.json"
RELEASE_VERSION = 1


def read_run(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``report.json`` of a finished reproduction (``ConfigError`` when there is none)."""
    path = Path(run) / "report.json"
    if not path.is_file():
        raise ConfigError(f"{run} holds no finished reproduction ({path.name} is missing): run `btnet reproduce` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run_model(run: str | os.PathLike[str], report: dict[str, Any]) -> BTNet:
    """The run's φ_bt: its given trunk with the trained branches (fingerprints checked)."""
    config = report["config"]
    if not config.get("trunk"):
        raise ConfigError("a release needs a run on a given trunk (btnet reproduce --trunk ...)")
    model = TrunkSource.resolve(config["trunk"], config.get("model"), config.get("model_kwargs")).load()[0]
    for r in config["resolutions"]:
        hub.load_adapter(model, Path(run) / f"branch_r{r}", int(r))
    return model.eval()


def comparison_table(report: dict[str, Any]) -> str:
    """The run's verification table (markdown), every row and setting."""
    return markdown_table(report["accuracy"], ["model", *report["settings"]]).strip()


def write_release(run: str | os.PathLike[str], out: str | os.PathLike[str], *, title: str, license: str,
                  training_data: str, usage: str, rebuild: str, overwrite: bool = False) -> Path:
    """Write the release folder ``out`` from the reproduction in ``run``.

    Args:
        run: the ``--out`` folder of a finished ``btnet reproduce --trunk ...`` run.
        out: the release folder (replaced as a whole; an existing one only with ``overwrite``).
        title: the card's heading.
        license: the weights' licence, in words (it is not the code's).
        training_data: markdown of the card's Training data section (dataset, who is in it and
            who is not, terms); the recipe, the test table and ``rebuild`` are appended.
        usage: markdown of the card's Usage section.
        rebuild: the command that rebuilds the release.

    Returns:
        The folder.
    """
    report = read_run(run)
    model = load_run_model(run, report)
    config = ReproduceConfig(**{**report["config"], "train_resize": None, "eval_resize": None})
    bt = next(row for row in report["accuracy"] if row["key"] == "phi_bt")
    hr = next(row for row in report["accuracy"] if row["key"] == "phi_hr")
    pairs = Path(str(config.pairs)).name
    metrics = {f"CelebA test ({pairs})": {s: {"accuracy (%)": round(bt[s], 2), "up-sampling, φ_hr (%)": round(hr[s], 2)}
                                          for s in report["settings"] if isinstance(bt.get(s), (int, float))}}
    recipe = json.dumps(config.branch_recipe(), sort_keys=True)
    text = "\n\n".join([
        training_data.strip(),
        f"**Recipe.** Each branch: `{recipe}` on top of the `btnet train branch` defaults, trunk and classifier "
        f"frozen, {', '.join(str(r) for r in config.resolutions)} px"
        + (f", degradation `{config.degradation}`" if config.degradation else "") + ".",
        "**The run these adapters come from** (verification accuracy, %, on the test pairs; φ_hr is the trunk fed "
        "up-sampled images, φ_mr/φ_mm fine-tunes of it on the same images for as many epochs):",
        comparison_table(report),
        f"**Rebuild** (the release is written by the last step):\n\n```bash\n{rebuild.strip()}\n```",
    ])
    folder = hub.save_pretrained(model, out, adapters_only=True, metrics=metrics, license=license, overwrite=overwrite,
                                 card_sections={"title": title, "usage": usage, "training_data": text})
    record = {"version": RELEASE_VERSION, "title": title, "trunk_fingerprint": hub.trunk_fingerprint(model),
              "resolutions": list(config.resolutions), "settings": report["settings"], "table": report["accuracy"],
              "verification": {k: {s: {f: v[f] for f in ("accuracy", "fold_accuracies", "fold_thresholds")}
                                   for s, v in e["verification"].items()}
                               for k, e in report["evaluations"].items() if k in ("phi_hr", "phi_bt")},
              "pairs": pairs, "reproduce": {k: v for k, v in report["config"].items()
                                            if k not in ("out", "train", "train_root", "pairs", "images", "openset",
                                                         "trunk", "progress")},
              "rebuild": rebuild.strip()}
    write_text_atomic(folder / RELEASE_RECORD, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")
    return folder


CARD_FIELDS = ("title", "license", "training_data", "usage", "rebuild")


def read_card_texts(path: str | os.PathLike[str]) -> dict[str, str]:
    """The card texts of a release (a JSON object with :data:`CARD_FIELDS`, strings or lists of lines)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or set(data) != set(CARD_FIELDS):
        raise ConfigError(f"{path} must be a JSON object with exactly the keys {list(CARD_FIELDS)}")
    texts = {k: "\n".join(v) if isinstance(v, list) else v for k, v in data.items()}
    if not all(isinstance(v, str) for v in texts.values()):
        raise ConfigError(f"{path}: every value must be a string or a list of lines")
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m btnet_adapters.reproduce.release``."""
    p = argparse.ArgumentParser(prog="python -m btnet_adapters.reproduce.release",
                                description="Write an adapters-only release folder from a finished reproduction.")
    p.add_argument("--run", required=True, help="the --out folder of `btnet reproduce --trunk ...`")
    p.add_argument("--card", required=True, help=f"JSON file with the card's texts: {', '.join(CARD_FIELDS)}")
    p.add_argument("--out", required=True, help="the release folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing release folder")
    args = p.parse_args(argv)
    try:
        folder = write_release(args.run, args.out, overwrite=args.overwrite, **read_card_texts(args.card))
    except BTNetError as err:
        print(f"release: error: {err}", file=sys.stderr)
        return 2
    print(f"release written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
