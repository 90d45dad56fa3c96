//! EvacuateZone: many MigrateInstance runs under one parent. The `fleet` function plans the
//! fleet (which instances, in which waves, with which child input), previews each instance for
//! `validateOnly`, and writes the report at the end. The state machine runs the children itself
//! (a Distributed Map per wave, each item a nested `startExecution.sync:2`); nothing here starts
//! or waits. The plan, each wave's items, the results and the report are files in S3
//! (`resources::fleet_files`), so that a fleet's size is not bounded by the execution's state.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Instance};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::carry;
use crate::error::{aws, Error, Result};
use crate::input::{
    check_cutover, is_resource_id, zone, Capacity, Cutover, SourceAction, TargetGroups,
};
use crate::preflight::{self, DryRuns, Row, Verdict};
use crate::resources::fleet_files::{self, FleetFiles};
use crate::resources::groups;
use crate::resources::zones::checked_name;
use crate::Deps;

/// The most children at once. A Distributed Map would run 10,000
/// (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html), but every
/// child calls RunInstances once, whose bucket holds a burst of 5 and refills at 2 a second: at 40
/// children starting together, most already wait on throttling retries.
pub const MAX_CONCURRENCY: u32 = 40;

/// The default cap on children at once: RunInstances, the one call every child makes exactly once
/// that has the smallest bucket, allows a burst of 5 per account and Region (refilled at 2 a
/// second); CreateImage, the other one-per-child mutating call, falls under mutating actions
/// (burst 50, 5 a second). Five children starting together stay inside both bursts, so none is
/// throttled by its own fleet (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html;
/// bench/throttle.py holds the same table).
pub const DEFAULT_CONCURRENCY: u32 = 5;

/// The most waves one run takes: each wave's file names travel in the execution's state, and the
/// waves run one after the other, each a Map Run of its own. More values of the wave tag than this
/// is a mistake in the tag, not a plan.
pub const MAX_WAVES: usize = 100;

/// The report is also the Report state's output while it takes at most this much: Step Functions
/// caps a state's output at 256 KiB (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html),
/// and this leaves room for the rest of the state. A larger report is in S3 only; the output says
/// where, and keeps the counts and the summary.
pub const INLINE_REPORT_BYTES: usize = 200 * 1024;

/// The EvacuateZone input, exactly as operators, the CLI and tests send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetInput {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_filters: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_availability_zone: Option<String>,
    pub target_availability_zone: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_percent: Option<f64>,
    #[serde(default)]
    pub validate_only: bool,
    #[serde(default)]
    pub source_action: SourceAction,
    #[serde(default)]
    pub no_reboot: bool,
    #[serde(default)]
    pub keep_image: bool,
    /// Passed to every child: `approve` makes each wait for its own approval.
    #[serde(default)]
    pub cutover: Cutover,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout_seconds: Option<u64>,
    /// Passed to every child: `reserve` reserves each copy's capacity before its AMI.
    #[serde(default)]
    pub capacity: Capacity,
    /// Passed to every child: `follow` moves each source's place in its target groups.
    #[serde(default)]
    pub target_groups: TargetGroups,
}

impl FleetInput {
    /// Parses and checks the input; every refusal names its field. Pure.
    pub fn parse(raw: &Value, region: &str) -> Result<Self> {
        let input: FleetInput = crate::input::parse_fields(raw)?;
        input.check(region)?;
        Ok(input)
    }

    fn check(&self, region: &str) -> Result<()> {
        if self.instance_ids.is_empty()
            && self.tag_filters.is_empty()
            && self.source_availability_zone.is_none()
        {
            return Err(Error::invalid(
                "instanceIds",
                "give instanceIds, tagFilters or sourceAvailabilityZone to say which instances move",
            ));
        }
        for (field, ids) in [
            ("instanceIds", &self.instance_ids),
            ("exclude", &self.exclude),
        ] {
            if let Some(bad) = ids.iter().find(|id| !is_resource_id(id, "i-")) {
                return Err(Error::invalid(
                    field,
                    format!("{bad:?} is not an instance id (i- and 8 or 17 hex digits)"),
                ));
            }
        }
        for (key, values) in &self.tag_filters {
            if key.is_empty() || key.len() > 128 || values.is_empty() {
                return Err(Error::invalid(
                    "tagFilters",
                    format!("{key:?}: a tag key of 1 to 128 characters, with at least one value"),
                ));
            }
        }
        zone(
            "targetAvailabilityZone",
            &self.target_availability_zone,
            region,
        )?;
        if let Some(source) = &self.source_availability_zone {
            zone("sourceAvailabilityZone", source, region)?;
            if source == &self.target_availability_zone {
                return Err(Error::invalid(
                    "targetAvailabilityZone",
                    "is the source AZ: nothing would move",
                ));
            }
        }
        // The children's own check, before any child starts.
        check_cutover(self.cutover, self.approval_timeout_seconds)?;
        if let Some(tag) = &self.wave_tag {
            if tag.is_empty() || tag.len() > 128 {
                return Err(Error::invalid(
                    "waveTag",
                    "a tag key of 1 to 128 characters",
                ));
            }
        }
        if let Some(n) = self.max_concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(Error::invalid(
                    "maxConcurrency",
                    format!("{n} is not from 1 to {MAX_CONCURRENCY} (an inline Map's limit)"),
                ));
            }
        }
        match (self.tolerated_failures, self.tolerated_failure_percent) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "toleratedFailurePercent",
                "give toleratedFailures or toleratedFailurePercent, not both",
            )),
            (None, Some(p)) if !(0.0..=100.0).contains(&p) => Err(Error::invalid(
                "toleratedFailurePercent",
                format!("{p} is not from 0 to 100"),
            )),
            _ => Ok(()),
        }
    }

    /// How many children may fail before the fleet stops starting new ones: the count, or the
    /// percentage of the instances that move, rounded down. Pure.
    pub fn allowance(&self, moving: usize) -> u32 {
        match (self.tolerated_failures, self.tolerated_failure_percent) {
            (Some(n), _) => n,
            (None, Some(p)) => ((moving as f64) * p / 100.0).floor() as u32,
            (None, None) => 0,
        }
    }
}

