"""Cost analysis of a model by name: FLOPs, stored parameters and latency per path.

The measuring is :func:`btnet_adapters.cost.measure_costs`; this module builds the model from
a name (a ``btnet_*`` zoo name or any timm backbone, with random weights: costs do not depend
on them) and adds the storage comparison the paper makes: BTNet keeps one trunk plus a small
adapter per resolution, where independent per-resolution models (and the reference release,
which saves each branch as a whole model) keep one full model per resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..cost import CostReport, measure_costs, num_threads


@dataclass(frozen=True)
class StorageSummary:
    """Bytes a multi-resolution model needs on disk, BTNet against one model per resolution.

    Attributes:
        full_bytes: the full model's tensors (trunk + embedding head).
        adapter_bytes: resolution → bytes of its adapter (``branch_state_dict(r)``).
        btnet_bytes: trunk + every adapter.
        separate_bytes: one full model per path.
        paths: number of paths (branches + trunk).
    """

    full_bytes: int
    adapter_bytes: dict[int, int]
    btnet_bytes: int
    separate_bytes: int
    paths: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (resolution keys become strings)."""
        out = asdict(self)
        out["adapter_bytes"] = {str(r): b for r, b in self.adapter_bytes.items()}
        return out


def storage_summary(report: CostReport) -> StorageSummary:
    """BTNet's storage (trunk + adapters) against one full model per path, from a cost report."""
    adapters = {p.resolution: p.stored_bytes for p in report.paths if not p.is_trunk}
    return StorageSummary(
        full_bytes=report.full_bytes,
        adapter_bytes=adapters,
        btnet_bytes=report.full_bytes + sum(adapters.values()),
        separate_bytes=report.full_bytes * len(report.paths),
        paths=len(report.paths),
    )


def analyse_model(model: Any, input_size: int = 112, resolutions: Sequence[int] | None = None,
                  latency: bool = True, batch_sizes: Sequence[int] = (1,), repeats: int = 20,
                  warmup: int = 3, threads: int | None = 1, progress: bool = False) -> CostReport:
    """Costs of every path of a model.

    Args:
        model: a :class:`~btnet_adapters.BTNet`, or a name for
            :func:`btnet_adapters.zoo.build_model` (``btnet_iresnet50``, ``convnext_atto`` …),
            built with random weights (seed 0).
        input_size: trunk input side when building from a timm name.
        resolutions: branch sides when building (default: the zoo's, or every pyramid level).
        threads: torch intra-op threads for the whole analysis (building, counting, timing);
            ``None`` keeps the current setting.
        latency, batch_sizes, repeats, warmup, progress: as
            :func:`btnet_adapters.cost.measure_costs`.

    Returns:
        The :class:`~btnet_adapters.cost.CostReport`.
    """
    with num_threads(threads):
        if isinstance(model, str):
            from ..zoo import build_model

            torch.manual_seed(0)
            model = build_model(model, input_size, resolutions)
        return measure_costs(model, latency=latency, batch_sizes=batch_sizes, repeats=repeats,
                             warmup=warmup, threads=threads, progress=progress)
