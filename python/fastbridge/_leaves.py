"""Pytree flattening, leaf validation and the dtype policy shared by every backend."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._native import CONVERSIONS, DLPACK_TYPE_CODES, LEAF_ALIGN, NARROWINGS
from ._native import core as _core
from .errors import (
    CoreRangeError,
    LeafOverflowError,
    StructureChangedError,
    UnsupportedLeafError,
)

# Conversion codes understood by the Rust core (``Slot.fill``) and mirrored by the NumPy ring.
COPY = CONVERSIONS["copy"]
F64_TO_F32 = CONVERSIONS["f64_to_f32"]
I64_TO_I32 = CONVERSIONS["i64_to_i32"]
U64_TO_U32 = CONVERSIONS["u64_to_u32"]
# Any other per-leaf conversion asked for with ``dtypes=``: NumPy casts on the producer thread,
# then the cast array is copied as is.
CAST = -1

# DLPack type codes (dlpack.h), as the core names them.
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT, DL_COMPLEX, DL_BOOL = (
    DLPACK_TYPE_CODES[name][0]
    for name in ("int8", "uint8", "float32", "bfloat16", "complex64", "bool")
)

# What the x64-off policy narrows each 64-bit dtype to, with the core's conversion code.
NARROWING = {
    np.dtype(source): (np.dtype(target), code) for source, (target, code) in NARROWINGS.items()
}

# Types that look like pytrees (SparseTensorValue is a namedtuple) but must not be flattened.
_OPAQUE_TYPE_NAMES = frozenset(
    {"SparseTensorValue", "RaggedTensorValue", "SparseTensor", "RaggedTensor"}
)


def is_opaque(x: Any) -> bool:
    return type(x).__name__ in _OPAQUE_TYPE_NAMES


def path_name(path: Sequence[Any]) -> str:
    """``['image']``-style name of a leaf; ``<root>`` for a batch that is a single array."""
    return jax.tree_util.keystr(tuple(path)) or "<root>"


def dlpack_type(dtype: np.dtype) -> tuple[int, int] | None:
    """(DLPack code, bits) of a NumPy dtype, or None when DLPack cannot carry it."""
    if dtype == np.bool_:
        return (DL_BOOL, 8)
    if dtype.name == "bfloat16":
        return (DL_BFLOAT, 16)
    code = {"i": DL_INT, "u": DL_UINT, "f": DL_FLOAT, "c": DL_COMPLEX}.get(dtype.kind)
    if code is None:
        return None
    return (code, dtype.itemsize * 8)


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """What happens to one leaf: copied (``array``) or handed through (``passthrough``)."""

    path: str
    passthrough: bool
    source_dtype: np.dtype
    target_dtype: np.dtype
    conversion: int
    dlpack: tuple[int, int]
    requested: bool = False
    """Whether ``dtypes=`` asked for this target (rather than the x64 policy)."""

    @property
    def fill_code(self) -> int:
        """Conversion code for the slot fill (casts already happened on the producer)."""
        return COPY if self.conversion == CAST else self.conversion


def is_string_array(x: np.ndarray) -> bool:
    if x.dtype.kind in "SU":
        return True
    if x.dtype.kind == "O":
        return all(isinstance(v, (bytes, str)) for v in x.flat)
    return False


DtypePolicy = str | Mapping[str, Any]


def check_policy(dtypes: Any, x64: bool) -> None:
    """Validate the ``dtypes=`` option early, with a message that names the value."""
    if isinstance(dtypes, str):
        if dtypes not in ("canonical", "keep"):
            raise ValueError(
                f"dtypes must be 'canonical', 'keep' or a mapping of leaf path to dtype, "
                f"got {dtypes!r}"
            )
        if dtypes == "keep" and not x64:
            raise ValueError(
                "dtypes='keep' keeps 64-bit leaves, which JAX only represents with x64 on: "
                "call jax.config.update('jax_enable_x64', True) first"
            )
        return
    if not isinstance(dtypes, Mapping):
        raise TypeError(f"dtypes must be a str or a mapping, got {type(dtypes).__name__}")
    for path, dtype in dtypes.items():
        if not isinstance(path, str):
            raise TypeError(
                f"dtypes keys are leaf paths as strings, such as \"['image']\", got {path!r}"
            )
        try:
            target = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtypes[{path!r}] = {dtype!r} is not a NumPy dtype") from None
        if dlpack_type(target) is None:
            raise ValueError(
                f"dtypes[{path!r}] = {target}: a jax.Array cannot have that dtype (numeric, "
                "bool, float16 and bfloat16 can)"
            )


def object_leaf_error(path: str, leaf: np.ndarray, label: str = "") -> UnsupportedLeafError:
    """Why an object (non-string) leaf cannot become an array, ragged rows said as such;
    ``label`` names the leaf in the message (default ``leaf <path>``)."""
    label = label or f"leaf {path}"
    rows = [np.shape(x) for x in leaf.flat[:1000] if isinstance(x, (np.ndarray, list, tuple))]
    if rows and len(rows) == min(leaf.size, 1000) and len(set(rows)) > 1:
        shapes = sorted(set(rows))
        return UnsupportedLeafError(
            f"{label} is ragged: its rows have different shapes ({shapes[0]} and "
            f"{shapes[-1]}, among others); pad or bucket it to one shape first (e.g. "
            "tf.data's padded_batch or bucket_by_sequence_length, or pad in NumPy), or "
            "truncate it",
            path,
        )
    return UnsupportedLeafError(
        f"{label} holds Python objects (dtype=object) that are not strings; "
        "only numeric, bool and string leaves are supported",
        path,
    )


def opaque_leaf_error(path: str, leaf: Any) -> UnsupportedLeafError:
    """Why a ragged or sparse tensor (``tf.RaggedTensor``, what ``ragged_batch`` and tfds's
    variable-length ``Sequence`` features give, or a sparse one) cannot become an array."""
    kind = type(leaf).__name__
    if "Ragged" in kind:
        return UnsupportedLeafError(
            f"leaf {path} is ragged (a {kind}): its rows have different lengths; pad or bucket "
            "it to one shape first (e.g. tf.data's padded_batch or bucket_by_sequence_length "
            "instead of ragged_batch, or .to_tensor()), or truncate it",
            path,
        )
    return UnsupportedLeafError(
        f"leaf {path} is sparse (a {kind}) and has no dense layout; convert it first (e.g. "
        "tf.sparse.to_dense)",
        path,
    )


def _needs_x64(target: np.dtype) -> bool:
    return (target.itemsize == 8 and target.kind in "iuf") or target == np.complex128


def _spec(path: str, leaf: np.ndarray, x64: bool, dtypes: DtypePolicy = "canonical") -> LeafSpec:
    dtype = leaf.dtype
    if is_string_array(leaf):
        if isinstance(dtypes, Mapping) and path in dtypes:
            raise ValueError(
                f"dtypes[{path!r}] = {dtypes[path]!r}: leaf {path} holds strings, which pass "
                "through as NumPy arrays and are never cast; remove the entry"
            )
        return LeafSpec(path, True, dtype, dtype, COPY, (0, 0))
    if dtype.kind == "O":
        raise object_leaf_error(path, leaf)
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    target, conversion = native, COPY
    requested = isinstance(dtypes, Mapping) and path in dtypes
    if requested:
        target = np.dtype(dtypes[path])  # type: ignore[index]
        if dlpack_type(target) is None:
            raise ValueError(
                f"dtypes[{path!r}] = {target}: a jax.Array cannot have that dtype (numeric, "
                "bool, float16 and bfloat16 can)"
            )
        if target != native:
            narrowing = NARROWING.get(native)
            conversion = narrowing[1] if narrowing and narrowing[0] == target else CAST
        if _needs_x64(target) and not x64:
            raise ValueError(f"dtypes[{path!r}] = {target} needs JAX's x64 mode, which is off")
    elif dtypes != "keep" and not x64 and native in NARROWING:
        target, conversion = NARROWING[native]
    code = dlpack_type(target)
    if code is None:
        raise UnsupportedLeafError(
            f"leaf {path} has dtype {dtype}, which cannot become a jax.Array", path
        )
    return LeafSpec(path, False, dtype, target, conversion, code, requested)


def as_array(leaf: Any, path: str) -> np.ndarray:
    """A leaf as a C-contiguous, native-byte-order NumPy array (copies only when it must)."""
    if isinstance(leaf, np.ndarray):
        arr = leaf
    elif is_opaque(leaf):
        raise opaque_leaf_error(path, leaf)
    elif isinstance(leaf, (np.generic, bytes, str, int, float, bool, complex)):
        arr = np.asarray(leaf)
    elif hasattr(leaf, "__array__"):
        arr = np.asarray(leaf)
    else:
        raise UnsupportedLeafError(
            f"leaf {path} is a {type(leaf).__name__}, not an array; sources must yield "
            "pytrees of NumPy arrays",
            path,
        )
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "<" and not _little()):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def host_view(leaf: Any) -> np.ndarray:
    """A leaf as a NumPy array; for an EagerTensor, a view of its buffer (``.numpy()`` would
    copy it)."""
    try:
        return np.asarray(leaf)
    except ValueError:  # a 0-d bfloat16 tensor's __array__ returns a scalar, not an array
        return np.asarray(leaf.numpy())


def _little() -> bool:
    return bool(np.little_endian)


def flat_arrays(
    item: Any, name: Callable[[Sequence[Any]], str] = path_name
) -> tuple[Any, list[str], list[np.ndarray]]:
    """A pytree's structure, its leaves' names (``name`` of each key path) and its leaves as
    arrays (``as_array``: ragged, sparse and non-array leaves raise ``UnsupportedLeafError``)."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(item, is_leaf=is_opaque)
    paths = [name(p) for p, _ in pairs]
    return treedef, paths, [as_array(leaf, n) for n, (_, leaf) in zip(paths, pairs, strict=True)]


