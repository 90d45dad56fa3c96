//! KMS keys: which keys amiflow may share, the grants it gives receivers, and the key-policy
//! statements for organizations and OUs (pure edits that keep every other statement and can be
//! undone), written one run at a time per key under the run lock's item `kms-key-policy/<key ARN>`.

use aws_sdk_kms::types::KeyManagerType;
use serde_json::{json, Value};

use crate::error::{aws, Error, Result};
use crate::receivers::Receivers;
use crate::resources::lock::{Claimant, RunLock};
use crate::tags;

/// What EC2 needs of a key, on a receiver's behalf, to launch from and copy the image: the
/// actions the EBS encryption guide requires of whoever uses EBS encryption (CreateGrant, Decrypt,
/// DescribeKey, GenerateDataKeyWithoutPlaintext, ReEncrypt*), with GenerateDataKey for the
/// receivers' own tools. Grants take no wildcards, so ReEncrypt* is both of its operations.
pub const GRANT_OPERATIONS: [&str; 7] = [
    "DescribeKey",
    "Decrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
];

pub fn grant_name(image_id: &str, account: &str) -> String {
    format!("amiflow-{image_id}-{account}")
}

fn sid(kind: &str, image_id: &str) -> String {
    let suffix: String = image_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("Amiflow{kind}{suffix}")
}

/// The key-policy statements that let an image's organization and OU receivers use a key: the
/// use of the key in one statement, and CreateGrant in another, only for grants to AWS resources
/// (`kms:GrantIsForAWSResource`), which is what EC2 makes when it launches or copies for them.
pub fn org_statements(image_id: &str, receivers: &Receivers) -> Vec<Value> {
    let actions: Vec<String> = GRANT_OPERATIONS
        .iter()
        .filter(|o| **o != "CreateGrant")
        .map(|o| format!("kms:{o}"))
        .collect();
    let for_aws_resources = json!({"kms:GrantIsForAWSResource": "true"});
    let mut out = Vec::new();
    let mut pair = |kind: &str, condition: Value| {
        out.push(json!({
            "Sid": sid(kind, image_id), "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": actions, "Resource": "*",
            "Condition": condition.clone()
        }));
        let mut grant_condition = condition;
        grant_condition["Bool"] = for_aws_resources.clone();
        out.push(json!({
            "Sid": sid(&format!("{kind}Grant"), image_id), "Effect": "Allow", "Principal": {"AWS": "*"},
            "Action": "kms:CreateGrant", "Resource": "*", "Condition": grant_condition
        }));
    };
    let orgs = receivers.organization_ids();
    if !orgs.is_empty() {
        pair(
            "Orgs",
            json!({"StringEquals": {"aws:PrincipalOrgID": orgs}}),
        );
    }
    let paths = receivers.ou_paths();
    if !paths.is_empty() {
        pair(
            "Ous",
            json!({"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": paths}}),
        );
    }
    out
}

