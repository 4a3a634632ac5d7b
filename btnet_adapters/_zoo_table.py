"""The defaults of the ``btnet_*`` timm entry points, as plain data.

:mod:`btnet_adapters.zoo` registers one entry point per name from this table; the hub layer
(:mod:`btnet_adapters.hub`, below the model and the zoo) reads it to record which entry point
rebuilds a saved model. Keeping the table here lets both use it without the hub importing upward.
"""

from __future__ import annotations

from typing import Any

#: Defaults of each registered BTNet (JSON-serialisable BTNet arguments).
ZOO: dict[str, dict[str, Any]] = {
    # timm's stem max-pool removed: the face-standard 56/28/14/7 pyramid at 112.
    "btnet_resnet50": dict(backbone="resnet50", remove=["maxpool"]),
    "btnet_resnet18": dict(backbone="resnet18", remove=["maxpool"]),
    "btnet_iresnet50": dict(backbone="iresnet50", head="backbone"),
    "btnet_iresnet100": dict(backbone="iresnet100", head="backbone"),
    "btnet_mobilefacenet": dict(backbone="mobilefacenet", head="backbone"),
    "btnet_convnext_atto": dict(backbone="convnext_atto"),
    "btnet_efficientnet_b0": dict(backbone="efficientnet_b0"),
}
#: Branch sides of a zoo model when none are given.
DEFAULT_RESOLUTIONS = [7, 14, 28]
