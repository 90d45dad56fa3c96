//! What one state of a workflow hands the next: the records that travel in the execution's state
//! between the steps, defined here so that every step sees them and none is defined inside the
//! step that makes it.

use serde::{Deserialize, Serialize};

use crate::capture::Capture;
use crate::compare::Compared;
use crate::input::{Cutover, SourceAction};
use crate::receivers::{CopyInput, Receivers};
use crate::resources::images::{ImageFacts, Leftover};
use crate::resources::targets::{Health, Membership};
use crate::settings::Settings;
use crate::tags::Tag;

/// Where the new instance goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub subnet_id: String,
    pub availability_zone: String,
    pub vpc_id: String,
    pub instance_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateImageOutput {
    pub image_id: String,
    pub image_name: String,
    /// False when an earlier attempt of this execution had already made the image.
    pub created: bool,
    pub capture: Capture,
    pub target: Target,
    /// How long the run waits for the AMI event before it polls instead.
    pub event_wait_seconds: u64,
    /// When the copy takes the source's place, and how long an approval is waited for.
    #[serde(default)]
    pub cutover: Cutover,
    #[serde(default)]
    pub approval_timeout_seconds: u64,
    /// The Capacity Reservation the copy launches into (`"capacity": "reserve"`).
    #[serde(default)]
    pub capacity_reservation_id: Option<String>,
}

/// The new instance as the run follows it: launch makes it, verify-instance advances it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProgress {
    pub instance_id: String,
    pub state: String,
    /// Running, both status checks passed, and the settings RunInstances cannot take applied.
    pub ready: bool,
    pub attempt: u32,
    /// The Wait before the next check.
    pub wait_seconds: u64,
    #[serde(default)]
    pub elastic_ip: Option<String>,
    /// The source and the copy, setting by setting, once the copy is verified.
    #[serde(default)]
    pub comparison: Vec<Compared>,
}

/// The copy's place in the source's target groups, as the run follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetsProgress {
    /// The copy.
    pub instance_id: String,
    pub source_instance_id: String,
    pub groups: Vec<Membership>,
    #[serde(default)]
    pub health: Vec<Health>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub wait_seconds: u64,
    /// The source has been deregistered from the groups.
    #[serde(default)]
    pub source_left: bool,
}

/// The output of a successful MigrateInstance run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOutput {
    pub image_id: String,
    /// True when `keepImage` kept the AMI and its snapshots.
    pub image_kept: bool,
    pub deleted_snapshot_ids: Vec<String>,
    pub new_instance_id: String,
    pub availability_zone: String,
    pub subnet_id: String,
    pub instance_type: String,
    pub elastic_ip: Option<String>,
    pub source_instance_id: String,
    pub source_action: SourceAction,
    pub source_state: String,
    pub not_carried: Vec<String>,
    /// The source and the new instance, setting by setting.
    #[serde(default)]
    pub comparison: Vec<Compared>,
    /// The Capacity Reservation the new instance launched into, cancelled now that it runs.
    #[serde(default)]
    pub released_capacity_reservation_ids: Vec<String>,
    /// What Complete could not remove after the new instance was verified (a snapshot still in
    /// use, a permission missing): reported here for the operator, never a reason to undo the
    /// migration.
    #[serde(default)]
    pub leftovers: Vec<Leftover>,
}

/// What a share, an unshare or a copy works on, found before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharePlan {
    /// The image the receivers get: the one given, or its re-encrypted copy.
    pub image_id: String,
    pub source_image_id: String,
    pub owner_account: String,
    /// True when the image was under an AWS managed key and a copy under `reencryptKmsKeyId` is shared.
    pub reencrypted: bool,
    /// `pending` while that copy is being made; the workflow waits, then plans again.
    pub image_state: String,
    pub snapshot_ids: Vec<String>,
    /// The customer managed keys behind the snapshots, which the receivers must be able to use.
    pub kms_key_ids: Vec<String>,
    pub receivers: Receivers,
    pub share_snapshots: bool,
    /// The image's own tags (not `aws:`), for a copy in another account.
    pub tags: Vec<Tag>,
    /// How long the workflow waits for an AMI event before it polls instead.
    pub event_wait_seconds: u64,
    /// CopyImage: keep the sharing after the copy (from the input; false otherwise).
    #[serde(default)]
    pub keep_sharing: bool,
    /// CopyImage: how long the workflow lets the grants and permissions take effect before the
    /// target copies (0 for the other workflows).
    #[serde(default)]
    pub access_propagation_seconds: u64,
    /// CopyImage: the workflow's input, parsed and checked once, by the plan; the steps after it
    /// read it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyInput>,
}

impl SharePlan {
    /// The plan of a CopyImage run, carrying its parsed input.
    pub(crate) fn with_copy(self, input: CopyInput) -> Self {
        SharePlan {
            copy: Some(input),
            ..self
        }
    }

    /// The plan for an image of this account, shared as it is.
    pub(crate) fn of(
        image: ImageFacts,
        kms_key_ids: Vec<String>,
        receivers: Receivers,
        share_snapshots: bool,
        settings: &Settings,
    ) -> Self {
        SharePlan {
            image_id: image.image_id.clone(),
            source_image_id: image.image_id,
            owner_account: image.owner,
            reencrypted: false,
            image_state: image.state,
            snapshot_ids: image.snapshot_ids,
            kms_key_ids,
            receivers,
            share_snapshots,
            tags: image.tags,
            event_wait_seconds: settings.event_wait_seconds,
            keep_sharing: false,
            access_propagation_seconds: 0,
            copy: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::tests::sample_capture;

    pub fn sample_image() -> CreateImageOutput {
        CreateImageOutput {
            image_id: "ami-0123456789abcdef0".into(),
            image_name: "amiflow-i-0123456789abcdef0-run-1".into(),
            created: true,
            capture: sample_capture(),
            target: Target {
                subnet_id: "subnet-0bbbbbbb".into(),
                availability_zone: "us-east-1b".into(),
                vpc_id: "vpc-01234567".into(),
                instance_type: "t3.micro".into(),
            },
            event_wait_seconds: 5,
            cutover: Cutover::Auto,
            approval_timeout_seconds: 86400,
            capacity_reservation_id: None,
        }
    }

    /// A plan for an image under no customer key, whose tags include one of amiflow's.
    pub fn sample_plan() -> SharePlan {
        SharePlan {
            image_id: "ami-0123456789abcdef0".into(),
            source_image_id: "ami-0123456789abcdef0".into(),
            owner_account: "123456789012".into(),
            reencrypted: false,
            image_state: "available".into(),
            snapshot_ids: vec![],
            kms_key_ids: vec![],
            receivers: Receivers::default(),
            share_snapshots: true,
            tags: vec![Tag::new("app", "web"), Tag::new("amiflow:share-with", "x")],
            event_wait_seconds: 5,
            keep_sharing: false,
            access_propagation_seconds: 0,
            copy: None,
        }
    }
}
