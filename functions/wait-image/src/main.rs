//! wait-image: registers task tokens, answers them on AMI events, and polls when events are lost.

use amiflow::steps::wait_image::{self, WaitImageRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve_parsed(WaitImageRequest::from_value, wait_image::handle).await
}
