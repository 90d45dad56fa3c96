//! create-image: validates a migration, takes the source's run lock, captures the source and
//! makes its AMI.

use amiflow::steps::create_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        create_image::run(
            &deps.ec2,
            &deps.run_lock()?,
            &deps.settings,
            &deps.region,
            request,
        )
        .await
    })
    .await
}
