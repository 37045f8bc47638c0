//! `copy_into`: the conversion kernels' entry point for Python buffers other than slots (the
//! whole-dataset conversions fill one preallocated, possibly memory-mapped, array per leaf).

use crate::copy::{self, Conversion, DestError, Source};
use crate::error::{message, CoreError};
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
    let conversion = Conversion::from_code(conversion)
        .ok_or_else(|| message!("unknown_conversion", code = conversion))?;
    let mut dest_buffer = PyUntypedBuffer::get(dest)?;
    let source_buffer = PyUntypedBuffer::get(source)?;
    let source =
        Source::of(&source_buffer).ok_or_else(|| message!("not_contiguous", buffer = "source"))?;
    let (src_unit, dst_unit) = conversion.unit();
    if source.len() % src_unit != 0 {
        let (conversion, size) = (format!("{conversion:?}"), source.len());
        return Err(message!(
            "partial_items",
            conversion = conversion,
            unit = src_unit,
            size = size
        )
        .into());
    }
    let written = source.len() / src_unit * dst_unit;
    let dest = copy::dest_in(&mut dest_buffer, offset, written, &source).map_err(|e| match e {
        DestError::ReadOnly => message!("dest_read_only"),
        DestError::NotContiguous => message!("not_contiguous", buffer = "dest"),
        DestError::Overlap => message!("buffers_overlap"),
        DestError::TooSmall { capacity } => message!(
            "dest_too_small",
            written = written,
            offset = offset,
            capacity = capacity
        ),
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
