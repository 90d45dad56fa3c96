//! cleanup: completes a verified migration, or rolls a failed one back; either way it gives the
//! source's run lock back.

use amiflow::steps::cleanup;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        cleanup::run(&deps.ec2, &deps.run_lock()?, request).await
    })
    .await
}