fn statements_of(policy: &Value) -> Vec<Value> {
    match policy.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

fn parse_policy(policy: &str) -> Result<Value> {
    serde_json::from_str(policy).map_err(|e| {
        Error::UnexpectedAnswer(format!("GetKeyPolicy: the key policy is not JSON: {e}").into())
    })
}

/// Adds the receivers to amiflow's statements for the image (creating them as needed), keeping
/// every other statement as it was. Pure and idempotent.
pub fn merge_policy(policy: &str, image_id: &str, receivers: &Receivers) -> Result<String> {
    let mut document = parse_policy(policy)?;
    let mut statements = statements_of(&document);
    for wanted in org_statements(image_id, receivers) {
        let sid = wanted["Sid"].clone();
        match statements.iter_mut().find(|s| s["Sid"] == sid) {
            Some(existing) => {
                let (op, key) = condition_key(&wanted);
                let mut values: Vec<Value> = condition_values(existing, op, key);
                for v in condition_values(&wanted, op, key) {
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                existing["Condition"][op][key] = Value::Array(values);
            }
            None => statements.push(wanted),
        }
    }
    document["Statement"] = Value::Array(statements);
    Ok(serde_json::to_string(&document).unwrap_or_default())
}

/// Takes the receivers out of amiflow's statements for the image, dropping a statement left
/// with no receiver; every other statement stays. Pure.
pub fn strip_policy(
    policy: &str,
    image_id: &str,
    receivers: &Receivers,
) -> Result<(String, Vec<String>)> {
    let mut document = parse_policy(policy)?;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for mut statement in statements_of(&document) {
        let ours = org_statements(image_id, receivers)
            .into_iter()
            .find(|w| w["Sid"] == statement["Sid"]);
        if let Some(wanted) = ours {
            let (op, key) = condition_key(&wanted);
            let gone = condition_values(&wanted, op, key);
            let left: Vec<Value> = condition_values(&statement, op, key)
                .into_iter()
                .filter(|v| !gone.contains(v))
                .collect();
            removed.push(statement["Sid"].as_str().unwrap_or_default().to_string());
            if left.is_empty() {
                continue;
            }
            statement["Condition"][op][key] = Value::Array(left);
        }
        kept.push(statement);
    }
    document["Statement"] = Value::Array(kept);
    Ok((
        serde_json::to_string(&document).unwrap_or_default(),
        removed,
    ))
}

fn condition_key(statement: &Value) -> (&'static str, &'static str) {
    if statement["Condition"].get("StringEquals").is_some() {
        ("StringEquals", "aws:PrincipalOrgID")
    } else {
        ("ForAnyValue:StringLike", "aws:PrincipalOrgPaths")
    }
}

fn condition_values(statement: &Value, op: &str, key: &str) -> Vec<Value> {
    match &statement["Condition"][op][key] {
        Value::Array(list) => list.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

/// The key's ARN, refusing keys this account cannot share: AWS managed keys, another account's,
/// and keys the stack owner has not marked shareable.
pub async fn manageable(kms: &aws_sdk_kms::Client, key_id: &str, owner: &str) -> Result<String> {
    let arn = owned(kms, key_id, owner).await?;
    require_shareable(kms, &arn).await?;
    Ok(arn)
}

/// The key's ARN, refusing AWS managed keys and keys of another account (`KeyNotManageable`).
pub async fn owned(kms: &aws_sdk_kms::Client, key_id: &str, owner: &str) -> Result<String> {
    let meta = key_metadata(kms, key_id).await?;
    if meta.key_manager() == Some(&KeyManagerType::Aws) {
        return Err(Error::KeyNotManageable(format!(
            "{key_id} is an AWS managed key; AWS managed keys cannot be shared with other accounts (re-encrypt with a customer managed key)"
        ).into()));
    }
    if meta.aws_account_id() != Some(owner) {
        return Err(Error::KeyNotManageable(format!(
            "{key_id} belongs to {}, not to the image's account {owner}; its grants and policy are not amiflow's to change",
            meta.aws_account_id().unwrap_or("another account")
        ).into()));
    }
    Ok(meta.arn().unwrap_or(key_id).to_string())
}

/// DescribeKey: a key's metadata, by key id, key ARN, alias name or alias ARN.
async fn key_metadata(
    kms: &aws_sdk_kms::Client,
    key_ref: &str,
) -> Result<aws_sdk_kms::types::KeyMetadata> {
    kms.describe_key()
        .key_id(key_ref)
        .send()
        .await
        .map_err(aws("DescribeKey"))?
        .key_metadata
        .ok_or_else(|| {
            Error::UnexpectedAnswer(format!("DescribeKey: no metadata for {key_ref}").into())
        })
}

/// The ARN of a key named in any form (an alias too), refusing it if its owner has not marked
/// it for sharing: `KeyNotShareable`.
pub async fn shareable_key(kms: &aws_sdk_kms::Client, key_ref: &str) -> Result<String> {
    let arn = key_metadata(kms, key_ref)
        .await?
        .arn()
        .unwrap_or(key_ref)
        .to_string();
    require_shareable(kms, &arn).await?;
    Ok(arn)
}

/// Refuses a key (by id or ARN) its owner has not marked for sharing: `KeyNotShareable`.
pub async fn require_shareable(kms: &aws_sdk_kms::Client, key: &str) -> Result<()> {
    let listed = kms
        .list_resource_tags()
        .key_id(key)
        .send()
        .await
        .map_err(aws("ListResourceTags"))?;
    if marked_shareable(listed.tags()) {
        return Ok(());
    }
    Err(Error::KeyNotShareable(format!(
        "{key} is not marked for sharing: the key's owner tags it {}=true to let amiflow grant it to receivers and edit its policy",
        tags::SHAREABLE
    ).into()))
}

/// Whether the stack owner marked a key for sharing with the tag `amiflow:shareable=true`. Pure.
pub fn marked_shareable(key_tags: &[aws_sdk_kms::types::Tag]) -> bool {
    key_tags
        .iter()
        .any(|t| t.tag_key() == tags::SHAREABLE && t.tag_value() == "true")
}

pub async fn existing_grants(
    kms: &aws_sdk_kms::Client,
    key: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_grants()
            .key_id(key)
            .set_marker(marker)
            .send()
            .await
            .map_err(aws("ListGrants"))?;
        for g in page.grants() {
            if let (Some(id), Some(name)) = (g.grant_id(), g.name()) {
                out.push((name.to_string(), id.to_string()));
            }
        }
        match page.next_marker() {
            Some(m) if page.truncated() => marker = Some(m.to_string()),
            _ => return Ok(out),
        }
    }
}

pub async fn policy_of(kms: &aws_sdk_kms::Client, key: &str) -> Result<String> {
    let got = kms
        .get_key_policy()
        .key_id(key)
        .policy_name("default")
        .send()
        .await
        .map_err(aws("GetKeyPolicy"))?;
    Ok(got
        .policy()
        .unwrap_or(r#"{"Version":"2012-10-17","Statement":[]}"#)
        .to_string())
}

async fn put_policy(kms: &aws_sdk_kms::Client, key: &str, policy: String) -> Result<()> {
    kms.put_key_policy()
        .key_id(key)
        .policy_name("default")
        .policy(policy)
        .send()
        .await
        .map_err(aws("PutKeyPolicy"))?;
    Ok(())
}

/// Key-policy edits, one at a time per key across every run.
pub struct PolicyEdits<'a> {
    pub lock: RunLock<'a>,
    /// How long an edit waits for another run's edit of the same key before the step is retried.
    pub patience: std::time::Duration,
}

/// The lock item of a key's policy.
pub fn policy_lock_of(key_arn: &str) -> String {
    format!("kms-key-policy/{key_arn}")
}

impl PolicyEdits<'_> {
    /// Waits for the key's policy lock; a run still editing it after `patience` makes this step
    /// `KeyPolicyBusy`, which the state machine retries with backoff.
    async fn hold(&self, key: &str, who: &Claimant<'_>) -> Result<()> {
        let resource = policy_lock_of(key);
        let deadline = std::time::Instant::now() + self.patience;
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            let Some(holder) = self.lock.try_acquire(&resource, who).await? else {
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(Error::KeyPolicyBusy(format!(
                    "kmsKeyIds: the policy of {key} is being edited by execution {holder}; retried later"
                ).into()));
            }
            tracing::info!(kms_key_id = %key, %holder, "waiting for another run's key-policy edit");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Reads the key's policy, applies `change` (the new policy, if any, and what to report) and
    /// writes it back, holding the key's lock throughout; the lock is given back either way.
    pub async fn edit<T>(
        &self,
        kms: &aws_sdk_kms::Client,
        who: &Claimant<'_>,
        key: &str,
        change: impl FnOnce(&str) -> Result<(Option<String>, T)>,
    ) -> Result<T> {
        self.hold(key, who).await?;
        let edited = async {
            let (policy, out) = change(&policy_of(kms, key).await?)?;
            if let Some(policy) = policy {
                put_policy(kms, key, policy).await?;
            }
            Ok(out)
        }
        .await;
        let released = self.lock.release(&policy_lock_of(key), who.execution).await;
        let out = edited?;
        released?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receivers() -> Receivers {
        Receivers {
            account_ids: vec!["210987654321".into()],
            organization_arns: vec![
                "arn:aws:organizations::123456789012:organization/o-abcdef1234".into(),
            ],
            organizational_unit_arns: vec![
                "arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-cdef5678".into(),
            ],
            public: false,
        }
    }

    const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"kms:*","Resource":"*"}]}"#;

    #[test]
    fn merge_adds_org_and_ou_statements_and_keeps_the_rest() {
        let merged: Value =
            serde_json::from_str(&merge_policy(POLICY, "ami-0abc", &receivers()).unwrap()).unwrap();
        let statements = merged["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 5);
        assert_eq!(statements[0]["Sid"], "Enable IAM User Permissions");
        assert_eq!(
            statements[1]["Condition"]["StringEquals"]["aws:PrincipalOrgID"],
            json!(["o-abcdef1234"])
        );
        assert_eq!(
            statements[3]["Condition"]["ForAnyValue:StringLike"]["aws:PrincipalOrgPaths"],
            json!(["o-abcdef1234/*/ou-ab12-cdef5678/*"])
        );
        // The use of the key, without CreateGrant ...
        let actions = statements[1]["Action"].as_array().unwrap();
        assert_eq!(actions.len(), GRANT_OPERATIONS.len() - 1);
        assert!(!actions.contains(&json!("kms:CreateGrant")));
        // ... which has its own statement, only for grants to AWS resources (EC2's).
        for grant in [&statements[2], &statements[4]] {
            assert_eq!(grant["Action"], "kms:CreateGrant");
            assert_eq!(
                grant["Condition"]["Bool"]["kms:GrantIsForAWSResource"],
                "true"
            );
        }
        assert_eq!(
            statements[2]["Condition"]["StringEquals"]["aws:PrincipalOrgID"],
            json!(["o-abcdef1234"])
        );
        assert_eq!(
            statements[4]["Condition"]["ForAnyValue:StringLike"]["aws:PrincipalOrgPaths"],
            json!(["o-abcdef1234/*/ou-ab12-cdef5678/*"])
        );
    }

    #[test]
    fn merge_is_idempotent_and_adds_new_receivers_to_the_same_statement() {
        let once = merge_policy(POLICY, "ami-0abc", &receivers()).unwrap();
        assert_eq!(merge_policy(&once, "ami-0abc", &receivers()).unwrap(), once);
        let mut more = receivers();
        more.organizational_unit_arns
            .push("arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-99998888".into());
        let twice: Value =
            serde_json::from_str(&merge_policy(&once, "ami-0abc", &more).unwrap()).unwrap();
        for ous in [3, 4] {
            assert_eq!(
                twice["Statement"][ous]["Condition"]["ForAnyValue:StringLike"]
                    ["aws:PrincipalOrgPaths"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
        }
        assert_eq!(twice["Statement"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn strip_undoes_merge_exactly() {
        let merged = merge_policy(POLICY, "ami-0abc", &receivers()).unwrap();
        let (stripped, removed) = strip_policy(&merged, "ami-0abc", &receivers()).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&stripped).unwrap(),
            serde_json::from_str::<Value>(POLICY).unwrap()
        );
        assert_eq!(
            removed,
            [
                "AmiflowOrgsami0abc",
                "AmiflowOrgsGrantami0abc",
                "AmiflowOusami0abc",
                "AmiflowOusGrantami0abc"
            ]
        );
        // Another image's statements are not touched.
        let (other, removed) = strip_policy(&merged, "ami-0def", &receivers()).unwrap();
        assert_eq!(other, merged);
        assert!(removed.is_empty());
    }

    #[test]
    fn grant_names_identify_image_and_account() {
        assert_eq!(
            grant_name("ami-0abc", "210987654321"),
            "amiflow-ami-0abc-210987654321"
        );
    }
}
