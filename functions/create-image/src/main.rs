//! create-image: validates a migration, captures the source and makes its AMI.

use amiflow::steps::create_image;
use amiflow::{parse_request, Deps};
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = parse_request(event.payload)?;
        create_image::run(&deps.ec2, &deps.settings, &deps.region, request).await
    }))
    .await
}
