//! Answering a run that waits at AwaitApproval: the task token is in the execution's history
//! (the AwaitApproval task's parameters), and SendTaskSuccess with the decision answers it, as
//! the console or any client can.

use aws_sdk_sfn::types::{HistoryEvent, HistoryEventType};
use aws_sdk_sfn::Client;
use serde_json::{json, Value};

use crate::failure::{api, Failure};

/// The state that waits for the decision.
pub const STATE: &str = "AwaitApproval";

/// The token of the approval the run waits for now, from its history (oldest first), or why
/// there is none. Pure.
pub fn waiting_token(events: &[HistoryEvent]) -> Result<String, String> {
    let entered = events.iter().rposition(|e| {
        e.state_entered_event_details()
            .is_some_and(|d| d.name() == STATE)
    });
    let Some(entered) = entered else {
        return Err(format!(
            "the run has not reached {STATE}: it is not waiting for a decision"
        ));
    };
    let after = &events[entered..];
    // The last attempt's task: an earlier attempt that failed (and was retried) says nothing.
    let scheduled = after
        .iter()
        .rposition(|e| e.task_scheduled_event_details().is_some());
    let since = &after[scheduled.unwrap_or(0)..];
    if since.iter().any(|e| {
        matches!(
            e.r#type(),
            HistoryEventType::TaskSucceeded
                | HistoryEventType::TaskFailed
                | HistoryEventType::TaskTimedOut
        ) || e.state_exited_event_details().is_some()
    }) {
        return Err(format!("the run's {STATE} has been answered already"));
    }
    let parameters = scheduled
        .and_then(|i| after[i].task_scheduled_event_details())
        .map(|d| d.parameters().to_string())
        .ok_or_else(|| {
            format!("the run's {STATE} has not been scheduled yet; try again in a moment")
        })?;
    token_of(&parameters)
}

/// The task token in AwaitApproval's parameters: the approval function's Payload, or (a run
/// started before the approval function, still waiting) its event's Detail, each an object or
/// JSON text. Pure.
pub fn token_of(parameters: &str) -> Result<String, String> {
    let parameters: Value = serde_json::from_str(parameters)
        .map_err(|e| format!("{STATE}'s parameters are not JSON: {e}"))?;
    let object = |v: &Value| match v {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    [
        object(&parameters["Payload"]),
        object(&parameters["Entries"][0]["Detail"]),
    ]
    .iter()
    .find_map(|v| v["taskToken"].as_str().map(str::to_string))
    .ok_or_else(|| format!("{STATE}'s parameters carry no task token"))
}

/// Sends the decision to the run `arn` waits for.
pub async fn answer(sfn: &Client, arn: &str, decision: &str) -> Result<(), Failure> {
    let described = sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .map_err(api("DescribeExecution"))?;
    let status = described.status().as_str();
    if status != "RUNNING" {
        return Err(format!("the run is {status}: it is not waiting for a decision").into());
    }
    let events = crate::watch::history(sfn, arn).await?;
    let token = waiting_token(&events)?;
    sfn.send_task_success()
        .task_token(token)
        .output(json!({"decision": decision}).to_string())
        .send()
        .await
        .map_err(api("SendTaskSuccess"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::types::{
        StateEnteredEventDetails, StateExitedEventDetails, TaskScheduledEventDetails,
    };
    use aws_smithy_types::DateTime;

    fn event(id: i64, kind: HistoryEventType) -> aws_sdk_sfn::types::builders::HistoryEventBuilder {
        HistoryEvent::builder()
            .id(id)
            .r#type(kind)
            .timestamp(DateTime::from_secs(id))
    }

    fn waiting(detail: Value) -> Vec<HistoryEvent> {
        vec![
            event(1, HistoryEventType::TaskStateEntered)
                .state_entered_event_details(
                    StateEnteredEventDetails::builder()
                        .name(STATE)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
            event(2, HistoryEventType::TaskScheduled)
                .task_scheduled_event_details(
                    TaskScheduledEventDetails::builder()
                        .resource_type("events")
                        .resource("putEvents.waitForTaskToken")
                        .region("us-east-1")
                        .parameters(
                            json!({"Entries": [{"Source": "amiflow", "Detail": detail}]})
                                .to_string(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        ]
    }

    fn invoking(payload: Value) -> Vec<HistoryEvent> {
        let mut events = waiting(json!({}));
        events[1] = event(2, HistoryEventType::TaskScheduled)
            .task_scheduled_event_details(
                TaskScheduledEventDetails::builder()
                    .resource_type("lambda")
                    .resource("invoke.waitForTaskToken")
                    .region("us-east-1")
                    .parameters(
                        json!({"FunctionName": "arn:aws:lambda:us-east-1:1:function:approval", "Payload": payload})
                            .to_string(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        events
    }

    #[test]
    fn the_token_is_read_from_the_approval_functions_payload() {
        assert_eq!(
            waiting_token(&invoking(json!({"taskToken": "t-3"}))).unwrap(),
            "t-3"
        );
        // A first attempt that failed and was retried: the retry's task waits.
        let mut retried = invoking(json!({"taskToken": "t-4"}));
        retried.insert(2, event(3, HistoryEventType::TaskFailed).build().unwrap());
        let again = retried[1].clone();
        retried.push(again);
        assert_eq!(waiting_token(&retried).unwrap(), "t-4");
    }

    #[test]
    fn the_token_is_read_from_the_waiting_task() {
        assert_eq!(
            waiting_token(&waiting(json!({"taskToken": "t-1"}))).unwrap(),
            "t-1"
        );
        let as_text = waiting(Value::String(json!({"taskToken": "t-2"}).to_string()));
        assert_eq!(waiting_token(&as_text).unwrap(), "t-2");
    }

    #[test]
    fn a_run_not_waiting_has_no_token() {
        assert!(waiting_token(&[]).unwrap_err().contains("not reached"));
        let mut answered = waiting(json!({"taskToken": "t-1"}));
        answered.push(
            event(3, HistoryEventType::TaskStateExited)
                .state_exited_event_details(
                    StateExitedEventDetails::builder()
                        .name(STATE)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        );
        assert!(waiting_token(&answered)
            .unwrap_err()
            .contains("answered already"));
    }
}