/// One instance the selection found, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub instance_id: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub tags: BTreeMap<String, String>,
    pub not_carried: Vec<String>,
    /// The Auto Scaling group it is in (DescribeAutoScalingInstances), if any.
    pub auto_scaling_group: Option<String>,
}

impl Candidate {
    pub fn from_sdk(instance: &Instance, has_elastic_ip: bool) -> Self {
        Candidate {
            instance_id: instance.instance_id().unwrap_or_default().to_string(),
            availability_zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            instance_type: instance
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            tags: instance
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
            not_carried: carry::not_carried(instance, has_elastic_ip),
            auto_scaling_group: None,
        }
    }
}

/// An instance that will not move, with the error name it would have failed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub instance_id: String,
    pub error: String,
    pub reason: String,
}

/// Why a selected instance is refused before anything starts, if it is. Pure.
pub fn refusal(candidate: &Candidate, target_az: &str) -> Option<Refusal> {
    let refuse = |error: &str, reason: String| {
        Some(Refusal {
            instance_id: candidate.instance_id.clone(),
            error: error.to_string(),
            reason,
        })
    };
    if let Some(group) = &candidate.auto_scaling_group {
        let refused = groups::in_group(&candidate.instance_id, group);
        return refuse(refused.name(), refused.to_string());
    }
    if candidate.availability_zone == target_az {
        return refuse("TargetMismatch", format!("already in {target_az}"));
    }
    None
}

/// One child of the fleet: the MigrateInstance execution's name and input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Child {
    pub instance_id: String,
    pub name: String,
    pub input: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// The wave tag's value; empty for instances without the tag (they move last).
    pub wave: String,
    pub instances: Vec<Child>,
}

/// The child execution's name: the fleet's execution name and the instance id, within the 80
/// characters Step Functions allows; one fleet never names two children alike, and a retried
/// start finds its child by name. Pure.
pub fn child_name(execution: &str, instance_id: &str) -> String {
    let room = 80 - instance_id.len() - 1;
    let head: String = execution.chars().take(room).collect();
    format!("{head}-{instance_id}")
}

/// Wave order: numeric values by number first (2 before 10), then other values by text, then the
/// untagged. Pure.
fn wave_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// The fleet's plan, which the state machine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub validate_only: bool,
    pub target_availability_zone: String,
    pub max_concurrency: u32,
    pub tolerated_failures: u32,
    /// The run-lock table item that counts the fleet's failed children (`fleet#<execution>`).
    pub counter_key: String,
    pub waves: Vec<Wave>,
    pub refused: Vec<Refusal>,
    /// What each moving instance leaves behind (the private IP, extra ENIs …), by instance.
    pub not_carried: BTreeMap<String, Vec<String>>,
}

