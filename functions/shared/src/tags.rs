//! The tags amiflow writes, and which of a source's tags are carried to what it makes.

use serde::{Deserialize, Serialize};

/// On everything amiflow creates: the name of the execution that made it.
pub const EXECUTION: &str = "amiflow:execution";
/// On the new instance and the AMI: the instance they came from.
pub const SOURCE_INSTANCE: &str = "amiflow:source-instance";

/// On a source whose `sourceAction` is stop or terminate: the instance that replaced it.
pub const MIGRATED_TO: &str = "amiflow:migrated-to";
/// On a KMS key, set by its owner: amiflow may grant it to receivers and edit its policy.
pub const SHAREABLE: &str = "amiflow:shareable";
/// On an image a rollback kept because the source was terminated during the run: why.
pub const KEPT: &str = "amiflow:kept";

/// A tag as it travels between steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn to_sdk(&self) -> aws_sdk_ec2::types::Tag {
        aws_sdk_ec2::types::Tag::builder()
            .key(&self.key)
            .value(&self.value)
            .build()
    }
}

/// A TagSpecification of these tags for a resource type a call creates.
pub fn spec(
    kind: aws_sdk_ec2::types::ResourceType,
    tags: &[Tag],
) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.iter().map(Tag::to_sdk).collect()))
        .build()
}

/// Puts one tag on one resource (the source's stamp, a kept image's reason, a trigger's status).
pub async fn put(
    ec2: &aws_sdk_ec2::Client,
    resource: &str,
    key: &str,
    value: &str,
) -> crate::error::Result<()> {
    ec2.create_tags()
        .resources(resource)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(key)
                .value(value)
                .build(),
        )
        .send()
        .await
        .map_err(crate::error::aws("CreateTags"))?;
    Ok(())
}

/// The Describe* filter for what one execution made.
pub fn execution_filter(execution: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{EXECUTION}"))
        .values(execution)
        .build()
}

/// The DescribeInstances filter for instances that exist (not shutting down or terminated).
pub fn live_instances_filter() -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped"]
                .map(String::from)
                .to_vec(),
        ))
        .build()
}

/// Converts SDK tags, dropping any without a key.
pub fn from_sdk(tags: &[aws_sdk_ec2::types::Tag]) -> Vec<Tag> {
    tags.iter()
        .filter_map(|t| Some(Tag::new(t.key()?, t.value().unwrap_or_default())))
        .collect()
}

/// Whether a source tag is carried over: `aws:` tags are reserved to AWS, and `amiflow:` tags are
/// requests and records of runs, which must not start another run on the copy.
pub fn is_carried(key: &str) -> bool {
    !key.starts_with("aws:") && !key.starts_with("amiflow:")
}

/// The carried tags of a source, followed by amiflow's own.
pub fn carried_with(source: &[Tag], own: &[Tag]) -> Vec<Tag> {
    source
        .iter()
        .filter(|t| is_carried(&t.key))
        .chain(own.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_request_tags_are_not_carried() {
        let source = vec![
            Tag::new("Name", "web"),
            Tag::new("aws:cloudformation:stack-name", "s"),
            Tag::new("amiflow:migrate-to", "us-east-1b"),
            Tag::new("team", "ops"),
        ];
        let out = carried_with(&source, &[Tag::new(EXECUTION, "run-1")]);
        let keys: Vec<&str> = out.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["Name", "team", EXECUTION]);
    }
}
