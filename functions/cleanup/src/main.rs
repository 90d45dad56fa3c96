//! cleanup: completes a verified migration, or rolls a failed one back; either way it gives the
//! source's run lock back.

use amiflow::steps::cleanup;
use amiflow::steps::lock::RunLock;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        let lock = RunLock {
            ddb: &deps.dynamodb,
            sfn: &deps.sfn,
            table: deps.settings.lock_table()?,
        };
        cleanup::run(&deps.ec2, &lock, request).await
    })
    .await
}
