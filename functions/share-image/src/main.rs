//! share-image: plans a share, unshare or copy, and adds or removes the image's permissions.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::share_image().await
}
