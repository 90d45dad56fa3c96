//! trigger: starts runs that resources ask for with tags, on a schedule and on tag changes.
//!
//! - Instances tagged `amiflow:migrate-to` (an AZ name, an AZ ID or a subnet id), with an optional
//!   `amiflow:source-action`, start MigrateInstance.
//! - Images tagged `amiflow:share-with` (comma-separated account ids, organization or OU ARNs)
//!   start ShareImage.
//! - Images tagged `amiflow:copy-to` (`<account>:<role ARN>:<KMS key ARN or alias>`, or the name of
//!   a copy profile) start CopyImage.
//!
//! The execution name is derived from the resource and the request, so that a second sweep, or an
//! event and a sweep together, start no second run; a resource with a run still going starts no
//! other. Each resource's `amiflow:status` tag says `running:<execution>`, `done:<execution>`,
//! `failed:<execution>:<error>` or `invalid:<reason>`.

use std::collections::HashMap;

use aws_sdk_ec2::types::Filter;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{aws, Error, Result};
use crate::input::{is_availability_zone, is_resource_id, is_zone_id, MigrateInput, SourceAction};
use crate::receivers::{is_kms_key_ref, is_organization_arn, is_ou_arn, ShareInput};
use crate::settings::Settings;

pub const MIGRATE_TO: &str = "amiflow:migrate-to";
pub const SOURCE_ACTION: &str = "amiflow:source-action";
pub const SHARE_WITH: &str = "amiflow:share-with";
pub const COPY_TO: &str = "amiflow:copy-to";
pub const STATUS: &str = "amiflow:status";

/// Which workflow a tag asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workflow {
    MigrateInstance,
    ShareImage,
    CopyImage,
}

/// A named CopyImage target, for `amiflow:copy-to = <profile>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyProfile {
    pub target_account_id: String,
    pub target_role_arn: String,
    pub external_id: String,
    pub target_kms_key_id: String,
}

/// What a resource's tags ask for, as the workflow input it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub workflow: Workflow,
    pub resource_id: String,
    pub input: Value,
}

/// The execution name for a request: the same for the same resource and tag values, at most
/// 80 characters of letters, digits, `-` and `_`. Pure.
pub fn execution_name(workflow: Workflow, resource_id: &str, tag_values: &[&str]) -> String {
    let digest =
        Sha256::digest(format!("{workflow:?}|{resource_id}|{}", tag_values.join("|")).as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let prefix = match workflow {
        Workflow::MigrateInstance => "migrate",
        Workflow::ShareImage => "share",
        Workflow::CopyImage => "copy",
    };
    format!("{prefix}-{resource_id}-{hash}")
}

/// Parses an instance's `amiflow:migrate-to` (and `amiflow:source-action`) into MigrateInstance's
/// input, with the same checks as the workflow. Pure.
pub fn migrate_request(
    instance_id: &str,
    target: &str,
    source_action: Option<&str>,
    region: &str,
) -> Result<Value> {
    let target = target.trim();
    let mut input = json!({"instanceId": instance_id});
    if is_resource_id(target, "subnet-") {
        input["targetSubnetId"] = json!(target);
    } else if is_availability_zone(target) || is_zone_id(target) {
        input["targetAvailabilityZone"] = json!(target);
    } else {
        return Err(Error::invalid(
            MIGRATE_TO,
            format!(
                "{target:?} is neither an Availability Zone (a name or an AZ ID) nor a subnet id"
            ),
        ));
    }
    if let Some(action) = source_action {
        input["sourceAction"] = json!(action.trim());
    }
    MigrateInput::parse(&input, region).map_err(|e| match e {
        Error::InvalidInput { field, reason } if field == "sourceAction" => {
            Error::invalid(SOURCE_ACTION, reason)
        }
        Error::InvalidInput { reason, .. } => Error::invalid(MIGRATE_TO, reason),
        other => other,
    })?;
    Ok(input)
}

/// Parses an image's `amiflow:share-with` into ShareImage's input. Pure.
pub fn share_request(image_id: &str, receivers: &str) -> Result<Value> {
    let (mut accounts, mut orgs, mut ous) = (Vec::new(), Vec::new(), Vec::new());
    for item in receivers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if item.len() == 12 && item.bytes().all(|b| b.is_ascii_digit()) {
            accounts.push(item);
        } else if is_organization_arn(item) {
            orgs.push(item);
        } else if is_ou_arn(item) {
            ous.push(item);
        } else {
            return Err(Error::invalid(
                SHARE_WITH,
                format!("{item:?} is not an account id, organization ARN or OU ARN"),
            ));
        }
    }
    let input = json!({"imageId": image_id, "accountIds": accounts, "organizationArns": orgs, "organizationalUnitArns": ous});
    ShareInput::parse(&input).map_err(|e| Error::invalid(SHARE_WITH, e.to_string()))?;
    Ok(input)
}

