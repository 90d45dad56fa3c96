//! grant-kms: gives receivers the use of an image's KMS keys (grants, key policy), or takes it back.

use amiflow::steps::grant_kms;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(|deps, request| async move {
        grant_kms::run(&deps.kms, &deps.policy_edits()?, request).await
    })
    .await
}
