"""A restricted unpickler for insightface ``.bin`` verification sets.

A ``.bin`` is a pickle of ``(list of JPEG bytes, issame)``. Plain ``pickle.load`` runs any
callable a crafted file names; :func:`safe_loads` resolves *only* the globals that real files
need, to stand-ins written here, and refuses every other global before anything is called:

* Python 3 pickles of ``(list[bytes], list[bool])`` at protocol >= 3 and Python 2 pickles
  need no global at all (Python 2 strings are read as latin-1 and turned back into the same
  bytes by the caller);
* ``_codecs.encode`` — how Python 3 writes ``bytes`` at protocols 0-2 — is admitted only with
  the ``latin1`` codec;
* ``bytearray``, a plain constructor;
* numpy arrays and scalars (``issame`` saved as a numpy array or numpy bools, images saved as
  ``uint8`` arrays): ``ndarray``, ``dtype``, ``_reconstruct``, ``scalar`` and ``_frombuffer``
  resolve to stand-ins that accept only plain boolean/integer/float dtypes and build the array
  with ``np.frombuffer`` — numpy's own ``__setstate__`` never sees data from the file.

Module names are matched as written in the file, under their Python 2 and 3 spellings
(``__builtin__``/``builtins``, ``numpy.core``/``numpy._core``).

Sizes are bounded before memory is allocated for them (:class:`PickleLimitError`):

* the opcodes are scanned first (:func:`check_pickle_sizes`): every declared length must fit in
  the bytes that follow it (the C unpickler allocates a counted ``bytes`` before reading it),
  ``FRAME`` lengths must fit in the data, and memo indices may not run ahead of the opcodes
  read (a ``LONG_BINPUT`` of 2**32 - 1 would make the unpickler allocate a 32 GiB memo);
* the stand-ins together may create at most twice the input's size in new buffers
  (``_codecs.encode`` then an array copy is the most a real file needs), so memo references
  cannot multiply one large buffer; ``bytearray`` accepts only bytes or latin-1 text, never a
  size.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
from typing import Any, Callable

import numpy as np

from .._untrusted import ResourceLimitError
from .errors import ProtocolFileError

_LATIN1 = codecs.lookup("latin1").name
_PLAIN_KINDS = "biuf"
#: New buffers the stand-ins may create, as a multiple of the pickle's size (plus a little).
BUFFER_FACTOR = 2
_BUFFER_SLACK = 1 << 16
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class PickleLimitError(ProtocolFileError, ResourceLimitError):
    """A pickle declares sizes, memo indices or buffers beyond what its own bytes can hold."""


def check_pickle_sizes(data: bytes) -> None:
    """Scan the opcodes of ``data`` without building anything; refuse declared sizes that do
    not fit in it (see the module docstring).

    Raises:
        PickleLimitError: a length, frame or memo index beyond the data.
        ProtocolFileError: the data is not a pickle.
    """
    total = len(data)
    count = 0
    try:
        for opcode, arg, pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if opcode.name == "FRAME" and arg > total - pos - 9:
                raise PickleLimitError(f"a pickle frame declares {arg:,} bytes, but only {total - pos - 9:,} "
                                       f"bytes follow it (crafted or truncated)")
            if opcode.name in _MEMO_PUTS and arg > count:
                raise PickleLimitError(f"a pickle memo index of {arg:,} after {count:,} opcodes (the unpickler "
                                       f"would allocate a memo of that size); accepted: indices up to the "
                                       f"number of opcodes read")
    except PickleLimitError:
        raise
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, UnicodeDecodeError) as exc:
        # genops reads each counted argument and fails when fewer bytes than declared remain
        if "remain" in str(exc) or "maxsize" in str(exc):
            raise PickleLimitError(f"not a valid pickle: {exc}; a length beyond the data that follows it is "
                                   f"refused before anything is allocated (crafted or truncated)") from None
        raise ProtocolFileError(f"not a valid pickle: {type(exc).__name__}: {exc}") from None


class _Budget:
    """Bytes the stand-ins may still create for one unpickling."""

    def __init__(self, size: int) -> None:
        self.limit = BUFFER_FACTOR * size + _BUFFER_SLACK
        self.left = self.limit

    def charge(self, nbytes: int, what: str) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise PickleLimitError(
                f"{what} of {nbytes:,} bytes exceeds the limit of {self.limit:,} bytes of new data for this "
                f"pickle ({BUFFER_FACTOR}× its size): its references would multiply the data it holds"
            )


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, str):  # Python 2 strings arrive as latin-1 text
        return data.encode(_LATIN1)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise ProtocolFileError(f"malformed {what}: expected bytes, got {type(data).__name__}")


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict", *,
                   budget: _Budget | None = None) -> bytes:
    """``_codecs.encode`` restricted to the latin-1 codec pickle uses for bytes."""
    if (not isinstance(obj, str) or not isinstance(encoding, str)
            or codecs.lookup(encoding).name != _LATIN1 or errors != "strict"):
        raise ProtocolFileError(f"refused _codecs.encode with codec {encoding!r} (only latin1, "
                                f"the codec pickle uses for bytes, is allowed)")
    if budget is not None:
        budget.charge(len(obj), "a pickled byte string")
    return obj.encode(_LATIN1)


def _bytearray(source: Any = b"", encoding: Any = None, errors: Any = None, *,
               budget: _Budget | None = None) -> bytearray:
    """``bytearray`` from bytes or latin-1 text only (``bytearray(n)`` would allocate n bytes)."""
    if isinstance(source, str):
        if not isinstance(encoding, str) or codecs.lookup(encoding).name != _LATIN1 or errors not in (None, "strict"):
            raise ProtocolFileError(f"refused bytearray from text with codec {encoding!r} (only latin1)")
        raw = source
    elif isinstance(source, (bytes, bytearray)) and encoding is None and errors is None:
        raw = source
    else:
        raise ProtocolFileError(f"refused bytearray({type(source).__name__}): only bytes or latin-1 text, "
                                f"never a size")
    if budget is not None:
        budget.charge(len(raw), "a pickled bytearray")
    return bytearray(raw.encode(_LATIN1) if isinstance(raw, str) else raw)


class _DType:
    """Stand-in for ``numpy.dtype``: a plain bool/int/float type plus the byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        spec = _as_bytes(spec, "numpy dtype").decode("ascii", "replace")
        try:
            base = np.dtype(spec)
        except TypeError:
            raise ProtocolFileError(f"refused numpy dtype {spec!r}") from None
        if base.kind not in _PLAIN_KINDS or base.fields is not None or base.subdtype is not None:
            raise ProtocolFileError(f"refused numpy dtype {base!r}: only bool, integer and float "
                                    f"arrays may appear in a verification .bin")
        self.base = base
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2:
            raise ProtocolFileError("malformed numpy dtype state")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise ProtocolFileError(f"malformed numpy byte order {order!r}")
        self.order = order

    def resolve(self) -> np.dtype:
        return self.base.newbyteorder(self.order) if self.order in "<>" else self.base


