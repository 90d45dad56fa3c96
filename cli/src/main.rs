//! amiflow: start, follow and check amiflow runs from a terminal.

mod approval;
mod args;
mod failure;
mod fleet;
mod machines;
mod watch;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use amiflow::preflight::{self, DryRuns};
use amiflow::settings::Settings;
use amiflow::Deps;
use args::{Cli, Command, Output, Preflight, Start};
use aws_config::{BehaviorVersion, Region};
use clap::Parser;
use failure::{api, Failure};
use machines::{Machines, WORKFLOWS};
use serde_json::Value;

/// A refusal (exit 2; the message names the flag or the run) or an AWS call that failed (exit 3).
fn refuse(failure: impl Into<Failure>) -> ExitCode {
    failure.into().exit()
}

fn default_name(workflow: &str, resource: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{}-{resource}-{now}", workflow.to_lowercase())
}

/// Checks a workflow input with the functions' own validation, naming the flag on refusal.
fn validated(input: Value, check: impl Fn(&Value) -> amiflow::Result<()>) -> Result<Value, String> {
    check(&input).map(|_| input).map_err(|e| match e {
        amiflow::Error::InvalidInput { field, reason } => {
            format!("{}: {reason}", args::flag_for(&field))
        }
        other => other.to_string(),
    })
}

async fn start(
    machines: &Machines,
    workflow: &str,
    resource: &str,
    input: Value,
    start: &Start,
    output: Output,
) -> ExitCode {
    if start.dry_run && workflow != "EvacuateZone" {
        println!(
            "{}",
            serde_json::to_string_pretty(&input).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let name = start
        .name
        .clone()
        .unwrap_or_else(|| default_name(workflow, resource));
    let arn = match machines.start(workflow, &name, &input).await {
        Ok(arn) => arn,
        Err(e) => return refuse(e),
    };
    if output == Output::Text {
        eprintln!("started {workflow} {name}");
    }
    if !start.watch {
        if output == Output::Json {
            println!("{}", serde_json::json!({"execution": arn, "name": name}));
        } else {
            println!("{arn}");
        }
        return ExitCode::SUCCESS;
    }
    if workflow == "EvacuateZone" {
        follow_fleet(machines, &arn, output).await
    } else {
        follow(machines, &arn, output).await
    }
}

/// Prints how a followed run ended and answers the exit status: the whole report (json), or the
/// text its kind makes of it and, for a failed run, its error and cause.
fn conclude(
    ended: Result<watch::Ended, Failure>,
    output: Output,
    text: impl Fn(&watch::Ended) -> Option<String>,
) -> ExitCode {
    let ended = match ended {
        Ok(ended) => ended,
        Err(e) => return refuse(e),
    };
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&ended.report).unwrap_or_default()
        );
    } else {
        if let Some(text) = text(&ended) {
            println!("{text}");
        }
        if !ended.succeeded {
            eprintln!(
                "{}: {}",
                ended.report["error"].as_str().unwrap_or("failed"),
                ended.report["cause"].as_str().unwrap_or("")
            );
        }
    }
    if ended.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure::RUN_FAILED)
    }
}

async fn follow(machines: &Machines, arn: &str, output: Output) -> ExitCode {
    conclude(
        watch::watch(&machines.sfn, arn, output).await,
        output,
        |e| {
            e.succeeded
                .then(|| serde_json::to_string_pretty(&e.report["output"]).unwrap_or_default())
        },
    )
}

/// Follows an EvacuateZone run, a line per instance, and prints its report as a table.
async fn follow_fleet(machines: &Machines, arn: &str, output: Output) -> ExitCode {
    let migrate = match machines.arn("MigrateInstance").await {
        Ok(arn) => arn,
        Err(e) => return refuse(e),
    };
    conclude(
        fleet::watch(&machines.sfn, &machines.s3, arn, &migrate, output).await,
        output,
        |e| {
            e.report["output"]
                .is_object()
                .then(|| fleet::table(&e.report["output"]))
        },
    )
}

/// Answers a run waiting at AwaitApproval, and follows it with --watch.
async fn decide(
    machines: &Machines,
    execution: &str,
    decision: &str,
    watch_it: bool,
    output: Output,
) -> ExitCode {
    let arn = match machines.execution(execution).await {
        Ok(arn) => arn,
        Err(e) => return refuse(e),
    };
    match approval::answer(&machines.sfn, &arn, decision).await {
        Err(Failure::Refused(reason)) => return refuse(format!("{execution}: {reason}")),
        Err(failure) => return refuse(failure),
        Ok(()) => {}
    }
    if output == Output::Text {
        eprintln!(
            "{execution}: {}",
            if decision == "approve" {
                "approved; the Elastic IP moves to the copy and sourceAction is applied"
            } else {
                "discarded; the copy is removed and the source is left as it was"
            }
        );
    }
    if watch_it {
        follow(machines, &arn, output).await
    } else {
        ExitCode::SUCCESS
    }
}

/// One run: its status, the state it is in, and the comparison of source and copy once the copy
/// is verified (from the run's output, or from the history while it waits for approval).
async fn show(machines: &Machines, arn: &str, output: Output) -> ExitCode {
    let described = match machines
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
    {
        Ok(d) => d,
        Err(e) => return refuse(api("DescribeExecution")(e)),
    };
    let history = match watch::history(&machines.sfn, arn).await {
        Ok(events) => events,
        Err(e) => return refuse(e),
    };
    let report = watch::run_view(&described, &history);
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", watch::run_text(&report));
    }
    ExitCode::SUCCESS
}