@dataclasses.dataclass
class Flat:
    """One batch, flattened."""

    treedef: Any
    leaves: list[np.ndarray]
    specs: list[LeafSpec]


class Flattener:
    """Flattens batches and checks each one against the first batch's structure and dtypes."""

    def __init__(
        self, *, x64: bool, dtypes: DtypePolicy = "canonical", padded: bool = False
    ) -> None:
        self.x64 = x64
        self.dtypes = dtypes
        self.padded = padded
        self._treedef: Any = None
        self._paths: list[str] = []
        self._specs: list[LeafSpec] = []

    def __call__(self, item: Any, index: int) -> Flat:
        treedef, paths, leaves = flat_arrays(item, self.name)
        if self._treedef is None:
            self._treedef, self._paths = treedef, paths
            self._specs = [
                _spec(n, a, self.x64, self.dtypes) for n, a in zip(paths, leaves, strict=True)
            ]
            if isinstance(self.dtypes, Mapping):
                unknown = sorted(set(self.dtypes) - set(paths))
                if unknown:
                    raise ValueError(
                        f"dtypes names leaves that the batches do not have: {', '.join(unknown)}; "
                        f"leaves are {', '.join(paths)}"
                    )
        elif treedef != self._treedef:
            raise StructureChangedError(self._describe_change(paths, treedef, index))
        else:
            for spec, arr in zip(self._specs, leaves, strict=True):
                if arr.dtype != spec.source_dtype and not (
                    spec.passthrough and is_string_array(arr)
                ):
                    if arr.dtype.kind == "O" and not is_string_array(arr):
                        # Variable-length rows that happened to match in the first batch
                        # (Hugging Face's with_format("numpy") stacks those, and gives an
                        # object array of rows for the first batch where they differ).
                        raise object_leaf_error(spec.path, arr)
                    raise dtype_changed(spec, arr.dtype, index)
        for i, spec in enumerate(self._specs):
            if spec.conversion == CAST:
                leaves[i] = checked_cast(leaves[i], spec)
        return Flat(self._treedef, leaves, self._specs)

    @property
    def treedef(self) -> Any:
        """The first batch's structure (``None`` before the first batch)."""
        return self._treedef

    @property
    def specs(self) -> list[LeafSpec]:
        """What happens to each leaf, decided from the first batch (empty before it)."""
        return self._specs

    def name(self, path: Sequence[Any]) -> str:
        """A leaf's name in messages and in ``dtypes=``: with ``pad_last`` the batch arrives
        as ``(batch, mask)``, and leaves keep the names they have in the unpadded batch."""
        if self.padded and path:
            if getattr(path[0], "idx", None) == 1:
                return "<mask>"
            return path_name(path[1:])
        return path_name(path)

    def _describe_change(self, paths: list[str], treedef: Any, index: int) -> str:
        missing = [p for p in self._paths if p not in paths]
        added = [p for p in paths if p not in self._paths]
        parts = []
        if missing:
            parts.append(f"missing leaves {', '.join(missing)}")
        if added:
            parts.append(f"new leaves {', '.join(added)}")
        if not parts:
            parts.append(f"structure {treedef} instead of {self._treedef}")
        message = f"batch {index} changed structure: " + "; ".join(parts)
        if any(_LIST_ITEM.search(p) for p in missing + added):
            message += (
                " (if those are items of Python lists, the source yields lists, and every item "
                "of a list is a leaf: yield NumPy arrays instead, e.g. a Hugging Face dataset's "
                'with_format("numpy"))'
            )
        return message


