"""``btnet reproduce``: the paper's cross-resolution comparison from the command line.

``register(subparsers)`` adds the ``reproduce`` command to ``btnet``; standalone:
``python -m btnet_adapters.reproduce.cli [options]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .._parse import int_list, resize_arg
from ..data.degrade import DEGRADATION_PRESETS
from ..errors import BTNetError
from .config import ReproduceConfig
from .stages import StageInterrupted

EPILOG = """examples:
  btnet reproduce                                   # bundled ORL faces, CPU, a few minutes
  btnet reproduce --trunk mobilefacenet.safetensors --train faces/train.tsv \\
                  --pairs faces/pairs.tsv --resolutions 7,14,28 --openset faces/protocols  # --openset: optional
Run the same command again to resume: finished stages (folders with done.json) are reused."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int_list(text))  # the config holds a tuple


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``btnet reproduce`` (one per :class:`ReproduceConfig` field)."""
    d = ReproduceConfig()
    data = p.add_argument_group("data (default: the bundled ORL faces)")
    data.add_argument("--out", default=d.out, help=f"output folder, reused to resume (default: ./{d.out})")
    data.add_argument("--train", help="training faces: 'path<TAB>identity' list, identity folders or .rec")
    data.add_argument("--train-root", help="folder the --train list's paths are relative to (default: its folder)")
    data.add_argument("--pairs", help="verification pairs: a 'path1 path2 same [fold]' list or LFW's pairs.txt "
                      "(needed with --train)")
    data.add_argument("--images", help="folder the pair / open-set paths are relative to (default: the pair list's)")
    data.add_argument("--openset", metavar="DIR", help="folder with openset_gallery.tsv, openset_mated_probes.tsv, "
                                                      "openset_unmated_probes.tsv (optional)")
    data.add_argument("--probe-size", type=int, default=d.probe_size,
                      help=f"open-set probes are degraded to this side first (default {d.probe_size})")
    data.add_argument("--orl-test-identities", type=int, default=d.orl_test_identities,
                      help="ORL people held out for verification (default 10 of 40)")
    models = p.add_argument_group("models")
    models.add_argument("--trunk", help="a trained trunk: insightface/arcface_torch weights (.safetensors/.pt; the "
                                        "architecture is read from them) or a saved model folder")
    models.add_argument("--model", help="model name (default: a small ResNet when training from scratch, "
                                        "inferred for --trunk)")
    models.add_argument("--model-kwargs", type=_json_object, help="model arguments as JSON")
    models.add_argument("--resolutions", type=_ints, default=d.resolutions, help="branch resolutions (default 7,14,28)")
    models.add_argument("--phi-mr", action=argparse.BooleanOptionalAction, default=None,
                        help="train φ_mr (default: yes from scratch; with --trunk: no, else a short fine-tune)")
    models.add_argument("--phi-mm", action=argparse.BooleanOptionalAction, default=None,
                        help="train φ_mm, one model per resolution (default: as --phi-mr)")
    models.add_argument("--branch-trunk", choices=("hr", "mr"),
                        help="trunk carrying the branches (default: φ_mr from scratch, the given trunk with --trunk)")
    recipes = p.add_argument_group("recipes (JSON objects of `btnet train trunk|branch` fields)")
    recipes.add_argument("--trunk-options", type=_json_object, default={},
                         help='from-scratch trunks, e.g. \'{"epochs": 20}\'')
    recipes.add_argument("--finetune-options", type=_json_object, default={},
                         help="fine-tunes of a given trunk (φ_mr / φ_mm)")
    recipes.add_argument("--branch-options", type=_json_object, default={},
                         help='branch runs, e.g. \'{"epochs": 3, "lr": 0.05}\'')
    recipes.add_argument("--train-resize", type=resize_arg,
                         help="down-sampling of training degradations (default: as --eval-resize)")
    ev = p.add_argument_group("evaluation and run")
    ev.add_argument("--eval-resize", type=resize_arg,
                    help="resize of the protocols (default: cv2:bilinear:noaa, the reference's verification; "
                         "torch:bilinear:noaa when OpenCV is not installed)")
    ev.add_argument("--degradation", choices=sorted(DEGRADATION_PRESETS),
                    help="degrade every low-resolution image, in training and evaluation, with this seeded preset "
                         "instead of resizing it: 'realistic' = optical blur, sub-pixel shift, area down-sampling, "
                         "sensor noise, JPEG (default: resize, the paper's protocol)")
    ev.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip, help="flip TTA (default on)")
    ev.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    ev.add_argument("--seed", type=int, default=d.seed)
    ev.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    ev.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers of training runs")
    ev.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on the bundled ORL faces, where one "
                                                 "thread is fastest on a busy machine; torch's default otherwise)")
    ev.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                    help="channels-last memory format (default on)")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                    help="progress bars (default on)")


def config_from_args(args: argparse.Namespace) -> ReproduceConfig:
    """The :class:`ReproduceConfig` a parsed command line describes."""
    return ReproduceConfig(
        out=args.out, train=args.train, train_root=args.train_root, pairs=args.pairs, images=args.images,
        openset=args.openset, probe_size=args.probe_size, orl_test_identities=args.orl_test_identities,
        trunk=args.trunk, model=args.model, model_kwargs=args.model_kwargs, resolutions=args.resolutions,
        phi_mr=args.phi_mr, phi_mm=args.phi_mm, branch_trunk=args.branch_trunk,
        trunk_options=args.trunk_options, finetune_options=args.finetune_options,
        branch_options=args.branch_options, train_resize=args.train_resize, eval_resize=args.eval_resize,
        degradation=args.degradation, flip=args.flip, eval_batch_size=args.eval_batch_size, seed=args.seed, device=args.device,
        workers=args.workers, channels_last=args.channels_last, threads=args.threads, progress=args.progress)


def run_command(args: argparse.Namespace) -> int:
    """Run ``btnet reproduce``; print the report and the written files. Returns the exit status
    (0; 2 for bad input; 128 + the signal number when a stage was interrupted)."""
    from .pipeline import run_reproduce

    try:
        result = run_reproduce(config_from_args(args), stream=sys.stderr)
    except StageInterrupted as err:
        print(f"btnet reproduce: {err}", file=sys.stderr)
        return 128 + int(err.signal or signal.SIGINT)
    except BTNetError as err:
        print(f"btnet reproduce: error: {err}", file=sys.stderr)
        return 2
    print(result.report.text)
    print("written:")
    for role, path in result.files.items():
        print(f"  {role:12s} {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to a ``btnet`` sub-command set."""
    p = subparsers.add_parser(
        "reproduce", help="run the paper's comparison: φ_hr / φ_mr / φ_mm vs BTNet branches, end to end",
        description="Train what is missing (trunks, classifier, branches), evaluate multi-resolution "
                    "verification (and open set), and write the table with gains, costs and plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m btnet_adapters.reproduce.cli``."""
    parser = argparse.ArgumentParser(prog="btnet reproduce", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
