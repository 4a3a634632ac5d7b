"""btnet_adapters: Branch-to-Trunk networks for any hierarchical timm backbone.

Importing the package registers the ``btnet_*`` models and the insightface face backbones
(``iresnet*``, ``mobilefacenet``) with timm; it starts no processes and reads no network.
"""

from . import zoo  # noqa: F401 - timm registration
from ._version import __version__  # noqa: F401 - re-exported
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