/// Parses an image's `amiflow:copy-to`: `<account>:<role ARN>:<key ARN or alias>` or a profile. Pure.
pub fn copy_request(
    image_id: &str,
    value: &str,
    region: &str,
    profiles: &HashMap<String, CopyProfile>,
    default_external_id: &str,
) -> Result<Value> {
    let value = value.trim();
    let profile = if let Some(p) = profiles.get(value) {
        p.clone()
    } else {
        let (account, rest) = value.split_once(':').ok_or_else(|| {
            Error::invalid(
                COPY_TO,
                format!("{value:?} is neither <account>:<role ARN>:<key> nor a known copy profile"),
            )
        })?;
        let split = rest
            .find(":arn:aws")
            .or_else(|| rest.find(":alias/"))
            .ok_or_else(|| {
                Error::invalid(
                    COPY_TO,
                    "no KMS key after the role ARN (<account>:<role ARN>:<key ARN or alias>)",
                )
            })?;
        let (role, key) = (&rest[..split], &rest[split + 1..]);
        if !is_kms_key_ref(key) {
            return Err(Error::invalid(
                COPY_TO,
                format!("{key:?} is not a KMS key ARN or alias"),
            ));
        }
        if default_external_id.is_empty() {
            return Err(Error::invalid(
                COPY_TO,
                "the <account>:<role ARN>:<key> form needs the stack parameter CopyExternalId (the external id \
                 the target role expects); name a profile of CopyProfiles instead",
            ));
        }
        CopyProfile {
            target_account_id: account.to_string(),
            target_role_arn: role.to_string(),
            external_id: default_external_id.to_string(),
            target_kms_key_id: key.to_string(),
        }
    };
    let input = json!({
        "sourceImageId": image_id, "sourceRegion": region, "targetAccountId": profile.target_account_id,
        "targetRoleArn": profile.target_role_arn, "externalId": profile.external_id,
        "targetKmsKeyId": profile.target_kms_key_id, "name": format!("{image_id}-copy"),
    });
    crate::receivers::CopyInput::parse(&input, region)
        .map_err(|e| Error::invalid(COPY_TO, e.to_string()))?;
    Ok(input)
}