/// The plan from what the selection found. Pure.
pub fn plan(
    execution: &str,
    input: &FleetInput,
    target_az: &str,
    found: Vec<Candidate>,
    missing: Vec<String>,
) -> Plan {
    let excluded: BTreeSet<&str> = input.exclude.iter().map(String::as_str).collect();
    let mut refused: Vec<Refusal> = missing
        .into_iter()
        .map(|id| Refusal {
            instance_id: id,
            error: "InstanceNotFound".into(),
            reason: "no such instance that is pending, running, stopping or stopped".into(),
        })
        .collect();
    let mut by_wave: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for candidate in found {
        if excluded.contains(candidate.instance_id.as_str()) {
            continue;
        }
        if let Some(r) = refusal(&candidate, target_az) {
            refused.push(r);
            continue;
        }
        let wave = input
            .wave_tag
            .as_ref()
            .and_then(|t| candidate.tags.get(t))
            .cloned()
            .unwrap_or_default();
        by_wave.entry(wave).or_default().push(candidate);
    }
    let mut waves: Vec<(String, Vec<Candidate>)> = by_wave.into_iter().collect();
    waves.sort_by(|a, b| wave_order(&a.0, &b.0));
    let moving: usize = waves.iter().map(|(_, w)| w.len()).sum();
    let mut not_carried = BTreeMap::new();
    let waves = waves
        .into_iter()
        .map(|(wave, mut members)| {
            members.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            Wave {
                wave,
                instances: members
                    .into_iter()
                    .map(|c| {
                        not_carried.insert(c.instance_id.clone(), c.not_carried.clone());
                        Child {
                            name: child_name(execution, &c.instance_id),
                            input: child_input(input, &c.instance_id, target_az),
                            instance_id: c.instance_id,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    refused.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Plan {
        validate_only: input.validate_only,
        target_availability_zone: target_az.to_string(),
        max_concurrency: input.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        tolerated_failures: input.allowance(moving),
        counter_key: counter_key(execution),
        waves,
        refused,
        not_carried,
    }
}

pub fn counter_key(execution: &str) -> String {
    format!("fleet#{execution}")
}

/// A child's MigrateInstance input. Pure.
fn child_input(input: &FleetInput, instance_id: &str, target_az: &str) -> Value {
    let mut child = json!({
        "instanceId": instance_id,
        "targetAvailabilityZone": target_az,
        "sourceAction": input.source_action,
    });
    if input.no_reboot {
        child["noReboot"] = json!(true);
    }
    if input.keep_image {
        child["keepImage"] = json!(true);
    }
    if input.cutover == Cutover::Approve {
        child["cutover"] = json!(input.cutover);
    }
    if let Some(seconds) = input.approval_timeout_seconds {
        child["approvalTimeoutSeconds"] = json!(seconds);
    }
    if input.capacity == Capacity::Reserve {
        child["capacity"] = json!(input.capacity);
    }
    if input.target_groups == TargetGroups::Follow {
        child["targetGroups"] = json!(input.target_groups);
    }
    child
}

/// The instances the selection names: every one of `instanceIds`, with each tag filter, in the
/// source AZ, that is pending, running, stopping or stopped. Returns them and the explicit ids
/// not found.
async fn select(
    ec2: &aws_sdk_ec2::Client,
    autoscaling: &aws_sdk_autoscaling::Client,
    input: &FleetInput,
    source_az: Option<&str>,
) -> Result<(Vec<Candidate>, Vec<String>)> {
    let mut filters = vec![Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped"]
                .map(String::from)
                .to_vec(),
        ))
        .build()];
    if let Some(az) = source_az {
        filters.push(
            Filter::builder()
                .name("availability-zone")
                .values(az)
                .build(),
        );
    }
    for (key, values) in &input.tag_filters {
        filters.push(
            Filter::builder()
                .name(format!("tag:{key}"))
                .set_values(Some(values.clone()))
                .build(),
        );
    }
    if !input.instance_ids.is_empty() {
        filters.push(
            Filter::builder()
                .name("instance-id")
                .set_values(Some(input.instance_ids.clone()))
                .build(),
        );
    }
    let mut found = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws("DescribeInstances"))?;
        for reservation in page.reservations() {
            for instance in reservation.instances() {
                found.push(instance.clone());
            }
        }
    }
    let with_eip: BTreeSet<String> = elastic_ip_holders(ec2, &found).await?;
    let ids: Vec<String> = found
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let members = groups::groups_of(autoscaling, &ids).await?;
    let candidates: Vec<Candidate> = found
        .iter()
        .map(|i| {
            let id = i.instance_id().unwrap_or_default();
            let mut candidate = Candidate::from_sdk(i, with_eip.contains(id));
            candidate.auto_scaling_group = members.get(id).cloned();
            candidate
        })
        .collect();
    let seen: BTreeSet<&str> = candidates.iter().map(|c| c.instance_id.as_str()).collect();
    let missing = input
        .instance_ids
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .cloned()
        .collect();
    Ok((candidates, missing))
}

async fn elastic_ip_holders(
    ec2: &aws_sdk_ec2::Client,
    instances: &[Instance],
) -> Result<BTreeSet<String>> {
    if instances.is_empty() {
        return Ok(BTreeSet::new());
    }
    let ids: Vec<String> = instances
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let mut holders = BTreeSet::new();
    for chunk in ids.chunks(200) {
        let answer = ec2
            .describe_addresses()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(chunk.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(aws("DescribeAddresses"))?;
        holders.extend(
            answer
                .addresses()
                .iter()
                .filter_map(|a| a.instance_id().map(str::to_string)),
        );
    }
    Ok(holders)
}

/// A plan with more waves than one run takes is refused, naming the wave tag. Pure.
pub fn check_waves(plan: &Plan, input: &FleetInput) -> Result<()> {
    if plan.waves.len() > MAX_WAVES {
        return Err(Error::invalid(
            "waveTag",
            format!(
                "{:?} has {} values among the selected instances; one run takes at most {MAX_WAVES} waves",
                input.wave_tag.as_deref().unwrap_or_default(),
                plan.waves.len()
            ),
        ));
    }
    Ok(())
}

/// One wave as the state machine carries it: where its items are and where its results go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveFiles {
    pub wave: String,
    pub instances: usize,
    pub items: String,
    pub results: String,
}

/// What the Plan state hands on: the plan's settings and where its files are, never the
/// instances themselves, so that it stays small whatever the fleet's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanState {
    pub validate_only: bool,
    pub target_availability_zone: String,
    pub max_concurrency: u32,
    pub tolerated_failures: u32,
    pub counter_key: String,
    pub bucket: String,
    /// The full plan (every wave's instances, the refusals, what will not carry over).
    pub plan: String,
    pub moving: usize,
    pub refused: usize,
    pub waves: Vec<WaveFiles>,
    pub wave_count: usize,
    /// The wave the state machine is at (`{"index": 0}` to start).
    pub wave: Value,
}

/// The plan's state and the files to write: the plan itself, then one item file per wave. Pure.
pub fn plan_files(execution: &str, bucket: &str, plan: &Plan) -> (PlanState, Vec<(String, Value)>) {
    let mut files = vec![(
        fleet_files::plan_key(execution),
        serde_json::to_value(plan).expect("a plan is JSON"),
    )];
    let waves = plan
        .waves
        .iter()
        .enumerate()
        .map(|(index, wave)| {
            let items = fleet_files::wave_key(execution, index);
            files.push((
                items.clone(),
                serde_json::to_value(&wave.instances).expect("children are JSON"),
            ));
            WaveFiles {
                wave: wave.wave.clone(),
                instances: wave.instances.len(),
                items,
                results: fleet_files::results_prefix(execution, index),
            }
        })
        .collect::<Vec<_>>();
    let state = PlanState {
        validate_only: plan.validate_only,
        target_availability_zone: plan.target_availability_zone.clone(),
        max_concurrency: plan.max_concurrency,
        tolerated_failures: plan.tolerated_failures,
        counter_key: plan.counter_key.clone(),
        bucket: bucket.to_string(),
        plan: fleet_files::plan_key(execution),
        moving: waves.iter().map(|w| w.instances).sum(),
        refused: plan.refused.len(),
        wave_count: waves.len(),
        waves,
        wave: json!({"index": 0}),
    };
    (state, files)
}

/// The fleet function's request.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FleetRequest {
    Plan {
        execution: String,
        input: Value,
    },
    Preview {
        child: Child,
    },
    Report {
        execution: String,
        /// The Plan state's output (with what the waves added to it).
        plan: PlanState,
    },
}

