//! verify-instance: one check of the new instance; finalizes it once it is healthy.

use amiflow::steps::verify_instance;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| verify_instance::run(&deps.ec2, &deps.settings, request))
        .await
}
