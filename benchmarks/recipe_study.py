"""Ablation of the branch recipe on a validation split of the *training* identities.

The test pairs are never used here: ``--held-out`` identities of the training list (seeded) are
set aside, branches are trained on the others, and every row is scored on verification pairs
among the held-out people (:func:`btnet_adapters.reproduce.validation.make_validation_split`).
Each row is one ``btnet reproduce`` run (given trunk, one branch, no φ_mr/φ_mm) whose branch
recipe is the previous default (:data:`BASE`) plus the row's options, so each row's command is
printed with the table. The study chose today's default (:data:`btnet_adapters.reproduce.GIVEN_BRANCH`). The classifier fit and the φ_hr evaluation are
the same for every row and are computed once (their finished stages are shared).

Usage (insightface MobileFaceNet, CelebA train split, 7-px rows; ~4 min per row on 2 cores)::

    D=../shared/data
    python benchmarks/recipe_study.py --out runs/recipe_study \\
        --trunk $D/weights/mobilefacenet_insightface_ms1m.safetensors \\
        --train $D/celeba112/splits/train.tsv --train-root $D/celeba112/images

Writes ``OUT/ablation.md`` (the table) and ``OUT/ablation.json``; rows already recorded there
with the same options are read back, so an interrupted study continues where it stopped (and an
unfinished row resumes its stages).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from btnet_adapters._atomic import write_text_atomic
from btnet_adapters.reproduce import ReproduceConfig, run_reproduce
from btnet_adapters.reproduce.validation import make_validation_split

#: The branch recipe the rows start from: the given-trunk default before this study (SGD, classifier
#: loss, MSE distillation with λ 20), on top of the ``btnet train branch`` defaults.
BASE: dict[str, Any] = {"epochs": 6.0, "batch_size": 32, "lr": 0.05, "distill_weight": 20.0, "fit_epochs": 3}
#: ``name -> (resolution, branch options on top of BASE, what the row changes)``. Rows
#: whose options name ``{out}`` refer to another row's output (e.g. a trained 14-px branch).
ADAM = {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05, "momentum": 0.9}
COS = {**ADAM, "embedding_loss": "cosine"}
DISTILL = {**COS, "cls_weight": 0.0}
SHIFT = {"degradation": {"resize": {"backend": "cv2", "filter": "bilinear", "antialias": False},
                         "upsample": False, "shift": 0.5}}
KERNELS = {"degradation": {**SHIFT["degradation"],
                           "kernels": [{"backend": "cv2", "filter": "area", "antialias": True},
                                       {"backend": "torch", "filter": "bicubic", "antialias": False}]}}
ROWS: dict[str, tuple[int, dict[str, Any], str]] = {
    "sgd": (7, {}, "the previous default: SGD lr 0.05, λ 20, MSE embedding distillation, CE weight 1"),
    "adamw": (7, ADAM, "AdamW lr 2e-3, weight decay 0.05"),
    "adamw_cos": (7, COS, "+ cosine embedding distillation"),
    "adamw_cos_nocls": (7, DISTILL, "+ no classifier loss: pure distillation (\"distill\" below)"),
    "distill_shift": (7, {**DISTILL, **SHIFT}, "distill + sub-pixel shifts (±0.5 px) before down-sampling"),
    "distill_kernels": (7, {**DISTILL, **KERNELS}, "distill + shifts + three down-sampling kernels"),
    "distill_cls01": (7, {**DISTILL, "cls_weight": 0.1}, "distill + classifier loss weight 0.1"),
    "distill_emb_only": (7, {**DISTILL, "feature_weight": 0.0}, "distill without the implant-feature term"),
    "distill_all": (7, {**DISTILL, "specific": "all"}, "distill, the branch owns every layer (specific='all')"),
    "distill_feat3": (7, {**DISTILL, "feature_weight": 3.0}, "distill, implant-feature term ×3"),
    "distill_feat10": (7, {**DISTILL, "feature_weight": 10.0}, "distill, implant-feature term ×10"),
    "distill_mse": (7, {**DISTILL, "embedding_loss": "mse"}, "distill with MSE instead of cosine"),
    "distill_sgd": (7, {**DISTILL, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4},
                    "distill with SGD (lr 0.05) instead of AdamW"),
    "distill_lr5e-3": (7, {**DISTILL, "lr": 0.005}, "distill with lr 5e-3"),
    "distill_14": (14, DISTILL, "(14 px, to initialise the next row)"),
    "distill_init14": (7, {**DISTILL, "init_from": "{out}/distill_14/branch_r14/adapters/r14"},
                       "distill, the 7-px branch initialised from the trained 14-px branch"),
}


def _options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The branch options of a row, ``{out}`` filled in."""
    options = json.loads(json.dumps(ROWS[name][1]).replace("{out}", str(args.out.resolve())))
    if args.max_steps:
        options["max_steps"] = args.max_steps
    return options


