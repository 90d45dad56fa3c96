//! grant-kms: gives receivers the use of an image's KMS keys (grants, key policy), or takes it back.

use amiflow::steps::grant_kms;
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = parse_request(event.payload)?;
        grant_kms::run(&deps.kms, request).await
    }))
    .await
}