def _dtype_of(obj: Any) -> np.dtype:
    if not isinstance(obj, _DType):
        raise ProtocolFileError(f"malformed numpy data: expected a dtype, got {type(obj).__name__}")
    return obj.resolve()


class _NDArrayType:
    """Marker resolved for ``numpy.ndarray`` (only usable as ``_reconstruct``'s subtype)."""


class _Array:
    """Stand-in built by ``_reconstruct``; its state is decoded with ``np.frombuffer``."""

    def __init__(self, budget: _Budget | None = None) -> None:
        self.value: np.ndarray | None = None
        self.budget = budget

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ProtocolFileError("malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        dt = _dtype_of(dtype)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ProtocolFileError(f"malformed numpy array shape {shape!r}")
        data = np.frombuffer(_as_bytes(raw, "numpy array data"), dtype=dt)
        if data.size != math.prod(shape):
            raise ProtocolFileError("numpy array data does not match its shape")
        if self.budget is not None:
            self.budget.charge(data.nbytes, "a pickled numpy array")
        self.value = data.reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: Any, shape: Any = None, code: Any = None, *, budget: _Budget | None = None) -> _Array:
    if subtype is not _NDArrayType:
        raise ProtocolFileError(f"refused to reconstruct an array of type {subtype!r}")
    return _Array(budget)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dt = _dtype_of(dtype)
    raw = _as_bytes(data, "numpy scalar")
    if len(raw) != dt.itemsize:
        raise ProtocolFileError(f"malformed numpy scalar of dtype {dt}")
    return np.frombuffer(raw, dtype=dt)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *, budget: _Budget | None = None) -> np.ndarray:
    arr = np.frombuffer(_as_bytes(buf, "numpy buffer"), dtype=_dtype_of(dtype))
    if budget is not None:
        budget.charge(arr.nbytes, "a pickled numpy buffer")
    try:
        return arr.reshape(shape, order="F" if order == "F" else "C").copy()
    except (TypeError, ValueError):
        raise ProtocolFileError("numpy buffer does not match its shape") from None


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytearray"): _bytearray,
    ("builtins", "bytearray"): _bytearray,
    ("numpy", "ndarray"): _NDArrayType,
    ("numpy", "dtype"): _DType,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


