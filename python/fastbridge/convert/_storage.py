"""Where ``to_numpy`` puts the bytes of one leaf while it fills it: RAM or a ``.npy`` file.

Both storages expose the same four steps: ``view`` (the bytes, as ``uint8``, to copy into),
``grow`` (a larger capacity, keeping what was written), ``finish`` (the final array) and
``abort`` (let go of the bytes after an error).
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from .._npy import NPY_HEADER_BYTES, load_npy, npy_header

PAGE = mmap.PAGESIZE


def _anonymous_map(nbytes: int) -> mmap.mmap:
    # MAP_PRIVATE: a shared anonymous map (Python's default) cannot grow with mremap (the pages
    # past its original size have no backing and raise SIGBUS when touched).
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, nbytes, flags=flags) if flags else mmap.mmap(-1, nbytes)


class RamStorage:
    """Bytes of one leaf in an anonymous memory map that grows with ``mremap`` (no copy)."""

    def __init__(self, nbytes: int) -> None:
        self._map = _anonymous_map(max(nbytes, PAGE))
        self.capacity = max(nbytes, PAGE)
        self.view: np.ndarray = np.frombuffer(self._map, np.uint8)

    def grow(self, nbytes: int) -> None:
        del self.view  # the map cannot move while an array exports it
        try:
            self._map.resize(nbytes)
        except (OSError, SystemError, ValueError):  # no mremap (not Linux): copy once
            fresh = _anonymous_map(nbytes)
            fresh[: self.capacity] = self._map
            self._map.close()
            self._map = fresh
        self.capacity = nbytes
        self.view = np.frombuffer(self._map, np.uint8)

    def finish(self, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        del self.view
        if nbytes < self.capacity:
            try:
                self._map.resize(max(nbytes, PAGE))
            except (OSError, SystemError, ValueError):
                pass  # keep the larger map
        flat = np.frombuffer(self._map, np.uint8, count=nbytes)
        return flat.view(dtype).reshape(shape)

    def abort(self) -> None:
        self.view = np.empty(0, np.uint8)


class FileStorage:
    """Bytes of one leaf in a ``.npy`` file with a fixed-size header, mapped read-write."""

    def __init__(self, path: Path, nbytes: int, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path = path
        self.capacity = max(nbytes, 1)
        with open(path, "wb") as f:
            f.write(npy_header(dtype, (0, *row_shape)))
            f.truncate(NPY_HEADER_BYTES + self.capacity)  # sparse: no disk used until written
        self.view: np.ndarray = self._map()

    def _map(self) -> np.ndarray:
        return np.memmap(
            self.path, np.uint8, mode="r+", offset=NPY_HEADER_BYTES, shape=(self.capacity,)
        )

    def grow(self, nbytes: int) -> None:
        self.view.flush()  # type: ignore[attr-defined]
        del self.view
        with open(self.path, "r+b") as f:
            f.truncate(NPY_HEADER_BYTES + nbytes)
        self.capacity = nbytes
        self.view = self._map()

    def finish(self, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        self.view.flush()  # type: ignore[attr-defined]
        del self.view
        with open(self.path, "r+b") as f:
            f.truncate(NPY_HEADER_BYTES + nbytes)
            f.seek(0)
            f.write(npy_header(dtype, shape))
        # np.memmap cannot map zero bytes
        return load_npy(self.path, None if nbytes == 0 else "r+", dtype)

    def abort(self) -> None:
        self.view = np.empty(0, np.uint8)


Storage = RamStorage | FileStorage
