//! amiflow's library: every step's input, output, decisions and AWS calls. The Lambda binaries
//! under `functions/` are thin mains over it.

pub mod allow;
pub mod arn;
pub mod capture;
pub mod carry;
pub mod compare;
pub mod deps;
pub mod error;
pub mod functions;
pub mod handoff;
pub mod input;
pub mod lambda;
pub mod names;
pub mod ownership;
pub mod preflight;
pub mod receivers;
pub mod resources;
pub mod settings;
pub mod steps;
pub mod tags;
#[cfg(test)]
mod test_support;
pub mod trigger;
pub mod warm_up;

pub use deps::Deps;
pub use error::{Error, Result};

/// Parses a function's payload; a mismatch is `InvalidInput` naming the field's path.
pub fn parse_request<T: serde::de::DeserializeOwned>(payload: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        Error::invalid(
            if path == "." {
                "payload".to_string()
            } else {
                path
            },
            e.inner().to_string(),
        )
    })
}