/// What the stack owner lets a tag alone ask for, applied to a parsed request: receivers from
/// `AllowedReceivers`, copy targets from `AllowedCopyTargets`, source actions from
/// `TagSourceActions`, and a reboot of the source only where that list says `reboot`. An empty
/// list admits nothing. `ancestors(ou_arn)` gives the OUs above an OU, where they could be read.
/// Pure.
pub fn admit(
    workflow: Workflow,
    mut input: Value,
    settings: &Settings,
    ancestors: impl Fn(&str) -> Option<Vec<String>>,
) -> Result<Value> {
    match workflow {
        Workflow::MigrateInstance => {
            let action: SourceAction =
                serde_json::from_value(input["sourceAction"].clone()).unwrap_or_default();
            if !settings.tag_powers.allows(action) {
                let allowed: Vec<String> = settings
                    .tag_powers
                    .source_actions
                    .iter()
                    .map(|a| json!(a).as_str().unwrap_or_default().to_string())
                    .collect();
                return Err(Error::invalid(
                    SOURCE_ACTION,
                    format!(
                        "{} is not among the stack's TagSourceActions ({}); start the run directly",
                        json!(action).as_str().unwrap_or_default(),
                        allowed.join(", ")
                    ),
                ));
            }
            if !settings.tag_powers.reboot {
                input["noReboot"] = json!(true);
            }
        }
        Workflow::ShareImage => {
            let list = &settings.allowed_receivers;
            if list.is_empty() {
                return Err(Error::invalid(
                    SHARE_WITH,
                    "the stack's AllowedReceivers is empty, so no image is shared by tag",
                ));
            }
            let receivers = ShareInput::parse(&input)?.receivers();
            let refused = list.refusals(&receivers, ancestors);
            if !refused.is_empty() {
                return Err(Error::invalid(
                    SHARE_WITH,
                    format!(
                        "not in the stack's AllowedReceivers: {}",
                        refused.join(", ")
                    ),
                ));
            }
        }
        Workflow::CopyImage => {
            let list = &settings.allowed_copy_targets;
            let target = input["targetAccountId"].as_str().unwrap_or_default();
            if !list.iter().any(|a| a == target) {
                return Err(Error::invalid(
                    COPY_TO,
                    if list.is_empty() {
                        "the stack's AllowedCopyTargets is empty, so no image is copied by tag"
                            .to_string()
                    } else {
                        format!("{target} is not in the stack's AllowedCopyTargets")
                    },
                ));
            }
        }
    }
    Ok(input)
}

/// A tag value may hold letters, digits, spaces and `_ . : / = + - @`, up to 256 characters.
pub fn tag_safe(text: &str) -> String {
    crate::names::restricted(text, " _.:/=+-@", ' ', 256)
}

/// What the status tag says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    None,
    Running(String),
    Done(String),
    Failed(String),
    Invalid,
}

pub fn parse_status(value: Option<&str>) -> Status {
    let Some(value) = value else {
        return Status::None;
    };
    let mut parts = value.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some("running"), Some(e)) => Status::Running(e.to_string()),
        (Some("done"), Some(e)) => Status::Done(e.to_string()),
        (Some("failed"), Some(e)) => Status::Failed(e.to_string()),
        (Some("invalid"), _) => Status::Invalid,
        _ => Status::None,
    }
}

/// What to do for a resource, from its status and the execution its tags now ask for. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the run under this name.
    Start,
    /// A run for this resource is under way (its state must be looked at).
    CheckRunning(String),
    /// This request already ran (done or failed): nothing to start.
    AlreadyRan,
}

pub fn decide(status: &Status, wanted: &str) -> Decision {
    match status {
        Status::Running(e) => Decision::CheckRunning(e.clone()),
        Status::Done(e) | Status::Failed(e) if e == wanted => Decision::AlreadyRan,
        _ => Decision::Start,
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TriggerSettings {
    pub migrate_state_machine_arn: String,
    pub share_state_machine_arn: String,
    pub copy_state_machine_arn: String,
    #[serde(default)]
    pub copy_profiles: HashMap<String, CopyProfile>,
    #[serde(default)]
    pub default_external_id: String,
}

impl TriggerSettings {
    /// Reads the state machines' ARNs and the copy profiles through `var` (once per cold start).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &str| crate::settings::required(&var, name);
        let copy_profiles = match var("AMIFLOW_COPY_PROFILES").filter(|v| !v.trim().is_empty()) {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                Error::Configuration(
                    format!("AMIFLOW_COPY_PROFILES is not a JSON map of copy profiles: {e}").into(),
                )
            })?,
            None => HashMap::new(),
        };
        Ok(TriggerSettings {
            migrate_state_machine_arn: required("AMIFLOW_MIGRATE_STATE_MACHINE_ARN")?,
            share_state_machine_arn: required("AMIFLOW_SHARE_STATE_MACHINE_ARN")?,
            copy_state_machine_arn: required("AMIFLOW_COPY_STATE_MACHINE_ARN")?,
            copy_profiles,
            default_external_id: var("AMIFLOW_COPY_EXTERNAL_ID").unwrap_or_default(),
        })
    }
}

