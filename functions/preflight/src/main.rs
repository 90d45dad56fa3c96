//! preflight: a workflow's checks as its first state, when its input asks with "preflight": true.

use amiflow::preflight;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::lambda::serve(preflight::run).await
}
