//! The inputs of ShareImage, UnshareImage and CopyImage, and the checks that refuse bad input
//! before any call. Every refusal names its field (with the index in a list).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::input::{is_resource_id, parse_fields as parse};

/// EC2 allows at most this many sharing entities on one AMI.
pub const MAX_RECEIVERS: usize = 1000;

/// Who an image is shared with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receivers {
    #[serde(default)]
    pub account_ids: Vec<String>,
    #[serde(default)]
    pub organization_arns: Vec<String>,
    #[serde(default)]
    pub organizational_unit_arns: Vec<String>,
    #[serde(default)]
    pub public: bool,
}

impl Receivers {
    pub fn count(&self) -> usize {
        self.account_ids.len()
            + self.organization_arns.len()
            + self.organizational_unit_arns.len()
            + usize::from(self.public)
    }

    /// The organization id of an organization or OU ARN (`o-…`).
    pub fn organization_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .organization_arns
            .iter()
            .filter_map(|a| org_id_of(a))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// `aws:PrincipalOrgPaths` patterns for the OUs: `o-…/*/ou-…/*` covers the OU and its children.
    pub fn ou_paths(&self) -> Vec<String> {
        self.organizational_unit_arns
            .iter()
            .filter_map(|arn| {
                let org = org_id_of(arn)?;
                let ou = arn.rsplit('/').next()?;
                Some(format!("{org}/*/{ou}/*"))
            })
            .collect()
    }

    fn check(&self, owner: Option<&str>) -> Result<()> {
        for (i, account) in self.account_ids.iter().enumerate() {
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::invalid(
                    format!("accountIds[{i}]"),
                    format!("{account:?} is not a 12-digit AWS account id"),
                ));
            }
            if Some(account.as_str()) == owner {
                return Err(Error::invalid(
                    format!("accountIds[{i}]"),
                    format!("{account} is the image's own account"),
                ));
            }
        }
        for (i, arn) in self.organization_arns.iter().enumerate() {
            if !is_organization_arn(arn) {
                return Err(Error::invalid(
                    format!("organizationArns[{i}]"),
                    format!("{arn:?} is not an organization ARN (arn:aws:organizations::123456789012:organization/o-…)"),
                ));
            }
        }
        for (i, arn) in self.organizational_unit_arns.iter().enumerate() {
            if !is_ou_arn(arn) {
                return Err(Error::invalid(
                    format!("organizationalUnitArns[{i}]"),
                    format!("{arn:?} is not an OU ARN (arn:aws:organizations::123456789012:ou/o-…/ou-…)"),
                ));
            }
        }
        if self.count() == 0 {
            return Err(Error::invalid("accountIds", "give at least one receiver: accountIds, organizationArns, organizationalUnitArns or public"));
        }
        if self.count() > MAX_RECEIVERS {
            return Err(Error::invalid(
                "accountIds",
                format!(
                    "{} receivers; an AMI can be shared with at most {MAX_RECEIVERS}",
                    self.count()
                ),
            ));
        }
        Ok(())
    }
}

fn org_id_of(arn: &str) -> Option<String> {
    arn.split('/')
        .find(|part| part.starts_with("o-"))
        .map(str::to_string)
}

