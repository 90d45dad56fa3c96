//! wait-image: ends the wait for an AMI. The state machine calls it with a task token
//! (`register`), which it stores by image id before it looks at the image once; the EventBridge
//! rule for `EC2 AMI State Change` calls it with the event, and it answers every token waiting on
//! that image. When the event is lost, the state machine's time-out leads to `poll`, one look per
//! call, with growing waits in between.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{aws, Error, Result};
use crate::resources::images;
use crate::settings::{PollPolicy, Settings};

/// The `detail` of an `EC2 AMI State Change` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmiStateDetail {
    #[serde(rename = "RequestId", default)]
    pub request_id: Option<String>,
    #[serde(rename = "ImageId")]
    pub image_id: String,
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "ErrorMessage", default)]
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    pub task_token: String,
    pub image_id: String,
    pub execution: String,
    /// When the image is in another account: the role to look at it through.
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollRequest {
    pub image_id: String,
    pub execution: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

/// The three ways wait-image is invoked.
#[derive(Debug, Clone)]
pub enum WaitImageRequest {
    Event(Box<EventBridgeEvent<AmiStateDetail>>),
    Register(RegisterRequest),
    Poll(PollRequest),
}

impl WaitImageRequest {
    /// The role (and external id) to look at the image through, for an image in another account.
    pub fn role(&self) -> Option<(&str, &str)> {
        let (role, external) = match self {
            WaitImageRequest::Register(r) => (&r.role_arn, &r.external_id),
            WaitImageRequest::Poll(r) => (&r.role_arn, &r.external_id),
            WaitImageRequest::Event(_) => return None,
        };
        Some((role.as_deref()?, external.as_deref().unwrap_or_default()))
    }

    /// Events are told by their `detail-type`; the state machine's calls by `action`.
    pub fn from_value(value: Value) -> Result<Self> {
        let parse_err = |what: &str, e: serde_json::Error| Error::invalid(what, e.to_string());
        if value.get("detail-type").is_some() {
            let event: EventBridgeEvent<AmiStateDetail> =
                serde_json::from_value(value).map_err(|e| parse_err("detail", e))?;
            return Ok(WaitImageRequest::Event(Box::new(event)));
        }
        let mut object = match value {
            Value::Object(o) => o,
            _ => return Err(Error::invalid("input", "expected an object")),
        };
        let action = object.remove("action");
        match action.as_ref().and_then(Value::as_str) {
            Some("register") => Ok(WaitImageRequest::Register(
                serde_json::from_value(Value::Object(object))
                    .map_err(|e| parse_err("register", e))?,
            )),
            Some("poll") => Ok(WaitImageRequest::Poll(
                serde_json::from_value(Value::Object(object)).map_err(|e| parse_err("poll", e))?,
            )),
            _ => Err(Error::invalid(
                "action",
                "must be \"register\" or \"poll\" (or an EC2 AMI State Change event)",
            )),
        }
    }
}

/// Where an image is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Available,
    /// failed, deregistered, disabled, or an error state: it will never become available.
    Lost,
}

