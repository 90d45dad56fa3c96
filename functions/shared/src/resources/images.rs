//! AMIs and their snapshots: the name a run gives its image and finding it again, what an image
//! is and which keys its snapshots use, launch permissions, and removing an image with its
//! snapshots.

use aws_sdk_ec2::types::{Image, LaunchPermission, SnapshotReturnCodes};
use aws_sdk_kms::types::KeyManagerType;
use serde::{Deserialize, Serialize};

use crate::error::{aws, Error, Result};
use crate::ownership;
use crate::receivers::Receivers;
use crate::tags::{self, Tag};

/// AMI names are unique per account and region; the execution name makes this one so.
pub fn image_name(instance_id: &str, execution: &str) -> String {
    let name = format!("amiflow-{instance_id}-{execution}");
    crate::names::restricted(&name, "()[] ./-'@_", '-', 128)
}

/// The images of this account tagged with the execution: what the run may have made (a tag alone
/// proves nothing; `ownership` proves the rest).
pub async fn of_execution(ec2: &aws_sdk_ec2::Client, execution: &str) -> Result<Vec<Image>> {
    Ok(ec2
        .describe_images()
        .owners("self")
        .filters(tags::execution_filter(execution))
        .send()
        .await
        .map_err(aws("DescribeImages"))?
        .images
        .unwrap_or_default())
}

/// One image the caller can see, or `ImageNotFound` (right after it is made, it may not be yet).
pub async fn describe(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Image> {
    ec2.describe_images()
        .image_ids(image_id)
        .send()
        .await
        .map_err(aws("DescribeImages"))?
        .images
        .unwrap_or_default()
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::ImageNotFound(format!("DescribeImages: {image_id} is not visible").into())
        })
}

/// The image an earlier attempt of this execution made, if any: tagged with the execution, and
/// proved the run's by its name and source instance (a tag alone proves nothing).
pub async fn find_own_image(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    name: &str,
    source_instance_id: &str,
) -> Result<Option<String>> {
    Ok(of_execution(ec2, execution)
        .await?
        .iter()
        .filter(|i| i.state().is_none_or(|s| s.as_str() != "deregistered"))
        .filter(|i| ownership::is_runs_image(i, name, Some(source_instance_id)))
        .find_map(|i| i.image_id().map(str::to_string)))
}

/// A resource of the run that Complete left behind, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leftover {
    pub resource_id: String,
    pub reason: String,
}

