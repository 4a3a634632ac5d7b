"""Convert a timm backbone into a BTNet and embed ORL faces of mixed sizes.

Run: python examples/quickstart.py  (untrained weights: shows the API, not accuracy)
"""

import numpy as np
import torch

import btnet_adapters  # noqa: F401 - registers the btnet_* models with timm
from btnet_adapters import BTNet
from btnet_adapters.data.orl import orl_faces


def main() -> None:
    torch.manual_seed(0)
    model = BTNet.from_timm("convnext_atto", input_size=112, resolutions=(7, 14, 28), embed_dim=512).eval()
    faces = orl_faces(per_subject=2)[:6]
    sizes = [(9, 11), (92, 112), (20, 24), (12, 15), (46, 56), (6, 7)]
    images = [np.asarray(face.resize(size)) for face, size in zip(faces, sizes)]
    vecs = model.embed(images)
    for (w, h), v in zip(sizes, vecs):
        print(f"{w:>3}×{h:<3} -> path {model.route(w, h):>3}  first values {v[:3].numpy().round(3)}")
    print("cosine similarities:\n", (vecs @ vecs.T).numpy().round(2))


if __name__ == "__main__":
    main()