/// The resources a Tag Change on Resource event names; a scheduled event names none (sweep all).
pub fn event_resources(event: &Value) -> Vec<String> {
    if event.get("detail-type").and_then(Value::as_str) != Some("Tag Change on Resource") {
        return Vec::new();
    }
    event["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect()
}

/// One line of the sweep's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub resource_id: String,
    pub status: String,
}

fn tags_of(tags: &[aws_sdk_ec2::types::Tag]) -> HashMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

async fn set_status(ec2: &aws_sdk_ec2::Client, resource: &str, value: &str) -> Result<()> {
    crate::tags::put(ec2, resource, STATUS, &tag_safe(value)).await
}

/// The ids of the resources an event names (the ARNs' last part: `instance/i-…`, `image/ami-…`),
/// by kind. Pure.
pub fn named_ids(only: &[String]) -> (Vec<String>, Vec<String>) {
    let ids = only.iter().filter_map(|arn| arn.rsplit('/').next());
    let (instances, images): (Vec<&str>, Vec<&str>) = ids
        .filter(|id| id.starts_with("i-") || id.starts_with("ami-"))
        .partition(|id| id.starts_with("i-"));
    let owned = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
    (owned(instances), owned(images))
}

/// The resources that ask for work: (resource id, workflow, tags), every page of them. `only`
/// limits the sweep to the resources a tag-change event names, and the questions to those ids.
async fn tagged(
    ec2: &aws_sdk_ec2::Client,
    only: &[String],
) -> Result<Vec<(String, Workflow, HashMap<String, String>)>> {
    let mut found = Vec::new();
    let (instance_ids, image_ids) = named_ids(only);
    let scoped = !only.is_empty();
    if !scoped || !instance_ids.is_empty() {
        let mut ask = ec2
            .describe_instances()
            .filters(Filter::builder().name("tag-key").values(MIGRATE_TO).build())
            .filters(crate::tags::live_instances_filter());
        if scoped {
            ask = ask.filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(instance_ids))
                    .build(),
            );
        }
        let mut pages = ask.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(aws("DescribeInstances"))?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(id) = instance.instance_id() {
                    found.push((
                        id.to_string(),
                        Workflow::MigrateInstance,
                        tags_of(instance.tags()),
                    ));
                }
            }
        }
    }
    if scoped && image_ids.is_empty() {
        return Ok(found);
    }
    for (key, workflow) in [
        (SHARE_WITH, Workflow::ShareImage),
        (COPY_TO, Workflow::CopyImage),
    ] {
        let mut ask = ec2
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("tag-key").values(key).build());
        if scoped {
            ask = ask.filters(
                Filter::builder()
                    .name("image-id")
                    .set_values(Some(image_ids.clone()))
                    .build(),
            );
        }
        let mut pages = ask.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(aws("DescribeImages"))?;
            for image in page.images() {
                if let Some(id) = image.image_id() {
                    found.push((id.to_string(), workflow, tags_of(image.tags())));
                }
            }
        }
    }
    Ok(found)
}

fn request_for(
    workflow: Workflow,
    id: &str,
    tags: &HashMap<String, String>,
    region: &str,
    settings: &TriggerSettings,
) -> (Vec<String>, Result<Value>) {
    match workflow {
        Workflow::MigrateInstance => {
            let target = tags.get(MIGRATE_TO).cloned().unwrap_or_default();
            let action = tags.get(SOURCE_ACTION).cloned();
            let values = vec![target.clone(), action.clone().unwrap_or_default()];
            (
                values,
                migrate_request(id, &target, action.as_deref(), region),
            )
        }
        Workflow::ShareImage => {
            let value = tags.get(SHARE_WITH).cloned().unwrap_or_default();
            (vec![value.clone()], share_request(id, &value))
        }
        Workflow::CopyImage => {
            let value = tags.get(COPY_TO).cloned().unwrap_or_default();
            (
                vec![value.clone()],
                copy_request(
                    id,
                    &value,
                    region,
                    &settings.copy_profiles,
                    &settings.default_external_id,
                ),
            )
        }
    }
}