/// The S3 client, made once per execution environment from the function's SDK configuration
/// (only the fleet function uses S3, so it is not one of every function's Deps).
fn s3(deps: &Deps) -> &'static aws_sdk_s3::Client {
    static CLIENT: std::sync::OnceLock<aws_sdk_s3::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| aws_sdk_s3::Client::new(&deps.config))
}

pub async fn run(deps: &Deps, request: FleetRequest) -> Result<Value> {
    match request {
        FleetRequest::Plan { execution, input } => {
            let input = FleetInput::parse(&input, &deps.region)?;
            let target = checked_name(
                &deps.ec2,
                "targetAvailabilityZone",
                &input.target_availability_zone,
                &deps.region,
            )
            .await?;
            let source = match &input.source_availability_zone {
                Some(s) => {
                    Some(checked_name(&deps.ec2, "sourceAvailabilityZone", s, &deps.region).await?)
                }
                None => None,
            };
            if source.as_deref() == Some(target.as_str()) {
                return Err(Error::invalid(
                    "targetAvailabilityZone",
                    format!("{target} is the source AZ: nothing would move"),
                ));
            }
            let (found, missing) =
                select(&deps.ec2, &deps.autoscaling, &input, source.as_deref()).await?;
            let plan = plan(&execution, &input, &target, found, missing);
            check_waves(&plan, &input)?;
            let files = FleetFiles {
                s3: s3(deps),
                bucket: deps.settings.fleet_bucket()?,
            };
            let (state, writes) = plan_files(&execution, files.bucket, &plan);
            for (key, value) in &writes {
                files.put(key, value).await?;
            }
            if !plan.validate_only && state.moving > 0 {
                deps.run_lock()?.open_counter(&plan.counter_key).await?;
            }
            tracing::info!(
                execution,
                moving = state.moving,
                refused = state.refused,
                waves = state.wave_count,
                plan = fleet_files::s3_uri(files.bucket, &state.plan),
                "fleet planned"
            );
            Ok(serde_json::to_value(state).expect("a plan's state is JSON"))
        }
        FleetRequest::Preview { child } => {
            let rows = preflight::migrate(deps, &child.input, DryRuns::Skip).await;
            Ok(preview_entry(&child, rows))
        }
        FleetRequest::Report { execution, plan } => {
            let files = FleetFiles {
                s3: s3(deps),
                bucket: &plan.bucket,
            };
            let full: Plan = serde_json::from_value(files.get(&plan.plan).await?).map_err(|e| {
                Error::UnexpectedAnswer(format!("{} is not a fleet plan: {e}", plan.plan).into())
            })?;
            let results = files
                .results(&fleet_files::results_root(&execution))
                .await?;
            let key = fleet_files::report_key(&execution);
            let location = fleet_files::s3_uri(files.bucket, &key);
            let report = report(&execution, &full, results, &location);
            files
                .put(
                    &key,
                    &serde_json::to_value(&report).expect("a report is JSON"),
                )
                .await?;
            tracing::info!(
                execution,
                report = location,
                summary = report.summary,
                "fleet reported"
            );
            Ok(output(&report, &location))
        }
    }
}

