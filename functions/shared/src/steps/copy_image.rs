//! copy-image: runs in the target account through a role there (assumed with an external id) and
//! copies the shared image into it, re-encrypted with the target's own key; re-applies the
//! source's tags there (tags are not copied across accounts); and, on rollback, removes the copy.

use aws_sdk_ec2::types::ResourceType;
use serde::{Deserialize, Serialize};

use crate::error::{answered_id, aws, Error, Result};
use crate::handoff::SharePlan;
use crate::ownership;
use crate::receivers::CopyInput;
use crate::resources::client_token;
use crate::resources::images::{self, remove_image};
use crate::tags::{self, Tag};

/// The source image's id, as a tag on the copy.
pub const SOURCE_IMAGE: &str = "amiflow:source-image";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyRequest {
    pub execution: String,
    pub plan: SharePlan,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagRequest {
    pub execution: String,
    pub plan: SharePlan,
    pub copy: CopyOutput,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveRequest {
    pub execution: String,
    /// When the execution started (`$$.Execution.StartTime`): no image made before is the run's.
    #[serde(default)]
    pub started_at: Option<String>,
    pub plan: SharePlan,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum CopyImageRequest {
    Copy(Box<CopyRequest>),
    Tag(Box<TagRequest>),
    Remove(Box<RemoveRequest>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyOutput {
    pub target_image_id: String,
    pub owner_account_id: String,
    pub kms_key_id: String,
    /// For wait-image's polling fallback, which looks at the copy through the same role.
    pub role_arn: String,
    pub external_id: String,
}

impl CopyImageRequest {
    /// The workflow input, as the plan parsed and checked it: the role to act through and the
    /// copy to make.
    pub fn input(&self) -> Result<&CopyInput> {
        let plan = match self {
            CopyImageRequest::Copy(r) => &r.plan,
            CopyImageRequest::Tag(r) => &r.plan,
            CopyImageRequest::Remove(r) => &r.plan,
        };
        plan.copy.as_ref().ok_or_else(|| {
            Error::invalid(
                "plan.copy",
                "the plan holds no CopyImage input (it comes from ShareImage's prepareCopy)",
            )
        })
    }
}

/// amiflow's tags on the copy and its snapshots, given when CopyImage creates them. Pure.
pub fn own_tags(plan: &SharePlan, execution: &str) -> [Tag; 2] {
    [
        Tag::new(tags::EXECUTION, execution),
        Tag::new(SOURCE_IMAGE, &plan.image_id),
    ]
}

/// The source's tags the copy gets afterwards (when asked): never an `amiflow:` key, which the
/// target role may set only within CopyImage. Pure.
pub fn copy_tags(input: &CopyInput, plan: &SharePlan) -> Vec<Tag> {
    let source: &[Tag] = if input.copy_tags { &plan.tags } else { &[] };
    tags::carried_with(source, &[])
}

pub async fn copy(
    target: &aws_sdk_ec2::Client,
    input: &CopyInput,
    request: &CopyRequest,
) -> Result<CopyOutput> {
    let execution = request.execution.as_str();
    let own = own_tags(&request.plan, execution);
    let copied = target
        .copy_image()
        .source_image_id(&request.plan.image_id)
        .source_region(&input.source_region)
        .name(&input.name)
        .description(format!(
            "amiflow: copy of {} from {}",
            request.plan.image_id, request.plan.owner_account
        ))
        .encrypted(true)
        .kms_key_id(&input.target_kms_key_id)
        .client_token(client_token(execution, "copy"))
        // The copy's snapshots carry the run's tag from the start: a rollback removes only what
        // carries it, and the copy may fail before TagCopy.
        .tag_specifications(tags::spec(ResourceType::Image, &own))
        .tag_specifications(tags::spec(ResourceType::Snapshot, &own))
        .send()
        .await
        .map_err(aws("CopyImage"))?;
    let image_id = answered_id("CopyImage", "ImageId", copied.image_id())?;
    tracing::info!(source = %request.plan.image_id, target_image_id = %image_id, account = %input.target_account_id, execution, "copy started in the target account");
    Ok(CopyOutput {
        target_image_id: image_id,
        owner_account_id: input.target_account_id.clone(),
        kms_key_id: input.target_kms_key_id.clone(),
        role_arn: input.target_role_arn.clone(),
        external_id: input.external_id.clone(),
    })
}

pub async fn tag(
    target: &aws_sdk_ec2::Client,
    input: &CopyInput,
    request: &TagRequest,
) -> Result<CopyOutput> {
    let image_id = &request.copy.target_image_id;
    let image = images::describe(target, image_id).await?;
    let mut resources = vec![image_id.clone()];
    resources.extend(
        image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string)),
    );
    let key = image
        .block_device_mappings()
        .iter()
        .find_map(|m| m.ebs()?.kms_key_id().map(str::to_string))
        .unwrap_or_else(|| request.copy.kms_key_id.clone());
    let tags = copy_tags(input, &request.plan);
    if !tags.is_empty() {
        target
            .create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(tags.iter().map(Tag::to_sdk).collect()))
            .send()
            .await
            .map_err(aws("CreateTags"))?;
    }
    Ok(CopyOutput {
        kms_key_id: key,
        ..request.copy.clone()
    })
}

/// Rollback in the target account: every image this execution made there, and its snapshots.
/// An image carrying the run's tag is the run's only if it has the copy's name and was made after
/// the run started (`ownership`); anything else is left alone.
pub async fn remove(
    target: &aws_sdk_ec2::Client,
    input: &CopyInput,
    execution: &str,
    started_at: Option<&str>,
) -> Result<Vec<String>> {
    let started_at = ownership::parse_start(started_at);
    let mut removed = Vec::new();
    for image in &images::of_execution(target, execution).await? {
        let Some(id) = image.image_id() else { continue };
        if !ownership::is_runs_copy(image, |name| name == input.name, started_at.as_ref()) {
            tracing::warn!(
                image_id = id,
                execution,
                "carries this execution's tag but the run did not make it; left alone"
            );
            continue;
        }
        remove_image(target, id).await?;
        removed.push(id.to_string());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn input(copy_tags: bool) -> CopyInput {
        CopyInput::parse(
            &json!({
                "sourceImageId": "ami-0123456789abcdef0", "sourceRegion": "us-east-1", "targetAccountId": "210987654321",
                "targetRoleArn": "arn:aws:iam::210987654321:role/amiflow-copy", "externalId": "ext-1",
                "targetKmsKeyId": "alias/amiflow", "name": "web copy", "copyTags": copy_tags
            }),
            "us-east-1",
        )
        .unwrap()
    }

    use crate::handoff::tests::sample_plan as plan;

    #[test]
    fn the_copy_carries_the_source_tags_only_when_asked() {
        assert_eq!(copy_tags(&input(true), &plan()), [Tag::new("app", "web")]);
        assert!(copy_tags(&input(false), &plan()).is_empty());
        assert_eq!(
            own_tags(&plan(), "run-1"),
            [
                Tag::new(tags::EXECUTION, "run-1"),
                Tag::new(SOURCE_IMAGE, "ami-0123456789abcdef0")
            ]
        );
    }
}

/// What copy-image answers, by action.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CopyImageOutput {
    Copy(CopyOutput),
    #[serde(rename_all = "camelCase")]
    Removed {
        removed_image_ids: Vec<String>,
    },
}

/// Acts in the target account through the input's role.
pub async fn run(deps: &crate::Deps, request: CopyImageRequest) -> Result<CopyImageOutput> {
    let input = request.input()?;
    let target = deps
        .ec2_as(&input.target_role_arn, &input.external_id)
        .await?;
    Ok(match &request {
        CopyImageRequest::Copy(r) => CopyImageOutput::Copy(copy(&target, input, r).await?),
        CopyImageRequest::Tag(r) => CopyImageOutput::Copy(tag(&target, input, r).await?),
        CopyImageRequest::Remove(r) => CopyImageOutput::Removed {
            removed_image_ids: remove(&target, input, &r.execution, r.started_at.as_deref())
                .await?,
        },
    })
}

#[cfg(test)]
mod mocked {
    use super::*;
    use serde_json::Value;

    use crate::test_support::{image, images};
    use aws_sdk_ec2::operation::copy_image::CopyImageOutput as SdkCopy;
    use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
    use aws_sdk_ec2::operation::delete_snapshot::DeleteSnapshotOutput;
    use aws_sdk_ec2::operation::deregister_image::DeregisterImageOutput;
    use aws_sdk_ec2::types::ImageState;
    use aws_sdk_ec2::Client;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use serde_json::json;

    fn input() -> Value {
        json!({
            "sourceImageId": "ami-0123456789abcdef0", "sourceRegion": "us-east-1", "targetAccountId": "210987654321",
            "targetRoleArn": "arn:aws:iam::210987654321:role/amiflow-copy", "externalId": "ext-1",
            "targetKmsKeyId": "alias/amiflow", "name": "web copy"
        })
    }

    use crate::handoff::tests::sample_plan as plan;

    #[tokio::test]
    async fn copies_encrypted_with_the_target_key_and_a_stable_token() {
        let rule = mock!(Client::copy_image)
            .match_requests(|r| {
                r.encrypted() == Some(true)
                    && r.kms_key_id() == Some("alias/amiflow")
                    && r.client_token() == Some(client_token("run-1", "copy").as_str())
                    && r.source_image_id() == Some("ami-0123456789abcdef0")
                    && r.name() == Some("web copy")
            })
            .then_output(|| SdkCopy::builder().image_id("ami-0target").build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&rule]);
        let parsed = CopyInput::parse(&input(), "us-east-1").unwrap();
        let request = CopyRequest {
            execution: "run-1".into(),
            plan: plan().with_copy(parsed.clone()),
        };
        let out = copy(&ec2, &parsed, &request).await.unwrap();
        assert_eq!(
            (out.target_image_id.as_str(), out.owner_account_id.as_str()),
            ("ami-0target", "210987654321")
        );
        assert_eq!(out.role_arn, "arn:aws:iam::210987654321:role/amiflow-copy");
    }

    #[tokio::test]
    async fn tags_the_copy_and_its_snapshots_in_the_target() {
        let describe = mock!(Client::describe_images).then_output(|| {
            images(vec![image(
                "ami-0target",
                ImageState::Available,
                &[("/dev/xvda", "snap-t1")],
            )])
        });
        let tags_rule = mock!(Client::create_tags)
            .match_requests(|r| {
                r.resources() == ["ami-0target", "snap-t1"]
                    && r.tags().iter().any(|t| t.key() == Some("app"))
            })
            .then_output(|| CreateTagsOutput::builder().build());
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&describe, &tags_rule]);
        let copy_out = CopyOutput {
            target_image_id: "ami-0target".into(),
            owner_account_id: "210987654321".into(),
            kms_key_id: "alias/amiflow".into(),
            role_arn: "r".into(),
            external_id: "e".into(),
        };
        let parsed = CopyInput::parse(&input(), "us-east-1").unwrap();
        let request = TagRequest {
            execution: "run-1".into(),
            plan: plan().with_copy(parsed.clone()),
            copy: copy_out,
        };
        tag(&ec2, &parsed, &request).await.unwrap();
        assert_eq!(tags_rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn rollback_removes_the_runs_copies_in_the_target() {
        let describe = mock!(Client::describe_images).then_compute_output(|req| {
            if req.filters().is_empty() {
                images(vec![image(
                    "ami-0target",
                    ImageState::Available,
                    &[("/dev/xvda", "snap-t1")],
                )])
            } else {
                // The run's copy, and an image of the target account someone gave the run's tag.
                let mut copy = image("ami-0target", ImageState::Pending, &[]);
                copy.name = Some("web copy".into());
                let mut victim = image("ami-0victim", ImageState::Available, &[]);
                victim.name = Some("golden".into());
                images(vec![copy, victim])
            }
        });
        let deregister = mock!(Client::deregister_image)
            .then_output(|| DeregisterImageOutput::builder().build());
        let delete =
            mock!(Client::delete_snapshot).then_output(|| DeleteSnapshotOutput::builder().build());
        let no_more = mock!(Client::describe_snapshots).then_output(|| {
            aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput::builder().build()
        });
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&describe, &deregister, &delete, &no_more]
        );
        let parsed = CopyInput::parse(&input(), "us-east-1").unwrap();
        assert_eq!(
            remove(&ec2, &parsed, "run-1", None).await.unwrap(),
            ["ami-0target"]
        );
        assert_eq!([deregister.num_calls(), delete.num_calls()], [1, 1]);
    }
}
