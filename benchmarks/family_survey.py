"""Survey: which timm backbones convert, and which pyramid levels get a branch.

For each model name, ``BTNet.from_timm(name)`` is built with random weights (nothing is
downloaded), every resolution it offers is run once on random input, and the levels it
skipped are listed with the reason the construction check gave. ``name@224`` builds the model
at another input size. The table is Markdown; ``--json`` also writes the rows.

Usage::

    python benchmarks/family_survey.py                       # the default list below
    python benchmarks/family_survey.py davit_tiny coatnet_nano_rw_224@224
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from btnet_adapters import BTNet
from btnet_adapters._atomic import write_text_atomic
from btnet_adapters.errors import BTNetError

#: Backbones outside tests/test_families.py, from many timm families.
DEFAULT_MODELS = (
    "cspresnet50", "dpn68", "res2net50_14w_8s", "resnest14d", "skresnet18", "gernet_s", "regnetx_002",
    "lcnet_050", "tinynet_a", "fbnetc_100", "ese_vovnet19b_dw", "xception41", "selecsls42b", "repvit_m1",
    "mobileone_s0", "efficientvit_b0", "poolformer_s12", "caformer_s18", "inception_next_tiny", "starnet_s1",
    "mambaout_femto", "focalnet_tiny_srf", "davit_tiny", "nf_resnet26", "rdnet_tiny", "hgnet_tiny",
    "efficientformerv2_s0", "coatnet_nano_rw_224", "coatnet_nano_rw_224@224",
)
_SKIPPED = re.compile(r"no branch for pyramid level (\d+): (.*)")


def survey(spec: str) -> dict[str, Any]:
    """Build one model (``name`` or ``name@input_size``) and report what it offers."""
    name, _, size = spec.partition("@")
    row: dict[str, Any] = {"model": name, "input_size": int(size or 112), "branches": [], "skipped": {}}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = BTNet.from_timm(name, input_size=row["input_size"], embed_dim=32).eval()
        with torch.no_grad():
            for side in model.resolutions:
                model(torch.randn(1, 3, side, side))
        row["branches"] = list(model.branch_resolutions)
        for w in caught:
            found = _SKIPPED.match(str(w.message))
            if found:
                row["skipped"][int(found[1])] = found[2]
    except BTNetError as err:
        row["error"] = f"{type(err).__name__}: {err}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _short(text: str, width: int = 110) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | input | branches | skipped levels / error |", "|---|---:|---|---|"]
    for r in rows:
        branches = ", ".join(map(str, r["branches"])) or "—"
        why = r.get("error") or "; ".join(f"{lvl}: {msg}" for lvl, msg in sorted(r["skipped"].items()))
        lines.append(f"| {r['model']} | {r['input_size']} | {branches} | {_short(why) if why else ''} |")
    ok = sum(1 for r in rows if "error" not in r)
    full = sum(1 for r in rows if "error" not in r and {7, 14, 28} <= set(r["branches"]))
    lines.append("")
    lines.append(f"{ok} of {len(rows)} convert; {full} have branches at 7, 14 and 28 px.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="timm names (name@input_size)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        rows.append(survey(spec))
        print(f"{spec}: {rows[-1]['branches'] or rows[-1].get('error', '')[:80]}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
