//! copy-image: copies a shared image into the target account through a role there.

use amiflow::steps::copy_image::{self, CopyImageRequest};
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request: CopyImageRequest = parse_request(event.payload)?;
        copy_image::run(deps, request).await
    }))
    .await
}
