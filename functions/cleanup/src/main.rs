//! cleanup: completes a verified migration, or rolls a failed one back.

use amiflow::steps::cleanup;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| cleanup::run(&deps.ec2, request)).await
}
