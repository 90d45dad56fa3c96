//! The MigrateInstance workflow's input: its exact shape, and the checks that refuse bad input
//! before anything is changed. Every refusal names the field it concerns.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// What to do with the source instance once the new one is verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceAction {
    #[default]
    Keep,
    Stop,
    Terminate,
}

/// When the copy takes the source's place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cutover {
    /// As soon as the copy is verified.
    #[default]
    Auto,
    /// When an operator approves; until then the source and its Elastic IP are untouched.
    Approve,
}

/// Whether the target AZ's capacity is reserved for the copy before anything is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capacity {
    /// Launch as EC2 can.
    #[default]
    None,
    /// A targeted On-Demand Capacity Reservation for the type in the target AZ, made before the
    /// AMI, launched into, and released at the end.
    Reserve,
}

/// What happens to the ELBv2 target groups that hold the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetGroups {
    /// Left as they are.
    #[default]
    Ignore,
    /// The copy joins each (same port), the run waits until it is healthy there, and the source
    /// leaves them before `sourceAction`.
    Follow,
}

/// How long an approval is waited for by default, and the bounds of `approvalTimeoutSeconds`.
pub const DEFAULT_APPROVAL_TIMEOUT_SECONDS: u64 = 24 * 3600;
pub const APPROVAL_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 10..=7 * 24 * 3600;

/// `approvalTimeoutSeconds` goes with `"cutover": "approve"` only, and within its range: checked
/// for a run's input and for a fleet's, which passes both to every child. Pure.
pub fn check_cutover(cutover: Cutover, approval_timeout_seconds: Option<u64>) -> Result<()> {
    match (cutover, approval_timeout_seconds) {
        (Cutover::Auto, Some(_)) => Err(Error::invalid(
            "approvalTimeoutSeconds",
            "only with \"cutover\": \"approve\"",
        )),
        (_, Some(s)) if !APPROVAL_TIMEOUT_RANGE.contains(&s) => Err(Error::invalid(
            "approvalTimeoutSeconds",
            format!("{s} is not from 10 to 604800 (7 days, while the run holds the source's lock)"),
        )),
        _ => Ok(()),
    }
}

/// The input of MigrateInstance, exactly as operators, triggers and tests send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrateInput {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub no_reboot: bool,
    #[serde(default)]
    pub source_action: SourceAction,
    #[serde(default)]
    pub keep_image: bool,
    /// Run the preflight checks as the first state, failing before any change.
    #[serde(default)]
    pub preflight: bool,
    #[serde(default)]
    pub cutover: Cutover,
    /// With `"cutover": "approve"`: how long to wait for the decision before discarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub target_groups: TargetGroups,
}

impl MigrateInput {
    /// How long an approval is waited for.
    pub fn approval_timeout(&self) -> u64 {
        self.approval_timeout_seconds
            .unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECONDS)
    }

    /// Parses and checks raw workflow input. `region` is the region the run works in: a target AZ
    /// of another region is refused here, before any call.
    pub fn parse(raw: &Value, region: &str) -> Result<Self> {
        let input: MigrateInput = parse_fields(raw)?;
        input.check(region)?;
        Ok(input)
    }

    fn check(&self, region: &str) -> Result<()> {
        if !is_resource_id(&self.instance_id, "i-") {
            return Err(Error::invalid(
                "instanceId",
                format!(
                    "{:?} is not an instance id (i- and 8 or 17 hex digits)",
                    self.instance_id
                ),
            ));
        }
        if let Some(subnet) = &self.target_subnet_id {
            if !is_resource_id(subnet, "subnet-") {
                return Err(Error::invalid(
                    "targetSubnetId",
                    format!("{subnet:?} is not a subnet id (subnet- and 8 or 17 hex digits)"),
                ));
            }
        }
        match &self.target_availability_zone {
            // An AZ ID (use1-az2) is this account's zone of that ID, found when the run starts.
            Some(az) if is_zone_id(az) => {}
            Some(az) if !is_availability_zone(az) => {
                return Err(Error::invalid(
                    "targetAvailabilityZone",
                    format!("{az:?} is neither an Availability Zone name such as {region}a nor an AZ ID such as use1-az2"),
                ));
            }
            Some(az) if !az_in_region(az, region) => {
                return Err(Error::invalid(
                    "targetAvailabilityZone",
                    format!("{az} is not in the region this run works in ({region})"),
                ));
            }
            None if self.target_subnet_id.is_none() => {
                return Err(Error::invalid(
                    "targetAvailabilityZone",
                    "give targetAvailabilityZone or targetSubnetId",
                ));
            }
            _ => {}
        }
        check_cutover(self.cutover, self.approval_timeout_seconds)?;
        if let Some(t) = &self.instance_type {
            if !is_instance_type(t) {
                return Err(Error::invalid(
                    "instanceType",
                    format!("{t:?} is not an instance type such as t3.large"),
                ));
            }
        }
        Ok(())
    }
}

