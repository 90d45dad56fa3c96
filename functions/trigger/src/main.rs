//! trigger: on a schedule and on tag changes, starts the runs that resources ask for with tags.

use amiflow::trigger::{self, TriggerSettings};
use amiflow::Deps;
use lambda_runtime::{service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let deps = &Deps::from_env().await?;
    let settings = &TriggerSettings::from_vars(|k| std::env::var(k).ok())?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let only = trigger::event_resources(&event.payload);
        trigger::sweep(deps, settings, &only).await
    }))
    .await
}
