//! preflight: a workflow's checks as its first state, when its input asks with "preflight": true.

use amiflow::preflight::{self, PreflightRequest};
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request: PreflightRequest = parse_request(event.payload)?;
        preflight::run(deps, request).await
    }))
    .await
}