/// A workflow input read into its type; a mismatch is `InvalidInput` naming the field (its path,
/// or the missing or unknown field's name).
pub fn parse_fields<T: serde::de::DeserializeOwned>(raw: &Value) -> Result<T> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            first_unknown_or_missing(e.inner())
        } else {
            path
        };
        Error::invalid(field, e.inner().to_string())
    })
}

/// serde names a missing or unknown field only in its message; pull the name out of it.
fn first_unknown_or_missing(e: &serde_json::Error) -> String {
    let text = e.to_string();
    text.split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "input".to_string())
}

/// `prefix` followed by 8 or 17 lowercase hex digits, as EC2 ids are.
pub fn is_resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `us-east-1b`, `us-gov-west-1a`, `us-west-2-lax-1a`: lowercase words and digits joined by
/// hyphens, ending in a digit and a letter.
pub fn is_availability_zone(az: &str) -> bool {
    let bytes = az.as_bytes();
    let n = bytes.len();
    (6..=32).contains(&n)
        && bytes[..2].iter().all(u8::is_ascii_lowercase)
        && bytes[2] == b'-'
        && bytes[n - 1].is_ascii_lowercase()
        && bytes[n - 2].is_ascii_digit()
        && az
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !az.contains("--")
}

/// An AZ as given: its name (`us-east-1b`) or its ID (`use1-az2`), which names the same physical
/// zone in every account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    Name(String),
    Id(String),
}

