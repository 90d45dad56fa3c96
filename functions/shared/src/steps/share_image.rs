//! share-image: plans a share (checks, the image's snapshots and keys, re-encryption of an image
//! under an AWS managed key), then adds or removes launch and createVolumePermission permissions.

use aws_sdk_ec2::types::{
    Filter, LaunchPermission, LaunchPermissionModifications, OperationType, ResourceType,
    SnapshotAttributeName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::allow;
use crate::error::{answered_id, aws, Error, Result};
use crate::handoff::SharePlan;
use crate::ownership;
use crate::receivers::{CopyInput, Receivers, ShareInput, UnshareInput};
use crate::resources::client_token;
use crate::resources::images::{
    keys_of, launch_permissions, own_image, remove_image, require_available,
};
use crate::resources::keys;
use crate::settings::Settings;
use crate::tags::{self, Tag};

/// What was added (share) or removed (unshare), so that it can be undone exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRecord {
    pub image_id: String,
    pub launch_permissions: Vec<Value>,
    pub snapshot_permissions: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareRequest {
    pub execution: String,
    pub input: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRequest {
    pub execution: String,
    pub plan: SharePlan,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum ShareImageRequest {
    PrepareShare(PrepareRequest),
    PrepareUnshare(PrepareRequest),
    PrepareCopy(PrepareRequest),
    Share(PlanRequest),
    Unshare(PlanRequest),
    /// Rollback: removes the re-encrypted copy this execution made, if any.
    RemoveCopy(PrepareRequest),
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ShareImageOutput {
    Plan(Box<SharePlan>),
    Permissions(PermissionRecord),
    #[serde(rename_all = "camelCase")]
    Removed {
        removed_image_ids: Vec<String>,
    },
}

/// The name of the re-encrypted copy of `image_id` that `execution` makes: unique to the run.
pub fn reencrypted_name(image_id: &str, execution: &str) -> String {
    format!(
        "{image_id}-reencrypted-{}",
        &client_token(execution, "reencrypt")[8..20]
    )
}

/// The re-encrypted copy this execution already made, if any: tagged with the execution, and
/// proved the run's by its name (a tag alone proves nothing).
async fn own_copy(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    name: &str,
) -> Result<Option<String>> {
    let found = ec2
        .describe_images()
        .owners("self")
        .filters(tags::execution_filter(execution))
        .filters(
            Filter::builder()
                .name("tag:amiflow:purpose")
                .values("reencrypted-share")
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeImages"))?;
    Ok(found
        .images()
        .iter()
        .filter(|i| ownership::is_runs_image(i, name, None))
        .find_map(|i| i.image_id().map(str::to_string)))
}

/// Refuses a public share that the account's block public access setting would stop, before
/// anything changes: `PublicSharingBlocked`, naming the setting, its state, and who manages it. Pure.
pub fn public_sharing_allowed(
    setting: &str,
    region: &str,
    state: &str,
    managed_by: Option<&str>,
) -> Result<()> {
    if state == "unblocked" {
        return Ok(());
    }
    let how = if managed_by == Some("declarative-policy") {
        "a declarative policy of the organization manages it, so only the organization can lift it"
    } else {
        "the account manages it; an administrator can lift it for the share and set it again afterwards"
    };
    Err(Error::PublicSharingBlocked(format!(
        "public: block public access for {setting} is {state} in {region} ({how}); the image was not shared"
    ).into()))
}

/// Whether the account lets this image (and its snapshots, if they are shared too) be made public
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-public-access-to-amis.html,
/// https://docs.aws.amazon.com/ebs/latest/userguide/block-public-access-snapshots.html).
async fn require_public_sharing(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshots: bool,
) -> Result<()> {
    let images = ec2
        .get_image_block_public_access_state()
        .send()
        .await
        .map_err(aws("GetImageBlockPublicAccessState"))?;
    public_sharing_allowed(
        "AMIs",
        region,
        images
            .image_block_public_access_state()
            .unwrap_or("unblocked"),
        images.managed_by().map(|m| m.as_str()),
    )?;
    if snapshots {
        let snaps = ec2
            .get_snapshot_block_public_access_state()
            .send()
            .await
            .map_err(aws("GetSnapshotBlockPublicAccessState"))?;
        public_sharing_allowed(
            "snapshots",
            region,
            snaps.state().map(|s| s.as_str()).unwrap_or("unblocked"),
            snaps.managed_by().map(|m| m.as_str()),
        )?;
    }
    Ok(())
}

/// The plan of a ShareImage run: the image, its keys and the receivers, checked before any change;
/// an image under an AWS managed key is first copied under `reencryptKmsKeyId`.
pub async fn prepare_share(
    ec2: &aws_sdk_ec2::Client,
    kms: &aws_sdk_kms::Client,
    settings: &Settings,
    region: &str,
    execution: &str,
    input: ShareInput,
) -> Result<SharePlan> {
    let source = own_image(ec2, "imageId", &input.sharing.image_id).await?;
    require_available("imageId", &input.sharing.image_id, &source.state)?;
    let receivers = input.receivers_for(&source.owner)?;
    let (customer, managed) = keys_of(ec2, kms, &source.snapshot_ids).await?;
    // Keys the owner did not mark are refused now, before any change (grant-kms checks again).
    for key in &customer {
        keys::require_shareable(kms, key).await?;
    }
    let encrypted = !customer.is_empty() || !managed.is_empty();
    if input.sharing.receivers.public && encrypted {
        return Err(Error::EncryptedImageNotPublic(format!(
            "public: {} is encrypted; encrypted images cannot be made public (share with accounts, organizations or OUs)",
            input.sharing.image_id
        ).into()));
    }
    if input.sharing.receivers.public {
        require_public_sharing(ec2, region, input.sharing.share_snapshots).await?;
    }
    if managed.is_empty() {
        return Ok(SharePlan::of(
            source,
            customer,
            receivers,
            input.sharing.share_snapshots,
            settings,
        ));
    }
    let Some(key) = &input.reencrypt_kms_key_id else {
        return Err(Error::ManagedKeyNeedsReencryption(format!(
            "reencryptKmsKeyId: {} is encrypted with the AWS managed key {}, which other accounts can never use; give a customer managed key to re-encrypt a copy with, and the copy is shared",
            input.sharing.image_id,
            managed.join(", ")
        ).into()));
    };
    keys::shareable_key(kms, key).await?;
    let copy_name = reencrypted_name(&input.sharing.image_id, execution);
    let copy_id = match own_copy(ec2, execution, &copy_name).await? {
        Some(id) => id,
        None => {
            let own = [
                Tag::new(tags::EXECUTION, execution),
                Tag::new("amiflow:purpose", "reencrypted-share"),
                Tag::new("amiflow:reencrypted-from", &input.sharing.image_id),
            ];
            ec2.copy_image()
                .source_image_id(&input.sharing.image_id)
                .source_region(region)
                .name(&copy_name)
                .description(format!(
                    "amiflow: {} re-encrypted with a customer managed key for sharing",
                    input.sharing.image_id
                ))
                .encrypted(true)
                .kms_key_id(key)
                .client_token(client_token(execution, "reencrypt"))
                // Its snapshots too, from the start: a rollback removes only what is tagged.
                .tag_specifications(tags::spec(ResourceType::Image, &own))
                .tag_specifications(tags::spec(ResourceType::Snapshot, &own))
                .send()
                .await
                .map_err(aws("CopyImage"))
                .and_then(|made| answered_id("CopyImage", "ImageId", made.image_id()))?
        }
    };
    let copy = own_image(ec2, "reencryptKmsKeyId", &copy_id).await?;
    if !matches!(copy.state.as_str(), "pending" | "available") {
        return Err(Error::ImageFailed(
            format!(
                "the re-encrypted copy {copy_id} of {} is {}",
                input.sharing.image_id, copy.state
            )
            .into(),
        ));
    }
    let (keys, still_managed) = keys_of(ec2, kms, &copy.snapshot_ids).await?;
    if copy.state == "available" && !still_managed.is_empty() {
        return Err(Error::ManagedKeyNeedsReencryption(
            format!("reencryptKmsKeyId: {key} is itself an AWS managed key").into(),
        ));
    }
    tracing::info!(image_id = %input.sharing.image_id, copy_id = %copy_id, state = %copy.state, "re-encrypted copy for sharing");
    Ok(SharePlan {
        image_id: copy_id,
        reencrypted: true,
        image_state: copy.state,
        snapshot_ids: copy.snapshot_ids,
        kms_key_ids: keys,
        ..SharePlan::of(
            source,
            Vec::new(),
            receivers,
            input.sharing.share_snapshots,
            settings,
        )
    })
}

/// The plan of an UnshareImage run: what to take back from the receivers the input names.
pub async fn prepare_unshare(
    ec2: &aws_sdk_ec2::Client,
    kms: &aws_sdk_kms::Client,
    settings: &Settings,
    request: PrepareRequest,
) -> Result<SharePlan> {
    let input = UnshareInput::parse(&request.input)?;
    let image = own_image(ec2, "imageId", &input.image_id).await?;
    let (customer, _) = keys_of(ec2, kms, &image.snapshot_ids).await?;
    let receivers = input.receivers();
    Ok(SharePlan::of(
        image,
        customer,
        receivers,
        input.share_snapshots,
        settings,
    ))
}

/// The plan of a CopyImage run: the source shared with the target account for its copy.
pub async fn prepare_copy(
    ec2: &aws_sdk_ec2::Client,
    kms: &aws_sdk_kms::Client,
    settings: &Settings,
    input: CopyInput,
) -> Result<SharePlan> {
    let image = own_image(ec2, "sourceImageId", &input.source_image_id).await?;
    require_available("sourceImageId", &input.source_image_id, &image.state)?;
    if input.target_account_id == image.owner {
        return Err(Error::invalid(
            "targetAccountId",
            format!("{} is the image's own account", image.owner),
        ));
    }
    if image.product_codes > 0 {
        return Err(Error::BillingProductNotCopyable(format!(
            "sourceImageId: {} has a billing product (Marketplace or licensed OS); AWS does not copy such images to another account",
            input.source_image_id
        ).into()));
    }
    let (customer, managed) = keys_of(ec2, kms, &image.snapshot_ids).await?;
    for key in &customer {
        keys::require_shareable(kms, key).await?;
    }
    if !managed.is_empty() {
        return Err(Error::ManagedKeyNeedsReencryption(format!(
            "sourceImageId: {} is encrypted with the AWS managed key {}, which {} can never use; share it first with ShareImage and reencryptKmsKeyId, then copy the re-encrypted image",
            input.source_image_id,
            managed.join(", "),
            input.target_account_id
        ).into()));
    }
    let target = Receivers {
        account_ids: vec![input.target_account_id.clone()],
        ..Default::default()
    };
    Ok(SharePlan {
        keep_sharing: input.keep_sharing,
        access_propagation_seconds: settings.access_propagation_seconds,
        ..SharePlan::of(image, customer, target, true, settings)
    }
    .with_copy(input))
}

fn describe_permission(p: &LaunchPermission) -> Value {
    if let Some(a) = p.user_id() {
        serde_json::json!({"userId": a})
    } else if let Some(a) = p.organization_arn() {
        serde_json::json!({"organizationArn": a})
    } else if let Some(a) = p.organizational_unit_arn() {
        serde_json::json!({"organizationalUnitArn": a})
    } else {
        serde_json::json!({"group": "all"})
    }
}

async fn change_permissions(
    ec2: &aws_sdk_ec2::Client,
    plan: &SharePlan,
    operation: OperationType,
) -> Result<PermissionRecord> {
    let removing = operation == OperationType::Remove;
    let mut permissions = launch_permissions(&plan.receivers);
    if removing {
        // An undo may follow a share that never got this far: remove only what is there, so that
        // undoing nothing calls nothing (and needs no permission the share itself lacked).
        let present = ec2
            .describe_image_attribute()
            .image_id(&plan.image_id)
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
            .send()
            .await
            .map_err(aws("DescribeImageAttribute"))?;
        let present: Vec<Value> = present
            .launch_permissions()
            .iter()
            .map(describe_permission)
            .collect();
        permissions.retain(|p| present.contains(&describe_permission(p)));
    }
    if !permissions.is_empty() {
        let modifications = if removing {
            LaunchPermissionModifications::builder()
                .set_remove(Some(permissions.clone()))
                .build()
        } else {
            LaunchPermissionModifications::builder()
                .set_add(Some(permissions.clone()))
                .build()
        };
        ec2.modify_image_attribute()
            .image_id(&plan.image_id)
            .launch_permission(modifications)
            .send()
            .await
            .map_err(aws("ModifyImageAttribute"))?;
    }
    let mut record = PermissionRecord {
        image_id: plan.image_id.clone(),
        launch_permissions: permissions.iter().map(describe_permission).collect(),
        snapshot_permissions: Vec::new(),
    };
    // createVolumePermission takes account ids and `all`; organizations and OUs launch through the
    // image's own permission.
    let accounts = &plan.receivers.account_ids;
    if plan.share_snapshots && (!accounts.is_empty() || plan.receivers.public) {
        for snapshot in &plan.snapshot_ids {
            let (mut users, mut public) = (accounts.clone(), plan.receivers.public);
            if removing {
                let present = ec2
                    .describe_snapshot_attribute()
                    .snapshot_id(snapshot)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .send()
                    .await
                    .map_err(aws("DescribeSnapshotAttribute"))?;
                let granted = present.create_volume_permissions();
                users.retain(|u| granted.iter().any(|g| g.user_id() == Some(u.as_str())));
                public = public
                    && granted
                        .iter()
                        .any(|g| g.group().is_some_and(|x| x.as_str() == "all"));
                if users.is_empty() && !public {
                    continue;
                }
            }
            let mut call = ec2
                .modify_snapshot_attribute()
                .snapshot_id(snapshot)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .operation_type(operation.clone())
                .set_user_ids(Some(users.clone()));
            if public {
                call = call.group_names("all");
            }
            call.send().await.map_err(aws("ModifySnapshotAttribute"))?;
            record.snapshot_permissions.push(
                serde_json::json!({"snapshotId": snapshot, "userIds": users, "public": public}),
            );
        }
    }
    tracing::info!(image_id = %plan.image_id, operation = operation.as_str(), receivers = plan.receivers.count(), "permissions changed");
    Ok(record)
}

/// Rollback: the re-encrypted copy this execution made of `source_image_id`, if it made one.
pub async fn remove_copy(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    source_image_id: Option<&str>,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // Without a source image id the run was refused before it could copy anything.
    let Some(source) = source_image_id else {
        return Ok(removed);
    };
    if let Some(copy) = own_copy(ec2, execution, &reencrypted_name(source, execution)).await? {
        remove_image(ec2, &copy).await?;
        removed.push(copy);
    }
    Ok(removed)
}

pub async fn run(deps: &crate::Deps, request: ShareImageRequest) -> Result<ShareImageOutput> {
    let (ec2, kms, settings, region) = (&deps.ec2, &deps.kms, &deps.settings, deps.region.as_str());
    Ok(match request {
        // The workflow's input is parsed here, once; what follows carries the plan.
        ShareImageRequest::PrepareShare(r) => {
            let input = ShareInput::parse(&r.input)?;
            // The stack owner's list is checked before anything else, whoever started the run.
            allow::check_receivers(
                &deps.organizations,
                &settings.allowed_receivers,
                &input.receivers(),
            )
            .await?;
            let plan = prepare_share(ec2, kms, settings, region, &r.execution, input);
            ShareImageOutput::Plan(Box::new(plan.await?))
        }
        ShareImageRequest::PrepareUnshare(r) => {
            ShareImageOutput::Plan(Box::new(prepare_unshare(ec2, kms, settings, r).await?))
        }
        ShareImageRequest::PrepareCopy(r) => {
            let input = CopyInput::parse(&r.input, region)?;
            allow::check_copy_target(&settings.allowed_copy_targets, &input.target_account_id)?;
            ShareImageOutput::Plan(Box::new(prepare_copy(ec2, kms, settings, input).await?))
        }
        ShareImageRequest::Share(r) => ShareImageOutput::Permissions(
            change_permissions(ec2, &r.plan, OperationType::Add).await?,
        ),
        ShareImageRequest::Unshare(r) => ShareImageOutput::Permissions(
            change_permissions(ec2, &r.plan, OperationType::Remove).await?,
        ),
        ShareImageRequest::RemoveCopy(r) => ShareImageOutput::Removed {
            removed_image_ids: remove_copy(ec2, &r.execution, r.input["imageId"].as_str()).await?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_receiver_becomes_a_launch_permission() {
        let receivers = Receivers {
            account_ids: vec!["210987654321".into()],
            organization_arns: vec![
                "arn:aws:organizations::123456789012:organization/o-abcdef1234".into(),
            ],
            organizational_unit_arns: vec![
                "arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-cdef5678".into(),
            ],
            public: true,
        };
        let described: Vec<Value> = launch_permissions(&receivers)
            .iter()
            .map(describe_permission)
            .collect();
        assert_eq!(described.len(), 4);
        assert_eq!(described[0]["userId"], "210987654321");
        assert!(
            described[1]["organizationArn"].is_string()
                && described[2]["organizationalUnitArn"].is_string()
        );
        assert_eq!(described[3]["group"], "all");
    }

    #[test]
    fn a_blocked_public_share_names_the_setting_and_who_can_lift_it() {
        assert!(public_sharing_allowed("AMIs", "eu-west-1", "unblocked", Some("account")).is_ok());
        let by_account =
            public_sharing_allowed("AMIs", "eu-west-1", "block-new-sharing", Some("account"))
                .unwrap_err();
        assert_eq!(by_account.name(), "PublicSharingBlocked");
        let text = by_account.to_string();
        assert!(text
            .starts_with("public: block public access for AMIs is block-new-sharing in eu-west-1"));
        assert!(text.contains("the account manages it"));
        let by_policy = public_sharing_allowed(
            "snapshots",
            "eu-west-1",
            "block-all-sharing",
            Some("declarative-policy"),
        )
        .unwrap_err()
        .to_string();
        assert!(by_policy.contains("snapshots is block-all-sharing"));
        assert!(by_policy.contains("a declarative policy of the organization manages it"));
    }
}

#[cfg(test)]
mod mocked {
    use super::*;
    use crate::test_support::meta;
    use aws_sdk_ec2::operation::copy_image::CopyImageOutput;
    use aws_sdk_ec2::operation::describe_images::{DescribeImagesError, DescribeImagesOutput};
    use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
    use aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeOutput;
    use aws_sdk_ec2::operation::modify_snapshot_attribute::ModifySnapshotAttributeOutput;
    use aws_sdk_ec2::types::{
        BlockDeviceMapping, EbsBlockDevice, Image, ImageState, ProductCode, Snapshot,
    };
    use aws_sdk_kms::operation::describe_key::DescribeKeyOutput;
    use aws_sdk_kms::types::KeyManagerType;
    use aws_sdk_kms::types::KeyMetadata;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use serde_json::json;

    const CMK: &str = "arn:aws:kms:us-east-1:123456789012:key/cmk";
    const AWS_EBS: &str = "arn:aws:kms:us-east-1:123456789012:key/aws-ebs";

    fn settings() -> Settings {
        Settings::from_vars(|_| None).unwrap()
    }

    fn image(id: &str, owner: &str, state: ImageState, codes: bool) -> Image {
        let mut b = Image::builder()
            .image_id(id)
            .owner_id(owner)
            .state(state)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(EbsBlockDevice::builder().snapshot_id("snap-1").build())
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("app")
                    .value("web")
                    .build(),
            );
        if codes {
            b = b.product_codes(ProductCode::builder().product_code_id("bp-1").build());
        }
        b.build()
    }

    /// DescribeImages: own (Owners=self) answers `own`; by id only answers `visible`.
    fn images(own: Option<Image>, visible: Option<Image>) -> Rule {
        mock!(aws_sdk_ec2::Client::describe_images).then_compute_output(move |req| {
            let owned_query = !req.owners().is_empty();
            let list = if owned_query {
                own.clone()
            } else {
                visible.clone()
            };
            DescribeImagesOutput::builder()
                .set_images(Some(list.into_iter().collect()))
                .build()
        })
    }

    fn snapshots(key: Option<&'static str>) -> Rule {
        mock!(aws_sdk_ec2::Client::describe_snapshots).then_output(move || {
            let s = Snapshot::builder()
                .snapshot_id("snap-1")
                .encrypted(key.is_some())
                .set_kms_key_id(key.map(str::to_string))
                .build();
            DescribeSnapshotsOutput::builder().snapshots(s).build()
        })
    }

    fn kms_with(manager: KeyManagerType, arn: &'static str) -> aws_sdk_kms::Client {
        let rule = mock!(aws_sdk_kms::Client::describe_key).then_output(move || {
            DescribeKeyOutput::builder()
                .key_metadata(
                    KeyMetadata::builder()
                        .key_id("k")
                        .arn(arn)
                        .key_manager(manager.clone())
                        .build()
                        .unwrap(),
                )
                .build()
        });
        let marked = mock!(aws_sdk_kms::Client::list_resource_tags).then_output(|| {
            aws_sdk_kms::operation::list_resource_tags::ListResourceTagsOutput::builder()
                .tags(
                    aws_sdk_kms::types::Tag::builder()
                        .tag_key(tags::SHAREABLE)
                        .tag_value("true")
                        .build()
                        .unwrap(),
                )
                .build()
        });
        mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule, &marked])
    }

    #[test]
    fn only_an_available_image_is_shared_or_copied() {
        assert!(require_available("sourceImageId", "ami-1", "available").is_ok());
        let pending = require_available("sourceImageId", "ami-1", "pending").unwrap_err();
        assert_eq!(pending.name(), "InvalidInput");
        assert!(
            pending.to_string().starts_with("sourceImageId:"),
            "{pending}"
        );
        assert_eq!(
            require_available("imageId", "ami-1", "failed")
                .unwrap_err()
                .name(),
            "ImageFailed"
        );
    }

    /// The image the tests share: this account's, available.
    fn ours() -> Image {
        image(
            "ami-0123456789abcdef0",
            "123456789012",
            ImageState::Available,
            false,
        )
    }

    /// The share environment: EC2 answering with `ec2`, KMS describing the key behind the
    /// snapshots as `key` (managed as given, marked shareable), the stack's default settings.
    async fn plan_share(
        ec2: &[&Rule],
        key: (KeyManagerType, &'static str),
        input: Value,
    ) -> Result<SharePlan> {
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, ec2.iter().copied());
        prepare_share(
            &ec2,
            &kms_with(key.0, key.1),
            &settings(),
            "us-east-1",
            "run-1",
            share(input),
        )
        .await
    }

    fn share(input: Value) -> ShareInput {
        ShareInput::parse(&input).unwrap()
    }

    fn copy(input: Value) -> CopyInput {
        CopyInput::parse(&input, "us-east-1").unwrap()
    }

    #[tokio::test]
    async fn plans_a_share_of_an_image_under_a_customer_key() {
        let plan = plan_share(
            &[&images(Some(ours()), None), &snapshots(Some(CMK))],
            (KeyManagerType::Customer, CMK),
            json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"]}),
        )
        .await
        .unwrap();
        assert_eq!(
            (
                plan.image_id.as_str(),
                plan.reencrypted,
                plan.image_state.as_str()
            ),
            ("ami-0123456789abcdef0", false, "available")
        );
        assert_eq!(plan.kms_key_ids, [CMK]);
        assert_eq!(plan.snapshot_ids, ["snap-1"]);
        assert_eq!(plan.tags, [Tag::new("app", "web")]);
    }

    #[tokio::test]
    async fn another_accounts_image_is_not_ours_to_share_and_a_missing_one_is_named() {
        let theirs = image(
            "ami-0123456789abcdef0",
            "999999999999",
            ImageState::Available,
            false,
        );
        let input = json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"]});
        let customer = (KeyManagerType::Customer, CMK);
        let e = plan_share(
            &[&images(None, Some(theirs))],
            customer.clone(),
            input.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.name(), "ImageNotOwned");
        assert!(e.to_string().starts_with("imageId:") && e.to_string().contains("999999999999"));

        let missing = mock!(aws_sdk_ec2::Client::describe_images)
            .then_error(|| DescribeImagesError::generic(meta("InvalidAMIID.NotFound")));
        let e = plan_share(&[&missing], customer, input).await.unwrap_err();
        assert_eq!(
            e,
            Error::ImageNotFound("imageId: ami-0123456789abcdef0 does not exist".into())
        );
    }

    #[tokio::test]
    async fn public_and_encrypted_is_refused() {
        let e = plan_share(
            &[&images(Some(ours()), None), &snapshots(Some(CMK))],
            (KeyManagerType::Customer, CMK),
            json!({"imageId": "ami-0123456789abcdef0", "public": true}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.name(), "EncryptedImageNotPublic");
        assert!(e.to_string().starts_with("public:"));
    }

    #[tokio::test]
    async fn an_aws_managed_key_needs_a_re_encryption_key_and_then_gets_a_copy() {
        let input = json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"]});
        let e = plan_share(
            &[&images(Some(ours()), None), &snapshots(Some(AWS_EBS))],
            (KeyManagerType::Aws, AWS_EBS),
            input,
        )
        .await
        .unwrap_err();
        assert_eq!(e.name(), "ManagedKeyNeedsReencryption");
        assert!(e.to_string().starts_with("reencryptKmsKeyId:"));

        // With a key: a tagged copy is made under it, with a ClientToken, and the plan waits for it.
        let copy = mock!(aws_sdk_ec2::Client::copy_image)
            .match_requests(|r| {
                r.encrypted() == Some(true)
                    && r.kms_key_id() == Some("alias/share")
                    && r.client_token().is_some()
                    && r.tag_specifications().len() == 2
            })
            .then_output(|| CopyImageOutput::builder().image_id("ami-0copy").build());
        let describe =
            mock!(aws_sdk_ec2::Client::describe_images).then_compute_output(move |req| {
                let found = if req.filters().is_empty() {
                    let id = req.image_ids().first().cloned().unwrap_or_default();
                    vec![image(
                        &id,
                        "123456789012",
                        if id == "ami-0copy" {
                            ImageState::Pending
                        } else {
                            ImageState::Available
                        },
                        false,
                    )]
                } else {
                    vec![]
                };
                DescribeImagesOutput::builder()
                    .set_images(Some(found))
                    .build()
            });
        let input = json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"], "reencryptKmsKeyId": "alias/share"});
        let plan = plan_share(
            &[&describe, &snapshots(Some(AWS_EBS)), &copy],
            (KeyManagerType::Aws, AWS_EBS),
            input,
        )
        .await
        .unwrap();
        assert_eq!(
            (
                plan.image_id.as_str(),
                plan.reencrypted,
                plan.image_state.as_str()
            ),
            ("ami-0copy", true, "pending")
        );
        assert_eq!(plan.source_image_id, "ami-0123456789abcdef0");
        assert_eq!(copy.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_copy_of_a_billing_product_image_is_refused_up_front() {
        let own = image(
            "ami-0123456789abcdef0",
            "123456789012",
            ImageState::Available,
            true,
        );
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&images(Some(own), None), &snapshots(None)]
        );
        let input = json!({
            "sourceImageId": "ami-0123456789abcdef0", "sourceRegion": "us-east-1", "targetAccountId": "210987654321",
            "targetRoleArn": "arn:aws:iam::210987654321:role/amiflow-copy", "externalId": "ext", "targetKmsKeyId": "alias/b", "name": "copy"
        });
        let e = prepare_copy(
            &ec2,
            &kms_with(KeyManagerType::Customer, CMK),
            &settings(),
            copy(input),
        )
        .await
        .unwrap_err();
        assert_eq!(e.name(), "BillingProductNotCopyable");
    }

    #[tokio::test]
    async fn share_adds_launch_and_snapshot_permissions_and_unshare_removes_them() {
        let plan = SharePlan {
            image_id: "ami-1".into(),
            source_image_id: "ami-1".into(),
            owner_account: "123456789012".into(),
            reencrypted: false,
            image_state: "available".into(),
            snapshot_ids: vec!["snap-1".into(), "snap-2".into()],
            kms_key_ids: vec![],
            receivers: Receivers {
                account_ids: vec!["210987654321".into()],
                ..Default::default()
            },
            share_snapshots: true,
            tags: vec![],
            event_wait_seconds: 5,
            keep_sharing: false,
            access_propagation_seconds: 0,
            copy: None,
        };
        let image_rule = mock!(aws_sdk_ec2::Client::modify_image_attribute)
            .match_requests(|r| {
                r.launch_permission()
                    .is_some_and(|m| m.add().len() == 1 && m.remove().is_empty())
            })
            .then_output(|| ModifyImageAttributeOutput::builder().build());
        let snapshot_rule = mock!(aws_sdk_ec2::Client::modify_snapshot_attribute)
            .match_requests(|r| {
                r.operation_type() == Some(&OperationType::Add) && r.user_ids() == ["210987654321"]
            })
            .then_output(|| ModifySnapshotAttributeOutput::builder().build());
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&image_rule, &snapshot_rule]
        );
        let record = change_permissions(&ec2, &plan, OperationType::Add)
            .await
            .unwrap();
        assert_eq!(
            record.launch_permissions,
            [json!({"userId": "210987654321"})]
        );
        assert_eq!(record.snapshot_permissions.len(), 2);
        assert_eq!([image_rule.num_calls(), snapshot_rule.num_calls()], [1, 2]);

        let remove_image = mock!(aws_sdk_ec2::Client::modify_image_attribute)
            .match_requests(|r| r.launch_permission().is_some_and(|m| m.remove().len() == 1))
            .then_output(|| ModifyImageAttributeOutput::builder().build());
        let remove_snapshot = mock!(aws_sdk_ec2::Client::modify_snapshot_attribute)
            .match_requests(|r| r.operation_type() == Some(&OperationType::Remove))
            .then_output(|| ModifySnapshotAttributeOutput::builder().build());
        let granted = mock!(aws_sdk_ec2::Client::describe_image_attribute).then_output(|| {
            aws_sdk_ec2::operation::describe_image_attribute::DescribeImageAttributeOutput::builder(
            )
            .launch_permissions(LaunchPermission::builder().user_id("210987654321").build())
            .build()
        });
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&granted, &remove_image, &remove_snapshot]
        );
        let without_snapshots = SharePlan {
            share_snapshots: false,
            ..plan
        };
        change_permissions(&ec2, &without_snapshots, OperationType::Remove)
            .await
            .unwrap();
        assert_eq!(
            [remove_image.num_calls(), remove_snapshot.num_calls()],
            [1, 0]
        );

        // Undoing a share that never added anything changes nothing.
        let nothing = mock!(aws_sdk_ec2::Client::describe_image_attribute).then_output(|| {
            aws_sdk_ec2::operation::describe_image_attribute::DescribeImageAttributeOutput::builder(
            )
            .build()
        });
        let ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&nothing, &remove_image, &remove_snapshot]
        );
        let record = change_permissions(&ec2, &without_snapshots, OperationType::Remove)
            .await
            .unwrap();
        assert!(record.launch_permissions.is_empty());
        assert_eq!(remove_image.num_calls(), 1, "no second removal");
    }
}
