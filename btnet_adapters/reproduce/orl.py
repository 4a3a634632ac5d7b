"""The bundled ORL faces as a tiny train / verification split for the embedded reproduction.

The ORL (AT&T) faces ship with the package (40 people × 10 grey 92×112 images). They are not
aligned to the ArcFace template, so :func:`prepare_orl` crops a square around the face
(rows 6–97, the eyes then sit near row 52 of 112 like the template's), enlarges it to 112×112
(PIL bicubic, ×1.22) and writes RGB PNGs plus:

* ``train.tsv`` (``path<TAB>identity``): every image of the first ``40 − test_identities``
  people;
* ``test.tsv``: every image of the last ``test_identities`` people (never trained on);
* ``pairs.tsv`` (``path1 path2 same fold``): all same-person pairs of the test people and as
  many different-person pairs drawn with a seeded generator, shuffled into 10 folds that
  each hold the same number of same and different pairs.

Everything is a function of ``(test_identities, seed)``: the same call writes the same files.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._atomic import write_bytes_atomic, write_text_atomic
from ..data.decode import encode_png
from ..data.orl import ORL_DIR  # the bundled ORL faces (package data)
from ..errors import ConfigError

#: Crop box (left, top, right, bottom) of the square face region of a 92×112 ORL image.
CROP_BOX = (0, 6, 92, 98)
SIZE = 112
FOLDS = 10


@dataclass(frozen=True)
class OrlSplit:
    """The files :func:`prepare_orl` wrote.

    Attributes:
        images: root folder of the 112×112 PNGs (``s<k>/<i>.png``); list paths are relative to it.
        train: training list (``path<TAB>identity``).
        test: test list (same format), disjoint identities.
        pairs: verification pairs of the test identities (``path1 path2 same fold``).
        train_identities: number of training people.
        test_identities: number of test people.
        num_pairs: number of pairs (half of them same-person).
    """

    images: Path
    train: Path
    test: Path
    pairs: Path
    train_identities: int
    test_identities: int
    num_pairs: int


def orl_subjects(root: str | os.PathLike[str] = ORL_DIR) -> list[Path]:
    """The ``s1 … s40`` folders of the ORL faces, in numeric order."""
    root = Path(root)
    subjects = sorted((p for p in root.glob("s*") if p.is_dir() and p.name[1:].isdigit()),
                      key=lambda p: int(p.name[1:]))
    if not subjects:
        raise ConfigError(f"the bundled ORL faces are missing from {root}; reinstall btnet-adapters")
    return subjects


def square_face(path: Path) -> np.ndarray:
    """One ORL image as a 112×112×3 uint8 RGB face crop."""
    with Image.open(path) as img:
        face = img.convert("L").crop(CROP_BOX).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.repeat(np.asarray(face, dtype=np.uint8)[:, :, None], 3, axis=2)


def verification_pairs(groups: list[list[str]], seed: int, folds: int = FOLDS) -> list[tuple[str, str, int, int]]:
    """All same-identity pairs of ``groups`` (lists of image paths per identity) and as many
    seeded different-identity pairs, shuffled into ``folds`` balanced folds.

    Returns:
        ``(path1, path2, same, fold)`` tuples, ordered by fold.
    """
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        raise ConfigError("verification pairs need at least 2 identities with 2 images each")
    same = [(a, b) for g in groups for a, b in itertools.combinations(g, 2)]
    total = sum(len(g) for g in groups)
    if sum(len(g) * (total - len(g)) for g in groups) < len(same):
        raise ConfigError(f"the groups allow fewer different-identity pairs than their {len(same)} same-identity "
                          "pairs; use more identities or fewer images per identity")
    rng = np.random.default_rng([seed, 0x0A1])
    owner = [(i, p) for i, g in enumerate(groups) for p in g]
    impostors: set[tuple[str, str]] = set()
    while len(impostors) < len(same):
        i, j = rng.choice(len(owner), size=2, replace=False)
        if owner[i][0] != owner[j][0]:
            impostors.add((owner[i][1], owner[j][1]))
    different = sorted(impostors)
    per_fold = len(same) // folds
    if per_fold == 0:
        raise ConfigError(f"{len(same)} same-identity pairs cannot fill {folds} folds")
    out = []
    for flag, pairs in ((1, same), (0, different)):
        order = rng.permutation(len(pairs))[:per_fold * folds]
        out += [(*pairs[k], flag, n // per_fold) for n, k in enumerate(order)]
    return sorted(out, key=lambda row: (row[3], -row[2]))


def prepare_orl(out: str | os.PathLike[str], *, test_identities: int = 10, seed: int = 0,
                root: str | os.PathLike[str] = ORL_DIR) -> OrlSplit:
    """Write the ORL faces as 112×112 PNGs with a train list, a test list and verification
    pairs under ``out`` (see the module docstring).

    Args:
        out: output folder (created).
        test_identities: people held out for verification (the last ones, ``s31 … s40`` by
            default); the others are the training set.
        seed: seed of the different-person pairs and of the fold assignment.
        root: the ORL folder (default: the bundled copy).

    Raises:
        ConfigError: the ORL faces are missing, or ``test_identities`` leaves fewer than 2
            people on either side.
    """
    subjects = orl_subjects(root)
    if not 2 <= test_identities <= len(subjects) - 2:
        raise ConfigError(f"test_identities must be in 2..{len(subjects) - 2} (ORL has {len(subjects)} people), "
                          f"got {test_identities}")
    out = Path(out)
    images = out / "images"
    lists: dict[str, list[str]] = {"train": [], "test": []}
    groups: list[list[str]] = []
    first_test = len(subjects) - test_identities
    for k, subject in enumerate(subjects):
        files = sorted((p for p in subject.glob("*.pgm") if p.stem.isdigit()), key=lambda p: int(p.stem))
        rel = [f"{subject.name}/{p.stem}.png" for p in files]
        for src, name in zip(files, rel):
            write_bytes_atomic(images / name, encode_png(square_face(src)))
        split = "test" if k >= first_test else "train"
        lists[split] += [f"{name}\t{subject.name}" for name in rel]
        if split == "test":
            groups.append(rel)
    for split, lines in lists.items():
        write_text_atomic(out / f"{split}.tsv", "path\tidentity\n" + "\n".join(lines) + "\n")
    pairs = verification_pairs(groups, seed)
    write_text_atomic(out / "pairs.tsv", "path1\tpath2\tsame\tfold\n"
                      + "".join(f"{a}\t{b}\t{s}\t{f}\n" for a, b, s, f in pairs))
    return OrlSplit(images, out / "train.tsv", out / "test.tsv", out / "pairs.tsv",
                    first_test, test_identities, len(pairs))