/// A parsed request, admitted by the stack owner's lists (reading OU ancestry where a list needs it).
async fn admitted(deps: &crate::Deps, workflow: Workflow, input: Value) -> Result<Value> {
    let mut traced = HashMap::new();
    if workflow == Workflow::ShareImage {
        let share = ShareInput::parse(&input)?;
        let list = &deps.settings.allowed_receivers;
        traced = crate::allow::trace(&deps.organizations, list, &share.receivers()).await;
    }
    admit(workflow, input, &deps.settings, |arn| {
        traced.get(arn).cloned().flatten()
    })
}

/// Serves one invocation: a schedule sweeps every tagged resource, a tag change only the
/// resources it names.
pub async fn handle(
    deps: &crate::Deps,
    settings: &TriggerSettings,
    event: Value,
) -> Result<Vec<Outcome>> {
    sweep(deps, settings, &event_resources(&event)).await
}

/// Every resource that asks for work, each on its own: an error on one (a status tag naming an
/// execution that does not exist, a throttled call) is recorded on that resource as
/// `error:<name>` and the sweep goes on to the next.
pub async fn sweep(
    deps: &crate::Deps,
    settings: &TriggerSettings,
    only: &[String],
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for (id, workflow, tags) in tagged(&deps.ec2, only).await? {
        let status = match one(deps, settings, &id, workflow, &tags).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(resource = %id, error = %e, "the resource's request could not be handled; the sweep goes on");
                let status = tag_safe(&format!("error:{}:{e}", e.name()));
                if let Err(again) = set_status(&deps.ec2, &id, &status).await {
                    tracing::warn!(resource = %id, error = %again, "its status could not be recorded either");
                }
                status
            }
        };
        outcomes.push(Outcome {
            resource_id: id,
            status,
        });
    }
    Ok(outcomes)
}

