//! reaper: takes back what a run that ended without its rollback had made.
//!
//! An execution stopped by an operator (StopExecution) or timed out skips its Catch, and so does
//! one that fails with `States.Runtime` or `States.DataLimitExceeded`, which no Catch on
//! `States.ALL` matches; its AMI, new instance, moved Elastic IP, permissions and grants would
//! stay. Step Functions sends a `Step Functions Execution Status Change` event for it; an
//! EventBridge rule gives those of amiflow's state machines to this function. It reads the input of the last
//! state the run entered (GetExecutionHistory), plans the rollback that run's own state machine
//! would have run from there, and starts the Reap state machine, which invokes each step's function
//! (under that function's own role) in order. The Reap execution is named after the run, so that a
//! repeated event starts no second one.

use aws_sdk_sfn::types::HistoryEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{aws, Error, Result};

/// The functions a rollback invokes, by ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapSettings {
    pub reap_state_machine_arn: String,
    pub cleanup_arn: String,
    pub share_image_arn: String,
    pub grant_kms_arn: String,
    pub copy_image_arn: String,
}

impl ReapSettings {
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &str| crate::settings::required(&var, name);
        Ok(ReapSettings {
            reap_state_machine_arn: required("AMIFLOW_REAP_STATE_MACHINE_ARN")?,
            cleanup_arn: required("AMIFLOW_CLEANUP_FUNCTION_ARN")?,
            share_image_arn: required("AMIFLOW_SHARE_IMAGE_FUNCTION_ARN")?,
            grant_kms_arn: required("AMIFLOW_GRANT_KMS_FUNCTION_ARN")?,
            copy_image_arn: required("AMIFLOW_COPY_IMAGE_FUNCTION_ARN")?,
        })
    }
}

/// The run that ended, from the event's detail.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndedRun {
    pub execution_arn: String,
    pub state_machine_arn: String,
    pub name: String,
    pub status: String,
    /// The error a FAILED run ended with.
    #[serde(default)]
    pub error: Option<String>,
}

/// Errors that end an execution without its Catch: `States.Runtime` is never caught, and
/// `States.ALL` does not match `States.DataLimitExceeded`
/// (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html).
pub const UNCAUGHT_ERRORS: [&str; 2] = ["States.Runtime", "States.DataLimitExceeded"];

/// One function invocation of the rollback.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub function_arn: String,
    pub payload: Value,
}

/// What the reaper did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReapOutput {
    pub execution_arn: String,
    pub status: String,
    /// The Reap execution started, if the run had anything to take back.
    pub reap_execution_arn: Option<String>,
    pub steps: usize,
}

/// The ended run in an EventBridge event; `None` for a run whose own rollback ran (or had
/// nothing to do): one that succeeded, or failed with an error its Catch took. Pure.
pub fn ended_run(event: &Value) -> Result<Option<EndedRun>> {
    let run: EndedRun = serde_json::from_value(event["detail"].clone())
        .map_err(|e| Error::invalid("detail", format!("not an execution status change: {e}")))?;
    let skipped_its_rollback = match run.status.as_str() {
        "ABORTED" | "TIMED_OUT" => true,
        "FAILED" => run
            .error
            .as_deref()
            .is_some_and(|e| UNCAUGHT_ERRORS.contains(&e)),
        _ => false,
    };
    Ok(skipped_its_rollback.then_some(run))
}

/// The input of the last state the run entered (the highest event id): what it had recorded
/// when it ended. Pure.
pub fn last_state_input(events: &[HistoryEvent]) -> Option<Value> {
    events
        .iter()
        .filter_map(|e| Some((e.id(), e.state_entered_event_details()?.input()?)))
        .max_by_key(|(id, _)| *id)
        .and_then(|(_, input)| serde_json::from_str(input).ok())
}

