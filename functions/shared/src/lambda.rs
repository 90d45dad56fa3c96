//! What every function's `main` does: logging, the dependencies built once per cold start, and
//! the Lambda runtime calling the step with the parsed payload, each invocation inside one
//! tracing span that names the run it serves.

use std::future::Future;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::{parse_request, Deps, Error};

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
    let (parse, handler) = (&parse, &handler);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let span = tracing::info_span!("invocation", execution = %run_of(&event.payload));
        async move {
            let request = parse(event.payload).map_err(Diagnostic::from)?;
            // Boxed: a step's future nested in the runtime's is deeper than the compiler's
            // layout limit allows (share-image's).
            Box::pin(handler(deps, request))
                .await
                .map_err(Diagnostic::from)
        }
        .instrument(span)
    }))
    .await
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
