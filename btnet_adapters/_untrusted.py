"""Reading files from elsewhere: size limits, safetensors headers and saved model arguments.

Everything a loader reads from an artifact (``config.json``, adapter configs, safetensors
headers, pickled ``.bin`` sets) is checked here *before* it decides what to build, open or
allocate:

* **Limits.** Sizes read from files are compared with the named constants below; a value past
  its limit raises :class:`ResourceLimitError` (value, limit and what is accepted named)
  before any memory is allocated for it.
* **safetensors headers** are parsed here (8-byte little-endian length + JSON) before
  ``safetensors`` maps the file: the header length, every dtype, shape and byte range is
  checked against the limits and the file's real size.
* **Saved model arguments** may only describe an architecture. Every key must be a named
  parameter of the class that takes it (``BTNet.__init__``; for ``backbone_kwargs`` the timm
  model class the backbone's entry point builds, found from its code), its value must be JSON
  of the kind that parameter's default has, and nothing that loads a file, downloads, or names
  weights (:data:`LOADING_ARGUMENTS`) is ever accepted: such keys raise
  :class:`UnsafeArgumentError` naming the key and why.

The checks take the error classes to raise, so each caller raises its own typed errors
(``hub.ArtifactError`` subclasses, ``evaluate.ProtocolFileError`` subclasses).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BTNetError, ConfigError

__all__ = [
    "LOADING_ARGUMENTS",
    "MAX_ARG_INT",
    "MAX_ARG_LIST",
    "MAX_ARG_STR",
    "MAX_BIN_BYTES",
    "MAX_BIN_PAIRS",
    "MAX_BRANCHES",
    "MAX_EMBED_DIM",
    "MAX_INPUT_SIZE",
    "MAX_JSON_BYTES",
    "MAX_NUM_CLASSES",
    "MAX_SAFETENSORS_HEADER_BYTES",
    "MAX_TENSOR_DIMS",
    "SAFETENSORS_DTYPES",
    "ResourceLimitError",
    "TensorInfo",
    "UnsafeArgumentError",
    "backbone_parameters",
    "check_backbone_kwargs",
    "check_limit",
    "check_resolution_list",
    "check_model_args",
    "init_parameters",
    "read_json_file",
    "read_safetensors_header",
]

# --------------------------------------------------------------------------- limits
#: Largest canonical trunk input side (faces use 112; ImageNet models 224-512).
MAX_INPUT_SIZE = 1024
#: Largest embedding size (face recognisers use 128-512).
MAX_EMBED_DIM = 8192
#: Largest number of identities of a margin head (WebFace260M has about 4 million).
MAX_NUM_CLASSES = 10_000_000
#: Most branch resolutions in one model (a pyramid below 1024 has at most 10 levels).
MAX_BRANCHES = 16
#: Largest JSON config file read (artifact configs are a few kB).
MAX_JSON_BYTES = 16 << 20
#: Largest safetensors header (a 100-layer network with branches needs well under 1 MiB).
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
#: Most dimensions of one tensor in a safetensors file.
MAX_TENSOR_DIMS = 8
#: Largest integer in a saved architecture argument (channel counts, depths, sizes).
MAX_ARG_INT = 1 << 16
#: Most elements of one list in a saved architecture argument (and of nested lists in total).
MAX_ARG_LIST = 1024
#: Longest string in a saved architecture argument.
MAX_ARG_STR = 1024
#: Largest insightface ``.bin`` verification file read into memory (LFW is 60 MB).
MAX_BIN_BYTES = 4 << 30
#: Most pairs in one ``.bin`` verification set (the standard sets have 6,000-7,000).
MAX_BIN_PAIRS = 1_000_000

#: Arguments that load files, download, choose where weights come from or where the model is
#: placed, with the reason each is refused in a saved config.
LOADING_ARGUMENTS: dict[str, str] = {
    "checkpoint_path": "loads a checkpoint file (torch.load) from a path outside the artifact",
    "pretrained": "downloads or loads pretrained weights from outside the artifact",
    "pretrained_cfg": "names a weight source (url, file, Hub repo) outside the artifact",
    "pretrained_cfg_overlay": "names a weight source (url, file, Hub repo) outside the artifact",
    "pretrained_strict": "only applies when weights are loaded from outside the artifact",
    "pretrained_filter_fn": "only applies when weights are loaded from outside the artifact",
    "pretrained_model_args": "is timm's record of the saved arguments, not an argument",
    "pretrained_tag": "names pretrained weights outside the artifact",
    "file": "names a weight file outside the artifact",
    "url": "names a weight download",
    "hf_hub_id": "names a Hugging Face Hub repo to download weights from",
    "hf_hub_filename": "names a weight file in a Hugging Face Hub repo",
    "state_dict": "passes weights outside the artifact's own weight file",
    "source": "names where weights are loaded from",
    "custom_load": "runs a model-specific weight loader on a file",
    "cache_dir": "chooses a download cache folder",
    "model_dir": "chooses a download cache folder",
    "weights": "names weights to load",
    "weights_path": "names a weight file",
    "pretrained_path": "names a weight file",
    "pretrained_weights": "names weights to load",
    "init_checkpoint": "names a weight file",
    "token": "is a Hub credential",
    "revision": "names a Hub revision to download",
    "local_files_only": "controls downloads",
    "trust_remote_code": "runs code from a downloaded repo",
    "pruned": "reads a pruning definition file",
    "features_only": "wraps the backbone; BTNet needs the whole classification backbone",
    "feature_cfg": "wraps the backbone; BTNet needs the whole classification backbone",
    "feature_cls": "wraps the backbone; BTNet needs the whole classification backbone",
    "kwargs_filter": "is a timm builder option, not an architecture argument",
    "model_cfg": "is a timm builder option, not an architecture argument",
    "scriptable": "is a timm layer setting, not an architecture argument",
    "exportable": "is a timm layer setting, not an architecture argument",
    "no_jit": "is a timm layer setting, not an architecture argument",
    "device": "chooses where the model is allocated, which is the caller's choice",
    "dtype": "chooses the parameter type, which is the caller's choice",
}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ResourceLimitError(BTNetError, ValueError):
    """A size read from a file is beyond a documented limit (the value, the limit and what is
    accepted are named); nothing was allocated for it."""


class UnsafeArgumentError(ConfigError):
    """A saved configuration holds an argument that would load a file, download, name weights,
    or that the model does not take (the key and the reason are named)."""


def check_limit(value: Any, limit: int, what: str, error: type[Exception] = ResourceLimitError,
                low: int = 0, accepted: str = "") -> int:
    """``value`` as an int in ``[low, limit]``; otherwise ``error`` naming value and limit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {value!r}" + (f"; accepted: {accepted}" if accepted else ""))
    if value > limit:
        raise error(f"{what} is {value:,}, beyond the limit of {limit:,}"
                    + (f"; accepted: {accepted}" if accepted else f"; accepted: {low}..{limit:,}"))
    if value < low:
        raise error(f"{what} is {value}, below the minimum {low}" + (f"; accepted: {accepted}" if accepted else ""))
    return value