/// The rollback the run's state machine would have run from `state`. Pure.
///
/// - MigrateInstance: cleanup's rollback (it finds what the run made by its tag, proves it the
///   run's, moves the Elastic IP back and gives the run lock back).
/// - ShareImage, once planned: unshare, revoke the keys, remove a re-encrypted copy.
/// - CopyImage, once planned: unshare, revoke the keys, remove the target copy.
/// - UnshareImage, and runs stopped before their plan: nothing was added.
pub fn plan(settings: &ReapSettings, run: &EndedRun, started_at: &str, state: &Value) -> Vec<Step> {
    let machine = run.state_machine_arn.rsplit(':').next().unwrap_or_default();
    let execution = run.name.as_str();
    let step = |arn: &str, payload: Value| Step {
        function_arn: arn.to_string(),
        payload,
    };
    let plan = &state["plan"];
    let unshare = || {
        step(
            &settings.share_image_arn,
            json!({"action": "unshare", "execution": execution, "plan": plan}),
        )
    };
    let revoke = || {
        step(
            &settings.grant_kms_arn,
            json!({
                "action": "revoke",
                "execution": execution,
                "executionArn": run.execution_arn,
                "imageId": plan["imageId"],
                "ownerAccount": plan["ownerAccount"],
                "kmsKeyIds": plan["kmsKeyIds"],
                "receivers": plan["receivers"],
            }),
        )
    };
    if machine.ends_with("MigrateInstance") {
        return vec![step(
            &settings.cleanup_arn,
            json!({"action": "rollback", "execution": execution, "startedAt": started_at, "state": state}),
        )];
    }
    if plan.is_null() {
        return Vec::new();
    }
    if machine.ends_with("UnshareImage") {
        Vec::new()
    } else if machine.ends_with("ShareImage") {
        vec![
            unshare(),
            revoke(),
            step(
                &settings.share_image_arn,
                json!({"action": "removeCopy", "execution": execution, "input": state["input"]}),
            ),
        ]
    } else if machine.ends_with("CopyImage") {
        // Access is taken back first: removing the target copy goes through the target account's
        // role, which may be the very thing that failed, and a failed step ends the reap.
        vec![
            unshare(),
            revoke(),
            step(
                &settings.copy_image_arn,
                json!({"action": "remove", "execution": execution, "startedAt": started_at, "plan": state["plan"]}),
            ),
        ]
    } else {
        Vec::new()
    }
}

/// The Reap execution's name: the run's, so that one run is reaped once (at most 80 characters).
pub fn reap_name(run_name: &str) -> String {
    let name = format!("reap-{run_name}");
    name.chars().take(80).collect()
}

