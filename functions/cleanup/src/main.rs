//! cleanup: completes a verified migration, or rolls a failed one back; either way it gives the
//! source's run lock back.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::cleanup().await
}
