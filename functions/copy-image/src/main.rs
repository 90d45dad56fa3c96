//! copy-image: copies a shared image into the target account through a role there.

use amiflow::steps::copy_image;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(copy_image::run).await
}
