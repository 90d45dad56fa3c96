//! Following an EvacuateZone run: one line per instance (its wave, its child execution's current
//! state, then its result), and a table of every instance at the end. The plan and, for a fleet
//! too large for the execution's output, the report are read from S3, where the run keeps them.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sfn::Client;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use amiflow::resources::fleet_files::{bucket_and_key, FleetFiles};

use crate::args::Output;
use crate::failure::{api, Failure};
use crate::watch::Ended;

/// The output of the state `name` when it was last left, from the execution's history.
async fn state_output(sfn: &Client, arn: &str, names: &[&str]) -> Result<Option<Value>, Failure> {
    let mut pages = sfn
        .get_execution_history()
        .execution_arn(arn)
        .reverse_order(true)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(api("GetExecutionHistory"))?;
        for event in page.events() {
            if let Some(exited) = event.state_exited_event_details() {
                if names.contains(&exited.name()) {
                    return Ok(exited.output().and_then(|o| serde_json::from_str(o).ok()));
                }
            }
        }
    }
    Ok(None)
}

/// A JSON file of the fleet's in S3, read as the fleet function reads it.
async fn s3_json(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Value, Failure> {
    FleetFiles { s3, bucket }
        .get(key)
        .await
        .map_err(|e| Failure::Api(e.to_string()))
}

/// What a child is doing now, in a few words: its current state while it runs, its result after.
async fn child_line(sfn: &Client, arn: &str) -> Result<(String, bool), Failure> {
    let described = match sfn.describe_execution().execution_arn(arn).send().await {
        Ok(d) => d,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_execution_does_not_exist()) =>
        {
            return Ok(("waiting".into(), false))
        }
        Err(e) => return Err(api("DescribeExecution")(e)),
    };
    let status = described.status().as_str();
    if status == "RUNNING" {
        let last = sfn
            .get_execution_history()
            .execution_arn(arn)
            .reverse_order(true)
            .max_results(20)
            .send()
            .await
            .map_err(api("GetExecutionHistory"))?;
        let state = last
            .events()
            .iter()
            .find_map(|e| {
                e.state_entered_event_details()
                    .map(|d| d.name().to_string())
            })
            .unwrap_or_else(|| "starting".into());
        return Ok((format!("running: {state}"), false));
    }
    let output: Value = described
        .output()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let line = match status {
        "SUCCEEDED" => format!(
            "moved: {} in {}",
            output["newInstanceId"].as_str().unwrap_or("?"),
            output["availabilityZone"].as_str().unwrap_or("?")
        ),
        other => format!(
            "{}: {}",
            other.to_lowercase(),
            described.error().unwrap_or("no error name")
        ),
    };
    Ok((line, true))
}

/// How many children that are neither running nor done are looked at per round, besides the
/// running ones: a fleet of thousands is followed with a few dozen calls a round, not thousands
/// (Step Functions throttles DescribeExecution and GetExecutionHistory per account).
const SPARE_LOOKS: usize = 10;

/// The names of the state machine's running executions (one ListExecutions, RUNNING only).
async fn running_children(
    sfn: &Client,
    machine: &str,
) -> Result<std::collections::BTreeSet<String>, Failure> {
    let mut names = std::collections::BTreeSet::new();
    let mut pages = sfn
        .list_executions()
        .state_machine_arn(machine)
        .status_filter(aws_sdk_sfn::types::ExecutionStatus::Running)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(api("ListExecutions"))?;
        names.extend(page.executions().iter().map(|e| e.name().to_string()));
    }
    Ok(names)
}

/// Which children to look at this round, given each one's (done, running) and where the last
/// round's spare looks stopped: every running one (at most the fleet's concurrency), and `spare`
/// of the others, taken in turn from `rotation`. Answers the indexes, in order, and the next
/// round's rotation. Pure.
pub fn to_ask(states: &[(bool, bool)], rotation: usize, spare: usize) -> (Vec<usize>, usize) {
    let n = states.len();
    let mut ask: Vec<usize> = (0..n).filter(|&i| !states[i].0 && states[i].1).collect();
    let mut next = rotation;
    let mut taken = 0;
    for step in 0..n {
        if taken == spare {
            break;
        }
        let i = (rotation + step) % n;
        next = (i + 1) % n;
        if !states[i].0 && !states[i].1 {
            ask.push(i);
            taken += 1;
        }
    }
    ask.sort_unstable();
    (ask, next)
}

struct Line {
    bar: ProgressBar,
    text: String,
    done: bool,
}

