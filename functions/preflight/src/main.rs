//! preflight: a workflow's checks as its first state, when its input asks with "preflight": true.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::preflight().await
}
