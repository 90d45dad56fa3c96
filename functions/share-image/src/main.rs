//! share-image: plans a share, unshare or copy, and adds or removes the image's permissions.

use amiflow::steps::share_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(share_image::run).await
}
