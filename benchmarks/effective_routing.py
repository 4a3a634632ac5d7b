"""Routing by effective resolution on CelebA test pairs whose second face was degraded.

The second image of every pair is down-sampled to r px (r in ``--resolutions``, plus the
undegraded control r = 112) and re-enlarged to ``--enlarge`` px. Size-based routing (max + ceil)
sends all of these to the trunk; effective routing (``BTNet.embed(indicator="effective")``)
sends each to the branch its estimated detail fits. The first image stays 112 px on the trunk.
Prints and writes (Markdown + JSON):

1. the estimator's confusion table: true r (7/14/28/56/112) vs estimated effective side;
2. where each routing sends the degraded faces;
3. 1:1 verification accuracy (flip TTA, best threshold on the other folds) for size-based
   routing (the trunk on the enlarged image, i.e. the up-sampling practice), effective routing,
   and the oracle that knows r (branch r) — with the difference effective − size-based.

    python benchmarks/effective_routing.py                   # real MobileFaceNet trunk, untrained branches
    python benchmarks/effective_routing.py --adapter runs/b14/adapters/r14   # + a trained 14-px branch
    python benchmarks/effective_routing.py --model path/to/saved_btnet --degrade cv2-bilinear

The default model is insightface's MobileFaceNet (``weights/`` of the data folder) with branches
7/14/28 built from the trunk and NOT trained: their rows show what routing alone does; trained
branches (``--adapter``, ``btnet_adapters.train.train_branch``) show what it is for.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEGRADATIONS = ("pil-bilinear", "cv2-bilinear", "pil-bicubic", "torch-bilinear")


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BTNET_DATA", REPO.parent / "shared" / "data")),
                   help="data folder with celeba112/ and weights/ (default: $BTNET_DATA or ../shared/data)")
    p.add_argument("--folds", type=_ints, default=[0, 1, 2, 3], help="pair folds to use (600 pairs each)")
    p.add_argument("--limit", type=int, help="use only N pairs of those folds, evenly spaced (smoke runs)")
    p.add_argument("--resolutions", type=_ints, default=[7, 14, 28], help="sides the second face is degraded to")
    p.add_argument("--enlarge", type=int, default=112, help="pixel size the degraded face is re-enlarged to")
    p.add_argument("--degrade", choices=DEGRADATIONS, default="pil-bilinear",
                   help="resampler of the degradation (down and up); pil = antialiased, cv2 = the reference's")
    p.add_argument("--jpeg", type=int, help="also save the degraded face as a JPEG of this quality")
    p.add_argument("--model", default="mobilefacenet",
                   help="'mobilefacenet' (the real trunk, branches built untrained) or a saved BTNet folder / hub id")
    p.add_argument("--adapter", action="append", default=[], help="adapter folder to load (repeatable)")
    p.add_argument("--calibration", type=Path, help="estimator calibration JSON (default: the bundled ORL one)")
    p.add_argument("--strategy", default="ceil", choices=("ceil", "near", "floor"))
    p.add_argument("--estimator-only", action="store_true", help="only the estimator's confusion table (no model)")
    p.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "effective_routing",
                   help="output base path (.md and .json are written)")
    return p.parse_args()


def _spec(name: str):
    from btnet_adapters.resize import ResizeSpec

    backend, filt = name.split("-")
    return ResizeSpec(backend, filt, antialias=backend != "cv2")


def _load_model(args: argparse.Namespace):
    import timm
    from safetensors.torch import load_file

    import btnet_adapters  # noqa: F401  (registers btnet_* models)
    from btnet_adapters import BTNet

    if args.model == "mobilefacenet":
        weights = args.data / "weights" / "mobilefacenet_insightface_ms1m.safetensors"
        model = timm.create_model("btnet_mobilefacenet", embed_dim=128, resolutions=[7, 14, 28],
                                  backbone_kwargs=dict(num_features=128, scale=1))
        model.trunk.load_state_dict(load_file(str(weights)), strict=True)
        for r in (7, 14, 28):  # rebuild the branches from the loaded trunk (untrained copies)
            model.remove_branch(r)
            model.add_branch(r)
        name = "MobileFaceNet (insightface, MS1M)"
        untrained = [7, 14, 28]
    else:
        model = BTNet.from_pretrained(args.model)
        name, untrained = str(args.model), []
    trained = sorted(model.load_adapter(folder) for folder in args.adapter)
    untrained = [r for r in untrained if r not in trained]
    if trained:
        name += f", trained branch(es) {'/'.join(map(str, trained))} ({', '.join(args.adapter)})"
    if untrained:
        name += f", UNTRAINED branch(es) {'/'.join(map(str, untrained))} (copies of the trunk)"
    return model.eval(), name, sorted(trained)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


class Embedder:
    """Embeddings of images at a given branch, the way ``BTNet.embed`` computes them.

    ``embed`` resizes an image to its route with ``model.resize_spec`` and runs that path; an
    image's embedding therefore depends only on (image, route). Computing each (image, route)
    once and assembling routings from them gives the same numbers as calling ``embed`` per
    routing, at a fraction of the cost (checked on a sample by :meth:`check`).
    """

    def __init__(self, model: Any, flip: bool, batch_size: int) -> None:
        self.model, self.flip, self.batch_size = model, flip, batch_size

    def at(self, images: list[np.ndarray], side: int) -> np.ndarray:
        import torch

        from btnet_adapters.resize import resize_tensor

        if not images:
            return np.zeros((0, self.model.embed_dim), np.float32)
        spec = self.model.resize_spec
        resized = [resize_tensor(torch.from_numpy(im).permute(2, 0, 1).float(), side, spec) / 255 for im in images]
        return self.model.embed(resized, flip=self.flip, batch_size=self.batch_size).numpy()

    def routed(self, images: list[np.ndarray], routes: np.ndarray, known: dict[int, np.ndarray]) -> np.ndarray:
        """Embeddings under ``routes``, reusing ``known[side]`` (embeddings of all images at side)."""
        out = np.zeros((len(images), self.model.embed_dim), np.float32)
        for side in np.unique(routes):
            idx = np.flatnonzero(routes == side)
            out[idx] = known[int(side)][idx] if int(side) in known else self.at([images[i] for i in idx], int(side))
        return out

    def check(self, images: list[np.ndarray], assembled: np.ndarray, calibration: Any) -> float:
        """Largest difference between assembled embeddings and ``embed(indicator="effective")``."""
        direct = self.model.embed(images, indicator="effective", flip=self.flip, calibration=calibration).numpy()
        return float(np.abs(direct - assembled).max())


def _estimator_table(faces: list[np.ndarray], cal: Any, spec: Any, enlarge: int,
                     jpeg: int | None) -> tuple[list[dict], np.ndarray]:
    """Confusion of the estimator alone: every face degraded to every calibrated side."""
    from btnet_adapters.effective import confusion, degrade, effective_sides

    truth, estimated = [], []
    for r in cal.sides:
        sides = effective_sides([degrade(im, r, enlarge, spec, jpeg) for im in faces], cal, progress=False)
        truth += [r] * len(sides)
        estimated += sides.tolist()
    table = confusion(truth, estimated, cal.sides)
    rows = [{"true r": r, **{f"est {s}": int(v) for s, v in zip(cal.sides, row)}, "exact %": 100 * row[i] / row.sum()}
            for i, (r, row) in enumerate(zip(cal.sides, table))]
    return rows, table


def _evaluate_side(r: int, faces: list[np.ndarray], pair_index: np.ndarray, emb1: np.ndarray,
                   issame: np.ndarray, folds: np.ndarray, model: Any, embedder: Embedder, cal: Any, spec: Any,
                   args: argparse.Namespace, trained: list[int]) -> tuple[dict, dict, float | None]:
    """Routing shares, accuracies and the embed() check for second faces degraded to ``r``.

    ``faces`` are the distinct second images; ``pair_index`` maps each pair to its face."""
    from btnet_adapters import routing
    from btnet_adapters.effective import degrade, route_effective
    from btnet_adapters.evaluate import evaluate_verification

    trunk = model.input_size
    images = [degrade(im, r, args.enlarge, spec, args.jpeg) for im in faces]
    by_size = routing.select_resolutions([im.shape[1::-1] for im in images], model.resolutions, "max", args.strategy)
    by_content = route_effective(images, model.resolutions, args.strategy, cal)
    oracle = routing.select_resolution(r, r, model.resolutions, "max", args.strategy)
    known = {trunk: embedder.at(images, trunk)}
    if oracle != trunk:
        known[oracle] = embedder.at(images, oracle)
    embeddings = {"size": embedder.routed(images, by_size, known),
                  "effective": embedder.routed(images, by_content, known), "oracle": known[oracle]}
    acc = {k: 100 * evaluate_verification(emb1, e[pair_index], issame, folds=folds).accuracy
           for k, e in embeddings.items()}
    check = None
    if r != trunk:  # the shortcut equals embed(indicator="effective") on a sample
        sample = list(range(min(16, len(images))))
        check = embedder.check([images[i] for i in sample], embeddings["effective"][sample], cal)
    routes = {"true r": r, **{f"effective → {s}": 100 * float(np.mean(by_content == s)) for s in model.resolutions},
              "size-based → trunk": 100 * float(np.mean(by_size == trunk))}
    status = "trunk" if oracle == trunk else ("trained" if oracle in trained else "untrained")
    accuracy = {"setting": f"{trunk}&{r}", "branch of r": f"{oracle} ({status})",
                "size-based (trunk, up-sampled)": acc["size"], "effective routing": acc["effective"],
                "oracle (branch of r)": acc["oracle"], "Δ effective − size": acc["effective"] - acc["size"]}
    return routes, accuracy, check


def main() -> None:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from btnet_adapters.effective import EffectiveCalibration, default_calibration
    from btnet_adapters.evaluate import markdown_table, read_pairs_tsv
    from btnet_adapters._atomic import write_text_atomic as write_text

    start = time.time()
    celeba = args.data / "celeba112"
    pairs = read_pairs_tsv(celeba / "protocols" / "verification_pairs.tsv", celeba / "images")
    keep = np.isin(pairs.folds, args.folds)
    idx = np.flatnonzero(keep)
    if args.limit:  # evenly spaced, so every fold keeps genuine and impostor pairs
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, args.limit).round().astype(int))]
    issame, folds = pairs.issame[idx], pairs.folds[idx]
    paths1, inv1 = np.unique([str(pairs.paths1[i]) for i in idx], return_inverse=True)
    paths2, inv2 = np.unique([str(pairs.paths2[i]) for i in idx], return_inverse=True)
    first = [_read_rgb(Path(p)) for p in paths1]  # each image once; pairs index them
    second = [_read_rgb(Path(p)) for p in paths2]
    cal = EffectiveCalibration.load(args.calibration) if args.calibration else default_calibration()
    spec = _spec(args.degrade)
    jpeg = f", JPEG quality {args.jpeg}" if args.jpeg else ""
    est_rows, table = _estimator_table(second, cal, spec, args.enlarge, args.jpeg)
    est_accuracy = float(np.trace(table) / table.sum())
    print(f"{len(idx)} pairs (folds {args.folds}; {len(second)} distinct second faces), second face degraded "
          f"with {spec} and re-enlarged to {args.enlarge} px{jpeg}; estimator exact on {100 * est_accuracy:.1f} %")
    route_rows, acc_rows, check, model_name, model_resize = [], [], None, None, None
    if not args.estimator_only:
        model, model_name, trained = _load_model(args)
        model_resize = str(model.resize_spec)
        print(f"model: {model_name}")
        embedder = Embedder(model, flip=not args.no_flip, batch_size=args.batch_size)
        emb1 = embedder.at(first, model.input_size)[inv1]
        checks = []
        for r in [*args.resolutions, model.input_size]:
            routes, accuracy, check = _evaluate_side(r, second, inv2, emb1, issame, folds, model, embedder, cal,
                                                     spec, args, trained)
            route_rows.append(routes)
            acc_rows.append(accuracy)
            checks.append(check)
            print("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in accuracy.items()))
        check = max((c for c in checks if c is not None), default=None)
        if check is not None and check > 1e-4:
            raise SystemExit(f"assembled embeddings differ from embed(indicator='effective') by {check}")

    settings = {
        "pairs": int(len(idx)), "distinct_second_faces": len(second), "folds": args.folds,
        "degradation": str(spec), "enlarge": args.enlarge, "jpeg": args.jpeg,
        "strategy": args.strategy, "flip": not args.no_flip, "model": model_name,
        "model_resize": model_resize, "calibration": cal.source, "seconds": round(time.time() - start, 1),
        "max |embed(effective) - assembled|": check,
    }
    parts = [
        f"# Effective-resolution routing on CelebA test pairs ({len(idx)} pairs, folds {args.folds})\n",
        f"Second face degraded with `{spec}` to r px and re-enlarged to {args.enlarge} px{jpeg}; calibration: "
        f"{cal.source}.\n",
        markdown_table(est_rows, floatfmt=".1f",
                       title=f"Estimator confusion (rows: true r; exact {100 * est_accuracy:.1f} %)"),
    ]
    if acc_rows:
        parts += [
            f"Model: {model_name}; routing strategy `{args.strategy}`; flip TTA {'off' if args.no_flip else 'on'}.\n",
            markdown_table(route_rows, floatfmt=".1f",
                           title="Where the degraded faces go (% of distinct second faces)"),
            markdown_table(acc_rows, floatfmt=".2f", title="Verification accuracy (%)"),
        ]
    md = "\n".join(parts)
    print("\n" + md)
    doc = {"settings": settings, "estimator": {"sides": list(cal.sides), "confusion": table.tolist(),
                                               "accuracy": est_accuracy},
           "routing": route_rows, "accuracy": acc_rows}
    md_path = write_text(args.out.with_suffix(".md"), md)
    write_text(args.out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    print(f"wrote {md_path} and {args.out.with_suffix('.json')} ({settings['seconds']} s; "
          f"embed(effective) check {check})")


if __name__ == "__main__":
    main()