pub async fn run(
    sfn: &aws_sdk_sfn::Client,
    settings: &ReapSettings,
    event: Value,
) -> Result<Option<ReapOutput>> {
    let Some(ended) = ended_run(&event)? else {
        return Ok(None);
    };
    let described = sfn
        .describe_execution()
        .execution_arn(&ended.execution_arn)
        .send()
        .await
        .map_err(aws("DescribeExecution"))?;
    let started_at = described
        .start_date()
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .map_err(|e| {
            Error::UnexpectedAnswer(format!("DescribeExecution: startDate: {e}").into())
        })?;
    let mut events = Vec::new();
    let mut token = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(&ended.execution_arn)
            .reverse_order(true)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .map_err(aws("GetExecutionHistory"))?;
        events.extend(page.events().iter().cloned());
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let state = last_state_input(&events).unwrap_or(Value::Null);
    let steps = plan(settings, &ended, &started_at, &state);
    let mut out = ReapOutput {
        execution_arn: ended.execution_arn.clone(),
        status: ended.status.clone(),
        reap_execution_arn: None,
        steps: steps.len(),
    };
    if steps.is_empty() {
        tracing::info!(execution = %ended.name, status = %ended.status, "nothing to take back");
        return Ok(Some(out));
    }
    let input = json!({"of": ended.execution_arn, "status": ended.status, "steps": steps});
    let started = sfn
        .start_execution()
        .state_machine_arn(&settings.reap_state_machine_arn)
        .name(reap_name(&ended.name))
        .input(input.to_string())
        .send()
        .await
        .map_err(aws("StartExecution"));
    let arn = match started {
        Ok(s) => s.execution_arn().to_string(),
        Err(e) if e.is_code("ExecutionAlreadyExists") => {
            tracing::info!(execution = %ended.name, "already being reaped");
            return Ok(Some(out));
        }
        Err(e) => return Err(e),
    };
    tracing::warn!(execution = %ended.name, status = %ended.status, reap = %arn, steps = out.steps, "taking back what the run made");
    out.reap_execution_arn = Some(arn);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::types::{HistoryEventType, StateEnteredEventDetails};

    fn settings() -> ReapSettings {
        ReapSettings {
            reap_state_machine_arn: "arn:aws:states:us-east-1:123456789012:stateMachine:Reap"
                .into(),
            cleanup_arn: "cleanup".into(),
            share_image_arn: "share".into(),
            grant_kms_arn: "grant".into(),
            copy_image_arn: "copy".into(),
        }
    }

    fn ended(machine: &str) -> EndedRun {
        EndedRun {
            execution_arn: format!(
                "arn:aws:states:us-east-1:123456789012:execution:{machine}:run-1"
            ),
            state_machine_arn: format!(
                "arn:aws:states:us-east-1:123456789012:stateMachine:{machine}"
            ),
            name: "run-1".into(),
            status: "ABORTED".into(),
            error: None,
        }
    }

    fn entered(id: i64, name: &str, input: &str) -> HistoryEvent {
        HistoryEvent::builder()
            .id(id)
            .r#type(HistoryEventType::TaskStateEntered)
            .timestamp(aws_smithy_types::DateTime::from_secs(id))
            .state_entered_event_details(
                StateEnteredEventDetails::builder()
                    .name(name)
                    .input(input)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn only_runs_that_skipped_their_rollback_are_reaped() {
        for (status, error, reaped) in [
            ("ABORTED", None, true),
            ("TIMED_OUT", None, true),
            ("FAILED", Some("States.Runtime"), true),
            ("FAILED", Some("States.DataLimitExceeded"), true),
            ("FAILED", Some("LaunchFailed"), false),
            ("FAILED", Some("RollbackFailed"), false),
            ("FAILED", None, false),
            ("SUCCEEDED", None, false),
        ] {
            let event = json!({"detail": {"executionArn": "e", "stateMachineArn": "m", "name": "n", "status": status, "error": error}});
            assert_eq!(
                ended_run(&event).unwrap().is_some(),
                reaped,
                "{status} {error:?}"
            );
        }
        let e = ended_run(&json!({"detail": {"status": "ABORTED"}})).unwrap_err();
        assert!(e.to_string().starts_with("detail:"), "{e}");
    }

    #[test]
    fn the_last_entered_state_holds_what_the_run_recorded() {
        let events = [
            HistoryEvent::builder()
                .id(3)
                .r#type(HistoryEventType::ExecutionAborted)
                .timestamp(aws_smithy_types::DateTime::from_secs(3))
                .build()
                .unwrap(),
            entered(2, "WaitForInstance", r#"{"launch":{"instanceId":"i-1"}}"#),
            entered(1, "CreateImage", r#"{}"#),
        ];
        assert_eq!(
            last_state_input(&events),
            Some(json!({"launch": {"instanceId": "i-1"}}))
        );
        // Whatever order the history comes in.
        let oldest_first: Vec<HistoryEvent> = events.iter().rev().cloned().collect();
        assert_eq!(
            last_state_input(&oldest_first),
            Some(json!({"launch": {"instanceId": "i-1"}}))
        );
        assert_eq!(last_state_input(&events[..1]), None);
    }

    #[test]
    fn a_migration_is_rolled_back_by_cleanup_with_its_own_execution() {
        let state = json!({"image": {"imageId": "ami-1"}});
        let steps = plan(
            &settings(),
            &ended("amiflow-MigrateInstance"),
            "2026-11-29T10:00:00Z",
            &state,
        );
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].function_arn, "cleanup");
        assert_eq!(
            steps[0].payload,
            json!({"action": "rollback", "execution": "run-1", "startedAt": "2026-11-29T10:00:00Z", "state": state})
        );
    }

    #[test]
    fn a_share_and_a_copy_take_back_access_first_once_planned() {
        let state = json!({"input": {"imageId": "ami-1"}, "plan": {"imageId": "ami-1", "ownerAccount": "123456789012", "kmsKeyIds": ["k"], "receivers": {"accountIds": ["210987654321"]}}});
        let share = plan(&settings(), &ended("ShareImage"), "t", &state);
        let order: Vec<(&str, &str)> = share
            .iter()
            .map(|s| {
                (
                    s.function_arn.as_str(),
                    s.payload["action"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("share", "unshare"),
                ("grant", "revoke"),
                ("share", "removeCopy")
            ]
        );
        assert_eq!(
            share[1].payload["executionArn"],
            "arn:aws:states:us-east-1:123456789012:execution:ShareImage:run-1"
        );
        assert_eq!(share[1].payload["kmsKeyIds"], json!(["k"]));
        let copy = plan(&settings(), &ended("CopyImage"), "t", &state);
        let order: Vec<&str> = copy.iter().map(|s| s.function_arn.as_str()).collect();
        assert_eq!(order, ["share", "grant", "copy"]);
        assert_eq!(copy[2].payload["startedAt"], "t");
        assert_eq!(
            copy[2].payload["plan"], state["plan"],
            "the copy's removal reads the plan's parsed input"
        );
        for machine in ["ShareImage", "CopyImage"] {
            assert!(plan(&settings(), &ended(machine), "t", &json!({"input": {}})).is_empty());
        }
        assert!(plan(&settings(), &ended("UnshareImage"), "t", &state).is_empty());
    }

    #[test]
    fn a_reap_is_named_after_its_run_within_80_characters() {
        assert_eq!(reap_name("run-1"), "reap-run-1");
        assert_eq!(reap_name(&"x".repeat(80)).len(), 80);
    }
}