/// One resource's request: refused (recorded as `invalid:`), already done, running, or started.
async fn one(
    deps: &crate::Deps,
    settings: &TriggerSettings,
    id: &str,
    workflow: Workflow,
    tags: &HashMap<String, String>,
) -> Result<String> {
    let (ec2, sfn, region) = (&deps.ec2, &deps.sfn, deps.region.as_str());
    let (values, request) = request_for(workflow, id, tags, region, settings);
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let name = execution_name(workflow, id, &value_refs);
    let request = match request {
        Ok(input) => admitted(deps, workflow, input).await,
        Err(e) => Err(e),
    };
    let input = match request {
        Ok(input) => input,
        // The tags ask for something amiflow or the stack's owner refuses: said on the resource.
        Err(e) => {
            let status = format!("invalid:{e}");
            if tags.get(STATUS).map(|s| tag_safe(s)) != Some(tag_safe(&status)) {
                set_status(ec2, id, &status).await?;
            }
            tracing::warn!(resource = %id, error = %e, "bad tag value; no run started");
            return Ok(tag_safe(&status));
        }
    };
    let arn = match workflow {
        Workflow::MigrateInstance => &settings.migrate_state_machine_arn,
        Workflow::ShareImage => &settings.share_state_machine_arn,
        Workflow::CopyImage => &settings.copy_state_machine_arn,
    };
    Ok(
        match decide(&parse_status(tags.get(STATUS).map(String::as_str)), &name) {
            Decision::AlreadyRan => tags.get(STATUS).cloned().unwrap_or_default(),
            Decision::CheckRunning(running) => {
                let execution_arn =
                    format!("{}:{running}", arn.replace(":stateMachine:", ":execution:"));
                let described = sfn
                    .describe_execution()
                    .execution_arn(&execution_arn)
                    .send()
                    .await
                    .map_err(aws("DescribeExecution"))?;
                let now = match described.status().as_str() {
                    "RUNNING" => format!("running:{running}"),
                    "SUCCEEDED" => format!("done:{running}"),
                    _ => format!(
                        "failed:{running}:{}",
                        described.error().unwrap_or("unknown")
                    ),
                };
                if now != tags.get(STATUS).cloned().unwrap_or_default() {
                    set_status(ec2, id, &now).await?;
                }
                now
            }
            Decision::Start => {
                let started = sfn
                    .start_execution()
                    .state_machine_arn(arn)
                    .name(&name)
                    .input(input.to_string())
                    .send()
                    .await
                    .map_err(aws("StartExecution"));
                match started {
                    Err(e) if !e.is_code("ExecutionAlreadyExists") => return Err(e),
                    _ => {}
                }
                let status = format!("running:{name}");
                set_status(ec2, id, &status).await?;
                tracing::info!(resource = %id, execution = %name, "run started");
                status
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{Instance, Reservation, Tag};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    fn tagged_instance(id: &str) -> Reservation {
        Reservation::builder()
            .instances(
                Instance::builder()
                    .instance_id(id)
                    .tags(Tag::builder().key(MIGRATE_TO).value("us-east-1b").build())
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn a_sweep_reads_every_page_and_an_event_asks_only_for_what_it_names() {
        let first = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.next_token().is_none())
            .then_output(|| {
                DescribeInstancesOutput::builder()
                    .reservations(tagged_instance("i-0aaaaaaaaaaaaaaa1"))
                    .next_token("page-2")
                    .build()
            });
        let second = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| r.next_token() == Some("page-2"))
            .then_output(|| {
                DescribeInstancesOutput::builder()
                    .reservations(tagged_instance("i-0aaaaaaaaaaaaaaa2"))
                    .build()
            });
        let images = mock!(aws_sdk_ec2::Client::describe_images)
            .then_output(|| DescribeImagesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&first, &second, &images]);
        let found = tagged(&ec2, &[]).await.unwrap();
        let ids: Vec<&str> = found.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]);
        assert_eq!(images.num_calls(), 2, "both image tags are asked for");

        // A tag change on one instance asks for that instance alone, and for no image.
        let scoped = mock!(aws_sdk_ec2::Client::describe_instances)
            .match_requests(|r| {
                r.filters().iter().any(|f| {
                    f.name() == Some("instance-id") && f.values() == ["i-0aaaaaaaaaaaaaaa2"]
                })
            })
            .then_output(|| {
                DescribeInstancesOutput::builder()
                    .reservations(tagged_instance("i-0aaaaaaaaaaaaaaa2"))
                    .build()
            });
        let no_images = mock!(aws_sdk_ec2::Client::describe_images)
            .then_output(|| DescribeImagesOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&scoped, &no_images]);
        let event = ["arn:aws:ec2:us-east-1:123456789012:instance/i-0aaaaaaaaaaaaaaa2".to_string()];
        let found = tagged(&ec2, &event).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(scoped.num_calls(), 1);
        assert_eq!(no_images.num_calls(), 0);
    }

    #[test]
    fn an_events_arns_name_instances_and_images() {
        let (instances, images) = named_ids(&[
            "arn:aws:ec2:us-east-1:123456789012:instance/i-0123".into(),
            "arn:aws:ec2:us-east-1::image/ami-0456".into(),
            "arn:aws:ec2:us-east-1:123456789012:volume/vol-1".into(),
        ]);
        assert_eq!(instances, ["i-0123"]);
        assert_eq!(images, ["ami-0456"]);
    }

    fn owner_allows(receivers: &str, copy_targets: &str, source_actions: &str) -> Settings {
        Settings::from_vars(|k| match k {
            "AMIFLOW_ALLOWED_RECEIVERS" => Some(receivers.to_string()),
            "AMIFLOW_ALLOWED_COPY_TARGETS" => Some(copy_targets.to_string()),
            "AMIFLOW_TAG_SOURCE_ACTIONS" => Some(source_actions.to_string()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn a_tag_asks_only_what_the_stack_owner_allows() {
        let none = owner_allows("", "", "");
        let share = share_request("ami-0123456789abcdef0", "222222222222").unwrap();
        let refused = admit(Workflow::ShareImage, share.clone(), &none, |_| None).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("amiflow:share-with: the stack's AllowedReceivers is empty"),
            "{refused}"
        );
        let some = owner_allows("222222222222", "333333333333", "keep,terminate");
        assert_eq!(
            admit(Workflow::ShareImage, share, &some, |_| None).unwrap()["accountIds"][0],
            "222222222222"
        );
        let other = share_request("ami-0123456789abcdef0", "222222222222,444444444444").unwrap();
        let refused = admit(Workflow::ShareImage, other, &some, |_| None).unwrap_err();
        assert!(
            refused.to_string().contains("accountIds[1] 444444444444"),
            "{refused}"
        );

        let copy = json!({"targetAccountId": "333333333333"});
        assert!(admit(Workflow::CopyImage, copy.clone(), &none, |_| None).is_err());
        assert!(admit(Workflow::CopyImage, copy, &some, |_| None).is_ok());
        let elsewhere = admit(
            Workflow::CopyImage,
            json!({"targetAccountId": "555555555555"}),
            &some,
            |_| None,
        )
        .unwrap_err();
        assert!(
            elsewhere
                .to_string()
                .starts_with("amiflow:copy-to: 555555555555"),
            "{elsewhere}"
        );
    }

    #[test]
    fn a_tag_stops_terminates_or_reboots_only_where_the_owner_opted_in() {
        let stop = migrate_request(
            "i-0123456789abcdef0",
            "us-east-1b",
            Some("stop"),
            "us-east-1",
        )
        .unwrap();
        let keep = migrate_request("i-0123456789abcdef0", "us-east-1b", None, "us-east-1").unwrap();
        let default = owner_allows("", "", "");
        let refused =
            admit(Workflow::MigrateInstance, stop.clone(), &default, |_| None).unwrap_err();
        assert_eq!(refused.to_string(), "amiflow:source-action: stop is not among the stack's TagSourceActions (keep); start the run directly");
        let admitted = admit(Workflow::MigrateInstance, keep.clone(), &default, |_| None).unwrap();
        assert_eq!(
            admitted["noReboot"], true,
            "no reboot unless TagSourceActions says reboot"
        );
        let opted = owner_allows("", "", "stop,reboot");
        let admitted = admit(Workflow::MigrateInstance, stop, &opted, |_| None).unwrap();
        assert_eq!(admitted.get("noReboot"), None);
        assert_eq!(admitted["sourceAction"], "stop");
    }

    #[test]
    fn execution_names_are_stable_bounded_and_differ_by_request() {
        let a = execution_name(
            Workflow::MigrateInstance,
            "i-0123456789abcdef0",
            &["us-east-1b", ""],
        );
        assert_eq!(
            a,
            execution_name(
                Workflow::MigrateInstance,
                "i-0123456789abcdef0",
                &["us-east-1b", ""]
            )
        );
        assert_ne!(
            a,
            execution_name(
                Workflow::MigrateInstance,
                "i-0123456789abcdef0",
                &["us-east-1c", ""]
            )
        );
        assert_ne!(
            a,
            execution_name(
                Workflow::MigrateInstance,
                "i-0123456789abcdef0",
                &["us-east-1b", "stop"]
            )
        );
        assert!(a.starts_with("migrate-i-0123456789abcdef0-") && a.len() <= 80);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn migrate_tags_become_the_workflow_input() {
        let v = migrate_request(
            "i-0123456789abcdef0",
            "us-east-1b",
            Some("stop"),
            "us-east-1",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b", "sourceAction": "stop"})
        );
        let v = migrate_request(
            "i-0123456789abcdef0",
            "subnet-0123456789abcdef0",
            None,
            "us-east-1",
        )
        .unwrap();
        assert_eq!(v["targetSubnetId"], "subnet-0123456789abcdef0");
        let v = migrate_request("i-0123456789abcdef0", "use1-az2", None, "us-east-1").unwrap();
        assert_eq!(v["targetAvailabilityZone"], "use1-az2");
        let bad =
            migrate_request("i-0123456789abcdef0", "the other AZ", None, "us-east-1").unwrap_err();
        assert!(bad.to_string().starts_with("amiflow:migrate-to:"), "{bad}");
        let bad =
            migrate_request("i-0123456789abcdef0", "eu-west-1a", None, "us-east-1").unwrap_err();
        assert!(bad.to_string().starts_with("amiflow:migrate-to:"), "{bad}");
        let bad = migrate_request(
            "i-0123456789abcdef0",
            "us-east-1b",
            Some("explode"),
            "us-east-1",
        )
        .unwrap_err();
        assert!(
            bad.to_string().starts_with("amiflow:source-action:"),
            "{bad}"
        );
    }

    #[test]
    fn share_tags_sort_receivers_by_kind() {
        let v = share_request(
            "ami-0123456789abcdef0",
            "210987654321, arn:aws:organizations::123456789012:organization/o-abcdef1234,arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-cdef5678",
        )
        .unwrap();
        assert_eq!(v["accountIds"], json!(["210987654321"]));
        assert_eq!(v["organizationArns"].as_array().unwrap().len(), 1);
        assert_eq!(v["organizationalUnitArns"].as_array().unwrap().len(), 1);
        assert!(share_request("ami-0123456789abcdef0", "2109876543")
            .unwrap_err()
            .to_string()
            .starts_with("amiflow:share-with:"));
        assert!(share_request("ami-0123456789abcdef0", "").is_err());
    }

    #[test]
    fn copy_tags_take_the_explicit_form_or_a_profile() {
        let value = "210987654321:arn:aws:iam::210987654321:role/amiflow-copy:arn:aws:kms:us-east-1:210987654321:key/11111111-2222-3333-4444-555555555555";
        let v = copy_request(
            "ami-0123456789abcdef0",
            value,
            "us-east-1",
            &HashMap::new(),
            "ext",
        )
        .unwrap();
        assert_eq!(
            v["targetRoleArn"],
            "arn:aws:iam::210987654321:role/amiflow-copy"
        );
        assert_eq!(
            v["targetKmsKeyId"],
            "arn:aws:kms:us-east-1:210987654321:key/11111111-2222-3333-4444-555555555555"
        );
        let profiles = HashMap::from([(
            "prod".to_string(),
            CopyProfile {
                target_account_id: "210987654321".into(),
                target_role_arn: "arn:aws:iam::210987654321:role/amiflow-copy".into(),
                external_id: "ext-prod".into(),
                target_kms_key_id: "alias/prod".into(),
            },
        )]);
        assert_eq!(
            copy_request(
                "ami-0123456789abcdef0",
                "prod",
                "us-east-1",
                &profiles,
                "ext"
            )
            .unwrap()["externalId"],
            "ext-prod"
        );
        let e = copy_request(
            "ami-0123456789abcdef0",
            "staging",
            "us-east-1",
            &profiles,
            "ext",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("amiflow:copy-to:"), "{e}");
        // Without the stack's external id the explicit form cannot assume the role: refused.
        let e = copy_request(
            "ami-0123456789abcdef0",
            value,
            "us-east-1",
            &HashMap::new(),
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("CopyExternalId"), "{e}");
    }

    #[test]
    fn decisions_start_once_and_wait_for_a_running_run() {
        assert_eq!(decide(&Status::None, "e1"), Decision::Start);
        assert_eq!(
            decide(&parse_status(Some("running:e1")), "e1"),
            Decision::CheckRunning("e1".into())
        );
        assert_eq!(
            decide(&parse_status(Some("running:e0")), "e1"),
            Decision::CheckRunning("e0".into())
        );
        assert_eq!(
            decide(&parse_status(Some("done:e1")), "e1"),
            Decision::AlreadyRan
        );
        assert_eq!(
            decide(&parse_status(Some("failed:e1:LaunchFailed")), "e1"),
            Decision::AlreadyRan
        );
        assert_eq!(
            decide(&parse_status(Some("done:e0")), "e1"),
            Decision::Start,
            "a new request after a finished one"
        );
        assert_eq!(
            decide(&parse_status(Some("invalid:bad")), "e1"),
            Decision::Start
        );
        assert_eq!(tag_safe("a\"b{c}"), "a b c ");
    }
}