# --------------------------------------------------------------------------- JSON files
def check_resolution_list(value: Any, what: str, error: type[Exception], limit_error: type[Exception]) -> None:
    """A list of at most ``MAX_BRANCHES`` sides, each an integer in 1..``MAX_INPUT_SIZE``."""
    if not isinstance(value, list):
        raise error(f"{what} must be a list of integers, got {value!r:.200}")
    check_limit(len(value), MAX_BRANCHES, f"the number of {what}", limit_error)
    for r in value:
        check_limit(r, MAX_INPUT_SIZE, f"{what} entry", limit_error, low=1, accepted=f"1..{MAX_INPUT_SIZE} pixels")


def read_json_file(path: Path, what: str, malformed: type[Exception], limit_error: type[Exception],
                   missing: type[Exception] | None = None) -> Any:
    """Parse a JSON file no larger than :data:`MAX_JSON_BYTES` (checked before reading)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise (missing or malformed)(f"{what} not found: {path}") from err
    if size > MAX_JSON_BYTES:
        raise limit_error(f"{what} ({path}) is {size:,} bytes, beyond the limit of {MAX_JSON_BYTES:,} bytes "
                          "for a JSON config; accepted: configs written by btnet_adapters (a few kB)")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as err:
        raise (missing or malformed)(f"{what} not found: {path}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise malformed(f"{what} ({path}) is not valid JSON: {err}") from err
    except RecursionError as err:
        raise limit_error(f"{what} ({path}) nests JSON too deeply to parse; accepted: configs written by "
                          "btnet_adapters") from err


# --------------------------------------------------------------------------- safetensors
#: Bytes per element of every safetensors dtype this package reads.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header declares it."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_safetensors_header(path: Path, what: str, malformed: type[Exception],
                            limit_error: type[Exception]) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, checked against its real size before it is mapped.

    The header length must be at most :data:`MAX_SAFETENSORS_HEADER_BYTES` and fit in the file;
    every tensor needs a known dtype, at most :data:`MAX_TENSOR_DIMS` non-negative dimensions and
    a byte range inside the file's data whose length is exactly ``prod(shape) * itemsize``.
    """
    bad = f"{what} ({path}) is not a readable safetensors file (truncated or corrupted?)"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise malformed(f"{bad}: {size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > MAX_SAFETENSORS_HEADER_BYTES:
                raise limit_error(
                    f"{what} ({path}) declares a safetensors header of {length:,} bytes, beyond the limit of "
                    f"{MAX_SAFETENSORS_HEADER_BYTES:,} bytes; accepted: headers of up to "
                    f"{MAX_SAFETENSORS_HEADER_BYTES:,} bytes inside the file"
                )
            if length > size - 8:
                raise malformed(f"{bad}: its header of {length:,} bytes is longer than the {size - 8:,} bytes "
                                "after the length prefix")
            raw = handle.read(length)
    except OSError as err:
        raise malformed(f"{bad}: {err}") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise malformed(f"{bad}: its header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise malformed(f"{bad}: its header is not a JSON object")
    data_size = size - 8 - length
    out: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise malformed(f"{bad}: its metadata must map strings to strings")
            continue
        out[name] = _tensor_info(name, info, data_size, bad, malformed, limit_error)
    return out


def _tensor_info(name: str, info: Any, data_size: int, bad: str, malformed: type[Exception],
                 limit_error: type[Exception]) -> TensorInfo:
    if not isinstance(info, dict):
        raise malformed(f"{bad}: tensor {name!r} has no valid header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise malformed(f"{bad}: tensor {name!r} has dtype {dtype!r}; accepted: {sorted(SAFETENSORS_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise malformed(f"{bad}: tensor {name!r} has shape {shape!r}; accepted: up to {MAX_TENSOR_DIMS} "
                        "non-negative integer dimensions")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise malformed(f"{bad}: tensor {name!r} has data_offsets {offsets!r}; accepted: [begin, end]")
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
    begin, end = offsets
    if nbytes > data_size:
        raise limit_error(
            f"{bad}: tensor {name!r} declares shape {shape} of {dtype} = {nbytes:,} bytes, beyond the "
            f"{data_size:,} bytes of data the file holds; accepted: tensors inside the file"
        )
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise malformed(f"{bad}: tensor {name!r} declares bytes [{begin}, {end}) for shape {shape} of {dtype} "
                        f"({nbytes:,} bytes) in {data_size:,} bytes of data")
    return TensorInfo(dtype, tuple(shape), nbytes)


# --------------------------------------------------------------------------- saved arguments
def _refuse_loading(key: str, where: str, error: type[Exception]) -> None:
    if key in LOADING_ARGUMENTS:
        raise error(
            f"{where}.{key} is refused: it {LOADING_ARGUMENTS[key]}. A saved model only reads its own JSON and "
            "safetensors files, so its arguments may only describe the architecture"
        )


def _json_value(value: Any, what: str, error: type[Exception], limit_error: type[Exception],
                budget: list[int] | None = None, depth: int = 0) -> None:
    """A JSON scalar or (nested) list of them, within the argument limits; never a dict."""
    budget = [MAX_ARG_LIST] if budget is None else budget
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_ARG_INT:
            raise limit_error(f"{what} is {value:,}, beyond the limit of ±{MAX_ARG_INT:,} for an integer "
                              "architecture argument")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"{what} is {value}; accepted: finite numbers")
        return
    if isinstance(value, str):
        if len(value) > MAX_ARG_STR:
            raise limit_error(f"{what} is a string of {len(value):,} characters, beyond the limit of {MAX_ARG_STR:,}")
        return
    if isinstance(value, list):
        if depth >= 3:
            raise error(f"{what} nests lists more than 3 deep; accepted: scalars and lists of them")
        budget[0] -= len(value)
        if budget[0] < 0:
            raise limit_error(f"{what} holds more than {MAX_ARG_LIST:,} list elements; accepted: at most "
                              f"{MAX_ARG_LIST:,}")
        for i, item in enumerate(value):
            _json_value(item, f"{what}[{i}]", error, limit_error, budget, depth + 1)
        return
    raise error(f"{what} is a {type(value).__name__}; accepted: JSON numbers, strings, booleans, null and "
                "lists of them")


def _kind_of(default: Any) -> str | None:
    """The JSON kind a parameter with this default takes (None: any JSON scalar or list)."""
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float)):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "list_or_scalar"
    return "name"  # a class or callable default (act_layer=nn.ReLU): a registered name or null


def _check_kind(value: Any, kind: str | None, what: str, error: type[Exception]) -> None:
    if kind is None or value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "bool": isinstance(value, bool),
        "number": number or isinstance(value, list),  # timm often takes an int or a per-stage list
        "str": isinstance(value, (str, list)),
        "list_or_scalar": not isinstance(value, dict),
        "name": isinstance(value, str),
    }[kind]
    if not ok:
        expected = {"bool": "a boolean", "number": "a number or a list of numbers", "str": "a string",
                    "list_or_scalar": "a list or scalar", "name": "a layer name (string) or null"}[kind]
        raise error(f"{what} is {value!r} ({type(value).__name__}); accepted: {expected}, as the parameter's "
                    "default")


def _walk_builders(fn: Callable[..., Any], depth: int, seen: set[Any], classes: set[type],
                   params: dict[str, inspect.Parameter]) -> None:
    """Collect the nn.Module classes named by ``fn`` and by the same-module helpers it calls
    (recursively), and the keyword parameters (with defaults) of those helpers."""
    import torch.nn as nn

    code = getattr(fn, "__code__", None)
    if code is None or depth > 4 or fn in seen:
        return
    seen.add(fn)
    if depth:  # a helper such as _gen_mobilenet_v3(variant, channel_multiplier=1.0, ..., **kwargs)
        for name, p in inspect.signature(fn).parameters.items():
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(name, p)
    names = set(code.co_names)
    for const in code.co_consts:  # comprehensions and nested functions
        if isinstance(const, types.CodeType):
            names |= set(const.co_names)
    for name in names:
        obj = fn.__globals__.get(name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            classes.add(obj)
        elif isinstance(obj, types.FunctionType) and obj.__module__ == fn.__module__:
            _walk_builders(obj, depth + 1, seen, classes, params)


def backbone_parameters(backbone: str) -> dict[str, inspect.Parameter]:
    """Named parameters the timm entry point ``backbone`` passes on to the model it builds.

    timm entry points take ``**kwargs`` and funnel them through module helpers into
    ``build_model_with_cfg(ModelClass, …)``; the classes are found from the entry point's code
    and the helpers it calls, keeping those with a ``forward_features`` (the model, not its
    blocks). The result is their ``__init__`` parameters plus the helpers' keyword parameters.
    """
    from timm.models import model_entrypoint

    classes: set[type] = set()
    params: dict[str, inspect.Parameter] = {}
    _walk_builders(model_entrypoint(backbone), 0, set(), classes, params)
    models = {c for c in classes if callable(getattr(c, "forward_features", None))} or classes
    for cls in sorted(models, key=lambda c: c.__qualname__):
        for name, p in init_parameters(cls).items():
            params.setdefault(name, p)
    for name in ("variant", "pretrained"):
        params.pop(name, None)
    return params


def _check_backbone_name(backbone: Any, where: str, error: type[Exception]) -> str:
    import timm
    from timm.models import split_model_name_tag

    if not isinstance(backbone, str) or not _NAME.fullmatch(backbone):
        raise error(
            f"{where}.backbone {backbone!r} is refused: a saved backbone must be a timm model name (letters, digits, "
            "'_', '-', '.'); Hub ids ('hf-hub:…'), local folders ('local-dir:…') and paths would read files or "
            "the network from outside the artifact"
        )
    name, tag = split_model_name_tag(backbone)
    if tag:
        raise error(f"{where}.backbone {backbone!r} is refused: the tag {tag!r} names pretrained weights; "
                    f"accepted: the architecture name alone ({name!r})")
    if not timm.is_model(name):
        raise error(f"{where}.backbone {backbone!r} is not a registered timm model (import the package that "
                    "registers it first)")
    return name


def check_backbone_kwargs(backbone: str, kwargs: Any, where: str, error: type[Exception] = UnsafeArgumentError,
                          limit_error: type[Exception] = ResourceLimitError) -> None:
    """Saved ``backbone_kwargs``: architecture arguments the backbone's model class takes, as JSON.

    Raises:
        error: a loading/downloading key (:data:`LOADING_ARGUMENTS`), a key the model class does
            not take (the accepted ones are listed) or a value of the wrong kind.
        limit_error: an integer, list or string beyond :data:`MAX_ARG_INT` /
            :data:`MAX_ARG_LIST` / :data:`MAX_ARG_STR`.
    """
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise error(f"{where} must be a JSON object of architecture arguments, got {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise error(f"{where} has a non-string key {key!r}")
        _refuse_loading(key, where, error)
    params = backbone_parameters(backbone)
    for key, value in kwargs.items():
        if key not in params:
            accepted = sorted(k for k in params if k not in LOADING_ARGUMENTS)
            raise error(
                f"{where}.{key} is not an architecture argument of timm model {backbone!r}; accepted: {accepted}"
            )
        _json_value(value, f"{where}.{key}", error, limit_error)
        _check_kind(value, _kind_of(params[key].default), f"{where}.{key}", error)


def _str_list(value: Any, what: str, error: type[Exception], limit_error: type[Exception]) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"{what} must be a list of module names (strings), got {value!r:.200}")
    _json_value(value, what, error, limit_error)


def check_model_args(model_args: Any, where: str, *, parameters: Mapping[str, inspect.Parameter],
                     error: type[Exception] = UnsafeArgumentError,
                     limit_error: type[Exception] = ResourceLimitError) -> dict[str, Any]:
    """Saved BTNet arguments (``config.json``'s ``model_args``), checked before anything is built.

    Args:
        model_args: the parsed JSON.
        where: how to name it in errors (e.g. ``"config.json of /path: model_args"``).
        parameters: the named parameters of the class that takes them (``BTNet.__init__``).

    Returns:
        ``model_args`` unchanged.
    """
    if not isinstance(model_args, dict):
        raise error(f"{where} must be a JSON object, got {type(model_args).__name__}")
    for key in model_args:
        _refuse_loading(key, where, error)
    for key, value in model_args.items():
        if key not in parameters or key in ("self",):
            raise error(f"{where}.{key} is not a BTNet argument; accepted: {sorted(parameters)}")
        what = f"{where}.{key}"
        if key == "backbone":
            _check_backbone_name(value, where, error)
        elif key == "input_size":
            check_limit(value, MAX_INPUT_SIZE, what, limit_error, low=8, accepted=f"8..{MAX_INPUT_SIZE} pixels")
        elif key == "embed_dim":
            check_limit(value, MAX_EMBED_DIM, what, limit_error, low=1, accepted=f"1..{MAX_EMBED_DIM}")
        elif key == "num_classes":
            check_limit(value, MAX_NUM_CLASSES, what, limit_error, accepted=f"0..{MAX_NUM_CLASSES:,}")
        elif key == "in_chans":
            check_limit(value, 3, what, error, low=3, accepted="3 (RGB)")
        elif key == "resolutions":
            if value is not None:
                check_resolution_list(value, what, error, limit_error)
        elif key == "specific":
            if not isinstance(value, str):
                _str_list(value, what, error, limit_error)
            else:
                _json_value(value, what, error, limit_error)
        elif key == "remove":
            _str_list(value, what, error, limit_error)
        elif key in ("head", "margin"):
            if not isinstance(value, str):
                raise error(f"{what} must be a string, got {value!r:.200}")
            _json_value(value, what, error, limit_error)
        elif key == "drop_rate":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise error(f"{what} is {value!r}; accepted: a number in [0, 1)")
        elif key == "resize":
            if value is not None:
                if not isinstance(value, dict):
                    raise error(f"{what} must be a JSON object, got {value!r:.200}")
                for k, v in value.items():
                    if isinstance(v, (dict, list)):
                        raise error(f"{what}.{k} must be a scalar, got {v!r:.200}")
                    _json_value(v, f"{what}.{k}", error, limit_error)
        elif key == "backbone_kwargs":
            pass  # below, once the backbone is known
        else:  # an argument added later: any plain JSON value
            _json_value(value, what, error, limit_error)
    if model_args.get("backbone_kwargs") is not None:
        if "backbone" not in model_args:
            raise error(f"{where} has backbone_kwargs but no backbone")
        check_backbone_kwargs(model_args["backbone"], model_args["backbone_kwargs"], f"{where}.backbone_kwargs",
                              error, limit_error)
    return model_args


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Named parameters of ``cls.__init__`` (no ``self``, ``*args`` or ``**kwargs``)."""
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
