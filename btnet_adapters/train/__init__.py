"""Training: trunks and their margin heads, branches by distillation, from one CPU to many GPUs.

- :func:`train_trunk` (:class:`TrunkConfig`): φ_hr, φ_mr v1–v3, φ_mm (:func:`train_independent`).
- :func:`train_branch` (:class:`BranchConfig`): the BTNet recipe, writing an adapter per resolution.
- :func:`fit_classifier`: a margin head for a trunk imported without one (trunk frozen).
- Under ``torchrun`` the same functions run data-parallel (NCCL on GPUs, gloo on CPU) with
  the classifier sharded across processes (:class:`ShardedMarginHead`, Partial FC).
- The command line: ``btnet train trunk|branch`` (:mod:`btnet_adapters.train.cli`).
"""

from .artifacts import load_classifier, load_trunk_folder, load_trunk_weights, save_classifier
from .branch import train_branch
from .checkpoint import latest_checkpoint, load_checkpoint
from .classifier import fit_classifier
from .config import BranchConfig, RunConfig, TrunkConfig, load_config
from .engine import TrainResult
from .partial_fc import ShardedMarginHead
from .schedule import learning_rate
from .trunk import build_model, train_independent, train_trunk

__all__ = [
    "BranchConfig", "RunConfig", "ShardedMarginHead", "TrainResult", "TrunkConfig", "build_model",
    "fit_classifier", "latest_checkpoint", "learning_rate", "load_checkpoint", "load_classifier",
    "load_config", "load_trunk_folder", "load_trunk_weights", "save_classifier", "train_branch",
    "train_independent", "train_trunk",
]