#: Stand-ins that create buffers: they are charged to the unpickling's budget.
_CHARGED = {_latin1_encode, _bytearray, _reconstruct, _frombuffer}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in this module's docstring.

    Args:
        file: the pickle.
        budget_bytes: the pickle's size; stand-ins may create at most :data:`BUFFER_FACTOR`
            times this in new buffers (``None``: unbounded).
        **kwargs: :class:`pickle.Unpickler` options.
    """

    def __init__(self, file: Any, *, budget_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._budget = None if budget_bytes is None else _Budget(budget_bytes)

    def find_class(self, module: str, name: str) -> Any:
        """Return the stand-in for ``module.name`` or raise :class:`ProtocolFileError`."""
        try:
            found = _ALLOWED[(module, name)]
            if found in _CHARGED and self._budget is not None:
                budget = self._budget
                return lambda *args, _fn=found: _fn(*args, budget=budget)
            return found
        except KeyError:
            raise ProtocolFileError(
                f"refused to load {module}.{name} from a pickle: a verification .bin may only "
                f"hold bytes, lists/tuples, bools and numpy bool/int/float arrays (the file is "
                f"corrupt or crafted)"
            ) from None


def _materialise(obj: Any, depth: int = 0) -> Any:
    if depth > 4:
        return obj
    if isinstance(obj, _Array):
        if obj.value is None:
            raise ProtocolFileError("malformed numpy array (no state)")
        return obj.value
    if isinstance(obj, (_DType, _NDArrayType)) or obj is _NDArrayType:
        raise ProtocolFileError("malformed pickle: a bare numpy type object")
    if isinstance(obj, list):
        return [_materialise(x, depth + 1) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(x, depth + 1) for x in obj)
    return obj


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Python 2 strings come back as latin-1 ``str`` (callers turn them into bytes); numpy
    arrays come back as real arrays of a plain dtype.

    Sizes are checked first (:func:`check_pickle_sizes`) and the stand-ins' new buffers are
    bounded by twice the data's size.

    Raises:
        PickleLimitError: a declared size beyond the data (nothing was allocated for it).
        ProtocolFileError: the data is not a pickle, is truncated, or names a refused global.
    """
    check_pickle_sizes(data)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), budget_bytes=len(data), encoding="latin1").load()
    except ProtocolFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, MemoryError, OverflowError, LookupError) as exc:
        raise ProtocolFileError(f"not a valid pickle: {type(exc).__name__}: {exc}") from None
    return _materialise(obj)
