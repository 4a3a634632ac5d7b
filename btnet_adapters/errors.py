"""Typed errors raised by btnet_adapters.

Every error says what was wrong and what is accepted. They subclass the builtin
exception a caller would expect (``ValueError`` / ``TypeError``) so generic handlers
keep working.
"""

from __future__ import annotations


class BTNetError(Exception):
    """Base class of every error raised by btnet_adapters."""


class UnsupportedBackboneError(BTNetError, ValueError):
    """The backbone cannot be turned into a trunk with branches (and why)."""


class UnknownDownsamplingError(UnsupportedBackboneError):
    """A module downsamples in a way the surgery cannot remove (path and type named)."""


class ResolutionError(BTNetError, ValueError):
    """A resolution is not available (the available ones are listed)."""


class InputImageError(BTNetError, ValueError):
    """An input image or batch has the wrong type, shape, channels or values."""


class ConfigError(BTNetError, ValueError):
    """A configuration value is unknown or out of range."""


class CorruptFileError(BTNetError, ValueError):
    """A file fails its recorded checksum or cannot be parsed (the file and the remedy are named)."""


class OutputExistsError(BTNetError, FileExistsError):
    """An output file already exists and replacing it was not asked for (the flag is named)."""


class OverlappingPathsError(ConfigError):
    """An output folder is, contains or lies inside an input path (both paths are named)."""
