//! AMIs and their snapshots: the name a run gives its image, and finding the image a run made.

use crate::error::{aws, Result};
use crate::ownership;
use crate::tags;

/// AMI names are unique per account and region; the execution name makes this one so.
pub fn image_name(instance_id: &str, execution: &str) -> String {
    let name = format!("amiflow-{instance_id}-{execution}");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// The image an earlier attempt of this execution made, if any: tagged with the execution, and
/// proved the run's by its name and source instance (a tag alone proves nothing).
pub async fn find_own_image(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
    name: &str,
    source_instance_id: &str,
) -> Result<Option<String>> {
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(tags::execution_filter(execution))
        .send()
        .await
        .map_err(aws("DescribeImages"))?;
    Ok(images
        .images()
        .iter()
        .filter(|i| i.state().is_none_or(|s| s.as_str() != "deregistered"))
        .filter(|i| ownership::is_runs_image(i, name, Some(source_instance_id)))
        .find_map(|i| i.image_id().map(str::to_string)))
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
