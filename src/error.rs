//! Every error the core raises, mapped in one place onto `fastbridge.errors`.
//!
//! The exception classes and their messages live in Python (`fastbridge.errors.CORE_MESSAGES`),
//! so the pure-NumPy fallback raises the very same types with the very same messages when the
//! extension is not built: the core names an error by its key and hands over the fields its
//! message needs, and `fastbridge.errors.core_error` builds the exception for both.

use crate::pool::AcquireError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// One field of an error message, turned into the matching Python value (so that numbers
/// print exactly as the NumPy twin prints them).
#[derive(Debug)]
pub enum Arg {
    Int(i128),
    Float(f64),
    Text(String),
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl From<$t> for Arg {
            fn from(value: $t) -> Self {
                Self::Int(i128::from(value))
            }
        }
    )*};
}
int_arg!(u8, i32, i64, u64);

impl From<usize> for Arg {
    fn from(value: usize) -> Self {
        // usize is at most 64 bits on every target the core builds for.
        Self::Int(value as i128)
    }
}

impl From<f64> for Arg {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

/// An error of `fastbridge.errors.CORE_MESSAGES`: its key, the list entry it concerns (e.g.
/// `fill 2`), and the fields of its message.
#[derive(Debug)]
pub struct Message {
    pub key: &'static str,
    pub context: Option<String>,
    pub fields: Vec<(&'static str, Arg)>,
}

impl Message {
    /// The same error, about entry `context` of a list (`fill 2`, `export 0`).
    pub fn within(mut self, context: String) -> Self {
        self.context = Some(context);
        self
    }
}

/// `message!("key", field = value, ...)`: a [`Message`] whose fields are named as in the
/// template of `key` in `fastbridge.errors.CORE_MESSAGES`.
macro_rules! message {
    ($key:literal $(, $name:ident = $value:expr)* $(,)?) => {
        $crate::error::Message {
            key: $key,
            context: None,
            fields: vec![$((stringify!($name), $crate::error::Arg::from($value))),*],
        }
    };
}
pub(crate) use message;

#[derive(Debug)]
pub enum CoreError {
    Acquire(AcquireError),
    /// A value of leaf `leaf` (an index into the leaves given) did not fit the narrower dtype.
    OutOfRange {
        leaf: usize,
        value: i128,
    },
    /// Bad layout, argument, buffer or state handed in by the Python layer.
    Misuse(Message),
}

impl From<Message> for CoreError {
    fn from(message: Message) -> Self {
        Self::Misuse(message)
    }
}

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || py.import("fastbridge.errors").map(Bound::unbind))
        .map(|module| module.bind(py))
}

/// The exception `fastbridge.errors.core_error` makes for `message`.
fn build(py: Python<'_>, message: Message) -> PyResult<PyErr> {
    let fields = PyDict::new(py);
    for (name, arg) in message.fields {
        match arg {
            Arg::Int(value) => fields.set_item(name, value)?,
            Arg::Float(value) => fields.set_item(name, value)?,
            Arg::Text(value) => fields.set_item(name, value)?,
        }
    }
    let error = errors_module(py)?
        .getattr("core_error")?
        .call((message.key, message.context), Some(&fields))?;
    Ok(PyErr::from_value(error))
}

/// `CoreRangeError(leaf, value)`: the Python layer catches it and names the leaf's path.
fn out_of_range(py: Python<'_>, leaf: usize, value: i128) -> PyResult<PyErr> {
    let kind = errors_module(py)?
        .getattr("CoreRangeError")?
        .cast_into::<PyType>()?;
    Ok(PyErr::from_value(kind.call1((leaf, value.to_string()))?))
}

fn acquire_message(error: AcquireError) -> Message {
    match error {
        AcquireError::Closed => message!("closed"),
        AcquireError::TimedOut => message!("slot_timeout"),
        AcquireError::Exhausted {
            requested,
            held,
            max_bytes,
        } => message!(
            "pool_exhausted",
            max_bytes = max_bytes,
            held = held,
            requested = requested
        ),
        AcquireError::AllocationFailed { bytes } => message!("allocation_failed", nbytes = bytes),
    }
}

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> Self {
        Python::attach(|py| {
            let built = match error {
                CoreError::Acquire(error) => build(py, acquire_message(error)),
                CoreError::OutOfRange { leaf, value } => out_of_range(py, leaf, value),
                CoreError::Misuse(message) => build(py, message),
            };
            built.unwrap_or_else(|failed| failed)
        })
    }
}

impl From<Message> for PyErr {
    fn from(message: Message) -> Self {
        CoreError::Misuse(message).into()
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
