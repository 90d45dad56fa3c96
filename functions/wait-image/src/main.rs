//! wait-image: registers task tokens, answers them on AMI events, and polls when events are lost.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::wait_image().await
}
