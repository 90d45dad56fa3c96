//! reaper: takes back what a run that ended without its rollback had made.

use amiflow::steps::reap::{self, ReapSettings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let settings = ReapSettings::from_vars(|k| std::env::var(k).ok())?;
    let settings: &'static ReapSettings = Box::leak(Box::new(settings));
    amiflow::lambda::serve_parsed(Ok, |deps, event| reap::run(&deps.sfn, settings, event)).await
}
