"""ONNX storage: one export folder (graphs + one shared data file) vs one self-contained file per
resolution, against the safetensors bytes of trunk + adapters.

The insightface MobileFaceNet (scale 1, 128-d) with branches 7/14/28; the branches are perturbed
so that they differ from the trunk, as trained ones do (identical copies would be deduplicated
and flatter the folder). Prints one Markdown table.

    python benchmarks/bench_onnx_size.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch

import btnet_adapters  # noqa: F401 - registers the btnet_* models
from btnet_adapters.export import export_onnx, standalone_onnx
from bench_sizes import file_bytes, mb

KWARGS = dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1))


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model("btnet_mobilefacenet", **KWARGS).eval()
    with torch.no_grad():
        for branch in model.branches.values():
            for t in branch.state_dict().values():
                if t.is_floating_point():
                    t.add_(0.01 * torch.rand_like(t))  # rand: running variances stay positive
    trunk = file_bytes(model.trunk_state_dict())
    adapters = sum(file_bytes(model.branch_state_dict(r)) for r in model.branch_resolutions)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "onnx"
        export_onnx(model, folder)
        shared = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".bin"))
        alone = 0
        for r in model.resolutions:
            alone += standalone_onnx(folder, r, Path(tmp) / f"alone_{r}.onnx").stat().st_size
    base = trunk + adapters
    print("| what | bytes | vs trunk + adapters |\n|---|---:|---:|")
    print(f"| trunk + adapters 7/14/28 (safetensors) | {mb(trunk)} + {mb(adapters)} | 1 |")
    print(f"| export folder: 4 graphs + one shared data file | {mb(shared)} | {shared / base:.2f}× |")
    print(f"| one self-contained ONNX file per resolution | {mb(alone)} | {alone / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