/// The snapshots EC2 made for an image that are still there: named in its mappings while it
/// exists, and found by their description (EC2 writes "… for ami-…" and "… DestinationAmi ami-…")
/// once it is deregistered, so that a retry after a half-done removal still finds them.
pub async fn snapshots_of_image(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Vec<String>> {
    let mut snapshots: Vec<String> = match describe(ec2, image_id).await {
        Ok(image) => image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
            .collect(),
        Err(Error::ImageNotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let described = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("description")
                .values(format!("*{image_id}*"))
                .build(),
        )
        .send()
        .await
        .map_err(aws("DescribeSnapshots"))?;
    for snapshot in described.snapshots() {
        if let Some(id) = snapshot.snapshot_id() {
            if !snapshots.iter().any(|s| s == id) {
                snapshots.push(id.to_string());
            }
        }
    }
    Ok(snapshots)
}

/// Deregisters an image and deletes its snapshots (a rollback's removal); returns the snapshot
/// ids deleted. Anything left is an error, which the rollback's retries try again: a snapshot of
/// an image just deregistered can still be in use for a while. Safe to call again after a
/// partial removal.
pub async fn remove_image(ec2: &aws_sdk_ec2::Client, image_id: &str) -> Result<Vec<String>> {
    let (deleted, leftovers) = retire_image(ec2, image_id).await?;
    if !leftovers.is_empty() {
        let listed: Vec<String> = leftovers
            .iter()
            .map(|l| format!("{} ({})", l.resource_id, l.reason))
            .collect();
        return Err(Error::AwsApi(
            format!("{image_id} not entirely removed: {}", listed.join("; ")).into(),
        ));
    }
    Ok(deleted)
}

/// Complete's removal of the AMI: one DeregisterImage that deletes the snapshots too
/// (DeleteAssociatedSnapshots), so that no separate DeleteSnapshot races the deregistration
/// (InvalidSnapshot.InUse). A snapshot EC2 did not delete, or an image that cannot be removed, is
/// a leftover; only a throttled or transient failure is an error, which the state machine retries.
/// Safe to call again: an image already gone leaves its snapshots to delete one by one.
pub async fn retire_image(
    ec2: &aws_sdk_ec2::Client,
    image_id: &str,
) -> Result<(Vec<String>, Vec<Leftover>)> {
    let snapshots = snapshots_of_image(ec2, image_id).await?;
    let mut deleted = Vec::new();
    let mut leftovers = Vec::new();
    match ec2
        .deregister_image()
        .image_id(image_id)
        .delete_associated_snapshots(true)
        .send()
        .await
        .map_err(aws("DeregisterImage"))
    {
        Ok(answer) => {
            for result in answer.delete_snapshot_results() {
                let id = result.snapshot_id().unwrap_or_default().to_string();
                match result.return_code() {
                    Some(SnapshotReturnCodes::Success) => deleted.push(id),
                    code => leftovers.push(Leftover {
                        resource_id: id,
                        reason: format!(
                            "DeregisterImage did not delete it: {}",
                            code.map(|c| c.as_str()).unwrap_or("no return code")
                        ),
                    }),
                }
            }
        }
        Err(Error::ImageNotFound(_)) => {}
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            leftovers.push(Leftover {
                resource_id: image_id.to_string(),
                reason: e.to_string(),
            });
            return Ok((deleted, leftovers));
        }
    }
    for snapshot in snapshots {
        if deleted.contains(&snapshot) || leftovers.iter().any(|l| l.resource_id == snapshot) {
            continue;
        }
        match delete_snapshot(ec2, &snapshot).await {
            Ok(()) => deleted.push(snapshot),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => leftovers.push(Leftover {
                resource_id: snapshot,
                reason: e.to_string(),
            }),
        }
    }
    tracing::info!(image_id, deleted = ?deleted, leftovers = ?leftovers, "image retired");
    Ok((deleted, leftovers))
}

/// What the share steps (and preflight) need to know of an image.
pub struct ImageFacts {
    pub image_id: String,
    pub owner: String,
    pub state: String,
    pub snapshot_ids: Vec<String>,
    pub product_codes: usize,
    pub tags: Vec<Tag>,
}

/// The image, which must be this account's own.
pub async fn own_image(
    ec2: &aws_sdk_ec2::Client,
    field: &str,
    image_id: &str,
) -> Result<ImageFacts> {
    let owned = ec2
        .describe_images()
        .owners("self")
        .image_ids(image_id)
        .send()
        .await
        .map_err(aws("DescribeImages"));
    let image = match owned {
        Ok(found) => found.images().first().cloned(),
        Err(Error::ImageNotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let Some(image) = image else {
        return match describe(ec2, image_id).await {
            Ok(theirs) => Err(Error::ImageNotOwned(
                format!(
                    "{field}: {image_id} belongs to {}; only its owner can share or copy it out",
                    theirs.owner_id().unwrap_or("another account")
                )
                .into(),
            )),
            Err(Error::ImageNotFound(_)) => Err(Error::ImageNotFound(
                format!("{field}: {image_id} does not exist").into(),
            )),
            Err(e) => Err(e),
        };
    };
    Ok(ImageFacts {
        image_id: image_id.to_string(),
        owner: image.owner_id().unwrap_or_default().to_string(),
        state: image
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        snapshot_ids: image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
            .collect(),
        product_codes: image.product_codes().len(),
        tags: tags::from_sdk(image.tags())
            .into_iter()
            .filter(|t| !t.key.starts_with("aws:"))
            .collect(),
    })
}

/// The encryption keys behind the snapshots: (customer managed, AWS managed).
pub async fn keys_of(
    ec2: &aws_sdk_ec2::Client,
    kms: &aws_sdk_kms::Client,
    snapshots: &[String],
) -> Result<(Vec<String>, Vec<String>)> {
    if snapshots.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let described = ec2
        .describe_snapshots()
        .set_snapshot_ids(Some(snapshots.to_vec()))
        .send()
        .await
        .map_err(aws("DescribeSnapshots"))?;
    let mut keys: Vec<String> = described
        .snapshots()
        .iter()
        .filter(|s| s.encrypted().unwrap_or(false))
        .filter_map(|s| s.kms_key_id().map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    let (mut customer, mut managed) = (Vec::new(), Vec::new());
    for key in keys {
        let meta = kms
            .describe_key()
            .key_id(&key)
            .send()
            .await
            .map_err(aws("DescribeKey"))?;
        let arn = meta
            .key_metadata()
            .and_then(|m| m.arn())
            .unwrap_or(&key)
            .to_string();
        if meta.key_metadata().and_then(|m| m.key_manager()) == Some(&KeyManagerType::Aws) {
            managed.push(arn);
        } else {
            customer.push(arn);
        }
    }
    Ok((customer, managed))
}

/// Only an available image can be shared or copied: EC2 refuses the others
/// (InvalidAMIID.Unavailable), so a run stops before it changes anything. Pure.
pub fn require_available(field: &str, image_id: &str, state: &str) -> Result<()> {
    match state {
        "available" => Ok(()),
        "failed" | "deregistered" | "disabled" | "error" => Err(Error::ImageFailed(format!(
            "{field}: {image_id} is {state}; only an available image can be shared or copied"
        ).into())),
        other => Err(Error::invalid(
            field,
            format!("{image_id} is {other}; only an available image can be shared or copied, so wait until it is available"),
        )),
    }
}

/// The launch permissions a set of receivers means. Pure.
pub fn launch_permissions(receivers: &Receivers) -> Vec<LaunchPermission> {
    let mut out: Vec<LaunchPermission> = receivers
        .account_ids
        .iter()
        .map(|a| LaunchPermission::builder().user_id(a).build())
        .collect();
    out.extend(
        receivers
            .organization_arns
            .iter()
            .map(|a| LaunchPermission::builder().organization_arn(a).build()),
    );
    out.extend(receivers.organizational_unit_arns.iter().map(|a| {
        LaunchPermission::builder()
            .organizational_unit_arn(a)
            .build()
    }));
    if receivers.public {
        out.push(
            LaunchPermission::builder()
                .group(aws_sdk_ec2::types::PermissionGroup::All)
                .build(),
        );
    }
    out
}

pub async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<()> {
    match ec2
        .delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(aws("DeleteSnapshot"))
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_code("InvalidSnapshot.NotFound") => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_legal_and_bounded() {
        assert_eq!(
            image_name("i-01234567", "run:1"),
            "amiflow-i-01234567-run-1"
        );
        assert_eq!(image_name("i-01234567", &"x".repeat(200)).len(), 128);
    }
}
