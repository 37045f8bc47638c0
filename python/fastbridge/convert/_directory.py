"""The directory ``to_numpy(memmap=PATH)`` writes: its checks, file names, manifest, and
:func:`load_memmap`, which reads it back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._npy import dtype_named, load_npy
from ..errors import MemmapPathError

MANIFEST = "manifest.json"
FORMAT = "fastbridge.to_numpy"


def load_memmap(path: str | os.PathLike[str], mmap_mode: str | None = "r") -> Any:
    """Reopen the result of ``to_numpy(ds, memmap=path)`` with its structure.

    Layout of ``path``: one ``NNN_<leaf>.npy`` file per leaf (standard ``.npy`` version 1.0
    with a 4096-byte header, so the data is page-aligned) and ``manifest.json``::

        {"format": "fastbridge.to_numpy", "version": 1, "rows": 5, "batched": true,
         "tree": {"x": "000_x.npy", "y": "001_y.npy"},
         "leaves": [{"path": "['x']", "file": "000_x.npy", "dtype": "float32",
                     "shape": [5, 2]}, ...]}

    ``tree`` mirrors the element structure with file names as leaves (dicts stay dicts;
    tuples, lists and namedtuples become lists). Each file also opens with NumPy alone:
    ``np.load(path / "000_x.npy", mmap_mode="r")``, except that leaves of ``ml_dtypes`` types
    (bfloat16, float8) then come back as raw bytes (``|V2``); this function restores the
    dtype recorded in the manifest.

    Example:
        >>> import numpy as np, tempfile, os
        >>> import fastbridge
        >>> d = os.path.join(tempfile.mkdtemp(), "out")
        >>> _ = fastbridge.to_numpy([{"a": np.ones(3)}] * 4, memmap=d)
        >>> fastbridge.load_memmap(d)["a"].shape
        (4, 3)
    """
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise MemmapPathError(f"{root} has no {MANIFEST}: not written by to_numpy") from None
    if manifest.get("format") != FORMAT:
        raise MemmapPathError(f"{root / MANIFEST} is not a {FORMAT} manifest")

    dtypes = {leaf["file"]: leaf.get("dtype") for leaf in manifest.get("leaves", [])}

    def build(node: Any) -> Any:
        if isinstance(node, str):
            name = dtypes.get(node)
            return load_npy(root / node, mmap_mode, dtype_named(name) if name else None)
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return [build(v) for v in node]

    return build(manifest["tree"])


def prepare_directory(memmap: Any) -> Path:
    """The ``memmap=`` directory, created, emptied of an earlier result, and writable."""
    if not isinstance(memmap, str | os.PathLike):
        raise TypeError(f"memmap must be a path (str or os.PathLike), not {type(memmap).__name__}")
    root = Path(memmap)
    try:
        if root.exists() and not root.is_dir():
            raise MemmapPathError(f"memmap={str(root)!r} exists and is not a directory")
        if root.is_dir() and any(root.iterdir()):
            if not (root / MANIFEST).exists():
                raise MemmapPathError(
                    f"memmap={str(root)!r} is a non-empty directory that to_numpy did not "
                    "write; pass a new or empty directory"
                )
            for child in root.iterdir():  # an earlier result: replace it
                if child.name == MANIFEST or child.suffix == ".npy":
                    child.unlink()
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".fastbridge-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except MemmapPathError:
        raise
    except OSError as e:
        raise MemmapPathError(f"memmap={str(root)!r} is not writable: {e}") from e
    return root


def file_name(index: int, path: str) -> str:
    """The file of leaf number ``index``, named after its path (``000_image.npy``)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in path).strip("_")
    cleaned = "_".join(part for part in cleaned.split("_") if part)[:60]
    return f"{index:03d}_{cleaned or 'root'}.npy"


def tree_json(tree: Any) -> Any:
    """The element structure as JSON, with leaf indices as leaves."""
    if isinstance(tree, int):
        return tree
    if isinstance(tree, Mapping):
        return {str(k): tree_json(v) for k, v in tree.items()}
    if isinstance(tree, Sequence):
        return [tree_json(v) for v in tree]
    children, _ = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    return [tree_json(c) for c in children]


def write_manifest(
    directory: Path,
    tree: Any,
    rows: int,
    batched: bool,
    leaves: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
) -> None:
    """``manifest.json`` for ``leaves`` (path, dtype, row shape) in ``tree`` (:func:`tree_json`)."""
    files = [file_name(i, path) for i, (path, _, _) in enumerate(leaves)]
    manifest = {
        "format": FORMAT,
        "version": 1,
        "rows": rows,
        "batched": batched,
        "tree": _replace_leaves(tree, files),
        "leaves": [
            {"path": path, "file": name, "dtype": str(dtype), "shape": [rows, *row_shape]}
            for (path, dtype, row_shape), name in zip(leaves, files, strict=True)
        ],
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _replace_leaves(tree: Any, files: list[str]) -> Any:
    if isinstance(tree, int):
        return files[tree]
    if isinstance(tree, dict):
        return {k: _replace_leaves(v, files) for k, v in tree.items()}
    return [_replace_leaves(v, files) for v in tree]