# A leaf named by its position in a sequence, such as ``['ids'][3]``.
_LIST_ITEM = re.compile(r"\[\d+\]$")


def dtype_changed(spec: LeafSpec, dtype: np.dtype, index: int) -> StructureChangedError:
    return StructureChangedError(
        f"leaf {spec.path} changed dtype from {spec.source_dtype} to {dtype} at batch {index}"
    )


def overflow_error(spec: LeafSpec, value: str) -> LeafOverflowError:
    if spec.requested:
        why = (
            f"converted from {spec.source_dtype} because dtypes= asks for it); ask for a wider "
            "dtype, or fix the data"
        )
    else:
        why = (
            f"converted from {spec.source_dtype} because JAX's x64 mode is off); enable "
            "jax_enable_x64 or pass dtypes='keep' with it, or fix the data"
        )
    return _does_not_fit(spec.path, value, spec.target_dtype, why)


def core_overflow(error: CoreRangeError, specs: Sequence[LeafSpec]) -> LeafOverflowError:
    """The user-facing error for the core's ``CoreRangeError``: ``specs[error.leaf]`` is the
    spec of the leaf the core was given at that index."""
    return overflow_error(specs[error.leaf], error.value)


def _does_not_fit(path: str, value: Any, target: np.dtype, why: str) -> LeafOverflowError:
    return LeafOverflowError(
        f"leaf {path} has value {value}, which does not fit {target} ({why}", path
    )


