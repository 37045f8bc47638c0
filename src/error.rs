//! Every error the core raises, mapped in one place onto `fastbridge.errors`.
//!
//! The exception classes live in Python so the pure-NumPy fallback raises the very same types
//! when the extension is not built.

use crate::pool::AcquireError;
use pyo3::exceptions::{PyBufferError, PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

#[derive(Debug)]
pub enum CoreError {
    Acquire(AcquireError),
    /// A value of leaf `leaf` (an index into the leaves given) did not fit the narrower dtype.
    OutOfRange {
        leaf: usize,
        value: i128,
    },
    /// The slot was written after it had been exported.
    AlreadyExported,
    /// Bad layout, argument or state handed in by the Python layer (`ValueError`).
    Invalid(String),
    /// A buffer protocol request the core cannot serve (`BufferError`).
    BadBuffer(String),
}

fn fastbridge_error<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        MODULE.get_or_try_init(py, || py.import("fastbridge.errors").map(Bound::unbind))?;
    module
        .bind(py)
        .getattr(name)?
        .cast_into::<PyType>()
        .map_err(Into::into)
}

fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    match fastbridge_error(py, name) {
        Ok(kind) => PyErr::from_type(kind, message),
        Err(import_error) => import_error,
    }
}

/// `CoreRangeError(leaf, value)`: the Python layer catches it and names the leaf's path.
fn out_of_range(py: Python<'_>, leaf: usize, value: i128) -> PyErr {
    match fastbridge_error(py, "CoreRangeError")
        .and_then(|kind| kind.call1((leaf, value.to_string())))
    {
        Ok(error) => PyErr::from_value(error),
        Err(error) => error,
    }
}

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> Self {
        Python::attach(|py| match error {
            CoreError::Acquire(AcquireError::Closed) => {
                raise(py, "StreamClosedError", "the stream was closed".into())
            }
            CoreError::Acquire(AcquireError::TimedOut) => raise(
                py,
                "SlotTimeoutError",
                "timed out waiting for a free slot".into(),
            ),
            CoreError::Acquire(AcquireError::Exhausted {
                requested,
                held,
                max_bytes,
            }) => raise(
                py,
                "PoolExhaustedError",
                format!(
                    "max_pool_bytes={max_bytes} reached: the pool already holds {held} bytes in \
                     slots that batches still reference, and the next batch needs {requested} \
                     more; release batches you keep, or raise max_pool_bytes"
                ),
            ),
            CoreError::Acquire(AcquireError::AllocationFailed { bytes }) => {
                PyMemoryError::new_err(format!("could not allocate a {bytes}-byte slot"))
            }
            CoreError::OutOfRange { leaf, value } => out_of_range(py, leaf, value),
            CoreError::AlreadyExported => {
                PyRuntimeError::new_err("a slot cannot be written after it has been exported")
            }
            CoreError::Invalid(message) => PyValueError::new_err(message),
            CoreError::BadBuffer(message) => PyBufferError::new_err(message),
        })
    }
}

impl From<(usize, crate::copy::OutOfRange)> for CoreError {
    fn from((leaf, error): (usize, crate::copy::OutOfRange)) -> Self {
        Self::OutOfRange {
            leaf,
            value: error.value,
        }
    }
}
