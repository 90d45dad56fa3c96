//! What every function's `main` does: logging, the dependencies built once per cold start, the
//! warm-up of its first call's connection, and the Lambda runtime calling the step with the
//! parsed payload, each invocation inside one tracing span that names the run it serves, and
//! bounded by the time Lambda gives it.

use std::future::Future;
use std::time::{Duration, SystemTime};

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::{parse_request, warm_up, Deps, Error};

/// Serves a step: `handler` gets the dependencies (built once, for the life of the process) and
/// the payload parsed into its request type; a payload that does not parse is `InvalidInput`.
pub async fn serve<Request, Output, Handler, Answer>(
    handler: Handler,
) -> Result<(), lambda_runtime::Error>
where
    Request: DeserializeOwned,
    Output: Serialize,
    Handler: Fn(&'static Deps, Request) -> Answer,
    Answer: Future<Output = Result<Output, Error>>,
{
    serve_parsed(parse_request, handler).await
}

/// [`serve`] for a payload read by its own `parse` (an EventBridge event or a step's call).
pub async fn serve_parsed<Request, Output, Parse, Handler, Answer>(
    parse: Parse,
    handler: Handler,
) -> Result<(), lambda_runtime::Error>
where
    Output: Serialize,
    Parse: Fn(Value) -> Result<Request, Error>,
    Handler: Fn(&'static Deps, Request) -> Answer,
    Answer: Future<Output = Result<Output, Error>>,
{
    lambda_runtime::tracing::init_default_subscriber();
    // One SdkConfig and its clients for the whole life of the execution environment.
    let deps: &'static Deps = Box::leak(Box::new(Deps::from_env().await?));
    if let Some(what) = deps.settings.warm_up {
        warm_up::run(deps, what).await;
    }
    let (parse, handler) = (&parse, &handler);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let span = tracing::info_span!("invocation", execution = %run_of(&event.payload));
        async move {
            let budget = budget(event.context.deadline(), SystemTime::now());
            let request = parse(event.payload).map_err(Diagnostic::from)?;
            // Boxed: a step's future nested in the runtime's is deeper than the compiler's
            // layout limit allows (share-image's).
            match tokio::time::timeout(budget, Box::pin(handler(deps, request))).await {
                Ok(answer) => answer.map_err(Diagnostic::from),
                Err(_) => Err(Diagnostic::from(out_of_time(budget))),
            }
        }
        .instrument(span)
    }))
    .await
}

/// What a handler leaves of Lambda's time: enough to send its answer and for the runtime to take
/// it, so that a step that runs out says so (ServiceUnavailable, retried by every Task) instead of
/// being killed mid-call and seen as `Lambda.Unknown`.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);

/// How long a handler may take: the time to Lambda's deadline, less [`DEADLINE_MARGIN`]; none
/// when the deadline is that close or past. Pure.
pub fn budget(deadline: SystemTime, now: SystemTime) -> Duration {
    deadline
        .duration_since(now)
        .unwrap_or_default()
        .saturating_sub(DEADLINE_MARGIN)
}

/// The answer of a handler that used its whole budget. Whatever it had done is found again by
/// the retry: every step is idempotent.
fn out_of_time(budget: Duration) -> Error {
    Error::ServiceUnavailable(
        format!(
            "the function stopped after {:.1} s, {:.1} s before Lambda's deadline; the step is retried",
            budget.as_secs_f64(),
            DEADLINE_MARGIN.as_secs_f64()
        )
        .into(),
    )
}

/// The run an invocation serves, for its log lines: a step's `execution`, the execution a status
/// change is about, or `-` (an AMI event, a schedule). Pure.
pub fn run_of(payload: &Value) -> &str {
    payload["execution"]
        .as_str()
        .or_else(|| payload["detail"]["name"].as_str())
        .unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_handler_stops_short_of_the_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            budget(now + Duration::from_secs(120), now),
            Duration::from_millis(118_500)
        );
        assert_eq!(budget(now + Duration::from_secs(1), now), Duration::ZERO);
        assert_eq!(budget(now - Duration::from_secs(5), now), Duration::ZERO);
        assert_eq!(out_of_time(Duration::ZERO).name(), "ServiceUnavailable");
    }

    #[test]
    fn an_invocation_is_named_after_the_run_it_serves() {
        assert_eq!(run_of(&json!({"execution": "run-1", "input": {}})), "run-1");
        let status_change = json!({"detail-type": "Step Functions Execution Status Change", "detail": {"name": "run-2"}});
        assert_eq!(run_of(&status_change), "run-2");
        assert_eq!(
            run_of(&json!({"detail-type": "EC2 AMI State Change", "detail": {"ImageId": "ami-1"}})),
            "-"
        );
    }
}
