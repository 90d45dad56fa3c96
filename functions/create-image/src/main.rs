//! create-image: validates a migration, captures the source and makes its AMI.

use amiflow::steps::create_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| {
        create_image::run(&deps.ec2, &deps.settings, &deps.region, request)
    })
    .await
}
