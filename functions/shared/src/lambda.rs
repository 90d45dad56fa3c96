//! What every function's `main` does: logging, the dependencies built once per cold start, and
//! the Lambda runtime calling the step with the parsed payload.

use std::future::Future;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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
    lambda_runtime::tracing::init_default_subscriber();
    // One SdkConfig and its clients for the whole life of the execution environment.
    let deps: &'static Deps = Box::leak(Box::new(Deps::from_env().await?));
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request: Request = parse_request(event.payload).map_err(Diagnostic::from)?;
        handler(deps, request).await.map_err(Diagnostic::from)
    }))
    .await
}
