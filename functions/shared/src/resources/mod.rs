//! The floor under the steps: one module per AWS resource amiflow works on, with the calls and
//! the pure decisions about it that more than one step needs. No module here imports a step.

pub mod capacity;
pub mod fleet_files;
pub mod groups;
pub mod images;
pub mod instances;
pub mod keys;
pub mod lock;
pub mod subnets;
pub mod targets;
pub mod zones;

use sha2::{Digest, Sha256};

/// A ClientToken (at most 64 ASCII characters) that is the same for every attempt of one
/// execution's step and differs between executions.
pub fn client_token(execution: &str, step: &str) -> String {
    let digest = Sha256::digest(format!("{execution}/{step}").as_bytes());
    let hex: String = digest.iter().take(24).map(|b| format!("{b:02x}")).collect();
    format!("amiflow-{hex}")
}
