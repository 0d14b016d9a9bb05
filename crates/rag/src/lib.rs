//! `overseer-rag`: Grounded, cited answers from the literature index.

mod error;

pub use error::{Error, Result};
