//! create-image: validates a migration, takes the source's run lock, captures the source and
//! makes its AMI.

use amiflow::steps::create_image;
use amiflow::steps::lock::RunLock;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        let lock = RunLock {
            ddb: &deps.dynamodb,
            sfn: &deps.sfn,
            table: deps.settings.lock_table()?,
        };
        create_image::run(&deps.ec2, &lock, &deps.settings, &deps.region, request).await
    })
    .await
}