pub fn phase(state: &str) -> Phase {
    match state {
        "available" => Phase::Available,
        "pending" => Phase::Pending,
        _ => Phase::Lost,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitImageOutput {
    pub image_id: String,
    pub state: String,
    /// True once the image is available.
    pub ready: bool,
    pub attempt: u32,
    pub wait_seconds: u64,
    /// How many waiting executions were answered.
    pub answered: usize,
}

fn token_key(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The image's state and, when it failed, why.
async fn look(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<(String, Option<String>)> {
    let image = images::describe(ec2, image_id).await?;
    let state = image
        .state()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "pending".into());
    let reason = image
        .state_reason()
        .and_then(|r| r.message())
        .map(str::to_string);
    Ok((state, reason))
}

fn lost_error(image_id: &str, state: &str, reason: Option<&str>) -> Error {
    Error::ImageFailed(
        format!(
            "{image_id} is {state}: {}",
            reason
                .filter(|r| !r.is_empty())
                .unwrap_or("no reason given")
        )
        .into(),
    )
}

/// The tokens waiting on an image: (table key, token, execution).
async fn waiting(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    image_id: &str,
) -> Result<Vec<(String, String, String)>> {
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let page = ddb
            .query()
            .table_name(table)
            .key_condition_expression("imageId = :id")
            .expression_attribute_values(":id", AttributeValue::S(image_id.into()))
            // A token stored a moment ago must be seen: an eventually consistent read may miss it,
            // and the run would then wait EventWaitSeconds for nothing.
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(aws("Query"))?;
        for item in page.items() {
            let text = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            found.push((text("tokenKey"), text("taskToken"), text("execution")));
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(found),
        }
    }
}

async fn forget(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    image_id: &str,
    key: &str,
) -> Result<()> {
    ddb.delete_item()
        .table_name(table)
        .key("imageId", AttributeValue::S(image_id.into()))
        .key("tokenKey", AttributeValue::S(key.into()))
        .send()
        .await
        .map_err(aws("DeleteItem"))?;
    Ok(())
}

/// A token that Step Functions no longer knows (timed out, or answered already) is not an error.
fn token_closed(error: &Error) -> bool {
    ["TaskDoesNotExist", "TaskTimedOut", "InvalidToken"]
        .iter()
        .any(|code| error.is_code(code))
}

/// Answers every execution waiting on the image, then forgets their tokens.
async fn answer(
    sfn: &aws_sdk_sfn::Client,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    image_id: &str,
    state: &str,
    reason: Option<&str>,
) -> Result<usize> {
    let mut answered = 0;
    for (key, token, execution) in waiting(ddb, table, image_id).await? {
        let sent = match phase(state) {
            Phase::Pending => continue,
            Phase::Available => sfn
                .send_task_success()
                .task_token(&token)
                .output(json!({"imageId": image_id, "state": state}).to_string())
                .send()
                .await
                .map(|_| ())
                .map_err(aws("SendTaskSuccess")),
            Phase::Lost => {
                let error = lost_error(image_id, state, reason);
                sfn.send_task_failure()
                    .task_token(&token)
                    .error(error.name())
                    .cause(error.to_string())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(aws("SendTaskFailure"))
            }
        };
        match sent {
            Ok(()) => answered += 1,
            Err(e) if token_closed(&e) => {
                tracing::info!(image_id, execution = %execution, "token already closed");
            }
            Err(e) => return Err(e),
        }
        forget(ddb, table, image_id, &key).await?;
        tracing::info!(image_id, state, execution = %execution, "waiting execution answered");
    }
    Ok(answered)
}

async fn register(
    ec2: &aws_sdk_ec2::Client,
    sfn: &aws_sdk_sfn::Client,
    ddb: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    request: RegisterRequest,
) -> Result<WaitImageOutput> {
    let table = settings.task_table()?;
    // Kept two days past the longest wait, then DynamoDB's TTL removes a token nobody answered.
    let expires = now() + settings.image_poll.limit_seconds + 24 * 3600;
    ddb.put_item()
        .table_name(table)
        .item("imageId", AttributeValue::S(request.image_id.clone()))
        .item(
            "tokenKey",
            AttributeValue::S(token_key(&request.task_token)),
        )
        .item("taskToken", AttributeValue::S(request.task_token.clone()))
        .item("execution", AttributeValue::S(request.execution.clone()))
        .item("expiresAt", AttributeValue::N(expires.to_string()))
        .send()
        .await
        .map_err(aws("PutItem"))?;
    // The image may have finished before the token was stored: then no event is coming.
    let (state, reason) = look(ec2, &request.image_id).await?;
    let answered = answer(
        sfn,
        ddb,
        table,
        &request.image_id,
        &state,
        reason.as_deref(),
    )
    .await?;
    tracing::info!(image_id = %request.image_id, state = %state, answered, "token registered");
    Ok(WaitImageOutput {
        image_id: request.image_id,
        ready: phase(&state) == Phase::Available,
        state,
        attempt: 0,
        wait_seconds: 0,
        answered,
    })
}

async fn on_event(
    sfn: &aws_sdk_sfn::Client,
    ddb: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    event: &EventBridgeEvent<AmiStateDetail>,
) -> Result<WaitImageOutput> {
    let detail = &event.detail;
    let table = settings.task_table()?;
    let answered = answer(
        sfn,
        ddb,
        table,
        &detail.image_id,
        &detail.state,
        detail.error_message.as_deref(),
    )
    .await?;
    tracing::info!(image_id = %detail.image_id, state = %detail.state, answered, "AMI state change handled");
    Ok(WaitImageOutput {
        image_id: detail.image_id.clone(),
        ready: phase(&detail.state) == Phase::Available,
        state: detail.state.clone(),
        attempt: 0,
        wait_seconds: 0,
        answered,
    })
}

/// The next poll's wait, or a time-out once the policy's limit is spent.
pub fn next_poll(image_id: &str, attempt: u32, policy: &PollPolicy) -> Result<(u32, u64)> {
    let next = attempt + 1;
    policy.next_wait(next).map(|w| (next, w)).ok_or_else(|| {
        Error::ImageWaitTimedOut(
            format!(
                "{image_id} was still pending after {} s of polling",
                policy.waited_before(next)
            )
            .into(),
        )
    })
}

async fn poll(
    ec2: &aws_sdk_ec2::Client,
    ddb: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    request: PollRequest,
) -> Result<WaitImageOutput> {
    let (state, reason) = look(ec2, &request.image_id).await?;
    let done = phase(&state) != Phase::Pending;
    if done {
        // The token this execution stored is dead (its task timed out); do not leave it behind.
        if let Some(table) = settings.task_table.as_deref() {
            for (key, _, execution) in waiting(ddb, table, &request.image_id).await? {
                if execution == request.execution {
                    forget(ddb, table, &request.image_id, &key).await?;
                }
            }
        }
    }
    match phase(&state) {
        Phase::Lost => Err(lost_error(&request.image_id, &state, reason.as_deref())),
        Phase::Available => Ok(WaitImageOutput {
            image_id: request.image_id,
            state,
            ready: true,
            attempt: request.attempt,
            wait_seconds: 0,
            answered: 0,
        }),
        Phase::Pending => {
            let (attempt, wait) =
                next_poll(&request.image_id, request.attempt, &settings.image_poll)?;
            Ok(WaitImageOutput {
                image_id: request.image_id,
                state,
                ready: false,
                attempt,
                wait_seconds: wait,
                answered: 0,
            })
        }
    }
}

/// Serves one invocation: an image in another account (a cross-account copy) is looked at
/// through the role its request names.
pub async fn handle(deps: &crate::Deps, request: WaitImageRequest) -> Result<WaitImageOutput> {
    let ec2 = match request.role() {
        Some((role, external_id)) => deps.ec2_as(role, external_id).await?,
        None => deps.ec2.clone(),
    };
    run(&ec2, &deps.sfn, &deps.dynamodb, &deps.settings, request).await
}

pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    sfn: &aws_sdk_sfn::Client,
    ddb: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    request: WaitImageRequest,
) -> Result<WaitImageOutput> {
    match request {
        WaitImageRequest::Register(r) => register(ec2, sfn, ddb, settings, r).await,
        WaitImageRequest::Event(e) => on_event(sfn, ddb, settings, &e).await,
        WaitImageRequest::Poll(p) => poll(ec2, ddb, settings, p).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DEFAULT_IMAGE_POLL;

    #[test]
    fn requests_are_told_apart() {
        let event = json!({
            "version": "0", "id": "e1", "detail-type": "EC2 AMI State Change", "source": "aws.ec2",
            "account": "123456789012", "time": "2026-11-28T12:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0"],
            "detail": {"RequestId": "r", "ImageId": "ami-0123456789abcdef0", "State": "available", "ErrorMessage": ""}
        });
        assert!(
            matches!(WaitImageRequest::from_value(event).unwrap(), WaitImageRequest::Event(e) if e.detail.state == "available")
        );
        let reg =
            json!({"action": "register", "taskToken": "t", "imageId": "ami-1", "execution": "x"});
        assert!(matches!(
            WaitImageRequest::from_value(reg).unwrap(),
            WaitImageRequest::Register(_)
        ));
        let poll = json!({"action": "poll", "imageId": "ami-1", "execution": "x", "attempt": 3});
        assert!(
            matches!(WaitImageRequest::from_value(poll).unwrap(), WaitImageRequest::Poll(p) if p.attempt == 3)
        );
        let bad = WaitImageRequest::from_value(json!({"action": "wait"})).unwrap_err();
        assert!(bad.to_string().starts_with("action:"), "{bad}");
    }

    #[test]
    fn phases() {
        assert_eq!(phase("available"), Phase::Available);
        assert_eq!(phase("pending"), Phase::Pending);
        for lost in ["failed", "deregistered", "disabled", "error", "invalid"] {
            assert_eq!(phase(lost), Phase::Lost, "{lost}");
        }
    }

    #[test]
    fn polling_backs_off_then_gives_up() {
        assert_eq!(next_poll("ami-1", 0, &DEFAULT_IMAGE_POLL).unwrap(), (1, 60));
        let e = next_poll("ami-1", 10_000, &DEFAULT_IMAGE_POLL).unwrap_err();
        assert_eq!(e.name(), "ImageWaitTimedOut");
    }

    #[test]
    fn closed_tokens_are_not_errors() {
        let answered = |code| crate::error::classify("SendTaskSuccess", code, None, Some(400));
        assert!(token_closed(&answered(Some("TaskTimedOut"))));
        assert!(token_closed(&answered(Some("TaskDoesNotExist"))));
        assert!(!token_closed(&answered(Some("ThrottlingException"))));
        assert!(!token_closed(&answered(None)));
    }
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::test_support::{image, images, meta};
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput;
    use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
    use aws_sdk_dynamodb::operation::query::QueryOutput;
    use aws_sdk_ec2::types::{ImageState, StateReason};
    use aws_sdk_sfn::operation::send_task_failure::SendTaskFailureOutput;
    use aws_sdk_sfn::operation::send_task_success::{SendTaskSuccessError, SendTaskSuccessOutput};
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use std::collections::HashMap;

    fn settings() -> Settings {
        Settings::from_vars(|k| (k == "AMIFLOW_TASK_TABLE").then(|| "tokens".to_string())).unwrap()
    }

    fn ec2_with(state: ImageState) -> (aws_sdk_ec2::Client, Rule) {
        let rule = mock!(aws_sdk_ec2::Client::describe_images).then_output(move || {
            let mut i = image("ami-1", state.clone(), &[]);
            i.state_reason = Some(
                StateReason::builder()
                    .code("Server.InternalError")
                    .message("snapshot copy failed")
                    .build(),
            );
            images(vec![i])
        });
        let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule]);
        (client, rule)
    }

    fn item(token: &str, execution: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("imageId".to_string(), AttributeValue::S("ami-1".into())),
            ("tokenKey".to_string(), AttributeValue::S(token_key(token))),
            ("taskToken".to_string(), AttributeValue::S(token.into())),
            ("execution".to_string(), AttributeValue::S(execution.into())),
        ])
    }

    struct Table {
        put: Rule,
        query: Rule,
        delete: Rule,
    }

    fn table(waiting: Vec<(&'static str, &'static str)>) -> (aws_sdk_dynamodb::Client, Table) {
        let t = Table {
            put: mock!(aws_sdk_dynamodb::Client::put_item)
                .match_requests(|req| {
                    req.table_name() == Some("tokens")
                        && req.item().is_some_and(|i| i.contains_key("expiresAt"))
                })
                .then_output(|| PutItemOutput::builder().build()),
            query: mock!(aws_sdk_dynamodb::Client::query).then_output(move || {
                QueryOutput::builder()
                    .set_items(Some(waiting.iter().map(|(t, e)| item(t, e)).collect()))
                    .build()
            }),
            delete: mock!(aws_sdk_dynamodb::Client::delete_item)
                .then_output(|| DeleteItemOutput::builder().build()),
        };
        let client = mock_client!(
            aws_sdk_dynamodb,
            RuleMode::MatchAny,
            [&t.put, &t.query, &t.delete]
        );
        (client, t)
    }

    fn register() -> WaitImageRequest {
        WaitImageRequest::Register(RegisterRequest {
            task_token: "tok-1".into(),
            image_id: "ami-1".into(),
            execution: "run-1".into(),
            role_arn: None,
            external_id: None,
        })
    }

    fn event(state: &str) -> WaitImageRequest {
        WaitImageRequest::from_value(json!({
            "version": "0", "id": "e", "detail-type": "EC2 AMI State Change", "source": "aws.ec2", "account": "123456789012",
            "time": "2026-11-28T12:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {"RequestId": "r", "ImageId": "ami-1", "State": state, "ErrorMessage": "copy failed"}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_image_already_available_is_answered_at_registration() {
        let (ec2, _) = ec2_with(ImageState::Available);
        let (ddb, t) = table(vec![("tok-1", "run-1")]);
        let success = mock!(aws_sdk_sfn::Client::send_task_success)
            .match_requests(|req| {
                req.task_token() == Some("tok-1")
                    && req.output().is_some_and(|o| o.contains("available"))
            })
            .then_output(|| SendTaskSuccessOutput::builder().build());
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&success]);
        let out = run(&ec2, &sfn, &ddb, &settings(), register())
            .await
            .unwrap();
        assert!(out.ready);
        assert_eq!(out.answered, 1);
        assert_eq!(
            [t.put.num_calls(), success.num_calls(), t.delete.num_calls()],
            [1, 1, 1]
        );
    }

    #[tokio::test]
    async fn a_pending_image_leaves_the_token_waiting() {
        let (ec2, _) = ec2_with(ImageState::Pending);
        let (ddb, t) = table(vec![("tok-1", "run-1")]);
        let success = mock!(aws_sdk_sfn::Client::send_task_success)
            .then_output(|| SendTaskSuccessOutput::builder().build());
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&success]);
        let out = run(&ec2, &sfn, &ddb, &settings(), register())
            .await
            .unwrap();
        assert!(!out.ready);
        assert_eq!(
            [t.put.num_calls(), success.num_calls(), t.delete.num_calls()],
            [1, 0, 0]
        );
    }

    #[tokio::test]
    async fn a_failed_event_fails_every_waiting_run_with_the_reason() {
        let (ec2, _) = ec2_with(ImageState::Pending);
        let (ddb, t) = table(vec![("tok-1", "run-1"), ("tok-2", "run-2")]);
        let failure = mock!(aws_sdk_sfn::Client::send_task_failure)
            .match_requests(|req| {
                req.error() == Some("ImageFailed")
                    && req.cause().is_some_and(|c| c.contains("copy failed"))
            })
            .then_output(|| SendTaskFailureOutput::builder().build());
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&failure]);
        let out = run(&ec2, &sfn, &ddb, &settings(), event("failed"))
            .await
            .unwrap();
        assert_eq!(out.answered, 2);
        assert_eq!([failure.num_calls(), t.delete.num_calls()], [2, 2]);
    }

    #[tokio::test]
    async fn a_token_that_timed_out_is_forgotten_without_error() {
        let (ec2, _) = ec2_with(ImageState::Pending);
        let (ddb, t) = table(vec![("tok-1", "run-1")]);
        let closed = mock!(aws_sdk_sfn::Client::send_task_success)
            .then_error(|| SendTaskSuccessError::generic(meta("TaskTimedOut")));
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&closed]);
        let out = run(&ec2, &sfn, &ddb, &settings(), event("available"))
            .await
            .unwrap();
        assert_eq!(out.answered, 0);
        assert_eq!(t.delete.num_calls(), 1);
    }

    #[tokio::test]
    async fn throttled_answers_are_retried_by_the_state_machine_not_dropped() {
        let (ec2, _) = ec2_with(ImageState::Pending);
        let (ddb, t) = table(vec![("tok-1", "run-1")]);
        let throttled = mock!(aws_sdk_sfn::Client::send_task_success)
            .then_error(|| SendTaskSuccessError::generic(meta("ThrottlingException")));
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&throttled]);
        let err = run(&ec2, &sfn, &ddb, &settings(), event("available"))
            .await
            .unwrap_err();
        assert_eq!(err.name(), "Throttled");
        assert_eq!(
            t.delete.num_calls(),
            0,
            "the token stays until it is answered"
        );
    }

    #[tokio::test]
    async fn polling_reports_pending_ready_and_failed() {
        let (ddb, t) = table(vec![("tok-1", "run-1"), ("tok-9", "other-run")]);
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, Vec::<&Rule>::new());
        let poll = |attempt| {
            WaitImageRequest::Poll(PollRequest {
                image_id: "ami-1".into(),
                execution: "run-1".into(),
                attempt,
                role_arn: None,
                external_id: None,
            })
        };

        let (ec2, _) = ec2_with(ImageState::Pending);
        let out = run(&ec2, &sfn, &ddb, &settings(), poll(2)).await.unwrap();
        assert_eq!((out.ready, out.attempt, out.wait_seconds), (false, 3, 240));

        let (ec2, _) = ec2_with(ImageState::Available);
        assert!(
            run(&ec2, &sfn, &ddb, &settings(), poll(3))
                .await
                .unwrap()
                .ready
        );
        assert_eq!(
            t.delete.num_calls(),
            1,
            "only this run's dead token is removed"
        );

        let (ec2, _) = ec2_with(ImageState::Failed);
        let err = run(&ec2, &sfn, &ddb, &settings(), poll(0))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::ImageFailed("ami-1 is failed: snapshot copy failed".into())
        );
    }

    #[tokio::test]
    async fn registering_without_a_table_is_a_configuration_error() {
        let (ec2, _) = ec2_with(ImageState::Available);
        let (ddb, _) = table(vec![]);
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, Vec::<&Rule>::new());
        let err = run(
            &ec2,
            &sfn,
            &ddb,
            &Settings::from_vars(|_| None).unwrap(),
            register(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.name(), "Configuration");
    }
}
