//! `overseer-lab`: Refusal directions, interventions, metrics and reports.

mod error;

pub use error::{Error, Result};
