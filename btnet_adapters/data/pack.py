"""Pack a labelled image source into an insightface RecordIO pair (``.rec`` + ``.idx``).

The layout is the one insightface's MS1M / Glint releases use and ``arcface_torch``'s
``MXFaceDataset`` reads:

- records ``1..N``: the images, grouped by label (``IRHeader(flag=0, label, id=key)`` + the
  encoded JPEG/PNG bytes);
- records ``N+1..N+K``: one per identity ``k``, label ``(first key, stop key)`` of its images;
- record ``0``: the header record, label ``(N+1, N+K+1)``, empty payload.

Next to the pair go ``<name>.classes.json`` (identity names by label, read back by
:class:`~btnet_adapters.data.sources.RecordIOSource`) and insightface's ``property`` file
(``K,H,W``) when all images share one size. Every file is written atomically (a temporary
file, then a rename); an existing ``.rec``, ``.idx`` or ``.classes.json`` is only replaced with
``overwrite=True`` (``--overwrite``), checked before any image is read. Unreadable images are
skipped and listed in the returned summary.

Command line: ``btnet pack SOURCE OUT_DIR [--root R] [--name N] [--format F] [--overwrite]``
(also ``python -m btnet_adapters.data.pack ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BTNetError, ConfigError, OutputExistsError
from .._atomic import atomic_path, write_text_atomic
from ..progress import progress_bar
from .decode import decode_image, encode_jpeg, encode_png, image_format
from .errors import CorruptImageError, DatasetError
from .recordio import IndexedRecordWriter, default_idx_path, pack_record
from .sources import FaceSource, classes_path, open_source

logger = logging.getLogger(__name__)
FORMATS = ("auto", "jpeg", "png")
#: float32 labels index records exactly only up to 2^24.
MAX_RECORDS = 1 << 24


@dataclass
class PackSummary:
    """What :func:`pack_recordio` wrote."""

    rec_path: Path
    idx_path: Path
    num_images: int
    num_classes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"rec": str(self.rec_path), "idx": str(self.idx_path),
                "num_images": self.num_images, "num_classes": self.num_classes,
                "skipped": [list(s) for s in self.skipped]}


def _payload(raw: bytes, image: np.ndarray, fmt: str, quality: int) -> bytes:
    """The bytes to store: the original file when it already has an accepted format."""
    kind = image_format(raw)
    if fmt == "auto":
        return raw if kind in ("jpeg", "png") else encode_png(image)
    if fmt == "png":
        return raw if kind == "png" else encode_png(image)
    return raw if kind == "jpeg" else encode_jpeg(image, quality)


def pack_recordio(source: FaceSource, out_dir: str | os.PathLike[str], *, name: str = "train",
                  image_format: str = "auto", jpeg_quality: int = 95,
                  progress: bool = True, overwrite: bool = False) -> PackSummary:
    """Write ``out_dir/<name>.rec`` + ``.idx`` from ``source`` (insightface layout).

    Args:
        source: the labelled images (labels and names are kept).
        out_dir: destination folder (created if needed).
        name: file stem (``train`` gives ``train.rec`` / ``train.idx``).
        image_format: ``"auto"`` keeps JPEG and PNG files byte for byte and re-encodes other
            formats as PNG (lossless); ``"png"`` / ``"jpeg"`` convert everything else to that.
        jpeg_quality: quality of JPEG re-encoding.
        progress: show a tqdm bar.
        overwrite: replace an existing ``<name>.rec`` / ``.idx`` / ``.classes.json``.

    Returns:
        A :class:`PackSummary`; unreadable images are skipped and listed there.

    Raises:
        OutputExistsError: one of those files exists and ``overwrite`` is off (nothing is read
            or written then).
    """
    if image_format not in FORMATS:
        raise ConfigError(f"unknown image_format {image_format!r}; accepted: {FORMATS}")
    n, k = len(source), source.num_classes
    if n + k + 1 > MAX_RECORDS:
        raise ConfigError(f"{n} images + {k} identities exceed the {MAX_RECORDS} records that the "
                          "format's float32 labels can index exactly")
    out = Path(out_dir)
    rec_path = out / f"{name}.rec"
    existing = [p for p in (rec_path, default_idx_path(rec_path, None), classes_path(rec_path))
                if os.path.lexists(p)]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite (overwrite=True) to replace "
                                f"{', '.join(p.name for p in existing)}, or choose another --name or folder")
    out.mkdir(parents=True, exist_ok=True)
    order = np.argsort(source.labels, kind="stable")
    ranges = np.zeros((k, 2), dtype=np.int64)
    skipped: list[tuple[str, str]] = []
    shapes: set[tuple[int, int]] = set()
    key = 1
    names = classes_path(rec_path)
    # Exit order: the .rec/.idx pair is renamed into place, then the names; an old names file
    # is removed just before, so new records never sit next to the old identity names.
    with atomic_path(names) as names_tmp, IndexedRecordWriter(rec_path) as writer:
        names_tmp.write_text(json.dumps(source.classes, ensure_ascii=False), encoding="utf-8")
        bar = progress_bar(order, desc=f"packing {rec_path.name}", unit="img", disable=not progress)
        for i in bar:
            label = int(source.labels[i])
            try:
                raw = source.read_bytes(int(i))
                image = decode_image(raw, source.describe(int(i)))
            except CorruptImageError as exc:
                logger.warning("skipping unreadable image: %s", exc)
                skipped.append((source.describe(int(i)), str(exc)))
                continue
            shapes.add(image.shape[:2])
            if ranges[label, 1] == 0:
                ranges[label, 0] = key
            ranges[label, 1] = key + 1
            writer.write(key, pack_record(float(label), _payload(raw, image, image_format,
                                                                 jpeg_quality), id=key))
            key += 1
        if key == 1:
            raise DatasetError(f"no readable image in {source.to_dict()}; nothing written")
        start = key
        for label in range(k):
            if ranges[label, 1] == 0:
                ranges[label] = 1 if label == 0 else ranges[label - 1, 1]
            writer.write(start + label, pack_record([float(ranges[label, 0]),
                                                     float(ranges[label, 1])], id=label))
        writer.write(0, pack_record([float(start), float(start + k)]))
        names.unlink(missing_ok=True)
    if len(shapes) == 1:
        (h, w), = shapes
        write_text_atomic(out / "property", f"{k},{h},{w}\n")
    return PackSummary(rec_path, writer.idx_path, start - 1, k, skipped)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``btnet pack`` / ``python -m btnet_adapters.data.pack``."""
    parser.add_argument("source", help="identity folder, TSV list or .rec to repack")
    parser.add_argument("out_dir", help="destination folder")
    parser.add_argument("--root", default=None, help="folder the TSV paths are relative to")
    parser.add_argument("--name", default="train", help="file stem (default: train)")
    parser.add_argument("--format", default="auto", choices=FORMATS, dest="image_format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing <name>.rec/.idx/.classes.json (refused by default)")
    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``btnet pack`` to the ``btnet`` command."""
    description = "Pack identity folders, a TSV list or a .rec into an insightface .rec/.idx pair."
    add_arguments(subparsers.add_parser("pack", help="pack labelled faces into an insightface .rec/.idx pair",
                                        description=description))


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (2, with the message on stderr, on a refused
    overwrite or unusable input)."""
    try:
        source = open_source(args.source, root=args.root)
        summary = pack_recordio(source, args.out_dir, name=args.name, image_format=args.image_format,
                                jpeg_quality=args.quality, overwrite=args.overwrite)
    except BTNetError as err:
        print(f"btnet pack: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary.rec_path} and {summary.idx_path}: {summary.num_images} images, "
          f"{summary.num_classes} identities, {len(summary.skipped)} skipped")
    for where, error in summary.skipped:
        print(f"  skipped {where}: {error}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m btnet_adapters.data.pack",
        description="Pack identity folders or a TSV list into an insightface .rec/.idx pair.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
