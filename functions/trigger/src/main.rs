//! trigger: on a schedule and on tag changes, starts the runs that resources ask for with tags.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::trigger().await
}
