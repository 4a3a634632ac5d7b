"""btnet_adapters: Branch-to-Trunk networks for any hierarchical timm backbone.

Importing the package registers the ``btnet_*`` models and the insightface face backbones
(``iresnet*``, ``mobilefacenet``) with timm; it starts no processes and reads no network.
"""

from . import zoo  # noqa: F401 - timm registration
from .errors import (
    BTNetError,
    ConfigError,
    InputImageError,
    ResolutionError,
    UnknownDownsamplingError,
    UnsupportedBackboneError,
)
from .model import BTNet, BranchPlan
from .resize import ResizeSpec
from .routing import select_resolution

__version__ = "0.1.0"

__all__ = [
    "BTNet",
    "BranchPlan",
    "BTNetError",
    "ConfigError",
    "InputImageError",
    "ResizeSpec",
    "ResolutionError",
    "UnknownDownsamplingError",
    "UnsupportedBackboneError",
    "select_resolution",
]
