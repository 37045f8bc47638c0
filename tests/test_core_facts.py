"""The numbers the Python layer repeats agree with the ones the Rust core exports.

Conversion codes, the narrowings they perform, DLPack type codes and alignments are defined
once in the core (``_core.CONVERSIONS``, ``NARROWINGS``, ``DLPACK_TYPE_CODES``, ``LEAF_ALIGN``,
``PAGE_SIZE``); every Python table that still spells them out must say the same.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from fastbridge import _backends, _leaves, _numpy_ring, convert

try:
    from fastbridge import _core
except ImportError:
    _core = None

pytestmark = pytest.mark.skipif(_core is None, reason="needs the Rust extension")


def test_conversion_codes_match_the_python_constants():
    assert _core.CONVERSIONS == {
        "copy": _leaves.COPY,
        "f64_to_f32": _leaves.F64_TO_F32,
        "i64_to_i32": _leaves.I64_TO_I32,
        "u64_to_u32": _leaves.U64_TO_U32,
        "c128_to_c64": _leaves.C128_TO_C64,
    }
    assert convert._COPY == _core.CONVERSIONS["copy"]
    assert sorted(code for _, code in _core.NARROWINGS.values()) == sorted(
        code for name, code in _core.CONVERSIONS.items() if name != "copy"
    )


def test_narrowings_match_every_python_table():
    narrowings = {
        np.dtype(source): (np.dtype(target), code)
        for source, (target, code) in _core.NARROWINGS.items()
    }
    assert narrowings == _leaves._NARROWING
    assert {
        (source, target): code for source, (target, code) in narrowings.items()
    } == convert._CORE_CONVERSIONS
    assert {code: target for target, code in narrowings.values()} == {
        code: np.dtype(target) for code, target in _numpy_ring._TARGET.items()
    }


def test_dlpack_type_codes_match_dlpack_type():
    assert len(_core.DLPACK_TYPE_CODES) == 15
    for name, code_bits in _core.DLPACK_TYPE_CODES.items():
        dtype = np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)
        assert dtype.name == name
        assert _leaves.dlpack_type(dtype) == code_bits, name
    assert _leaves._DL_BFLOAT == _core.DLPACK_TYPE_CODES["bfloat16"][0]


def test_dlpack_type_codes_match_the_numpy_ring():
    table = _numpy_ring._DLPACK_DTYPES
    assert set(table) == set(_core.DLPACK_TYPE_CODES.values())
    for name, code_bits in _core.DLPACK_TYPE_CODES.items():
        # NumPy cannot export bfloat16: the NumPy ring's view is uint16, bitcast by the importer.
        expected = "uint16" if name == "bfloat16" else name
        assert np.dtype(table[code_bits]).name == expected, name


def test_alignments_and_sizes_match():
    assert _backends.LEAF_ALIGN == _numpy_ring.LEAF_ALIGN == _core.LEAF_ALIGN
    assert _numpy_ring.PAGE_SIZE == _core.PAGE_SIZE
    assert _numpy_ring.MAX_QUEUE_CAPACITY == _core.MAX_QUEUE_CAPACITY
