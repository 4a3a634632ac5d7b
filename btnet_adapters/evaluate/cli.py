"""``btnet eval verify|identify|ijb``: run the field's protocols with a model and write reports.

Models (``--model``, ``--baseline``) are given as

* a ``btnet_*`` zoo name or any timm backbone name (:func:`btnet_adapters.zoo.build_model`);
* a folder written by ``save_pretrained`` (needs :mod:`btnet_adapters.hub`);
* a ``.safetensors`` trunk file with ``--trunk-arch`` (a timm name, e.g. ``mobilefacenet``) and
  ``--trunk-kwargs`` (e.g. ``num_features=128,scale=1``): the timm model is built, the file
  loaded into it strictly, and the BTNet's branches built from those weights;
* an ``.onnx`` file (onnxruntime; always an up-sampling model).

``--model`` routes images to a BTNet's branches; every ``--baseline`` is run as an up-sampling
baseline (low-resolution images resized back to 112 with the protocol's resize spec).
Outputs go to ``--out`` (default ``./btnet_eval``): Markdown + JSON tables and PNG plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from .._parse import degradation_arg, int_list
from ..errors import ConfigError
from ..resize import ResizeSpec
from ..routing import INDICATORS, STRATEGIES
from .errors import ProtocolFileError
from .identification import MODES

DEFAULT_OUT = "btnet_eval"


# --------------------------------------------------------------------------- parsing helpers
def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``"num_features=128,scale=1"`` → ``{"num_features": 128, "scale": 1}`` (JSON values, else str)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"keyword arguments look like 'name=value,name=value', got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def _named(text: str) -> tuple[str | None, str]:
    """``"NAME=SPEC"`` → (NAME, SPEC); a plain ``SPEC`` → (None, SPEC)."""
    name, sep, spec = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, spec
    return None, text


def _label(spec: str) -> str:
    path = Path(spec)
    return path.stem if path.suffix in (".onnx", ".safetensors") else (path.name or spec)


# --------------------------------------------------------------------------- model loading
def _trunk_btnet(path: Path, arch: str, kwargs: dict[str, Any],
                 resolutions: Sequence[int] | None, input_size: int) -> Any:
    import timm
    import torch
    from safetensors.torch import load_file

    from ..model import BTNet

    trunk = timm.create_model(arch, **kwargs)
    try:
        trunk.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path} does not fit {arch}({kwargs}): {exc}") from None
    with torch.no_grad():
        dim = trunk.eval()(torch.zeros(1, 3, input_size, input_size)).shape[-1]
    return BTNet(trunk, input_size=input_size, resolutions=list(resolutions or (7, 14, 28)),
                 head="backbone", embed_dim=int(dim)).eval()


def load_model(spec: str, *, trunk_arch: str | None = None, trunk_kwargs: str | None = None,
               resolutions: Sequence[int] | None = None, input_size: int = 112) -> Any:
    """Load a model for the CLI: a BTNet, or an onnxruntime session for ``.onnx`` files.

    See the module docstring for the accepted kinds of ``spec``.
    """
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX model not found: {path}")
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ConfigError(f"weights file not found: {path}")
        if not trunk_arch:
            raise ConfigError(f"{path} holds bare weights: say which network they belong to with "
                              f"--trunk-arch (e.g. mobilefacenet --trunk-kwargs "
                              f"num_features=128,scale=1)")
        return _trunk_btnet(path, trunk_arch, parse_kwargs(trunk_kwargs), resolutions,
                            input_size)
    if path.is_dir():
        try:
            from ..hub import from_pretrained
        except ImportError:
            raise ConfigError(f"{path} is a folder, but loading saved models needs "
                              f"btnet_adapters.hub.from_pretrained, which this installation "
                              f"lacks; give a zoo/timm name or a .safetensors trunk") from None
        return from_pretrained(path, resolutions=resolutions).eval()
    if path.suffix or "/" in spec or "\\" in spec:
        raise ConfigError(f"model {spec!r} not found: give a btnet_*/timm name, a saved folder, "
                          f"a .safetensors trunk (with --trunk-arch) or an .onnx file")
    from ..zoo import build_model

    try:
        return build_model(spec, input_size, resolutions).eval()
    except RuntimeError as exc:  # timm: unknown model name
        raise ConfigError(f"cannot build model {spec!r}: {exc}") from None


def _embedders(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from .runners import as_embedder

    kw = dict(trunk_arch=args.trunk_arch, trunk_kwargs=args.trunk_kwargs,
              resolutions=args.resolutions, input_size=args.input_size)
    name, spec = _named(args.model)
    model = as_embedder(load_model(spec, **kw), name or _label(spec))
    baselines = []
    for text in args.baseline:
        bname, bspec = _named(text)
        baselines.append(as_embedder(load_model(bspec, **kw), bname or _label(bspec),
                                     upsample=True))
    names = [model.name] + [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise ConfigError(f"models need distinct names, got {names}; name them as NAME=SPEC")
    return model, baselines


# --------------------------------------------------------------------------- commands
def _read_pairs(args: argparse.Namespace) -> Any:
    from .readers import read_bin, read_pair_list

    path = Path(args.pairs)
    fmt = args.pairs_format
    if fmt == "bin" or (fmt == "auto" and path.suffix == ".bin"):
        return read_bin(path)
    if args.images is None:
        raise ConfigError(f"--images is needed: the pair list {path} names image files")
    return read_pair_list(path, args.images, fmt=fmt)


def _print_written(table: str, paths: Sequence[Path]) -> None:
    print(table)
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_verify(args: argparse.Namespace) -> int:
    """``btnet eval verify``: multi-resolution 1:1 verification of a model (and baselines)."""
    from .report import markdown_table, plot_accuracy_vs_resolution, plot_roc, write_table
    from .runners import accuracy_by_setting, run_verification
    from .settings import parse_settings

    _threads(args.threads)
    settings = parse_settings(args.settings)
    pairs = _read_pairs(args)
    model, baselines = _embedders(args)
    resize = ResizeSpec.parse(args.resize)
    runs = [run_verification(e, pairs, settings, resize=resize, flip=not args.no_flip,
                             batch_size=args.batch_size, progress=not args.quiet, degradation=args.degradation)
            for e in [model, *baselines]]
    out = Path(args.out)
    rows = [row for r in runs for row in r.rows]
    meta = {"pairs": str(args.pairs), "resize": str(resize), "flip": not args.no_flip,
            "degradation": args.degradation.to_dict() if args.degradation else None,
            "settings": [str(s) for s in settings], "far_rule": "closest",
            "protocol": "second image resized one step to r2, first to r1; baselines up-sample "
                        "back to their input size with the same spec"}
    title = f"1:1 verification on {getattr(pairs, 'name', args.pairs)}"
    written = list(write_table(rows, out / "verification", title=title, meta=meta))
    written.append(plot_accuracy_vs_resolution(accuracy_by_setting(runs),
                                               out / "verification_accuracy.png"))
    curves = {f"{r.name} {s}": (res.roc.fpr, res.roc.tpr) for r in runs
              for s, res in r.results.items()}
    written.append(plot_roc(curves, out / "verification_roc.png"))
    text = markdown_table(rows, title=title)
    if baselines:
        gains = _gains(args, runs)
        if gains:
            written += write_table(gains, out / "verification_gains",
                                   title="gains over the high-resolution baseline", meta=meta)
            text += "\n" + markdown_table(gains, title="gains over the high-resolution baseline",
                                          floatfmt=".3f")
    _print_written(text, written)
    return 0


def _gains(args: argparse.Namespace, runs: list[Any]) -> list[dict]:
    from .runners import verification_gains

    by_name = {r.name: r for r in runs}

    def pick(name: str | None, flag: str) -> Any:
        if name is None:
            return None
        if name not in by_name:
            raise ConfigError(f"{flag} {name!r} is not one of the models run: {sorted(by_name)}")
        return by_name[name]

    hr = pick(args.hr, "--hr") or runs[1]
    mr = pick(args.mr, "--mr")
    same = {}
    for item in args.phi_r:
        r, _, name = item.partition("=")
        if not r.isdigit() or not name:
            raise ConfigError(f"--phi-r looks like '7=NAME', got {item!r}")
        same[int(r)] = pick(name, "--phi-r")
    return verification_gains(runs[0], hr, mr, same)


def _read_lists(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from .readers import read_identity_tsv

    gallery = read_identity_tsv(args.gallery, args.images)
    mated = read_identity_tsv(args.mated, args.images)
    unmated = read_identity_tsv(args.unmated, args.images) if args.unmated else None
    for what, lst in (("--gallery", gallery), ("--mated", mated)):
        if lst.identities is None:
            raise ProtocolFileError(f"{what} {lst.name}: needs 'path<TAB>identity' lines")
    return gallery, mated, unmated


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"--mode takes {', '.join(MODES)} (comma-separated), got {text!r}")
    return modes


def cmd_identify(args: argparse.Namespace) -> int:
    """``btnet eval identify``: 1:N open-set identification with per-image routing."""
    from .report import markdown_table, plot_tpir_fpir, write_table
    from .runners import IdentificationProtocol

    _threads(args.threads)
    modes = _modes(args.mode)
    gallery, mated, unmated = _read_lists(args)
    model, baselines = _embedders(args)
    resize = ResizeSpec.parse(args.resize)
    common = dict(resize=resize, probe_size=args.probe_size, flip=args.flip,
                  batch_size=args.batch_size, progress=not args.quiet, degradation=args.degradation)
    run_kw = dict(modes=modes, rank=args.rank)
    runs = []
    routing_runs = []
    for e in [model, *baselines]:
        proto = IdentificationProtocol(e, gallery, mated, unmated, **common)
        runs.append(proto.run(args.indicator, args.strategy, **run_kw))
        if args.all_routings and e is model:
            if not e.routes:
                raise ConfigError(f"--all-routings needs a BTNet as --model; {e.name} "
                                  f"up-samples every image")
            routing_runs = [proto.run(i, s, **run_kw) for i in INDICATORS for s in STRATEGIES]
    out = Path(args.out)
    meta = {"gallery": str(args.gallery), "mated": str(args.mated),
            "unmated": str(args.unmated) if args.unmated else None, "resize": str(resize),
            "probe_size": args.probe_size, "rank": args.rank, "modes": modes, "flip": args.flip,
            "indicator": args.indicator, "strategy": args.strategy}
    rows = [row for r in runs for row in r.rows]
    title = "1:N identification"
    written = list(write_table(rows, out / "identification", title=title, meta=meta))
    text = markdown_table(rows, title=title)
    if unmated is not None:
        curves = {f"{r.name} ({m})": (r.result.open_set[m].curve_fpir,
                                      r.result.open_set[m].curve_tpir)
                  for r in runs for m in modes}
        written.append(plot_tpir_fpir(curves, out / "identification_tpir_fpir.png",
                                      title=f"TPIR{args.rank} vs FPIR"))
    if routing_runs:
        rrows = [row for r in routing_runs for row in r.rows]
        rtitle = f"{model.name}: indicator × strategy"
        written += write_table(rrows, out / "identification_routings", title=rtitle, meta=meta)
        text += "\n" + markdown_table(rrows, title=rtitle)
    _print_written(text, written)
    return 0


# --------------------------------------------------------------------------- ijb
def cmd_ijb(args: argparse.Namespace) -> int:
    """``btnet eval ijb``: IJB-B / IJB-C 1:1 and 1:N with per-image routing by face size."""
    from .ijb_runner import load_ijb, run_ijb

    _threads(args.threads)
    if args.fuse_flip_r7 and args.no_flip:
        raise ConfigError("--fuse-flip-r7 replaces flip TTA by the mirrored 7-px view; "
                          "drop --no-flip")
    resize = ResizeSpec.parse(args.resize)
    degrade_resize = ResizeSpec.parse(args.degrade_resize) if args.degrade_resize else None
    meta = load_ijb(args.ijb, args.target, image_dir=args.images)  # fail before loading models
    model, baselines = _embedders(args)
    run = run_ijb(model, meta, baselines=baselines, validate=False,
                  score_weight=not args.no_score_weight,
                  normalize=not args.norm_score, progress=not args.quiet,
                  strategy=args.strategy, max_side=args.max_side, resize=resize,
                  degrade_resize=degrade_resize, flip=not args.no_flip,
                  fuse_flip_side=7 if args.fuse_flip_r7 else None,
                  batch_size=args.batch_size, workers=args.workers)
    text, written = run.write(args.out)
    _print_written(text, written)
    return 0


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# --------------------------------------------------------------------------- argparse
def _common(p: argparse.ArgumentParser, resize_default: str) -> None:
    p.add_argument("--model", required=True,
                   help="[NAME=]btnet_*/timm name, saved folder, .safetensors trunk or .onnx")
    p.add_argument("--baseline", action="append", default=[], metavar="[NAME=]MODEL",
                   help="an up-sampling baseline (repeatable), same kinds as --model")
    p.add_argument("--trunk-arch", help="timm name of the network in a .safetensors trunk file")
    p.add_argument("--trunk-kwargs", help="its arguments, e.g. num_features=128,scale=1")
    p.add_argument("--resolutions", type=int_list, help="branch sides of a built model, e.g. 7,14,28")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--images", help="folder the list's relative image paths are relative to")
    p.add_argument("--resize", default=resize_default,
                   help=f"resize spec backend:filter:aa|noaa (default {resize_default})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true",
                    help="no progress (tqdm bars on a terminal, a line every 30 s otherwise)")


def _degradation_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--degradation", type=degradation_arg, metavar="PRESET|JSON",
                   help=f"bring {what} below its size with this degradation instead of --resize: 'realistic' "
                        "(optical blur, sub-pixel shift, area down-sampling, sensor noise, JPEG; seeded per "
                        "image, the same pixels for every model) or a JSON object of DegradationSpec fields")


def register(subparsers: Any) -> None:
    """Add ``eval verify``, ``eval identify`` and ``eval ijb`` to the ``btnet`` command."""
    ev = subparsers.add_parser("eval", help="run verification / identification / IJB protocols")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    v = sub.add_parser("verify", help="multi-resolution 1:1 verification (r1&r2 settings)")
    _common(v, "cv2:bilinear:noaa")
    v.add_argument("--pairs", required=True, help="a .bin set, a TSV pair list or LFW pairs.txt")
    v.add_argument("--pairs-format", choices=("auto", "bin", "tsv", "lfw"), default="auto")
    v.add_argument("--settings", default="112&7,112&14,112&28,7&7,14&14,28&28,112&112",
                   help="comma-separated r1&r2 settings, quoted in a shell ('112&7,7&7'): the second "
                        "image is resized to r2, the first to r1 (default: %(default)s)")
    v.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    _degradation_option(v, "images (both of a pair at r&r, the second at 112&r)")
    v.add_argument("--hr", help="name of the high-resolution baseline for gains "
                                "(default: the first --baseline)")
    v.add_argument("--mr", help="name of the mixed-resolution model (cross-resolution gains)")
    v.add_argument("--phi-r", action="append", default=[], metavar="R=NAME",
                   help="model trained at R px (same-resolution gains of R&R), repeatable")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("identify", help="1:N open-set identification with per-image routing")
    _common(i, "pil:bicubic:aa")
    i.add_argument("--gallery", required=True, help="gallery list path<TAB>identity")
    i.add_argument("--mated", required=True, help="mated probe list path<TAB>identity")
    i.add_argument("--unmated", help="unmated probe list (paths); without it only CMC")
    i.add_argument("--indicator", choices=INDICATORS, default="max")
    i.add_argument("--strategy", choices=STRATEGIES, default="ceil")
    i.add_argument("--mode", default="reference,exact",
                   help="open-set metric modes: reference, exact or both (comma-separated)")
    i.add_argument("--rank", type=int, default=20, help="TPIR rank k (default 20)")
    i.add_argument("--probe-size", type=int, metavar="R",
                   help="degrade every probe to R×R first (exercises the routing on 112-px sets)")
    i.add_argument("--flip", action="store_true", help="flip TTA (the reference uses none)")
    _degradation_option(i, "a probe (with --probe-size)")
    i.add_argument("--all-routings", action="store_true",
                   help="also tabulate the model over the 9 indicator × strategy combinations")
    i.set_defaults(func=cmd_identify)

    j = sub.add_parser("ijb", help="IJB-B / IJB-C 1:1 and 1:N (5-point alignment, templates)")
    _common(j, "cv2:bilinear:noaa")
    j.add_argument("--ijb", required=True, help="IJB folder holding meta/ and loose_crop/ "
                                                "(--images overrides the image folder)")
    j.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC")
    j.add_argument("--strategy", choices=STRATEGIES, default="ceil",
                   help="routing of the face size (112 / similarity scale) to a resolution")
    j.add_argument("--max-side", type=int, metavar="R",
                   help="down-scale each image first so its face is at most R px")
    j.add_argument("--degrade-resize", metavar="SPEC",
                   help="resize spec of the --max-side down-scaling (default: --resize)")
    j.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    j.add_argument("--fuse-flip-r7", action="store_true",
                   help="reference's 112&7: trunk(crop) + 7-px branch(mirrored crop at 7)")
    j.add_argument("--no-score-weight", action="store_true",
                   help="do not multiply image features by the detector score")
    j.add_argument("--norm-score", action="store_true",
                   help="keep the feature norm as a weight (no per-image normalisation)")
    j.add_argument("--workers", type=int, default=0, help="image loading threads")
    j.set_defaults(func=cmd_ijb)
