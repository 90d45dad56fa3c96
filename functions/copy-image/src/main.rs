//! copy-image: copies a shared image into the target account through a role there.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::copy_image().await
}
