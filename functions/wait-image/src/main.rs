//! wait-image: registers task tokens, answers them on AMI events, and polls when events are lost.

use amiflow::steps::wait_image::{self, WaitImageRequest};
use amiflow::Deps;
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = WaitImageRequest::from_value(event.payload)?;
        // An image in another account (a cross-account copy) is looked at through its role.
        let ec2 = match request.role() {
            Some((role, external_id, execution)) => deps.ec2_as(role, external_id, execution).await,
            None => deps.ec2.clone(),
        };
        wait_image::run(&ec2, &deps.sfn, &deps.dynamodb, &deps.settings, request).await
    }))
    .await
}
