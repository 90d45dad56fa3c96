//! grant-kms: gives receivers the use of an image's KMS keys (grants, key policy), or takes it back.

use amiflow::steps::grant_kms;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| grant_kms::run(&deps.kms, request)).await
}
