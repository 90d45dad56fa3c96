//! The state machines, the event fixtures and the README must agree with the Rust types.

use amiflow::error::{ERROR_NAMES, ERROR_TABLE};
use amiflow::input::MigrateInput;
use amiflow::parse_request;
use amiflow::receivers::{CopyInput, ShareInput, UnshareInput};
use amiflow::steps::{
    approval, cleanup, copy_image, create_image, fleet, grant_kms, launch, share_image, targets,
    verify_instance, wait_image,
};
use amiflow_contracts::{error_names, files, json, readme_table, workspace};

/// Names that Step Functions or Lambda raise themselves rather than a function of ours
/// (`Sandbox.Timedout`: an invocation that ran past the function's Timeout; `DynamoDB.` and
/// `StepFunctions.`, `EventBridge.`: the errors of those service integrations).
fn is_service_name(name: &str) -> bool {
    [
        "States.",
        "Lambda.",
        "DynamoDB.",
        "StepFunctions.",
        "EventBridge.",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || name == "Sandbox.Timedout"
}

#[test]
fn every_error_name_in_retry_and_catch_is_one_the_functions_raise() {
    let machines = files("statemachine", ".asl.json");
    assert!(!machines.is_empty(), "no state machine found");
    for path in machines {
        let names = error_names(&json(&path));
        assert!(
            !names.is_empty(),
            "{}: no Retry or Catch at all",
            path.display()
        );
        for (state, name) in names {
            assert!(
                is_service_name(&name) || ERROR_NAMES.contains(&name.as_str()),
                "{}: state {state} matches {name:?}, which no function raises (known: {ERROR_NAMES:?})",
                path.display()
            );
        }
    }
}

#[test]
fn every_task_retries_the_lambda_service_errors_and_catches_into_the_rollback() {
    for path in files("statemachine", ".asl.json") {
        let definition = json(&path);
        for (name, state) in definition["States"].as_object().unwrap() {
            // Service integrations other than Lambda (events:putEvents) have their own retries.
            if state["Type"] != "Task" || invocation(state).is_none() {
                continue;
            }
            let retried: Vec<&str> = state["Retry"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["ErrorEquals"].as_array().unwrap())
                .filter_map(|e| e.as_str())
                .collect();
            for needed in [
                "Lambda.ServiceException",
                "Lambda.AWSLambdaException",
                "Lambda.SdkClientException",
                "Throttled",
                "ServiceUnavailable",
            ] {
                assert!(
                    retried.contains(&needed),
                    "{}: task {name} does not retry {needed}",
                    path.display()
                );
            }
            let catches_all = state["Catch"].as_array().into_iter().flatten().any(|c| {
                c["ErrorEquals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e == "States.ALL")
            });
            assert!(
                catches_all,
                "{}: task {name} has no States.ALL catch",
                path.display()
            );
        }
    }
}

#[test]
fn every_event_fixture_deserialises_into_the_type_its_function_takes() {
    let fixtures = files("events", ".json");
    assert!(
        fixtures.len() >= 10,
        "expected the event fixtures, found {}",
        fixtures.len()
    );
    for path in fixtures {
        let value = json(&path);
        let function = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let parsed = match function.as_str() {
            "create-image" => parse_request::<create_image::CreateImageRequest>(value).map(|_| ()),
            "wait-image" => wait_image::WaitImageRequest::from_value(value).map(|_| ()),
            "launch" => parse_request::<launch::LaunchRequest>(value).map(|_| ()),
            "verify-instance" => parse_request::<verify_instance::VerifyRequest>(value).map(|_| ()),
            "cleanup" => parse_request::<cleanup::CleanupRequest>(value).map(|_| ()),
            "share-image" => parse_request::<share_image::ShareImageRequest>(value).map(|_| ()),
            "grant-kms" => parse_request::<grant_kms::GrantKmsRequest>(value).map(|_| ()),
            "copy-image" => parse_request::<copy_image::CopyImageRequest>(value)
                .and_then(|r| r.input().map(|_| ())),
            "preflight" => parse_request::<amiflow::preflight::PreflightRequest>(value).map(|_| ()),
            "targets" => parse_request::<targets::TargetsRequest>(value).map(|_| ()),
            "approval" => parse_request::<approval::ApprovalRequest>(value).map(|_| ()),
            "fleet" => parse_request::<fleet::FleetRequest>(value).map(|request| {
                if let fleet::FleetRequest::Plan { input, .. } = request {
                    fleet::FleetInput::parse(&input, "us-east-1").unwrap();
                }
            }),
            "reaper" => amiflow::steps::reap::ended_run(&value).map(|run| {
                assert!(run.is_some(), "{}: not a run to reap", path.display());
            }),
            "trigger" => {
                let only = amiflow::trigger::event_resources(&value);
                let scheduled = value["detail-type"] == "Scheduled Event";
                assert!(
                    scheduled || !only.is_empty(),
                    "{}: neither a schedule nor a tag change",
                    path.display()
                );
                Ok(())
            }
            "workflows" => {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with("migrate-instance") {
                    MigrateInput::parse(&value, "us-east-1").map(|_| ())
                } else if name.starts_with("share-image") {
                    ShareInput::parse(&value).map(|_| ())
                } else if name.starts_with("unshare-image") {
                    UnshareInput::parse(&value).map(|_| ())
                } else if name.starts_with("copy-image") {
                    CopyInput::parse(&value, "us-east-1").map(|_| ())
                } else if name.starts_with("evacuate-zone") {
                    fleet::FleetInput::parse(&value, "us-east-1").map(|_| ())
                } else {
                    panic!("{}: no workflow named so", path.display())
                }
            }
            other => panic!("{}: no function named {other}", path.display()),
        };
        if let Err(e) = parsed {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn the_create_image_fixture_holds_a_valid_workflow_input() {
    let fixture = json(&workspace().join("events/create-image/create-image.json"));
    let request: create_image::CreateImageRequest = parse_request(fixture).unwrap();
    MigrateInput::parse(&request.input, "us-east-1").unwrap();
}

#[test]
fn the_readmes_error_table_is_the_one_the_code_defines() {
    let rows = readme_table("| name | raised when | the state machine |");
    // RollbackFailed, Discarded and ApprovalTimedOut are the state machines' own: no function
    // raises them.
    let mut wanted: Vec<String> = ERROR_TABLE
        .iter()
        .map(|(name, when, handling)| format!("| `{name}` | {when} | {handling} |"))
        .collect();
    wanted.push("| `RollbackFailed` | Raised by the state machines, not a function: the rollback itself failed, so resources, permissions or grants of the execution may remain. | fails the run |".into());
    wanted.push("| `Discarded` | Raised by MigrateInstance, not a function: with `\"cutover\": \"approve\"`, the operator answered anything but `{\"decision\": \"approve\"}` (`amiflow discard`). | the copy and its image are removed; the source and its Elastic IP are as they were |".into());
    wanted.push("| `ApprovalTimedOut` | Raised by MigrateInstance, not a function: no decision came within `approvalTimeoutSeconds`. | discarded, as above |".into());
    assert_eq!(
        rows,
        wanted,
        "README.md's error table must be, row for row:\n{}",
        wanted.join("\n")
    );
}

/// The function a Task invokes and the payload it gives it: `Resource: ${XFunctionArn}` with
/// `Parameters`, or a `lambda:invoke` integration with `FunctionName: ${XFunctionArn}` and
/// `Payload`. `None` for other states.
fn invocation(state: &serde_json::Value) -> Option<(String, serde_json::Value)> {
    let resource = state["Resource"].as_str()?;
    let (arn, payload) = if resource.starts_with("${LambdaInvoke") {
        (
            state["Parameters"]["FunctionName"].as_str()?,
            state["Parameters"]["Payload"].clone(),
        )
    } else {
        (resource, state["Parameters"].clone())
    };
    let name = arn.strip_prefix("${")?.strip_suffix("FunctionArn}")?;
    // CreateImage -> create-image
    let mut function = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            function.push('-');
        }
        function.push(c.to_ascii_lowercase());
    }
    Some((function, payload))
}

/// A payload's field names, as the function receives them (`key.$` is the field `key`).
fn field_names(payload: &serde_json::Value) -> std::collections::BTreeSet<String> {
    payload
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.strip_suffix(".$").unwrap_or(k).to_string())
        .collect()
}

#[test]
fn every_task_gives_its_function_the_fields_of_its_request_fixture() {
    let mut checked = 0;
    for path in files("statemachine", ".asl.json") {
        let definition = json(&path);
        for (state_name, state) in definition["States"].as_object().unwrap() {
            let Some((function, payload)) = invocation(state) else {
                continue;
            };
            let action = payload["action"].as_str();
            // The fixture of that function (and action): it parses into the function's request
            // type (the test above), so a Task that gives the same fields fits that type.
            let fixtures: Vec<serde_json::Value> = files(&format!("events/{function}"), ".json")
                .iter()
                .map(|p| json(p))
                .filter(|f| f["action"].as_str() == action && f.get("detail-type").is_none())
                .collect();
            assert!(
                !fixtures.is_empty(),
                "{}: state {state_name} invokes {function} with action {action:?}, which no fixture in events/{function} shows",
                path.display()
            );
            let given = field_names(&payload);
            assert!(
                fixtures.iter().any(|f| field_names(f) == given),
                "{}: state {state_name} gives {function} the fields {given:?}; its fixtures have {:?}",
                path.display(),
                fixtures.iter().map(field_names).collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} tasks checked");
}

#[test]
fn the_readmes_carry_over_table_is_the_plan_the_steps_ask() {
    let rows = readme_table("| setting | when | how |");
    let wanted: Vec<String> = amiflow::carry::SETTINGS
        .iter()
        .map(|s| format!("| {} | {} | {} |", s.name, s.when.label(), s.how))
        .collect();
    assert_eq!(
        rows,
        wanted,
        "README.md's carry-over table must be, row for row:\n{}",
        wanted.join("\n")
    );
}
