"""Storage per resolution: BTNet adapters vs a full model per resolution (the reference release).

For each model, prints (Markdown) the bytes of the full model (trunk + embedding head, what the
BTNet reference release stores once per resolution) and of each adapter file
(``adapter_model.safetensors``: only that resolution's specific layers and norm state), then the
totals for trunk + adapters against one full model per resolution. Sizes are exact safetensors
file sizes (float32, header included), computed in memory.

    python benchmarks/bench_sizes.py
    python benchmarks/bench_sizes.py --models btnet_iresnet50 --resolutions 7 14 28
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import timm
import torch
from safetensors.torch import save

import btnet_adapters  # noqa: F401 - registers the btnet_* models

MODELS = {
    "btnet_iresnet50": {},
    "btnet_mobilefacenet": {},
    "btnet_mobilefacenet (insightface MS1M: scale 1, 128-d)": dict(
        embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1)),
}


def file_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Size of the safetensors file holding ``tensors``."""
    return len(save({k: v.contiguous() for k, v in tensors.items()}))


def mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def rows(label: str, name: str, resolutions: Sequence[int], kwargs: dict) -> list[str]:
    model = timm.create_model(name, resolutions=list(resolutions), **kwargs).eval()
    trunk = model.trunk_state_dict()
    full = file_bytes(trunk)
    params = sum(t.numel() for t in trunk.values())
    out = [f"| {label} | full model (trunk + head) | {params:,} | {mb(full)} | 100 % |"]
    total = full
    for r in model.branch_resolutions:
        adapter = model.branch_state_dict(r)
        size = file_bytes(adapter)
        total += size
        count = sum(t.numel() for t in adapter.values())
        out.append(f"| | adapter r={r} (`{model.branches[str(r)].plan.implant}`) | {count:,} | {mb(size)} | "
                   f"{100 * size / full:.1f} % |")
    n = len(model.branch_resolutions) + 1
    out.append(f"| | **trunk + {n - 1} adapters** | | **{mb(total)}** | {100 * total / full:.0f} % |")
    out.append(f"| | reference: {n} full models | | {mb(n * full)} | {100 * n:.0f} % |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="bytes per adapter vs the full model")
    parser.add_argument("--models", nargs="+", choices=[m.split()[0] for m in MODELS], default=None,
                        help="zoo entries to measure (default: all)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[7, 14, 28])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | file | parameters | bytes | of full model |")
    print("|---|---|---|---|---|")
    for label, kwargs in MODELS.items():
        name = label.split()[0]
        if args.models is None or name in args.models:
            print("\n".join(rows(label, name, args.resolutions, kwargs)), flush=True)


if __name__ == "__main__":
    main()
