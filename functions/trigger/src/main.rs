//! trigger: on a schedule and on tag changes, starts the runs that resources ask for with tags.

use amiflow::trigger::{self, TriggerSettings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let settings = TriggerSettings::from_vars(|k| std::env::var(k).ok())?;
    let settings: &'static TriggerSettings = Box::leak(Box::new(settings));
    amiflow::lambda::serve_parsed(Ok, |deps, event| trigger::handle(deps, settings, event)).await
}