def run_row(name: str, args: argparse.Namespace, split: Any, shared: Path | None) -> dict[str, Any]:
    """Train and score one row (resuming / reusing what is done)."""
    resolution, _, _ = ROWS[name]
    options = _options(name, args)
    folder = args.out / name
    if shared is not None:  # the classifier and the φ_hr evaluation do not depend on the row
        for stage in ("classifier", "eval_phi_hr"):
            if (shared / stage).is_dir() and not (folder / stage).exists() and \
                    (stage == "classifier" or ROWS[shared.name][0] == resolution):
                shutil.copytree(shared / stage, folder / stage)
    config = ReproduceConfig(out=str(folder), trunk=args.trunk, train=str(split.fit), train_root=str(split.root),
                             pairs=str(split.pairs), images=str(split.root), resolutions=(resolution,),
                             phi_mr=False, phi_mm=False, branch_options={**BASE, **options}, threads=args.threads,
                             progress=args.progress)
    start = time.perf_counter()
    result = run_reproduce(config)
    rows = {row["key"]: row for row in result.report.accuracy}
    settings = [f"112&{resolution}", f"{resolution}&{resolution}", "112&112"]
    return {"name": name, "resolution": resolution, "options": options, "what": ROWS[name][2],
            "phi_hr": {s: rows["phi_hr"].get(s) for s in settings},
            "phi_bt": {s: rows["phi_bt"].get(s) for s in settings},
            "seconds": round(time.perf_counter() - start, 1)}


def command(args: argparse.Namespace, split: Any, resolution: int, options: dict[str, Any], folder: Path) -> str:
    """The ``btnet reproduce`` command of one row."""
    parts = ["btnet", "reproduce", "--out", str(folder), "--trunk", args.trunk, "--train", str(split.fit),
             "--train-root", str(split.root), "--pairs", str(split.pairs), "--images", str(split.root),
             "--resolutions", str(resolution), "--no-phi-mr", "--no-phi-mm"]
    parts += ["--branch-options", json.dumps({**BASE, **options}, separators=(",", ":"))]
    return shlex.join(parts)


def table(results: list[dict[str, Any]], split: Any, args: argparse.Namespace) -> str:
    """The ablation table (markdown) and each row's command."""
    lines = [f"Validation: {len(split.held_out)} held-out training identities, {split.num_pairs} pairs; "
             f"branches trained on the other {split.fit_identities} ({split.fit_images} images). "
             f"Every row: {json.dumps(BASE)} + its options.", "",
             "| row | r | what changes | φ_hr 112&r | φ_bt 112&r | φ_bt r&r | φ_bt 112&112 |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for res in results:
        r = res["resolution"]
        hr, bt = res["phi_hr"], res["phi_bt"]
        lines.append(f"| {res['name']} | {r} | {res['what']} | {hr[f'112&{r}']:.2f} | **{bt[f'112&{r}']:.2f}** | "
                     f"{bt[f'{r}&{r}']:.2f} | {bt['112&112']:.2f} |")
    lines += ["", "Commands:", ""] + [
        f"- {res['name']}: `{command(args, split, res['resolution'], res['options'], args.out / res['name'])}`"
        for res in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trunk", required=True, help="trunk weights file or saved model folder")
    parser.add_argument("--train", required=True, help="the training list (path<TAB>identity)")
    parser.add_argument("--train-root", help="folder the list's paths are relative to")
    parser.add_argument("--held-out", type=int, default=40, help="training identities held out for validation")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {list(ROWS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="cut every run short (a smoke test)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; accepted: {list(ROWS)}")
    split = make_validation_split(args.train, args.out / "split", root=args.train_root, held_out=args.held_out)
    record = args.out / "ablation.json"
    finished = {r["name"]: r for r in json.loads(record.read_text())} if record.is_file() else {}
    results, shared = [], None
    for name in names:
        done = finished.get(name)
        same = done is not None and done["resolution"] == ROWS[name][0] and done["options"] == _options(name, args)
        results.append(done if same else run_row(name, args, split, shared))
        shared = shared or args.out / name
        text = table(results, split, args)
        write_text_atomic(args.out / "ablation.md", text)
        write_text_atomic(args.out / "ablation.json", json.dumps(results, indent=2) + "\n")
        print(f"[{len(results)}/{len(names)}] {name}: φ_bt {results[-1]['phi_bt']}", file=sys.stderr, flush=True)
    print(table(results, split, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
