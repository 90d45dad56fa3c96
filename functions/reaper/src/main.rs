//! reaper: takes back what a run stopped by an operator or timed out had made.

use amiflow::steps::reap::{self, ReapSettings};
use amiflow::Deps;
use lambda_runtime::{service_fn, tracing, Diagnostic, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps: &'static Deps = Box::leak(Box::new(Deps::from_env().await?));
    let settings: &'static ReapSettings = Box::leak(Box::new(ReapSettings::from_vars(|k| {
        std::env::var(k).ok()
    })?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        reap::run(&deps.sfn, settings, event.payload)
            .await
            .map_err(Diagnostic::from)
    }))
    .await
}
