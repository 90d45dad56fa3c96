//! reaper: takes back what a run that ended without its rollback had made.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::reaper().await
}