/// The Report state's output: the report with where it is in S3, without its instances when they
/// would not fit in the state (`INLINE_REPORT_BYTES`). Pure.
pub fn output(report: &Report, location: &str) -> Value {
    let mut out = serde_json::to_value(report).expect("a report is JSON");
    out["report"] = json!(location);
    if serde_json::to_vec(&out).map_or(0, |b| b.len()) > INLINE_REPORT_BYTES {
        if let Some(map) = out.as_object_mut() {
            map.remove("instances");
        }
        out["instancesOnlyInReport"] = json!(report.instances.len());
    }
    out
}

/// One instance of a `validateOnly` preview: its target subnet and type and the preflight rows
/// (the report adds what will not carry over). Pure.
pub fn preview_entry(child: &Child, rows: Vec<Row>) -> Value {
    let reason = |check: &str| {
        rows.iter()
            .find(|r| r.check == check && r.verdict == Verdict::Pass)
            .map(|r| r.reason.clone())
    };
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .map(|r| format!("{}: {}", r.check, r.reason))
        .collect();
    json!({
        "instanceId": child.instance_id,
        "execution": child.name,
        "status": if failed.is_empty() { "WOULD_MOVE" } else { "WOULD_FAIL" },
        "targetSubnet": reason("target subnet"),
        "instanceType": reason("instance type offered"),
        "preflight": rows,
        "error": if failed.is_empty() { Value::Null } else { json!("PreflightFailed") },
        "cause": if failed.is_empty() { Value::Null } else { json!(failed.join("; ")) },
    })
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub instance_id: String,
    pub wave: String,
    /// The child execution's ARN (or, in a preview, the name it would have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// SUCCEEDED, FAILED, NOT_STARTED (the allowance ran out first), REFUSED; in a preview
    /// WOULD_MOVE or WOULD_FAIL.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub fleet: String,
    pub validate_only: bool,
    pub target_availability_zone: String,
    pub tolerated_failures: u32,
    pub within_allowance: bool,
    pub counts: BTreeMap<String, usize>,
    pub summary: String,
    pub instances: Vec<Entry>,
}

impl Entry {
    /// An instance no child ran for: refused, or not started.
    fn unrun(
        instance_id: &str,
        wave: &str,
        status: &str,
        error: &str,
        cause: Option<String>,
    ) -> Self {
        Entry {
            instance_id: instance_id.to_string(),
            wave: wave.to_string(),
            execution: None,
            status: status.to_string(),
            new_instance_id: None,
            error: Some(error.to_string()),
            cause,
            preview: None,
        }
    }
}

/// A child's result as the state machine hands it over, read into a report line. Pure.
fn entry_of(result: &Value, wave: &str) -> Entry {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let instance_id = text(&result["instanceId"]).unwrap_or_default();
    let status = text(&result["status"]).unwrap_or_else(|| "FAILED".into());
    let mut entry = Entry {
        instance_id,
        wave: wave.to_string(),
        execution: text(&result["execution"]),
        status,
        new_instance_id: text(&result["newInstanceId"]),
        error: text(&result["error"]),
        cause: text(&result["cause"]),
        preview: None,
    };
    // A child that ran and failed: Step Functions' describe of it, parsed.
    if let Some(child) = result
        .get("child")
        .filter(|c| c.get("ExecutionArn").is_some())
    {
        entry.execution = text(&child["ExecutionArn"]).or(entry.execution);
        let child_status = text(&child["Status"]).unwrap_or_else(|| "FAILED".into());
        entry.error =
            text(&child["Error"]).or_else(|| Some(format!("Execution{}", title(&child_status))));
        entry.cause = text(&child["Cause"]).or(entry.cause);
    }
    // StartExecution itself failed: the task's error and cause.
    if let Some(failure) = result.get("failure").filter(|f| f.is_object()) {
        entry.error = entry.error.or_else(|| text(&failure["Error"]));
        entry.cause = entry.cause.or_else(|| text(&failure["Cause"]));
    }
    entry
}

fn title(status: &str) -> String {
    status
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_string() + &c.as_str().to_lowercase())
                .unwrap_or_default()
        })
        .collect()
}

