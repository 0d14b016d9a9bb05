//! `overseer-server`: HTTP API and embedded web UI.

mod error;

pub use error::{Error, Result};
