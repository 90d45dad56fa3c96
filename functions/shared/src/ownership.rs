//! Proof that a resource found by a run's `amiflow:execution` tag is the run's own.
//!
//! Execution names are predictable and tags are a common permission, so anyone who may tag can
//! put a run's tag on an unrelated instance, AMI or snapshot. A tag alone therefore proves
//! nothing: a run adopts or removes what it finds by tag only if the resource also carries what
//! only that run could have given it. All pure.

use aws_sdk_ec2::types::{Image, Instance, Snapshot};
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;

/// The run's AMI: the name the run gives it (unique per account and region) and, where EC2
/// reports it, made from the run's source instance.
pub fn is_runs_image(image: &Image, name: &str, source_instance_id: Option<&str>) -> bool {
    let made_from_source = match (image.source_instance_id(), source_instance_id) {
        (Some(made_from), Some(source)) => made_from == source,
        _ => true,
    };
    image.name() == Some(name) && made_from_source
}

/// A copy the run made with CopyImage: a name only the run gives (`name_is_runs`), and (when the
/// run's start is known) created after the run started, so not an image that held the name
/// before and made the run's CopyImage fail.
pub fn is_runs_copy(
    image: &Image,
    name_is_runs: impl Fn(&str) -> bool,
    started_at: Option<&DateTime>,
) -> bool {
    let created_after_start = match started_at {
        None => true,
        Some(start) => parse_start(image.creation_date()).is_some_and(|c| c.secs() >= start.secs()),
    };
    image.name().is_some_and(name_is_runs) && created_after_start
}

/// The instance the run launched: from the run's AMI, with the run's ClientToken, and (when the
/// run's start is known) not launched before the run started.
pub fn is_runs_instance(
    instance: &Instance,
    client_token: &str,
    image_id: &str,
    started_at: Option<&DateTime>,
) -> bool {
    let after_start = match (started_at, instance.launch_time()) {
        // LaunchTime has whole seconds.
        (Some(start), Some(launched)) => launched.secs() >= start.secs(),
        (Some(_), None) => false,
        (None, _) => true,
    };
    instance.client_token() == Some(client_token)
        && instance.image_id() == Some(image_id)
        && after_start
}

/// A snapshot of one of the run's AMIs: EC2 writes the AMI's id into the description of the
/// snapshots it makes for CreateImage ("… for ami-…") and CopyImage ("… DestinationAmi ami-…"),
/// and a description cannot be changed afterwards.
pub fn is_snapshot_of(snapshot: &Snapshot, image_ids: &[String]) -> bool {
    snapshot
        .description()
        .is_some_and(|d| image_ids.iter().any(|id| d.contains(id.as_str())))
}

/// `$$.Execution.StartTime` as Step Functions gives it (ISO 8601); `None` if absent or unreadable.
pub fn parse_start(text: Option<&str>) -> Option<DateTime> {
    DateTime::from_str(text?, Format::DateTime).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, source: Option<&str>) -> Image {
        Image::builder()
            .name(name)
            .set_source_instance_id(source.map(str::to_string))
            .build()
    }

    #[test]
    fn an_image_is_the_runs_by_its_name_and_source_not_its_tag() {
        let name = "amiflow-i-0123456789abcdef0-run-1";
        assert!(is_runs_image(
            &image(name, Some("i-0123456789abcdef0")),
            name,
            Some("i-0123456789abcdef0")
        ));
        assert!(is_runs_image(
            &image(name, None),
            name,
            Some("i-0123456789abcdef0")
        ));
        assert!(!is_runs_image(
            &image("prod-golden", Some("i-0123456789abcdef0")),
            name,
            Some("i-0123456789abcdef0")
        ));
        assert!(!is_runs_image(
            &image(name, Some("i-0fffffffffffffff0")),
            name,
            Some("i-0123456789abcdef0")
        ));
    }

    #[test]
    fn a_copy_is_the_runs_by_its_name_and_creation_after_the_start() {
        let start = parse_start(Some("2026-11-29T10:00:00.000Z")).unwrap();
        let copy =
            |name: &str, created: &str| Image::builder().name(name).creation_date(created).build();
        let named = |n: &str| n == "web copy";
        assert!(is_runs_copy(
            &copy("web copy", "2026-11-29T10:00:07.000Z"),
            named,
            Some(&start)
        ));
        assert!(!is_runs_copy(
            &copy("web copy", "2026-11-28T10:00:00.000Z"),
            named,
            Some(&start)
        ));
        assert!(!is_runs_copy(
            &copy("prod", "2026-11-29T10:00:07.000Z"),
            named,
            Some(&start)
        ));
        assert!(is_runs_copy(
            &copy("web copy", "2020-01-01T00:00:00.000Z"),
            named,
            None
        ));
    }

    #[test]
    fn an_instance_is_the_runs_by_token_image_and_launch_time() {
        let start = parse_start(Some("2026-11-29T10:00:00.500Z")).unwrap();
        let launched = |token: &str, image: &str, at: i64| {
            Instance::builder()
                .client_token(token)
                .image_id(image)
                .launch_time(DateTime::from_secs(at))
                .build()
        };
        let at = start.secs();
        assert!(is_runs_instance(
            &launched("t", "ami-1", at),
            "t",
            "ami-1",
            Some(&start)
        ));
        assert!(is_runs_instance(
            &launched("t", "ami-1", at - 3600),
            "t",
            "ami-1",
            None
        ));
        assert!(!is_runs_instance(
            &launched("t", "ami-1", at - 1),
            "t",
            "ami-1",
            Some(&start)
        ));
        assert!(!is_runs_instance(
            &launched("other", "ami-1", at),
            "t",
            "ami-1",
            Some(&start)
        ));
        assert!(!is_runs_instance(
            &launched("t", "ami-2", at),
            "t",
            "ami-1",
            Some(&start)
        ));
        assert!(!is_runs_instance(
            &Instance::builder().build(),
            "t",
            "ami-1",
            None
        ));
    }

    #[test]
    fn a_snapshot_is_the_runs_by_the_image_ec2_named_in_it() {
        let snap = |d: &str| Snapshot::builder().description(d).build();
        let ours = vec!["ami-0123456789abcdef0".to_string()];
        assert!(is_snapshot_of(
            &snap("Created by CreateImage(i-0aa) for ami-0123456789abcdef0"),
            &ours
        ));
        assert!(!is_snapshot_of(&snap("nightly backup"), &ours));
        assert!(!is_snapshot_of(&Snapshot::builder().build(), &ours));
        assert_eq!(parse_start(Some("not a time")), None);
        assert_eq!(parse_start(None), None);
    }
}
