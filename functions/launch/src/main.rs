//! launch: starts the new instance from the AMI in the target subnet.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::launch().await
}
