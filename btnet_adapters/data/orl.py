"""The ORL (AT&T) faces bundled with the package: 40 people × 10 grey 92×112 images.

Demos (``btnet inspect``), the default effective-resolution calibration
(:func:`btnet_adapters.effective.calibrate_orl`) and the embedded reproduction
(:mod:`btnet_adapters.reproduce.orl`) read them from here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ORL_DIR", "orl_faces"]

#: The bundled ORL faces (package data): ``s1`` … ``s40``, each with ``1.pgm`` … ``10.pgm``.
ORL_DIR = Path(__file__).resolve().parents[1] / "assets" / "orl"


def orl_faces(per_subject: int = 1, root: Path = ORL_DIR) -> list:
    """The bundled ORL faces (92×112 grey PIL images), ``per_subject`` from each of the 40 people."""
    from PIL import Image

    if not root.is_dir():
        raise FileNotFoundError(f"the bundled ORL faces are missing from {root}; reinstall btnet-adapters")
    subjects = sorted(root.glob("s*"), key=lambda p: int(p.name[1:]))
    return [Image.open(subject / f"{i}.pgm").copy() for subject in subjects for i in range(1, per_subject + 1)]