/// The fleet's report: every instance (refused ones too), its child, its result, and whether the
/// failures stayed within the allowance. Pure.
pub fn report(execution: &str, plan: &Plan, results: Vec<Value>, location: &str) -> Report {
    let mut instances: Vec<Entry> = Vec::new();
    let by_id: BTreeMap<String, Value> = results
        .into_iter()
        .filter_map(|r| Some((r["instanceId"].as_str()?.to_string(), r)))
        .collect();
    if plan.validate_only {
        for wave in &plan.waves {
            for child in &wave.instances {
                let mut preview = by_id.get(&child.instance_id).cloned();
                if let Some(p) = preview.as_mut() {
                    p["notCarried"] = json!(plan.not_carried.get(&child.instance_id));
                }
                let status = preview
                    .as_ref()
                    .and_then(|p| p["status"].as_str())
                    .unwrap_or("WOULD_FAIL")
                    .to_string();
                instances.push(Entry {
                    instance_id: child.instance_id.clone(),
                    wave: wave.wave.clone(),
                    execution: Some(child.name.clone()),
                    // The preflight's verdict, or the preview's own failure (NotPreviewed).
                    error: preview.as_ref().and_then(|p| {
                        p["error"]
                            .as_str()
                            .or(p["failure"]["Error"].as_str())
                            .map(str::to_string)
                    }),
                    cause: preview.as_ref().and_then(|p| {
                        p["cause"]
                            .as_str()
                            .or(p["failure"]["Cause"].as_str())
                            .map(str::to_string)
                    }),
                    status,
                    new_instance_id: None,
                    preview,
                });
            }
        }
    } else {
        for wave in &plan.waves {
            instances.extend(
                wave.instances
                    .iter()
                    .map(|c| match by_id.get(&c.instance_id) {
                        Some(result) => entry_of(result, &wave.wave),
                        // No result: its wave never ran (the fleet stopped before it).
                        None => Entry::unrun(
                            &c.instance_id,
                            &wave.wave,
                            "NOT_STARTED",
                            "ToleratedFailuresExceeded",
                            None,
                        ),
                    }),
            );
        }
    }
    instances.extend(plan.refused.iter().map(|r| {
        Entry::unrun(
            &r.instance_id,
            "",
            "REFUSED",
            &r.error,
            Some(r.reason.clone()),
        )
    }));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &instances {
        *counts.entry(e.status.clone()).or_default() += 1;
    }
    let failed = counts.get("FAILED").copied().unwrap_or(0);
    let within_allowance = failed as u32 <= plan.tolerated_failures;
    let summary = if plan.validate_only {
        format!(
            "preview: {} would move, {} would fail, {} refused; nothing was changed; the report: {location}",
            counts.get("WOULD_MOVE").copied().unwrap_or(0),
            counts.get("WOULD_FAIL").copied().unwrap_or(0),
            counts.get("REFUSED").copied().unwrap_or(0)
        )
    } else {
        let failures: Vec<String> = instances
            .iter()
            .filter(|e| e.status == "FAILED")
            .map(|e| format!("{} ({})", e.instance_id, e.error.as_deref().unwrap_or("?")))
            .collect();
        format!(
            "{} moved, {} failed{}, {} not started, {} refused; {} failure(s) tolerated{}; the report: {location}",
            counts.get("SUCCEEDED").copied().unwrap_or(0),
            failed,
            if failures.is_empty() {
                String::new()
            } else {
                format!(": {}", failures.join(", "))
            },
            counts.get("NOT_STARTED").copied().unwrap_or(0),
            counts.get("REFUSED").copied().unwrap_or(0),
            plan.tolerated_failures,
            if within_allowance {
                ""
            } else {
                "; the fleet stopped"
            }
        )
    };
    Report {
        fleet: execution.to_string(),
        validate_only: plan.validate_only,
        target_availability_zone: plan.target_availability_zone.clone(),
        tolerated_failures: plan.tolerated_failures,
        within_allowance,
        counts,
        summary,
        instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<FleetInput> {
        FleetInput::parse(&v, "us-east-1")
    }

    fn field_of(r: Result<FleetInput>) -> String {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    fn candidate(id: &str, az: &str, tags: &[(&str, &str)]) -> Candidate {
        Candidate {
            instance_id: id.into(),
            availability_zone: az.into(),
            instance_type: "t3.micro".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            not_carried: vec!["private IP address 10.0.0.1".into()],
            auto_scaling_group: None,
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                json!({"targetAvailabilityZone": "us-east-1b"}),
                "instanceIds",
            ),
            (
                json!({"instanceIds": ["i-x"], "targetAvailabilityZone": "us-east-1b"}),
                "instanceIds",
            ),
            (
                json!({"sourceAvailabilityZone": "us-east-1a"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"sourceAvailabilityZone": "us-east-1a", "targetAvailabilityZone": "us-west-2b"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"sourceAvailabilityZone": "somewhere", "targetAvailabilityZone": "us-east-1b"}),
                "sourceAvailabilityZone",
            ),
            (
                json!({"sourceAvailabilityZone": "us-east-1a", "targetAvailabilityZone": "us-east-1a"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "exclude": ["web"]}),
                "exclude",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "maxConcurrency": 0}),
                "maxConcurrency",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "maxConcurrency": 41}),
                "maxConcurrency",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "toleratedFailures": 1, "toleratedFailurePercent": 10}),
                "toleratedFailurePercent",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "toleratedFailurePercent": 101}),
                "toleratedFailurePercent",
            ),
            (
                json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "us-east-1b", "toleratedFailures": -1}),
                "toleratedFailures",
            ),
            (
                json!({"tagFilters": {"tier": []}, "targetAvailabilityZone": "us-east-1b"}),
                "tagFilters",
            ),
            (
                json!({"tagFilters": {"tier": ["web"]}, "targetAvailabilityZone": "us-east-1b", "waveTag": ""}),
                "waveTag",
            ),
            (
                json!({"tagFilters": {"tier": ["web"]}, "targetAvailabilityZone": "us-east-1b", "sourceAction": "delete"}),
                "sourceAction",
            ),
            (
                json!({"tagFilters": {"tier": ["web"]}, "targetAvailabilityZone": "us-east-1b", "cutover": "later"}),
                "cutover",
            ),
            (
                json!({"tagFilters": {"tier": ["web"]}, "targetAvailabilityZone": "us-east-1b", "approvalTimeoutSeconds": 600}),
                "approvalTimeoutSeconds",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(parse(input.clone())), field, "{input}");
        }
    }

    #[test]
    fn the_allowance_is_a_count_or_a_share_rounded_down() {
        let base = json!({"tagFilters": {"t": ["v"]}, "targetAvailabilityZone": "us-east-1b"});
        let with = |k: &str, v: Value| {
            let mut i = base.clone();
            i[k] = v;
            parse(i).unwrap()
        };
        assert_eq!(parse(base.clone()).unwrap().allowance(12), 0);
        assert_eq!(with("toleratedFailures", json!(2)).allowance(12), 2);
        assert_eq!(with("toleratedFailurePercent", json!(25)).allowance(12), 3);
        assert_eq!(with("toleratedFailurePercent", json!(10)).allowance(12), 1);
        assert_eq!(with("toleratedFailurePercent", json!(5)).allowance(12), 0);
    }

    #[test]
    fn waves_follow_the_wave_tag_in_order_and_the_untagged_go_last() {
        let input = parse(json!({
            "sourceAvailabilityZone": "us-east-1a", "targetAvailabilityZone": "us-east-1b",
            "waveTag": "amiflow:wave", "exclude": ["i-00000005"], "toleratedFailurePercent": 50
        }))
        .unwrap();
        let found = vec![
            candidate("i-00000001", "us-east-1a", &[("amiflow:wave", "10")]),
            candidate("i-00000002", "us-east-1a", &[("amiflow:wave", "2")]),
            candidate("i-00000003", "us-east-1a", &[]),
            candidate("i-00000004", "us-east-1a", &[("amiflow:wave", "db")]),
            candidate("i-00000005", "us-east-1a", &[("amiflow:wave", "2")]),
            Candidate {
                auto_scaling_group: Some("web-asg".into()),
                ..candidate("i-00000006", "us-east-1a", &[])
            },
            candidate("i-00000007", "us-east-1b", &[]),
        ];
        let plan = plan(
            "evac-1",
            &input,
            "us-east-1b",
            found,
            vec!["i-00000009".into()],
        );
        let waves: Vec<(&str, Vec<&str>)> = plan
            .waves
            .iter()
            .map(|w| {
                (
                    w.wave.as_str(),
                    w.instances.iter().map(|c| c.instance_id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            waves,
            vec![
                ("2", vec!["i-00000002"]),
                ("10", vec!["i-00000001"]),
                ("db", vec!["i-00000004"]),
                ("", vec!["i-00000003"]),
            ]
        );
        let refused: Vec<(&str, &str)> = plan
            .refused
            .iter()
            .map(|r| (r.instance_id.as_str(), r.error.as_str()))
            .collect();
        assert_eq!(
            refused,
            vec![
                ("i-00000006", "InAutoScalingGroup"),
                ("i-00000007", "TargetMismatch"),
                ("i-00000009", "InstanceNotFound"),
            ]
        );
        assert!(plan.refused[0].reason.contains("web-asg"));
        assert_eq!(plan.tolerated_failures, 2);
        assert_eq!(plan.max_concurrency, DEFAULT_CONCURRENCY);
        let child = &plan.waves[0].instances[0];
        assert_eq!(child.name, "evac-1-i-00000002");
        assert_eq!(
            child.input,
            json!({"instanceId": "i-00000002", "targetAvailabilityZone": "us-east-1b", "sourceAction": "keep"})
        );
    }

    #[test]
    fn too_many_waves_are_refused_naming_the_wave_tag() {
        let ids: Vec<String> = (1..=101).map(|n| format!("i-{n:08x}")).collect();
        let input = parse(
            json!({"instanceIds": ids, "targetAvailabilityZone": "us-east-1b", "waveTag": "w"}),
        )
        .unwrap();
        let found: Vec<Candidate> = (1..=101)
            .map(|n| {
                candidate(
                    &format!("i-{n:08x}"),
                    "us-east-1a",
                    &[("w", &n.to_string())],
                )
            })
            .collect();
        let plan = plan("evac", &input, "us-east-1b", found, vec![]);
        match check_waves(&plan, &input) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "waveTag");
                assert!(reason.contains("101 values"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let fewer = Plan {
            waves: plan.waves[..100].to_vec(),
            ..plan
        };
        assert!(check_waves(&fewer, &input).is_ok());
    }

    #[test]
    fn the_plans_state_names_its_files_and_carries_no_instance() {
        let input = parse(json!({"instanceIds": ["i-00000001", "i-00000002", "i-00000003"], "targetAvailabilityZone": "us-east-1b", "waveTag": "w"})).unwrap();
        let found = vec![
            candidate("i-00000001", "us-east-1a", &[("w", "2")]),
            candidate("i-00000002", "us-east-1a", &[("w", "1")]),
            candidate("i-00000003", "us-east-1b", &[]),
        ];
        let plan = plan("evac", &input, "us-east-1b", found, vec![]);
        let (state, files) = plan_files("evac", "bucket", &plan);
        let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fleets/evac/plan.json",
                "fleets/evac/waves/0.json",
                "fleets/evac/waves/1.json"
            ]
        );
        assert_eq!(files[1].1[0]["instanceId"], "i-00000002");
        assert_eq!(files[1].1[0]["name"], "evac-i-00000002");
        assert_eq!(files[2].1[0]["input"]["instanceId"], "i-00000001");
        assert_eq!((state.moving, state.refused, state.wave_count), (2, 1, 2));
        assert_eq!(state.waves[0].results, "fleets/evac/results/0");
        assert_eq!(state.wave, json!({"index": 0}));
        let carried = serde_json::to_string(&state).unwrap();
        assert!(!carried.contains("i-00000001"), "{carried}");
    }

    #[test]
    fn a_report_too_large_for_the_state_is_left_in_s3_and_the_output_says_where() {
        let ids: Vec<String> = (1..=3).map(|n| format!("i-{n:08x}")).collect();
        let input =
            parse(json!({"instanceIds": ids, "targetAvailabilityZone": "us-east-1b"})).unwrap();
        let found: Vec<Candidate> = (1..=3)
            .map(|n| candidate(&format!("i-{n:08x}"), "us-east-1a", &[]))
            .collect();
        let plan = plan("evac", &input, "us-east-1b", found, vec![]);
        let location = "s3://b/fleets/evac/report.json";
        let small = report("evac", &plan, vec![], location);
        let out = output(&small, location);
        assert_eq!(out["instances"].as_array().map(Vec::len), Some(3));
        assert_eq!(out["report"], location);
        assert!(small.summary.ends_with(location), "{}", small.summary);
        let mut large = small.clone();
        for entry in &mut large.instances {
            entry.cause = Some("x".repeat(INLINE_REPORT_BYTES / 2));
        }
        let out = output(&large, location);
        assert!(out.get("instances").is_none());
        assert_eq!(out["instancesOnlyInReport"], 3);
        assert_eq!(out["report"], location);
        assert_eq!(out["counts"]["NOT_STARTED"], 3);
        assert!(serde_json::to_vec(&out).unwrap().len() < INLINE_REPORT_BYTES);
    }

    #[test]
    fn a_child_name_fits_in_80_characters() {
        let long = "x".repeat(80);
        let name = child_name(&long, "i-0123456789abcdef0");
        assert_eq!(name.len(), 80);
        assert!(name.ends_with("-i-0123456789abcdef0"));
    }

    #[test]
    fn the_report_lists_every_instance_and_judges_the_allowance() {
        let input = parse(json!({"instanceIds": ["i-00000001", "i-00000002", "i-00000003"], "targetAvailabilityZone": "us-east-1b", "waveTag": "w", "toleratedFailures": 0})).unwrap();
        let found = vec![
            candidate("i-00000001", "us-east-1a", &[("w", "1")]),
            candidate("i-00000002", "us-east-1a", &[("w", "1")]),
            candidate("i-00000003", "us-east-1a", &[("w", "2")]),
        ];
        let plan = plan("evac", &input, "us-east-1b", found, vec![]);
        let results = vec![
            json!({"instanceId": "i-00000002", "status": "FAILED", "child": {"ExecutionArn": "arn:…:evac-i-00000002", "Status": "FAILED", "Error": "InsufficientCapacity", "Cause": "none in us-east-1b"}}),
            json!({"instanceId": "i-00000001", "status": "SUCCEEDED", "execution": "arn:…:evac-i-00000001", "newInstanceId": "i-0000000a"}),
        ];
        let report = report("evac", &plan, results, "s3://b/k");
        let lines: Vec<(&str, &str, Option<&str>)> = report
            .instances
            .iter()
            .map(|e| {
                (
                    e.instance_id.as_str(),
                    e.status.as_str(),
                    e.error.as_deref().or(e.new_instance_id.as_deref()),
                )
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                ("i-00000001", "SUCCEEDED", Some("i-0000000a")),
                ("i-00000002", "FAILED", Some("InsufficientCapacity")),
                (
                    "i-00000003",
                    "NOT_STARTED",
                    Some("ToleratedFailuresExceeded")
                ),
            ]
        );
        assert!(!report.within_allowance);
        assert_eq!(
            report.instances[1].execution.as_deref(),
            Some("arn:…:evac-i-00000002")
        );
        assert!(
            report
                .summary
                .contains("1 moved, 1 failed: i-00000002 (InsufficientCapacity)"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn an_aborted_child_is_named_by_its_status() {
        let e = entry_of(
            &json!({"instanceId": "i-00000001", "status": "FAILED", "child": {"ExecutionArn": "a", "Status": "TIMED_OUT"}}),
            "",
        );
        assert_eq!(e.error.as_deref(), Some("ExecutionTimedOut"));
    }
}
