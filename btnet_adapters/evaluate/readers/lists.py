"""Identity lists for 1:N identification: TSV lists, image folders and QMUL-SurvFace ``.mat``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ProtocolFileError
from ._common import read_lines, require_images, resolve, split_fields

_HEADER_WORDS = ("path", "image", "img", "file", "filename")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class IdentityList:
    """Images with identity labels (gallery, mated probes) or without (unmated probes).

    Attributes:
        paths: image files.
        identities: one label per image (strings), or ``None`` for unmated probes.
        name: a short name for tables.
    """

    paths: tuple[Path, ...]
    identities: np.ndarray | None
    name: str = "list"

    def __len__(self) -> int:
        return len(self.paths)


def read_identity_tsv(path: str | os.PathLike[str],
                      images_root: str | os.PathLike[str] | None = None, *,
                      check_images: bool = True) -> IdentityList:
    """Read ``path<TAB>identity`` lines (a header whose first word is ``path``, ``image``,
    ``img``, ``file`` or ``filename`` is skipped).

    Lines with a single field (just a path) are allowed when *every* line has one field:
    such a list has no identities (an unmated probe list).
    """
    path = Path(path)
    root = Path(images_root) if images_root is not None else None
    rows = read_lines(path)
    if rows and split_fields(rows[0][1])[0].lower() in _HEADER_WORDS:
        rows = rows[1:]
    if not rows:
        raise ProtocolFileError(f"{path}: the list is empty")
    widths = {len(split_fields(line)) for _, line in rows}
    if widths not in ({1}, {2}):
        bad = next((n for n, line in rows if len(split_fields(line)) not in (1, 2)), None)
        where = f"{path}:{bad}" if bad is not None else f"{path} (mixed 1- and 2-field lines)"
        raise ProtocolFileError(f"{where}: expected 'path<TAB>identity' on every line, or only "
                                f"paths on every line")
    paths = tuple(resolve(root, split_fields(line)[0]) for _, line in rows)
    ids = np.asarray([split_fields(line)[1] for _, line in rows]) if widths == {2} else None
    listed = IdentityList(paths, ids, name=path.stem)
    if check_images:
        require_images(paths, f"images named in {path}")
    return listed


def list_image_folder(folder: str | os.PathLike[str], name: str | None = None) -> IdentityList:
    """All image files directly in ``folder``, sorted by name, without identities."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtocolFileError(f"image folder not found: {folder}")
    paths = tuple(sorted(p for p in folder.iterdir()
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    if not paths:
        raise ProtocolFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return IdentityList(paths, None, name=name or folder.name)


def _mat_strings(cells: np.ndarray, path: Path, key: str) -> list[str]:
    out = []
    for item in np.asarray(cells, dtype=object).reshape(-1):
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.reshape(-1)[0]
        if isinstance(item, np.ndarray) and item.dtype.kind == "U" and item.size == 1:
            item = item.reshape(-1)[0]
        if not isinstance(item, str):
            raise ProtocolFileError(f"{path}: {key} must be a cell array of file names")
        out.append(item)
    return out


def read_survface_mat(mat_path: str | os.PathLike[str], names_key: str, ids_key: str,
                      images_dir: str | os.PathLike[str] | None = None, *,
                      check_images: bool = True) -> IdentityList:
    """Read a QMUL-SurvFace ``*_img_ID_pairs.mat`` (file names + integer identities).

    The official files are ``gallery_img_ID_pairs.mat`` (keys ``gallery_set``,
    ``gallery_ids``) and ``mated_probe_img_ID_pairs.mat`` (``mated_probe_set``,
    ``mated_probe_ids``). Needs ``scipy``.
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ProtocolFileError("reading SurvFace .mat files needs scipy "
                                "(pip install scipy)") from None
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise ProtocolFileError(f"SurvFace metadata not found: {mat_path}")
    try:
        mat = loadmat(str(mat_path))
    except (ValueError, TypeError, OSError) as exc:
        raise ProtocolFileError(f"{mat_path}: not a readable MATLAB file ({exc})") from None
    missing = [k for k in (names_key, ids_key) if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ProtocolFileError(f"{mat_path}: missing {missing}; the file holds {found}")
    names = _mat_strings(mat[names_key], mat_path, names_key)
    ids = np.asarray(mat[ids_key]).reshape(-1)
    if ids.dtype.kind not in "iuf" or len(ids) != len(names):
        raise ProtocolFileError(f"{mat_path}: {ids_key} must hold one number per file name "
                                f"({len(names)} names, {ids.size} ids of dtype {ids.dtype})")
    root = Path(images_dir) if images_dir is not None else None
    paths = tuple(resolve(root, n) for n in names)
    listed = IdentityList(paths, np.asarray([str(int(i)) for i in ids]), name=names_key)
    if check_images:
        require_images(paths, f"images named in {mat_path}")
    return listed


def read_survface_identification(root: str | os.PathLike[str], *, check_images: bool = True
                                 ) -> tuple[IdentityList, IdentityList, IdentityList]:
    """Read QMUL-SurvFace's 1:N test set: ``(gallery, mated probes, unmated probes)``.

    ``root`` is the dataset folder or its ``Face_Identification_Test_Set`` sub-folder, which
    holds ``gallery/``, ``mated_probe/``, ``unmated_probe/`` and the two ``.mat`` files.
    Unmated probes are every image in ``unmated_probe/``, sorted by name (as the reference
    lists the folder).
    """
    base = Path(root)
    if (base / "Face_Identification_Test_Set").is_dir():
        base = base / "Face_Identification_Test_Set"
    gallery = read_survface_mat(base / "gallery_img_ID_pairs.mat", "gallery_set", "gallery_ids",
                                base / "gallery", check_images=check_images)
    mated = read_survface_mat(base / "mated_probe_img_ID_pairs.mat", "mated_probe_set",
                              "mated_probe_ids", base / "mated_probe", check_images=check_images)
    unmated = list_image_folder(base / "unmated_probe", name="unmated_probe")
    return gallery, mated, unmated
