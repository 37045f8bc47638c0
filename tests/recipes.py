"""What the source-recipe tests share: the code blocks of docs/sources.md, run as a reader
would, and the tutorial loop they are held to, bit for bit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DOC = Path(__file__).resolve().parent.parent / "docs" / "sources.md"


def recipe(name: str) -> str:
    """The code block of docs/sources.md marked ``<!-- recipe: name -->``."""
    found = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/sources.md has no recipe {name!r}"
    return found.group(1)


def run_recipes(namespace: dict[str, Any], *names: str) -> dict[str, Any]:
    """Run the recipes ``names`` in order in ``namespace`` (updated and returned)."""
    for name in names:
        exec(compile(recipe(name), f"docs/sources.md:{name}", "exec"), namespace)
    return namespace


def tutorial(numpy_batches: Any) -> list[Any]:
    """What the tutorial loop hands the train step: ``jnp.asarray`` of every NumPy leaf."""
    return [jax.tree.map(jnp.asarray, b) for b in numpy_batches]


def assert_bitwise(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert jax.tree.structure(g) == jax.tree.structure(w), i
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
            assert isinstance(a, jax.Array), (i, type(a))
            assert (a.dtype, a.shape) == (b.dtype, b.shape), i
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), i
