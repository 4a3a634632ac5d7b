"""Regenerate ``t1_detections.json``: MTCNN faces of insightface's sample ``t1.jpg``.

The insightface detectors (SCRFD / RetinaFace model packs) download at run time, so the tests
use this stored detector output instead: boxes, scores and 5 landmarks found by facenet-pytorch's
MTCNN (weights bundled in its wheel) on the image at full size and down-scaled with
``cv2.resize(fx=s, fy=s, interpolation=cv2.INTER_AREA)``.

Run once (not part of the test suite)::

    pip install --no-deps facenet-pytorch   # or: pip install --no-deps --target /tmp/fnp facenet-pytorch
    python tests/data/make_t1_detections.py [--extra-path /tmp/fnp]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SCALES = (1.0, 0.2, 0.1)
OUT = Path(__file__).with_name("t1_detections.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra-path", help="folder holding facenet_pytorch, if installed with --target")
    args = parser.parse_args()
    if args.extra_path:
        sys.path.insert(0, args.extra_path)
    import cv2
    import numpy as np
    import torch
    from importlib.metadata import version

    from facenet_pytorch.models.mtcnn import MTCNN
    from insightface.data import get_image

    torch.set_num_threads(1)
    detector = MTCNN(keep_all=True, min_face_size=10, device="cpu")
    image = get_image("t1")  # BGR, as cv2.imread
    result = {
        "image": "insightface/data/images/t1.jpg (insightface.data.get_image('t1'), BGR)",
        "detector": f"facenet-pytorch {version('facenet-pytorch')} MTCNN(keep_all=True, min_face_size=10) on the RGB image",
        "resize": "cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA); scale 1.0 = original",
        "landmarks": "left eye, right eye, nose, left mouth corner, right mouth corner (image left/right), as insightface kps",
        "scales": {},
    }
    for scale in SCALES:
        img = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, probs, points = detector.detect(np.ascontiguousarray(img[:, :, ::-1]), landmarks=True)
        faces = []
        if boxes is not None:
            for box, prob, kps in zip(boxes, probs, points):
                faces.append({
                    "bbox": [round(float(v), 2) for v in box],
                    "score": round(float(prob), 4),
                    "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in kps],
                })
        result["scales"][str(scale)] = {"shape": list(img.shape), "faces": faces}
        print(f"scale {scale}: {img.shape[1]}x{img.shape[0]}, {len(faces)} faces")
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
