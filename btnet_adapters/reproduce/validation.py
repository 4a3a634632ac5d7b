"""A validation split of the training identities: choose recipes on it, never on the test pairs.

:func:`make_validation_split` holds out ``held_out`` identities of a training list (seeded) and
writes the rest as the list to train on (``fit.tsv``) and verification pairs among the held-out
people (``val_pairs.tsv``, every same-identity pair and as many different-identity pairs, in
balanced folds), both relative to the training images' root. Making the same split again leaves
the files untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic
from ..data import TSVSource
from ..errors import ConfigError
from .orl import verification_pairs

FIT_LIST = "fit.tsv"
VAL_PAIRS = "val_pairs.tsv"


@dataclass(frozen=True)
class ValidationSplit:
    """Where a split was written and what it holds."""

    fit: Path
    pairs: Path
    root: Path
    fit_identities: int
    fit_images: int
    held_out: list[str]
    num_pairs: int


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` already holds it (runs that recorded the file's
    identity, its size and modification time, stay valid when the split is made again)."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_text_atomic(path, text)


def make_validation_split(train: str | os.PathLike[str], out: str | os.PathLike[str], *,
                          root: str | os.PathLike[str] | None = None, held_out: int = 40, seed: int = 0,
                          folds: int = 10) -> ValidationSplit:
    """Hold out ``held_out`` identities of the ``path<TAB>identity`` list ``train``.

    Args:
        train: the training list.
        out: folder for ``fit.tsv`` and ``val_pairs.tsv`` (created).
        root: folder the list's paths are relative to (default: its folder).
        held_out: identities held out for validation (at least 2 images each are needed).
        seed: seed of the choice of identities and of the pairs.
        folds: folds of the pairs.

    Raises:
        ConfigError: too few identities on either side.
    """
    source = TSVSource(train, root)
    names = source.classes
    if not 2 <= held_out <= source.num_classes - 2:
        raise ConfigError(f"held_out must be in 2..{source.num_classes - 2} ({train} has {source.num_classes} "
                          f"identities), got {held_out}")
    rng = np.random.default_rng([seed, 0x5A1])
    chosen = set(int(k) for k in rng.choice(source.num_classes, size=held_out, replace=False))
    paths = [source.path(i).relative_to(source.root).as_posix() for i in range(len(source))]
    labels = source.labels.tolist()
    fit = [f"{p}\t{names[label]}" for p, label in zip(paths, labels) if label not in chosen]
    groups = [[p for p, label in zip(paths, labels) if label == k] for k in sorted(chosen)]
    pairs = verification_pairs(groups, seed, folds)
    folder = Path(out)
    _write_if_changed(folder / FIT_LIST, "path\tidentity\n" + "\n".join(fit) + "\n")
    _write_if_changed(folder / VAL_PAIRS, "path1\tpath2\tsame\tfold\n"
                      + "".join(f"{a}\t{b}\t{s}\t{f}\n" for a, b, s, f in pairs))
    return ValidationSplit(folder / FIT_LIST, folder / VAL_PAIRS, Path(source.root),
                           source.num_classes - held_out, len(fit), sorted(names[k] for k in chosen), len(pairs))
