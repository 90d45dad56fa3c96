//! grant-kms: gives receivers the use of an image's KMS keys (grants, key policy), or takes it back.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::grant_kms().await
}