async fn status(machines: &Machines, limit: i32, output: Output) -> ExitCode {
    let mut all = Vec::new();
    for workflow in WORKFLOWS {
        let arn = match machines.arn(workflow).await {
            Ok(arn) => arn,
            // A stack without this workflow (an older one): the others are listed.
            Err(Failure::Refused(_)) => continue,
            Err(failure) => return refuse(failure),
        };
        match machines
            .sfn
            .list_executions()
            .state_machine_arn(arn)
            .max_results(limit)
            .send()
            .await
        {
            Ok(listed) => {
                for e in listed.executions() {
                    all.push(serde_json::json!({"workflow": workflow, "name": e.name(), "status": e.status().as_str(), "started": e.start_date().secs()}));
                }
            }
            Err(e) => return refuse(api("ListExecutions")(e)),
        }
    }
    all.sort_by_key(|e| std::cmp::Reverse(e["started"].as_i64().unwrap_or_default()));
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        for e in &all {
            println!(
                "{:<10} {:<16} {}",
                e["status"].as_str().unwrap_or_default(),
                e["workflow"].as_str().unwrap_or_default(),
                e["name"].as_str().unwrap_or_default()
            );
        }
        if all.is_empty() {
            println!("no amiflow runs");
        }
    }
    ExitCode::SUCCESS
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = &cli.global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = &cli.global.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &cli.global.profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    let deps = Deps::from_config(&config, Settings::defaults());
    let region = deps.region.clone();
    let machines = Machines {
        sfn: deps.sfn.clone(),
        s3: aws_sdk_s3::Client::new(&config),
        prefix: cli.global.name_prefix.clone(),
    };
    let output = cli.global.output;
    match &cli.command {
        Command::Migrate { args, start: s } => match validated(args.input(), |v| {
            amiflow::input::MigrateInput::parse(v, &region).map(|_| ())
        }) {
            Ok(input) => {
                start(
                    &machines,
                    "MigrateInstance",
                    &args.instance_id,
                    input,
                    s,
                    output,
                )
                .await
            }
            Err(e) => refuse(e),
        },
        Command::Share { args, start: s } => match validated(args.input(), |v| {
            amiflow::receivers::ShareInput::parse(v).map(|_| ())
        }) {
            Ok(input) => {
                start(
                    &machines,
                    "ShareImage",
                    &args.receivers.image_id,
                    input,
                    s,
                    output,
                )
                .await
            }
            Err(e) => refuse(e),
        },
        Command::Unshare { args, start: s } => match validated(args.input(), |v| {
            amiflow::receivers::UnshareInput::parse(v).map(|_| ())
        }) {
            Ok(input) => start(&machines, "UnshareImage", &args.image_id, input, s, output).await,
            Err(e) => refuse(e),
        },
        Command::Copy { args, start: s } => match validated(args.input(&region), |v| {
            amiflow::receivers::CopyInput::parse(v, &region).map(|_| ())
        }) {
            Ok(input) => {
                start(
                    &machines,
                    "CopyImage",
                    &args.source_image_id,
                    input,
                    s,
                    output,
                )
                .await
            }
            Err(e) => refuse(e),
        },
        Command::Evacuate {
            args,
            watch,
            dry_run,
            name,
        } => match args.input(*dry_run).and_then(|input| {
            validated(input, |v| {
                amiflow::steps::fleet::FleetInput::parse(v, &region).map(|_| ())
            })
        }) {
            Ok(input) => {
                // The preview is a run too (validateOnly), followed to its end.
                let how = Start {
                    watch: *watch || *dry_run,
                    dry_run: *dry_run,
                    name: name.clone(),
                };
                let target = args.target_az.clone();
                start(&machines, "EvacuateZone", &target, input, &how, output).await
            }
            Err(e) => refuse(e),
        },
        Command::Watch { execution } => match machines.execution(execution).await {
            Ok(arn) if arn.contains(&format!(":execution:{}EvacuateZone:", machines.prefix)) => {
                follow_fleet(&machines, &arn, output).await
            }
            Ok(arn) => follow(&machines, &arn, output).await,
            Err(e) => refuse(e),
        },
        Command::Status {
            execution: Some(execution),
            ..
        } => match machines.execution(execution).await {
            Ok(arn) => show(&machines, &arn, output).await,
            Err(e) => refuse(e),
        },
        Command::Status { limit, .. } => status(&machines, *limit, output).await,
        Command::Approve { execution, watch } => {
            decide(&machines, execution, "approve", *watch, output).await
        }
        Command::Discard { execution, watch } => {
            decide(&machines, execution, "discard", *watch, output).await
        }
        Command::Preflight { workflow } => {
            let rows = match workflow {
                Preflight::Migrate(a) => preflight::migrate(&deps, &a.input(), DryRuns::Make).await,
                Preflight::Share(a) => preflight::share(&deps, &a.input(), DryRuns::Make).await,
                Preflight::Copy(a) => {
                    preflight::copy(&deps, &a.input(&region), DryRuns::Make).await
                }
            };
            preflight::print(&rows, output == Output::Json);
            if rows.iter().any(|r| r.verdict == preflight::Verdict::Fail) {
                ExitCode::from(failure::RUN_FAILED)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
