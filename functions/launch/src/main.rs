//! launch: starts the new instance from the AMI in the target subnet.

use amiflow::steps::launch;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| launch::run(&deps.ec2, &deps.settings, request)).await
}
