//! cleanup: completes a verified migration, or rolls a failed one back.

use amiflow::steps::cleanup;
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = parse_request(event.payload)?;
        cleanup::run(&deps.ec2, request).await
    }))
    .await
}