fn lower_alnum(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `arn:<partition>:organizations::<12 digits>:<resource>`: the resource, if `arn` is one.
fn organizations_resource(arn: &str) -> Option<&str> {
    let parsed = crate::arn::parse(arn)?;
    (parsed.service == "organizations"
        && parsed.region.is_empty()
        && parsed.account.len() == 12
        && parsed.account.bytes().all(|b| b.is_ascii_digit()))
    .then_some(parsed.resource)
}

/// `arn:<partition>:organizations::<12 digits>:organization/o-<10 to 32 lowercase letters or digits>`
pub fn is_organization_arn(arn: &str) -> bool {
    organizations_resource(arn)
        .and_then(|r| r.strip_prefix("organization/o-"))
        .is_some_and(|org| (10..=32).contains(&org.len()) && lower_alnum(org))
}

/// `arn:<partition>:organizations::<12 digits>:ou/o-<id>/ou-<root part>-<ou part>`
pub fn is_ou_arn(arn: &str) -> bool {
    let Some(resource) = organizations_resource(arn) else {
        return false;
    };
    let mut parts = resource.split('/');
    let (Some("ou"), Some(org), Some(ou), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let org_ok = org
        .strip_prefix("o-")
        .is_some_and(|o| (10..=32).contains(&o.len()) && lower_alnum(o));
    let ou_ok = ou.strip_prefix("ou-").is_some_and(|o| {
        let mut halves = o.splitn(2, '-');
        matches!((halves.next(), halves.next()), (Some(a), Some(b)) if (4..=32).contains(&a.len()) && (8..=32).contains(&b.len()) && lower_alnum(a) && lower_alnum(b))
    });
    org_ok && ou_ok
}

/// A KMS key reference: key id, key ARN, alias name or alias ARN.
pub fn is_kms_key_ref(key: &str) -> bool {
    let uuid = |s: &str| s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    key.starts_with("alias/")
        || uuid(key)
        || key
            .strip_prefix("mrk-")
            .is_some_and(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        || crate::arn::parse(key).is_some_and(|a| {
            a.service == "kms"
                && (a.resource.starts_with("key/") || a.resource.starts_with("alias/"))
        })
}

fn check_image_id(field: &str, id: &str) -> Result<()> {
    if is_resource_id(id, "ami-") {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{id:?} is not an image id (ami- and 8 or 17 hex digits)"),
        ))
    }
}

fn yes() -> bool {
    true
}

/// Which image, and who it is shared with: the whole input of UnshareImage, and the part of
/// ShareImage's that both workflows share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnshareInput {
    pub image_id: String,
    pub share_snapshots: bool,
    pub receivers: Receivers,
}

/// The fields of UnshareImage's input that are not receivers.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Shared {
    image_id: String,
    #[serde(default = "yes")]
    share_snapshots: bool,
}

impl UnshareInput {
    pub fn parse(raw: &Value) -> Result<Self> {
        let (shared, receivers) = split(raw, &["imageId", "shareSnapshots"]);
        let shared: Shared = parse(&shared)?;
        check_image_id("imageId", &shared.image_id)?;
        let receivers: Receivers = parse(&receivers)?;
        receivers.check(None)?;
        Ok(UnshareInput {
            image_id: shared.image_id,
            share_snapshots: shared.share_snapshots,
            receivers,
        })
    }

    pub fn receivers(&self) -> Receivers {
        self.receivers.clone()
    }
}

/// The named fields of an input object, and the others; a value that is not an object is left
/// whole in both, for the first parser to refuse.
fn split(raw: &Value, names: &[&str]) -> (Value, Value) {
    match raw {
        Value::Object(fields) => {
            let (named, rest): (serde_json::Map<_, _>, _) = fields
                .clone()
                .into_iter()
                .partition(|(k, _)| names.contains(&k.as_str()));
            (Value::Object(named), Value::Object(rest))
        }
        other => (other.clone(), other.clone()),
    }
}

/// The input of ShareImage: UnshareImage's, and what only a share may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareInput {
    pub sharing: UnshareInput,
    pub reencrypt_kms_key_id: Option<String>,
    /// Run the preflight checks as the first state, failing before any change.
    pub preflight: bool,
}

/// The fields that ShareImage takes and UnshareImage does not.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShareOnly {
    #[serde(default)]
    reencrypt_kms_key_id: Option<String>,
    #[serde(default)]
    preflight: bool,
}

const SHARE_ONLY: [&str; 2] = ["reencryptKmsKeyId", "preflight"];

impl ShareInput {
    pub fn parse(raw: &Value) -> Result<Self> {
        let (only, rest) = split(raw, &SHARE_ONLY);
        let sharing = UnshareInput::parse(&rest)?;
        let only: ShareOnly = parse(&only)?;
        if let Some(key) = &only.reencrypt_kms_key_id {
            if !is_kms_key_ref(key) {
                return Err(Error::invalid(
                    "reencryptKmsKeyId",
                    format!("{key:?} is not a KMS key id, key ARN or alias"),
                ));
            }
        }
        Ok(ShareInput {
            sharing,
            reencrypt_kms_key_id: only.reencrypt_kms_key_id,
            preflight: only.preflight,
        })
    }

    pub fn receivers(&self) -> Receivers {
        self.sharing.receivers()
    }

    /// The receivers, checked against the image's own account.
    pub fn receivers_for(&self, owner: &str) -> Result<Receivers> {
        let receivers = self.receivers();
        receivers.check(Some(owner))?;
        Ok(receivers)
    }
}

/// The input of CopyImage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyInput {
    pub source_image_id: String,
    pub source_region: String,
    pub target_account_id: String,
    pub target_role_arn: String,
    pub external_id: String,
    pub target_kms_key_id: String,
    pub name: String,
    #[serde(default = "yes")]
    pub copy_tags: bool,
    #[serde(default)]
    pub keep_sharing: bool,
    /// Run the preflight checks as the first state, failing before any change.
    #[serde(default)]
    pub preflight: bool,
}

