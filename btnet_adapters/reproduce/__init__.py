"""The paper's comparison end to end: φ_hr, φ_mr, φ_mm against BTNet's branches.

- :func:`run_reproduce` (:class:`ReproduceConfig`): plan, train what is missing, evaluate
  multi-resolution verification (and an open-set protocol), write tables, gains, costs and
  plots; every stage is resumable (:mod:`.stages`).
- :func:`prepare_orl`: the bundled ORL faces as a tiny train / verification split (the
  embedded default of ``btnet reproduce``).
- :class:`TrunkSource` / :func:`infer_architecture`: a given trained trunk (insightface
  weights or a saved model folder).
- The command line: ``btnet reproduce`` (:mod:`btnet_adapters.reproduce.cli`).
"""

from .config import FINETUNE, GIVEN_BRANCH, ORL_BRANCH, ORL_MODEL, ORL_TRUNK, ReproduceConfig, openset_lists
from .orl import OrlSplit, prepare_orl, verification_pairs
from .pipeline import Reproduction, ReproduceResult, available_resolutions, check_resolutions, run_reproduce
from .report import Report
from .stages import Stage, StageInterrupted, StageRunner
from .trunks import TrunkSource, infer_architecture

__all__ = [
    "FINETUNE", "GIVEN_BRANCH", "ORL_BRANCH", "ORL_MODEL", "ORL_TRUNK", "OrlSplit", "Report", "ReproduceConfig",
    "ReproduceResult", "Reproduction", "Stage", "StageInterrupted", "StageRunner", "TrunkSource",
    "available_resolutions", "check_resolutions", "infer_architecture", "openset_lists", "prepare_orl",
    "run_reproduce", "verification_pairs",
]
