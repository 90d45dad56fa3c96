//! share-image: plans a share, unshare or copy, and adds or removes the image's permissions.

use amiflow::steps::share_image;
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = parse_request(event.payload)?;
        share_image::run(&deps.ec2, &deps.kms, &deps.settings, &deps.region, request).await
    }))
    .await
}
