//! share-image: plans a share, unshare or copy, and adds or removes the image's permissions.

use amiflow::steps::share_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| {
        share_image::run(&deps.ec2, &deps.kms, &deps.settings, &deps.region, request)
    })
    .await
}
