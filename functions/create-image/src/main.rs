//! create-image: checks a migration, takes the source's run lock, captures it, makes its AMI.

use amiflow::steps::create_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        let lock = deps.run_lock()?;
        create_image::run(&deps.ec2, &lock, &deps.settings, &deps.region, request).await
    })
    .await
}