impl CopyInput {
    pub fn parse(raw: &Value, region: &str) -> Result<Self> {
        let input: CopyInput = parse(raw)?;
        check_image_id("sourceImageId", &input.source_image_id)?;
        if input.source_region != region {
            return Err(Error::invalid(
                "sourceRegion",
                format!("{} is not the region this stack runs in ({region}); deploy amiflow in the source region", input.source_region),
            ));
        }
        let account = &input.target_account_id;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "targetAccountId",
                format!("{account:?} is not a 12-digit AWS account id"),
            ));
        }
        let role_account = crate::arn::parse(&input.target_role_arn)
            .filter(|a| a.service == "iam" && a.account.len() == 12)
            .filter(|a| {
                a.resource
                    .strip_prefix("role/")
                    .is_some_and(|n| !n.is_empty())
            })
            .map(|a| a.account);
        match role_account {
            None => {
                return Err(Error::invalid(
                    "targetRoleArn",
                    format!(
                        "{:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)",
                        input.target_role_arn
                    ),
                ))
            }
            Some(acct) if acct != account => {
                return Err(Error::invalid(
                    "targetRoleArn",
                    format!("the role is in {acct}, not in targetAccountId {account}"),
                ))
            }
            _ => {}
        }
        if input.external_id.len() < 2 || input.external_id.len() > 1224 {
            return Err(Error::invalid("externalId", "must be 2 to 1224 characters"));
        }
        if !is_kms_key_ref(&input.target_kms_key_id) {
            return Err(Error::invalid(
                "targetKmsKeyId",
                format!(
                    "{:?} is not a KMS key id, key ARN or alias",
                    input.target_kms_key_id
                ),
            ));
        }
        if let Some(key_account) = crate::arn::parse(&input.target_kms_key_id)
            .filter(|a| a.service == "kms")
            .map(|a| a.account)
        {
            if key_account != account {
                return Err(Error::invalid("targetKmsKeyId", format!("the key is in {key_account}; the copy must be encrypted with a key of {account}")));
            }
        }
        let name_ok = (3..=128).contains(&input.name.len())
            && input
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
        if !name_ok {
            return Err(Error::invalid(
                "name",
                "3 to 128 letters, digits, spaces or ( ) [ ] . / - ' @ _",
            ));
        }
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    const ORG: &str = "arn:aws:organizations::123456789012:organization/o-abcdef1234";
    const OU: &str = "arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-cdef5678";

    #[test]
    fn a_full_share_input_parses() {
        let input = ShareInput::parse(&json!({
            "imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"], "organizationArns": [ORG],
            "organizationalUnitArns": [OU], "shareSnapshots": true, "public": false, "reencryptKmsKeyId": null
        }))
        .unwrap();
        let r = input.receivers();
        assert_eq!(r.count(), 3);
        assert_eq!(r.organization_ids(), ["o-abcdef1234"]);
        assert_eq!(r.ou_paths(), ["o-abcdef1234/*/ou-ab12-cdef5678/*"]);
        assert!(input.sharing.share_snapshots);
    }

    #[test]
    fn share_refusals_name_the_field() {
        let base = |extra: Value| {
            let mut v = json!({"imageId": "ami-0123456789abcdef0"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            ShareInput::parse(&v)
        };
        assert_eq!(
            field(base(json!({"accountIds": ["12345678901"]}))),
            "accountIds[0]"
        );
        assert_eq!(
            field(base(
                json!({"accountIds": ["210987654321", "1234567890123"]})
            )),
            "accountIds[1]"
        );
        assert_eq!(field(base(json!({}))), "accountIds");
        assert_eq!(
            field(base(json!({"organizationArns": ["o-abcdef1234"]}))),
            "organizationArns[0]"
        );
        assert_eq!(
            field(base(json!({"organizationalUnitArns": [ORG]}))),
            "organizationalUnitArns[0]"
        );
        assert_eq!(field(base(json!({"public": "yes"}))), "public");
        assert_eq!(
            field(base(
                json!({"accountIds": ["210987654321"], "reencryptKmsKeyId": "my key"})
            )),
            "reencryptKmsKeyId"
        );
        assert_eq!(
            field(base(json!({"accountIds": ["210987654321"], "colour": 1}))),
            "colour"
        );
        let many: Vec<String> = (0..1001)
            .map(|i| format!("{:012}", 100000000000u64 + i))
            .collect();
        assert_eq!(field(base(json!({"accountIds": many}))), "accountIds");
        assert_eq!(
            field(ShareInput::parse(
                &json!({"imageId": "img-1", "public": true})
            )),
            "imageId"
        );
    }

    #[test]
    fn unshare_takes_the_receivers_and_refuses_what_only_a_share_may_ask() {
        let unshare = |v: Value| UnshareInput::parse(&v);
        let input = unshare(json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"], "shareSnapshots": false}))
            .unwrap();
        assert_eq!(input.receivers().account_ids, ["210987654321"]);
        assert!(!input.share_snapshots);
        for only in ["reencryptKmsKeyId", "preflight"] {
            let mut v = json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["210987654321"]});
            v[only] = json!(true);
            assert_eq!(field(unshare(v)), only);
        }
        assert_eq!(
            field(unshare(json!({"accountIds": ["210987654321"]}))),
            "imageId"
        );
        assert_eq!(field(unshare(json!("ami-0123456789abcdef0"))), "input");
    }

    #[test]
    fn the_owner_cannot_be_a_receiver() {
        let input = ShareInput::parse(
            &json!({"imageId": "ami-0123456789abcdef0", "accountIds": ["123456789012"]}),
        )
        .unwrap();
        assert_eq!(field(input.receivers_for("123456789012")), "accountIds[0]");
    }

    #[test]
    fn copy_input_checks() {
        let good = json!({
            "sourceImageId": "ami-0123456789abcdef0", "sourceRegion": "us-east-1", "targetAccountId": "210987654321",
            "targetRoleArn": "arn:aws:iam::210987654321:role/amiflow-copy", "externalId": "amiflow-ext",
            "targetKmsKeyId": "arn:aws:kms:us-east-1:210987654321:key/11111111-2222-3333-4444-555555555555",
            "name": "web copy", "copyTags": true, "keepSharing": false
        });
        assert!(CopyInput::parse(&good, "us-east-1").is_ok());
        let with = |k: &str, v: Value| {
            let mut x = good.clone();
            x[k] = v;
            CopyInput::parse(&x, "us-east-1")
        };
        assert_eq!(
            field(with("targetAccountId", json!("2109876543"))),
            "targetAccountId"
        );
        assert_eq!(
            field(with(
                "targetRoleArn",
                json!("arn:aws:iam::210987654321:user/bob")
            )),
            "targetRoleArn"
        );
        assert_eq!(
            field(with(
                "targetRoleArn",
                json!("arn:aws:iam::333333333333:role/x")
            )),
            "targetRoleArn"
        );
        assert_eq!(
            field(with(
                "targetKmsKeyId",
                json!(
                    "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
                )
            )),
            "targetKmsKeyId"
        );
        assert_eq!(
            field(with("sourceRegion", json!("eu-west-1"))),
            "sourceRegion"
        );
        assert_eq!(field(with("name", json!("x"))), "name");
        assert_eq!(field(with("externalId", json!(""))), "externalId");
    }

    #[test]
    fn arn_shapes() {
        assert!(is_organization_arn(ORG) && !is_organization_arn(OU));
        assert!(is_ou_arn(OU) && !is_ou_arn(ORG));
        assert!(
            is_kms_key_ref("alias/ops") && is_kms_key_ref("11111111-2222-3333-4444-555555555555")
        );
        assert!(!is_kms_key_ref("ops"));
        // Every partition, not only aws.
        assert!(is_organization_arn(
            &ORG.replace("arn:aws:", "arn:aws-us-gov:")
        ));
        assert!(is_ou_arn(&OU.replace("arn:aws:", "arn:aws-cn:")));
        assert!(is_kms_key_ref(
            "arn:aws-cn:kms:cn-north-1:123456789012:key/k1"
        ));
        assert!(!is_organization_arn(
            "arn:aws:organizations::12345:organization/o-abcdef1234"
        ));
        let copy = CopyInput::parse(
            &json!({
                "sourceImageId": "ami-0123456789abcdef0", "sourceRegion": "cn-north-1", "targetAccountId": "210987654321",
                "targetRoleArn": "arn:aws-cn:iam::210987654321:role/amiflow-copy", "externalId": "ext",
                "targetKmsKeyId": "arn:aws-cn:kms:cn-north-1:210987654321:key/11111111-2222-3333-4444-555555555555",
                "name": "copy"
            }),
            "cn-north-1",
        );
        assert!(copy.is_ok(), "{copy:?}");
    }
}