/// Follows the fleet until it ends; answers like `watch::watch`, with the report as the output.
pub async fn watch(
    sfn: &Client,
    s3: &aws_sdk_s3::Client,
    fleet_arn: &str,
    migrate_machine_arn: &str,
    output: Output,
) -> Result<Ended, Failure> {
    let multi = if output == Output::Json {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let quiet = output == Output::Json;
    // Without a terminal, indicatif draws nothing: each change is a line of its own instead.
    let plain = multi.is_hidden();
    let style = ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let executions = migrate_machine_arn.replacen(":stateMachine:", ":execution:", 1);
    let mut plan: Option<Value> = None;
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new(); // (instance, child name)
    let mut rotation = 0;
    loop {
        let described = sfn
            .describe_execution()
            .execution_arn(fleet_arn)
            .send()
            .await
            .map_err(api("DescribeExecution"))?;
        let status = described.status().as_str().to_string();
        if plan.is_none() {
            let state = state_output(sfn, fleet_arn, &["Plan"]).await?;
            plan = match &state {
                Some(state) => Some(
                    s3_json(
                        s3,
                        state["bucket"].as_str().unwrap_or_default(),
                        state["plan"].as_str().unwrap_or_default(),
                    )
                    .await?,
                ),
                None => None,
            };
            if let Some(p) = &plan {
                for wave in p["waves"].as_array().into_iter().flatten() {
                    let label = wave["wave"]
                        .as_str()
                        .filter(|w| !w.is_empty())
                        .unwrap_or("-");
                    for child in wave["instances"].as_array().into_iter().flatten() {
                        let id = child["instanceId"].as_str().unwrap_or_default().to_string();
                        let name = child["name"].as_str().unwrap_or_default().to_string();
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(style.clone());
                        bar.set_prefix(format!("{id} wave {label:<4}"));
                        bar.set_message("waiting");
                        bar.enable_steady_tick(Duration::from_millis(120));
                        lines.insert(
                            id.clone(),
                            Line {
                                bar,
                                text: "waiting".into(),
                                done: false,
                            },
                        );
                        order.push((id, name));
                    }
                }
                if !quiet {
                    for refused in p["refused"].as_array().into_iter().flatten() {
                        let _ = multi.println(format!(
                            "  {} refused: {} ({})",
                            refused["instanceId"].as_str().unwrap_or_default(),
                            refused["error"].as_str().unwrap_or_default(),
                            refused["reason"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        let preview = plan
            .as_ref()
            .is_some_and(|p| p["validateOnly"] == json!(true));
        if !preview {
            let running = running_children(sfn, migrate_machine_arn).await?;
            let states: Vec<(bool, bool)> = order
                .iter()
                .map(|(id, name)| {
                    let line = &lines[id];
                    (
                        line.done,
                        running.contains(name) || line.text.starts_with("running"),
                    )
                })
                .collect();
            let (ask, next) = to_ask(&states, rotation, SPARE_LOOKS);
            rotation = next;
            for index in ask {
                let (id, name) = &order[index];
                let Some(line) = lines.get_mut(id) else {
                    continue;
                };
                let (text, done) = child_line(sfn, &format!("{executions}:{name}")).await?;
                if text != line.text {
                    if plain && !quiet {
                        eprintln!("  {} {text}", line.bar.prefix());
                    }
                    line.bar.set_message(text.clone());
                    line.text = text;
                }
                if done {
                    line.done = true;
                    line.bar.finish();
                }
            }
        }
        if status != "RUNNING" {
            let mut report = state_output(sfn, fleet_arn, &["Report"]).await?;
            // A report too large for the execution's output is only in S3: read it there.
            if let Some(r) = report.as_ref().filter(|r| r.get("instances").is_none()) {
                if let Some((bucket, key)) = r["report"].as_str().and_then(bucket_and_key) {
                    report = Some(s3_json(s3, bucket, key).await?);
                }
            }
            for line in lines.values() {
                line.bar.finish_and_clear();
            }
            let _ = multi.clear();
            return Ok(Ended {
                succeeded: status == "SUCCEEDED",
                report: json!({
                    "execution": fleet_arn,
                    "status": status,
                    "output": report.unwrap_or(Value::Null),
                    "error": described.error(),
                    "cause": described.cause(),
                }),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The report as a table: one row per instance. Pure.
pub fn table(report: &Value) -> String {
    let mut rows = vec![[
        "instance".to_string(),
        "wave".to_string(),
        "status".to_string(),
        "result".to_string(),
    ]];
    for entry in report["instances"].as_array().into_iter().flatten() {
        let text = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
        let result = if let Some(new) = entry["newInstanceId"].as_str() {
            format!("new instance {new}")
        } else if let Some(subnet) = entry["preview"]["targetSubnet"].as_str() {
            format!(
                "to {subnet} as {}",
                entry["preview"]["instanceType"].as_str().unwrap_or("?")
            )
        } else {
            format!("{} {}", text("error"), text("cause"))
                .trim()
                .chars()
                .take(100)
                .collect()
        };
        let wave = Some(text("wave"))
            .filter(|w| !w.is_empty())
            .unwrap_or("-".into());
        rows.push([text("instanceId"), wave, text("status"), result]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out.push_str(report["summary"].as_str().unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_asks_every_running_child_and_a_few_others_in_turn() {
        // (done, running) for six children: 0 done, 1 and 4 running, 2, 3 and 5 waiting.
        let states = [
            (true, false),
            (false, true),
            (false, false),
            (false, false),
            (false, true),
            (false, false),
        ];
        let (ask, next) = to_ask(&states, 0, 2);
        assert_eq!(ask, [1, 2, 3, 4]);
        let (ask, next) = to_ask(&states, next, 2);
        assert_eq!(ask, [1, 2, 4, 5]);
        let (ask, _) = to_ask(&states, next, 2);
        assert_eq!(ask, [1, 3, 4, 5]);
        // A small fleet: everyone not done, every round.
        assert_eq!(to_ask(&states, 3, 10).0, [1, 2, 3, 4, 5]);
        assert_eq!(to_ask(&[], 0, 10), (vec![], 0));
    }

    #[test]
    fn the_table_has_a_row_per_instance_and_the_summary() {
        let report = json!({
            "summary": "1 moved, 1 failed: i-2 (InsufficientCapacity), 0 not started, 0 refused; 1 failure(s) tolerated",
            "instances": [
                {"instanceId": "i-1", "wave": "1", "status": "SUCCEEDED", "newInstanceId": "i-9"},
                {"instanceId": "i-2", "wave": "", "status": "FAILED", "error": "InsufficientCapacity", "cause": "none"}
            ]
        });
        let table = table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["instance", "wave", "status", "result"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["i-1", "1", "SUCCEEDED", "new", "instance", "i-9"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["i-2", "-", "FAILED", "InsufficientCapacity", "none"]
        );
        assert!(lines[3].starts_with("1 moved, 1 failed"));
    }
}
