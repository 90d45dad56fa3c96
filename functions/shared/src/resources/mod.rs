//! The floor under the steps: one module per AWS resource amiflow works on, with the calls and
//! the pure decisions about it that more than one step needs. No module here imports a step.

pub mod images;
pub mod instances;
pub mod keys;
pub mod lock;
pub mod subnets;
