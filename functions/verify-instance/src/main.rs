//! verify-instance: one check of the new instance; finalizes it once it is healthy.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::verify_instance().await
}