/// `use1-az2`, `usw2-lax1-az1`: lowercase letters and digits in hyphen-joined parts, the last
/// `az` and a number.
pub fn is_zone_id(id: &str) -> bool {
    let mut parts: Vec<&str> = id.split('-').collect();
    let last = parts.pop();
    (4..=32).contains(&id.len())
        && !parts.is_empty()
        && last.is_some_and(|l| {
            l.strip_prefix("az")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Reads a zone field: a name in `region`, or an ID. Pure.
pub fn zone(field: &str, value: &str, region: &str) -> Result<Zone> {
    if is_zone_id(value) {
        Ok(Zone::Id(value.to_string()))
    } else if is_availability_zone(value) {
        if az_in_region(value, region) {
            Ok(Zone::Name(value.to_string()))
        } else {
            Err(Error::invalid(
                field,
                format!("{value} is not in the region this run works in ({region})"),
            ))
        }
    } else {
        Err(Error::invalid(
            field,
            format!("{value:?} is neither an Availability Zone name such as {region}a nor an AZ ID such as use1-az2"),
        ))
    }
}

/// An AZ belongs to the region its name starts with (`us-east-1b` and `us-east-1-bos-1a` are in
/// `us-east-1`).
pub fn az_in_region(az: &str, region: &str) -> bool {
    az.strip_prefix(region)
        .is_some_and(|rest| rest.len() == 1 || rest.starts_with('-'))
}

/// `family.size`, both parts lowercase letters, digits or hyphens.
pub fn is_instance_type(t: &str) -> bool {
    let mut parts = t.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && t.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<MigrateInput> {
        MigrateInput::parse(&v, "us-east-1")
    }

    fn field_of(r: Result<MigrateInput>) -> String {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn full_input_parses_with_its_values() {
        let input = parse(json!({
            "instanceId": "i-0123456789abcdef0",
            "targetAvailabilityZone": "us-east-1b",
            "targetSubnetId": "subnet-0123456789abcdef0",
            "instanceType": "t3.large",
            "noReboot": true,
            "sourceAction": "terminate",
            "keepImage": true
        }))
        .unwrap();
        assert_eq!(input.source_action, SourceAction::Terminate);
        assert!(input.no_reboot && input.keep_image);
        assert_eq!(input.instance_type.as_deref(), Some("t3.large"));
    }

    #[test]
    fn an_approval_timeout_needs_an_approve_cutover_and_a_sane_length() {
        let base = json!({"instanceId": "i-01234567", "targetAvailabilityZone": "us-east-1b"});
        let with = |extra: Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v)
        };
        let ok = with(json!({"cutover": "approve"})).unwrap();
        assert_eq!(
            (ok.cutover, ok.approval_timeout()),
            (Cutover::Approve, 86400)
        );
        assert_eq!(
            with(json!({"cutover": "approve", "approvalTimeoutSeconds": 120}))
                .unwrap()
                .approval_timeout(),
            120
        );
        for bad in [
            json!({"approvalTimeoutSeconds": 120}),
            json!({"cutover": "approve", "approvalTimeoutSeconds": 5}),
            json!({"cutover": "approve", "approvalTimeoutSeconds": 604801}),
        ] {
            assert_eq!(field_of(with(bad)), "approvalTimeoutSeconds");
        }
        assert_eq!(field_of(with(json!({"cutover": "later"}))), "cutover");
    }

    #[test]
    fn the_target_az_may_be_an_az_id() {
        let input =
            parse(json!({"instanceId": "i-01234567", "targetAvailabilityZone": "use1-az2"}))
                .unwrap();
        assert_eq!(input.target_availability_zone.as_deref(), Some("use1-az2"));
    }

    #[test]
    fn defaults_are_keep_reboot_and_remove_image() {
        let input =
            parse(json!({"instanceId": "i-01234567", "targetAvailabilityZone": "us-east-1c"}))
                .unwrap();
        assert_eq!(input.source_action, SourceAction::Keep);
        assert!(!input.no_reboot && !input.keep_image);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                json!({"targetAvailabilityZone": "us-east-1b"}),
                "instanceId",
            ),
            (
                json!({"instanceId": "i-xyz", "targetAvailabilityZone": "us-east-1b"}),
                "instanceId",
            ),
            (
                json!({"instanceId": "i-01234567"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"instanceId": "i-01234567", "targetAvailabilityZone": "us-west-2a"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"instanceId": "i-01234567", "targetAvailabilityZone": "nowhere"}),
                "targetAvailabilityZone",
            ),
            (
                json!({"instanceId": "i-01234567", "targetSubnetId": "sub-1"}),
                "targetSubnetId",
            ),
            (
                json!({"instanceId": "i-01234567", "targetSubnetId": "subnet-01234567", "instanceType": "large"}),
                "instanceType",
            ),
            (
                json!({"instanceId": "i-01234567", "targetSubnetId": "subnet-01234567", "sourceAction": "delete"}),
                "sourceAction",
            ),
            (
                json!({"instanceId": "i-01234567", "targetSubnetId": "subnet-01234567", "noReboot": "yes"}),
                "noReboot",
            ),
            (
                json!({"instanceId": "i-01234567", "targetSubnetId": "subnet-01234567", "colour": "red"}),
                "colour",
            ),
            (
                json!({"instanceId": 7, "targetSubnetId": "subnet-01234567"}),
                "instanceId",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(parse(input.clone())), field, "{input}");
        }
    }

    #[test]
    fn zones_are_names_of_the_region_or_ids() {
        assert_eq!(
            zone("f", "use1-az2", "us-east-1").unwrap(),
            Zone::Id("use1-az2".into())
        );
        assert_eq!(
            zone("f", "usw2-lax1-az1", "us-east-1").unwrap(),
            Zone::Id("usw2-lax1-az1".into())
        );
        assert_eq!(
            zone("f", "us-east-1c", "us-east-1").unwrap(),
            Zone::Name("us-east-1c".into())
        );
        for bad in ["use1-az", "az1", "use1-azx", "USE1-AZ1", "us-east-1"] {
            assert!(zone("f", bad, "us-east-1").is_err(), "{bad}");
        }
    }

    #[test]
    fn availability_zone_names() {
        for good in [
            "us-east-1b",
            "us-gov-west-1a",
            "us-west-2-lax-1a",
            "ap-northeast-2c",
        ] {
            assert!(is_availability_zone(good), "{good}");
        }
        for bad in ["us-east-1", "US-EAST-1A", "us--east-1a", "x", "us-east-1b "] {
            assert!(!is_availability_zone(bad), "{bad}");
        }
        assert!(az_in_region("us-east-1-bos-1a", "us-east-1"));
        assert!(!az_in_region("us-east-11a", "us-east-1"));
    }
}