def astype_checked(arr: np.ndarray, target: Any, path: str, why: str) -> np.ndarray:
    """``arr.astype(target)`` that never changes a value silently: integers never wrap, floats
    never truncate to an integer out of range, and finite values never become inf. A value
    that does not fit raises ``LeafOverflowError`` naming ``path``; ``why`` ends the message
    (it says where the target dtype comes from and closes the parenthesis)."""
    target = np.dtype(target)
    if arr.dtype == target or not arr.size:
        return arr.astype(target)
    if target.kind in "iu" and arr.dtype.kind in "biuf" and not np.can_cast(arr.dtype, target):
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise _does_not_fit(path, arr[~np.isfinite(arr)].flat[0], target, why)
            # astype truncates toward zero. Compare with info.max + 1, a power of two that
            # floats hold exactly: info.max itself would round up to it and let it through.
            if np.trunc(lo) < info.min or np.trunc(hi) >= info.max + 1:
                raise _does_not_fit(path, lo if np.trunc(lo) < info.min else hi, target, why)
        elif lo < info.min or hi > info.max:
            raise _does_not_fit(path, lo if lo < info.min else hi, target, why)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target)
    if target.kind in "fc" and arr.dtype.kind in "iufc":
        lost = np.isfinite(arr) & ~np.isfinite(out)
        if lost.any():
            raise _does_not_fit(path, arr[lost].flat[0], target, why)
    return out


def checked_cast(arr: np.ndarray, spec: LeafSpec) -> np.ndarray:
    """A ``dtypes=`` cast (not one the core does): like ``astype``, but values the target
    cannot hold (out of range, NaN or inf for an integer, finite values that overflow to inf)
    raise instead of changing."""
    why = (
        f"converted from {spec.source_dtype} because dtypes= asks for it); ask for a wider "
        "dtype, or fix the data"
    )
    return astype_checked(arr, spec.target_dtype, spec.path, why)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is ``LEAF_ALIGN``-aligned, so that
    ``jax.device_put`` on CPU aliases it instead of copying it."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + LEAF_ALIGN, np.uint8)
    start = (-raw.ctypes.data) % LEAF_ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


# Below this size NumPy's own conversion is as quick as a call into the core.
_CORE_NARROWING_BYTES = 1 << 16


def checked_narrow(arr: np.ndarray, spec: LeafSpec) -> np.ndarray:
    """Narrow a leaf on the host as the dtype policy says, never wrapping integers.

    Large leaves go through the core's converting copy: one pass with the GIL released,
    checking the range as it goes, into 64-byte-aligned memory that JAX then aliases. Small
    ones (or no core) use NumPy: a range check, then ``astype``."""
    if spec.conversion in (COPY, CAST):
        return arr
    if arr.nbytes >= _CORE_NARROWING_BYTES:
        if _core is not None:
            out = aligned_empty(arr.shape, spec.target_dtype)
            source = np.ascontiguousarray(arr).reshape(-1)
            try:
                _core.copy_into(out.reshape(-1).view(np.uint8), 0, source, spec.conversion)
            except CoreRangeError as error:
                raise core_overflow(error, [spec]) from None
            return out
    if spec.conversion in (I64_TO_I32, U64_TO_U32) and arr.size:
        info = np.iinfo(spec.target_dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise overflow_error(spec, str(bad))
    return arr.astype(spec.target_dtype)
