//! `copy_into`: the conversion kernels' entry point for Python buffers other than slots (the
//! whole-dataset conversions fill one preallocated, possibly memory-mapped, array per leaf).

use crate::copy::{self, Conversion, DestError, Source};
use crate::error::CoreError;
use crate::gil;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;

/// Copy (and convert) `source` into the writable buffer `dest` at byte `offset`, with the GIL
/// released and on up to `threads` threads. Used by the whole-dataset conversions, which fill
/// one preallocated (possibly memory-mapped) array per leaf batch by batch.
/// `conversion` uses the same codes as `Slot.fill`. Returns the bytes written.
#[pyfunction]
#[pyo3(signature = (dest, offset, source, conversion=0, threads=2))]
pub fn copy_into(
    py: Python<'_>,
    dest: &Bound<'_, PyAny>,
    offset: usize,
    source: &Bound<'_, PyAny>,
    conversion: u8,
    threads: usize,
) -> PyResult<usize> {
    let invalid = |message: String| PyErr::from(CoreError::Invalid(message));
    let conversion = Conversion::from_code(conversion)
        .ok_or_else(|| invalid(format!("unknown conversion code {conversion}")))?;
    let mut dest_buffer = PyUntypedBuffer::get(dest)?;
    let source_buffer = PyUntypedBuffer::get(source)?;
    let source =
        Source::of(&source_buffer).ok_or_else(|| invalid("source is not C-contiguous".into()))?;
    let (src_unit, dst_unit) = conversion.unit();
    if source.len() % src_unit != 0 {
        return Err(invalid(format!(
            "conversion {conversion:?} reads {src_unit}-byte items, but the source has {} bytes",
            source.len()
        )));
    }
    let written = source.len() / src_unit * dst_unit;
    let dest = copy::dest_in(&mut dest_buffer, offset, written, &source).map_err(|e| match e {
        DestError::ReadOnly => invalid("dest is read-only".into()),
        DestError::NotContiguous => invalid("dest is not C-contiguous".into()),
        DestError::Overlap => invalid("source and dest overlap in memory".into()),
        DestError::TooSmall { capacity } => invalid(format!(
            "{written} bytes at offset {offset} do not fit the {capacity}-byte destination"
        )),
    })?;
    let task = copy::Task {
        leaf: 0,
        conversion,
        source,
        dest,
    };
    gil::run(py, || copy::run(vec![task], threads.max(1))).map_err(CoreError::from)?;
    Ok(written)
}
