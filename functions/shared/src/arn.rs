//! ARNs in every AWS partition (`aws`, `aws-cn`, `aws-us-gov`, and the isolated ones): amiflow
//! reads and writes them without assuming `arn:aws:`. Pure.

/// The parts of an ARN: `arn:<partition>:<service>:<region>:<account>:<resource>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

/// Whether a partition name is one of AWS's: `aws` or `aws-…`.
fn is_partition(p: &str) -> bool {
    p == "aws"
        || p.strip_prefix("aws-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
}

/// Splits an ARN of any AWS partition; `None` if it is not one.
pub fn parse(arn: &str) -> Option<Arn<'_>> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (is_partition(partition) && !service.is_empty()).then_some(Arn {
        partition,
        service,
        region,
        account,
        resource,
    })
}

/// The partition a region belongs to.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// An account's root principal, in the partition of `like` (an ARN of the same partition), or in
/// `aws` if `like` is no ARN.
pub fn account_root(account: &str, like: &str) -> String {
    let partition = parse(like).map_or("aws", |a| a.partition);
    format!("arn:{partition}:iam::{account}:root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_parses() {
        for (arn, partition) in [
            ("arn:aws:kms:us-east-1:123456789012:key/k", "aws"),
            ("arn:aws-cn:kms:cn-north-1:123456789012:key/k", "aws-cn"),
            (
                "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/k",
                "aws-us-gov",
            ),
        ] {
            let parsed = parse(arn).unwrap();
            assert_eq!(
                (
                    parsed.partition,
                    parsed.service,
                    parsed.account,
                    parsed.resource
                ),
                (partition, "kms", "123456789012", "key/k")
            );
        }
        let org = parse("arn:aws-cn:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdef5678")
            .unwrap();
        assert_eq!(
            (org.region, org.resource),
            ("", "ou/o-abcdefghij/ou-ab12-cdef5678")
        );
        assert_eq!(parse("arn:gcp:kms:x:1:key/k"), None);
        assert_eq!(parse("arn:aws:kms"), None);
        assert_eq!(parse("alias/x"), None);
    }

    #[test]
    fn regions_name_their_partition_and_roots_follow_it() {
        assert_eq!(partition_of("us-east-1"), "aws");
        assert_eq!(partition_of("cn-northwest-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-east-1"), "aws-us-gov");
        assert_eq!(
            account_root(
                "210987654321",
                "arn:aws-cn:kms:cn-north-1:123456789012:key/k"
            ),
            "arn:aws-cn:iam::210987654321:root"
        );
        assert_eq!(
            account_root("210987654321", "k"),
            "arn:aws:iam::210987654321:root"
        );
    }
}
