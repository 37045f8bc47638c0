"""The numbers both sides agree on are the core's, and the one fallback copy says the same.

Conversion codes, the narrowings they perform, DLPack type codes and alignments are defined
once in the core (``_core.CONVERSIONS``, ``NARROWINGS``, ``DLPACK_TYPE_CODES``, ``LEAF_ALIGN``,
``PAGE_SIZE``, ``MAX_QUEUE_CAPACITY``, and the twin's rules: ``PARALLEL_THRESHOLD``,
``FOREVER``, ``SIGNAL_POLL``). Python takes them from ``fastbridge._native``, which
holds the only other copy, for installs without the extension: it must match the core, and
every table Python derives from them must agree with what the core does.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from fastbridge import _leaves, _native, _numpy_ring

pytestmark = pytest.mark.skipif(_native.core is None, reason="needs the Rust extension")
FACTS = [
    "PAGE_SIZE",
    "LEAF_ALIGN",
    "MAX_QUEUE_CAPACITY",
    "CONVERSIONS",
    "NARROWINGS",
    "PARALLEL_THRESHOLD",
    "FOREVER",
    "SIGNAL_POLL",
]


@pytest.mark.parametrize("name", [*FACTS, "DLPACK_TYPE_CODES"])
def test_the_fallback_copy_matches_the_core(name):
    assert _native._FALLBACK[name] == getattr(_native.core, name)
    assert getattr(_native, name) == getattr(_native.core, name)


def test_the_narrowings_are_the_conversions():
    core = _native.core
    assert sorted(code for _, code in core.NARROWINGS.values()) == sorted(
        code for name, code in core.CONVERSIONS.items() if name != "copy"
    )
    assert _leaves.NARROWING[np.dtype(np.int64)] == (np.dtype(np.int32), _leaves.I64_TO_I32)
    assert _numpy_ring._TARGET[_leaves.F64_TO_F32] == np.float32


def test_dlpack_type_codes_describe_every_dtype_jax_takes():
    codes = _native.core.DLPACK_TYPE_CODES
    assert len(codes) == 15
    for name, code_bits in codes.items():
        dtype = np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)
        assert dtype.name == name and dtype.itemsize * 8 == code_bits[1]
        assert _leaves.dlpack_type(dtype) == code_bits, name
        # NumPy cannot export bfloat16: the NumPy ring's view is uint16, bitcast by the importer.
        expected = "uint16" if name == "bfloat16" else name
        assert _numpy_ring._DLPACK_DTYPES[code_bits].name == expected, name


def test_a_narrowed_leaf_round_trips_through_the_core_code():
    values = np.array([1.5, -2.25, 3.0], np.float64)
    out = np.empty(3, np.float32)
    _native.core.copy_into(out.view(np.uint8), 0, values, _leaves.F64_TO_F32)
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_the_twin_reads_the_core_rules_instead_of_copying_them():
    source = inspect.getsource(_numpy_ring)
    for name in ("PARALLEL_THRESHOLD", "FOREVER", "SIGNAL_POLL"):
        assert getattr(_native, name) == getattr(_native.core, name)
        assert f"{name} = " not in source, f"_numpy_ring defines its own {name}"
