//! The approval step of a `"cutover": "approve"` run. AwaitApproval invokes this function with its
//! task token (`lambda:invoke.waitForTaskToken`) and waits for the answer. The function announces
//! the wait: an `amiflow Run Awaiting Approval` event on the default bus with the comparison of
//! source and copy, a one-line summary of it, the time by which to decide, and how to answer.
//! The answer (SendTaskSuccess with `{"decision": "approve"}` or `{"decision": "discard"}`) comes
//! from `amiflow approve|discard`, the console or any client; nothing here waits or decides.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_smithy_types::date_time::{DateTime, Format};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::compare::{Compared, Status};
use crate::error::{aws, classify, Result};
use crate::Deps;

pub const DETAIL_TYPE: &str = "amiflow Run Awaiting Approval";

/// What AwaitApproval gives the function.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequest {
    pub task_token: String,
    pub execution: String,
    pub execution_arn: String,
    pub source_instance_id: String,
    pub new_instance_id: String,
    pub availability_zone: String,
    pub approval_timeout_seconds: u64,
    #[serde(default)]
    pub comparison: Vec<Compared>,
}

/// The comparison in one line: how many settings were carried, and which changed, are not
/// carried, or wait for the cutover. Pure.
pub fn summary(request: &ApprovalRequest) -> String {
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in &request.comparison {
        let label = match row.status {
            Status::Carried => "carried",
            Status::Changed => "changed",
            Status::NotCarried => "not carried",
            Status::AtCutover => "at cutover",
        };
        by.entry(label).or_default().push(&row.setting);
    }
    let carried = by.remove("carried").map_or(0, |s| s.len());
    let mut parts = vec![format!("{carried} setting(s) carried")];
    for label in ["changed", "not carried", "at cutover"] {
        if let Some(settings) = by.get(label) {
            parts.push(format!("{label}: {}", settings.join(", ")));
        }
    }
    format!(
        "{} is copied to {} in {}; {}",
        request.source_instance_id,
        request.new_instance_id,
        request.availability_zone,
        parts.join("; ")
    )
}

/// The event's detail: what the run waits for, and how to answer it. Pure.
pub fn detail(request: &ApprovalRequest, now: SystemTime) -> Value {
    let by = DateTime::from(now + Duration::from_secs(request.approval_timeout_seconds))
        .fmt(Format::DateTime)
        .unwrap_or_default();
    json!({
        "workflow": "MigrateInstance",
        "execution": request.execution,
        "executionArn": request.execution_arn,
        "taskToken": request.task_token,
        "sourceInstanceId": request.source_instance_id,
        "newInstanceId": request.new_instance_id,
        "availabilityZone": request.availability_zone,
        "approvalTimeoutSeconds": request.approval_timeout_seconds,
        "decideBy": by,
        "summary": summary(request),
        "comparison": request.comparison,
        "answer": {
            "approve": format!("amiflow approve {}", request.execution),
            "discard": format!("amiflow discard {}", request.execution),
            "sendTaskSuccessOutput": {"decision": "approve"},
        },
    })
}

/// Puts the event; answers its detail (the task's output is the decision, not this).
pub async fn run(deps: &Deps, request: ApprovalRequest) -> Result<Value> {
    // Made once per execution environment: only this function uses EventBridge.
    static EVENTS: std::sync::OnceLock<aws_sdk_eventbridge::Client> = std::sync::OnceLock::new();
    let events = EVENTS.get_or_init(|| aws_sdk_eventbridge::Client::new(&deps.config));
    let detail = detail(&request, SystemTime::now());
    let answer = events
        .put_events()
        .entries(
            PutEventsRequestEntry::builder()
                .source("amiflow")
                .detail_type(DETAIL_TYPE)
                .event_bus_name("default")
                .detail(detail.to_string())
                .build(),
        )
        .send()
        .await
        .map_err(aws("PutEvents"))?;
    // PutEvents answers 200 with the entries it could not put (a rate limit, an internal error).
    if answer.failed_entry_count() > 0 {
        let failed = answer.entries().first();
        return Err(classify(
            "PutEvents",
            failed.and_then(|e| e.error_code()),
            failed.and_then(|e| e.error_message()),
            None,
        ));
    }
    tracing::info!(
        execution = request.execution,
        summary = detail["summary"].as_str(),
        "awaiting approval"
    );
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(comparison: Value) -> ApprovalRequest {
        serde_json::from_value(json!({
            "taskToken": "token-1",
            "execution": "move-web-1",
            "executionArn": "arn:aws:states:us-east-1:123456789012:execution:MigrateInstance:move-web-1",
            "sourceInstanceId": "i-0123456789abcdef0",
            "newInstanceId": "i-0fedcba9876543210",
            "availabilityZone": "us-east-1b",
            "approvalTimeoutSeconds": 3600,
            "comparison": comparison,
        }))
        .unwrap()
    }

    #[test]
    fn the_event_says_what_waits_until_when_and_how_to_answer() {
        let r = request(json!([
            {"setting": "instance type", "status": "carried", "source": "t3.micro", "copy": "t3.micro"},
            {"setting": "tags", "status": "carried", "source": "a=1", "copy": "a=1"},
            {"setting": "subnet", "status": "changed", "source": "subnet-1", "copy": "subnet-2"},
            {"setting": "private IP", "status": "not-carried", "source": "10.0.0.5", "copy": "10.0.1.7"},
            {"setting": "Elastic IP", "status": "at-cutover", "source": "3.3.3.3", "copy": "none"}
        ]));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = detail(&r, now);
        assert_eq!(d["taskToken"], "token-1");
        assert_eq!(d["decideBy"], "2027-01-15T09:00:00Z");
        assert_eq!(
            d["summary"],
            "i-0123456789abcdef0 is copied to i-0fedcba9876543210 in us-east-1b; 2 setting(s) carried; \
             changed: subnet; not carried: private IP; at cutover: Elastic IP"
        );
        assert_eq!(d["answer"]["approve"], "amiflow approve move-web-1");
        assert_eq!(d["answer"]["discard"], "amiflow discard move-web-1");
        assert_eq!(d["comparison"].as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn a_request_with_an_unknown_field_is_refused() {
        let mut raw = json!({
            "taskToken": "t", "execution": "e", "executionArn": "a", "sourceInstanceId": "i-1",
            "newInstanceId": "i-2", "availabilityZone": "us-east-1b", "approvalTimeoutSeconds": 10
        });
        assert!(serde_json::from_value::<ApprovalRequest>(raw.clone()).is_ok());
        raw["decision"] = json!("approve");
        assert!(serde_json::from_value::<ApprovalRequest>(raw).is_err());
    }
}
