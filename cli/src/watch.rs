//! Following a run: each state as it is entered and left, with its time, then the result.

use std::time::Duration;

use aws_sdk_sfn::types::HistoryEventType;
use aws_smithy_types::DateTime;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::args::Output;
use crate::failure::{api, Failure};

fn seconds(t: &DateTime) -> f64 {
    t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9
}

/// Every event of an execution's history, oldest first.
pub async fn history(
    sfn: &aws_sdk_sfn::Client,
    execution_arn: &str,
) -> Result<Vec<aws_sdk_sfn::types::HistoryEvent>, Failure> {
    let mut events = Vec::new();
    let mut pages = sfn
        .get_execution_history()
        .execution_arn(execution_arn)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(api("GetExecutionHistory"))?;
        events.extend(page.events().iter().cloned());
    }
    Ok(events)
}

/// How a run ended.
pub struct Ended {
    pub succeeded: bool,
    pub report: Value,
}

fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

pub async fn watch(
    sfn: &aws_sdk_sfn::Client,
    execution_arn: &str,
    output: Output,
) -> Result<Ended, Failure> {
    let bar = if output == Output::Json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let quiet = output == Output::Json;
    let mut seen = 0usize;
    let mut current: Option<(String, f64)> = None;
    loop {
        // The status first, then the history: a run that has ended by now has all its states in
        // the history read after, so its last states are never missed.
        let described = sfn
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(api("DescribeExecution"))?;
        let events = history(sfn, execution_arn).await?;
        for event in events.iter().skip(seen) {
            let at = seconds(event.timestamp());
            if let Some(entered) = event.state_entered_event_details() {
                current = Some((entered.name().to_string(), at));
                bar.set_message(entered.name().to_string());
            } else if let Some(exited) = event.state_exited_event_details() {
                if let Some((name, since)) = current.take() {
                    if !quiet {
                        say(
                            &bar,
                            format!("  {:<22} {:>8.2} s", exited.name(), at - since),
                        );
                    }
                    let _ = name;
                }
            } else if matches!(
                event.r#type(),
                HistoryEventType::TaskFailed | HistoryEventType::LambdaFunctionFailed
            ) && !quiet
            {
                if let Some((name, _)) = &current {
                    say(
                        &bar,
                        format!("  {name}: a try failed; the state machine retries or rolls back"),
                    );
                }
            }
        }
        seen = events.len();
        let status = described.status().as_str().to_string();
        if status != "RUNNING" {
            bar.finish_and_clear();
            let output_value: Value = described
                .output()
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(Value::Null);
            let report = json!({
                "execution": execution_arn,
                "status": status,
                "output": output_value,
                "error": described.error(),
                "cause": described.cause(),
            });
            return Ok(Ended {
                succeeded: status == "SUCCEEDED",
                report,
            });
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// One run as `amiflow status <run>` shows it: its status, the state it is in, whether it waits
/// for approval, and the comparison of source and copy (from its output, or from the verified
/// copy's state while it runs). Pure.
pub fn run_view(
    described: &aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput,
    history: &[aws_sdk_sfn::types::HistoryEvent],
) -> Value {
    let output: Value = described
        .output()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let status = described.status().as_str();
    let current = history.iter().rev().find_map(|e| {
        e.state_entered_event_details()
            .map(|d| d.name().to_string())
    });
    let verified = history.iter().rev().find_map(|e| {
        let exited = e.state_exited_event_details()?;
        if exited.name() != "VerifyInstance" {
            return None;
        }
        let state: Value = serde_json::from_str(exited.output()?).ok()?;
        (state["instance"]["ready"] == json!(true)).then(|| state["instance"]["comparison"].clone())
    });
    let comparison = match &output["comparison"] {
        Value::Array(rows) => Value::Array(rows.clone()),
        _ => verified.unwrap_or(Value::Array(vec![])),
    };
    json!({
        "execution": described.execution_arn(),
        "status": status,
        "state": current,
        "awaitingApproval": status == "RUNNING" && current.as_deref() == Some(crate::approval::STATE),
        "comparison": comparison,
        "error": described.error(),
        "cause": described.cause(),
    })
}

/// The view as text: a line for the run, then a row per compared setting. Pure.
pub fn run_text(view: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = format!(
        "{} {}{}",
        text(&view["status"]),
        text(&view["execution"]),
        if view["awaitingApproval"] == json!(true) {
            " (awaiting approval: amiflow approve or amiflow discard)".to_string()
        } else {
            view["state"]
                .as_str()
                .map(|s| format!(" (last state {s})"))
                .unwrap_or_default()
        }
    );
    if let Some(error) = view["error"].as_str() {
        out.push_str(&format!("\n{error}: {}", text(&view["cause"])));
    }
    let rows = view["comparison"].as_array().cloned().unwrap_or_default();
    let width = rows
        .iter()
        .map(|r| text(&r["setting"]).len())
        .max()
        .unwrap_or(0);
    for row in rows {
        out.push_str(&format!(
            "\n  {:<width$}  {:<11}  {} -> {}",
            text(&row["setting"]),
            text(&row["status"]),
            text(&row["source"]),
            text(&row["copy"]),
        ));
    }
    out
}
