//! Following a run: each state as it is entered and left, with its time, then the result.

use std::time::Duration;

use aws_sdk_sfn::types::HistoryEventType;
use aws_smithy_types::DateTime;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::args::Output;

fn seconds(t: &DateTime) -> f64 {
    t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9
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
) -> Result<Ended, String> {
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
            .map_err(|e| format!("DescribeExecution: {e}"))?;
        let mut events = Vec::new();
        let mut pages = sfn
            .get_execution_history()
            .execution_arn(execution_arn)
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("GetExecutionHistory: {e}"))?;
            events.extend(page.events().iter().cloned());
        }
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
