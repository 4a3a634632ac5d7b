"""A given trained trunk: a weights file (insightface ``arcface_torch`` names or ``trunk.*`` keys)
or a saved model folder (a trunk run, ``save_pretrained``).

For an insightface checkpoint the architecture is read off the tensors (MobileFaceNet or an
IR-ResNet depth, embedding size, MobileFaceNet width and blocks), so ``btnet reproduce
--trunk mobilefacenet.safetensors`` needs no model name; ``model`` / ``model_kwargs`` override
the inference (and are required for a ``trunk.*`` weights file of any other backbone).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hub
from ..checkpoints import infer_arcface_kwargs, read_state_dict
from ..errors import ConfigError
from ..heads import MarginHead
from ..model import BTNet
from ..train import build_model, load_trunk_folder, load_trunk_weights
from ..zoo import ZOO

#: IR-ResNet block counts per stage -> arcface_torch architecture.
IRESNET_DEPTHS: dict[tuple[int, ...], str] = {
    (2, 2, 2, 2): "iresnet18", (3, 4, 6, 3): "iresnet34", (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100", (6, 26, 60, 6): "iresnet200",
}


def _blocks(keys: list[str], stage: int) -> int:
    pattern = re.compile(rf"layer{stage}\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def infer_architecture(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """``(model name, model kwargs)`` of an insightface checkpoint, read from its tensors.

    Raises:
        ConfigError: the file is unreadable, or not a MobileFaceNet / IR-ResNet checkpoint.
    """
    try:
        state = read_state_dict(path)
    except hub.ArtifactError as err:
        raise ConfigError(f"cannot read the trunk weights: {err}") from None
    keys = sorted(state)
    if "conv_sep.layers.0.weight" in state:
        arch = "mobilefacenet"
    elif "layer1.0.conv1.weight" in state:
        depth = tuple(_blocks(keys, s) for s in (1, 2, 3, 4))
        if depth not in IRESNET_DEPTHS:
            raise ConfigError(f"{path}: an IR-ResNet with {depth} blocks per stage is not one of "
                              f"{sorted(IRESNET_DEPTHS.values())}; give --model and --model-kwargs")
        arch = IRESNET_DEPTHS[depth]
    else:
        raise ConfigError(f"{path}: cannot tell the architecture from its tensor names (e.g. {keys[:3]}); "
                          "give --model (e.g. btnet_iresnet50) and --model-kwargs")
    backbone = {k: list(v) if isinstance(v, tuple) else v for k, v in infer_arcface_kwargs(state, arch).items()}
    kwargs: dict[str, Any] = {"embed_dim": int(backbone.get("num_features", 512)), "backbone_kwargs": backbone}
    name = f"btnet_{arch}"
    if name not in ZOO:
        name = arch
        kwargs["head"] = "backbone"
    return name, kwargs


@dataclass(frozen=True)
class TrunkSource:
    """Where a given trunk comes from and how to rebuild it.

    Attributes:
        path: the weights file or model folder.
        model: model name for a weights file (``None`` for a folder, which records its own).
        model_kwargs: its arguments.
    """

    path: Path
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, path: str | os.PathLike[str], model: str | None = None,
                model_kwargs: dict[str, Any] | None = None) -> "TrunkSource":
        """Check ``path`` and settle the architecture (inferred for insightface weights).

        Raises:
            ConfigError: the path does not exist, a folder is not a saved model, or the
                architecture cannot be inferred.
        """
        p = Path(path).expanduser().resolve()
        if p.is_dir():
            for name in (hub.CONFIG_NAME, hub.WEIGHTS_NAME):
                if not (p / name).is_file():
                    raise ConfigError(f"trunk folder {p} is not a saved model: {name} is missing (expected a "
                                      "trunk run or save_pretrained folder, or a weights file)")
            return cls(p)
        if not p.is_file():
            raise ConfigError(f"trunk not found: {p} (expected a .safetensors/.pt weights file or a saved model folder)")
        if model is None:
            if model_kwargs:
                raise ConfigError("model_kwargs without model: name the model too (e.g. btnet_mobilefacenet)")
            model, model_kwargs = infer_architecture(p)
        return cls(p, model, dict(model_kwargs or {}))

    @property
    def is_folder(self) -> bool:
        """A saved model folder (else a weights file)."""
        return self.model is None

    @property
    def weights(self) -> Path:
        """The weights file (``model.safetensors`` of a folder)."""
        return self.path / hub.WEIGHTS_NAME if self.is_folder else self.path

    def identity(self) -> dict[str, Any]:
        """What identifies the trunk in stage specs: path, size, modification time, architecture."""
        stat = self.weights.stat()
        return {"path": str(self.path), "size": stat.st_size, "mtime": int(stat.st_mtime),
                "model": self.model, "model_kwargs": self.model_kwargs}

    def load(self) -> tuple[BTNet, MarginHead | None]:
        """The trunk as a BTNet without branches, and its classifier when a folder holds one."""
        if self.is_folder:
            model, head, _ = load_trunk_folder(self.path)
            return model, head
        model = build_model(str(self.model), self.model_kwargs)
        load_trunk_weights(model, self.path)
        return model.eval(), None

    def branch_options(self) -> dict[str, Any]:
        """The :class:`~btnet_adapters.train.BranchConfig` fields naming this trunk."""
        if self.is_folder:
            return {"trunk": str(self.path)}
        return {"model": self.model, "model_kwargs": self.model_kwargs, "trunk_weights": str(self.path)}

    def trunk_options(self) -> dict[str, Any]:
        """The :class:`~btnet_adapters.train.TrunkConfig` fields of a fine-tune starting from it."""
        if self.is_folder:
            config = hub.from_pretrained(self.path, resolutions=[]).config()
            config.pop("resolutions", None)
            config.pop("num_classes", None)
            backbone = config.pop("backbone")
            return {"model": backbone, "model_kwargs": config, "init_weights": str(self.weights)}
        return {"model": self.model, "model_kwargs": self.model_kwargs, "init_weights": str(self.path)}
