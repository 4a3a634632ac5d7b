"""The paper's analyses for your own images and models.

- :mod:`.upsampling`: bilinear up-sampling error of faces against resolution (the paper's
  Fig. 1): an interpolation error estimate from the image's second and fourth-order mixed
  differences, next to the error a real down-then-up resize produces.
- :mod:`.costs`: FLOPs, stored parameters and latency per path of a model given by name, and
  BTNet's storage against one full model per resolution (Fig. 4/5).
- :mod:`.report`: Markdown / JSON tables and plots of both; :mod:`.cli`: ``btnet analyze``.
"""

from .costs import StorageSummary, analyse_model, storage_summary
from .report import (
    cost_markdown, plot_latency, plot_upsampling, upsampling_table, write_costs, write_upsampling,
)
from .upsampling import (
    DEFAULT_RESOLUTIONS, REFERENCE_SIZE, BatchBound, UpsamplingReport, UpsamplingRow,
    analyse_folder, analyse_images, bilinear_bound, check_resolutions, down_up, list_images,
    load_luminance, low_size, rounding_tolerance, second_differences, to_luminance, to_reference,
)

__all__ = [
    "DEFAULT_RESOLUTIONS", "REFERENCE_SIZE", "BatchBound", "UpsamplingReport", "UpsamplingRow",
    "analyse_folder", "analyse_images", "bilinear_bound", "check_resolutions", "down_up",
    "list_images", "load_luminance", "low_size", "rounding_tolerance", "second_differences",
    "to_luminance", "to_reference",
    "StorageSummary", "analyse_model", "storage_summary",
    "cost_markdown", "plot_latency", "plot_upsampling", "upsampling_table", "write_costs",
    "write_upsampling",
]
