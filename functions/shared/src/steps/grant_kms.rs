//! grant-kms: gives the receivers of an image the use of the KMS keys behind its snapshots, and
//! takes it back.
//!
//! Accounts get grants (CreateGrant) with the operations EC2 needs to launch from and copy the
//! image, each named after the image and the account, so that a second call finds it instead of
//! adding another. Organizations and OUs get a statement in the key policy, with
//! `aws:PrincipalOrgID` or `aws:PrincipalOrgPaths` conditions; the merge keeps every other
//! statement and can be undone.
//!
//! A key-policy edit reads the policy, changes amiflow's statements and writes it back, so two
//! runs editing one key at once could each drop the other's statement. Each edit holds the run
//! lock's table item for that key (`kms-key-policy/<key ARN>`) from the read to the write.

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::types::{GrantOperation, KeyManagerType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{aws, Error, Result};
use crate::receivers::Receivers;
use crate::steps::lock::{Claimant, RunLock};
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeysRequest {
    pub execution: String,
    /// The execution's ARN: the holder of a key-policy edit's lock.
    pub execution_arn: String,
    pub image_id: String,
    /// The account that owns the image (and must own the keys).
    pub owner_account: String,
    pub kms_key_ids: Vec<String>,
    pub receivers: Receivers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum GrantKmsRequest {
    Grant(KeysRequest),
    Revoke(KeysRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    pub account_id: String,
    pub grant_id: String,
    pub name: String,
}

/// What one key now allows (grant) or no longer allows (revoke).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAccess {
    pub kms_key_id: String,
    pub grants: Vec<GrantRecord>,
    pub key_policy_statements: Vec<String>,
}

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
    serde_json::from_str(policy)
        .map_err(|e| Error::AwsApi(format!("GetKeyPolicy: the key policy is not JSON: {e}")))
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
async fn manageable(kms: &aws_sdk_kms::Client, key_id: &str, owner: &str) -> Result<String> {
    let arn = owned(kms, key_id, owner).await?;
    require_shareable(kms, &arn).await?;
    Ok(arn)
}

/// The key's ARN, refusing AWS managed keys and keys of another account (`KeyNotManageable`).
async fn owned(kms: &aws_sdk_kms::Client, key_id: &str, owner: &str) -> Result<String> {
    let meta = key_metadata(kms, key_id).await?;
    if meta.key_manager() == Some(&KeyManagerType::Aws) {
        return Err(Error::KeyNotManageable(format!(
            "{key_id} is an AWS managed key; AWS managed keys cannot be shared with other accounts (re-encrypt with a customer managed key)"
        )));
    }
    if meta.aws_account_id() != Some(owner) {
        return Err(Error::KeyNotManageable(format!(
            "{key_id} belongs to {}, not to the image's account {owner}; its grants and policy are not amiflow's to change",
            meta.aws_account_id().unwrap_or("another account")
        )));
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
        .ok_or_else(|| Error::AwsApi(format!("DescribeKey: no metadata for {key_ref}")))
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
    )))
}

/// Whether the stack owner marked a key for sharing with the tag `amiflow:shareable=true`. Pure.
pub fn marked_shareable(key_tags: &[aws_sdk_kms::types::Tag]) -> bool {
    key_tags
        .iter()
        .any(|t| t.tag_key() == tags::SHAREABLE && t.tag_value() == "true")
}

async fn existing_grants(kms: &aws_sdk_kms::Client, key: &str) -> Result<Vec<(String, String)>> {
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

async fn policy_of(kms: &aws_sdk_kms::Client, key: &str) -> Result<String> {
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
    /// `Throttled`, which the state machine retries with backoff.
    async fn hold(&self, key: &str, who: &Claimant<'_>) -> Result<()> {
        let resource = policy_lock_of(key);
        let deadline = std::time::Instant::now() + self.patience;
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            let Some(holder) = self.lock.try_acquire(&resource, who).await? else {
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(Error::Throttled(format!(
                    "kmsKeyIds: the policy of {key} is being edited by execution {holder}; retried later"
                )));
            }
            tracing::info!(kms_key_id = %key, %holder, "waiting for another run's key-policy edit");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Reads the key's policy, applies `change` (the new policy, if any, and what to report) and
    /// writes it back, holding the key's lock throughout; the lock is given back either way.
    async fn edit<T>(
        &self,
        kms: &aws_sdk_kms::Client,
        request: &KeysRequest,
        key: &str,
        change: impl FnOnce(&str) -> Result<(Option<String>, T)>,
    ) -> Result<T> {
        let who = Claimant {
            execution: &request.execution,
            execution_arn: &request.execution_arn,
        };
        self.hold(key, &who).await?;
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

pub async fn grant(
    kms: &aws_sdk_kms::Client,
    edits: &PolicyEdits<'_>,
    request: &KeysRequest,
) -> Result<Vec<KeyAccess>> {
    let receivers = &request.receivers;
    // Every key is checked before any is changed.
    let mut keys = Vec::new();
    for key_id in &request.kms_key_ids {
        keys.push(manageable(kms, key_id, &request.owner_account).await?);
    }
    let mut out = Vec::new();
    for key in keys {
        let existing = existing_grants(kms, &key).await?;
        let mut grants = Vec::new();
        for account in &receivers.account_ids {
            let name = grant_name(&request.image_id, account);
            let grant_id = match existing.iter().find(|(n, _)| *n == name) {
                Some((_, id)) => id.clone(),
                None => kms
                    .create_grant()
                    .key_id(&key)
                    .grantee_principal(crate::arn::account_root(account, &key))
                    .set_operations(Some(
                        GRANT_OPERATIONS
                            .iter()
                            .map(|o| GrantOperation::from(*o))
                            .collect(),
                    ))
                    .name(&name)
                    .send()
                    .await
                    .map_err(aws("CreateGrant"))?
                    .grant_id()
                    .unwrap_or_default()
                    .to_string(),
            };
            tracing::info!(kms_key_id = %key, account, grant_id = %grant_id, execution = %request.execution, "key granted");
            grants.push(GrantRecord {
                account_id: account.clone(),
                grant_id,
                name,
            });
        }
        let statements: Vec<String> = org_statements(&request.image_id, receivers)
            .iter()
            .filter_map(|s| s["Sid"].as_str().map(str::to_string))
            .collect();
        if !statements.is_empty() {
            edits
                .edit(kms, request, &key, |policy| {
                    Ok((
                        Some(merge_policy(policy, &request.image_id, receivers)?),
                        (),
                    ))
                })
                .await?;
            tracing::info!(kms_key_id = %key, statements = ?statements, "key policy statements merged");
        }
        out.push(KeyAccess {
            kms_key_id: key,
            grants,
            key_policy_statements: statements,
        });
    }
    Ok(out)
}

pub async fn revoke(
    kms: &aws_sdk_kms::Client,
    edits: &PolicyEdits<'_>,
    request: &KeysRequest,
) -> Result<Vec<KeyAccess>> {
    let receivers = &request.receivers;
    let mut out = Vec::new();
    for key_id in &request.kms_key_ids {
        // Revoking is an undo too (after a grant that failed part-way, or never ran): a key that
        // amiflow could never change holds nothing of amiflow's, so there is nothing to take back.
        let key = match owned(kms, key_id, &request.owner_account).await {
            Ok(key) => key,
            Err(Error::KeyNotManageable(why)) => {
                tracing::info!(kms_key_id = %key_id, %why, "nothing of amiflow's on this key");
                continue;
            }
            Err(e) => return Err(e),
        };
        let existing = existing_grants(kms, &key).await?;
        let names: Vec<String> = receivers
            .account_ids
            .iter()
            .map(|a| grant_name(&request.image_id, a))
            .collect();
        let ours_there = existing.iter().any(|(n, _)| names.contains(n));
        let policy = if org_statements(&request.image_id, receivers).is_empty() {
            None
        } else {
            Some(policy_of(kms, &key).await?)
        };
        let statements_there = match &policy {
            Some(p) => !strip_policy(p, &request.image_id, receivers)?.1.is_empty(),
            None => false,
        };
        if !ours_there && !statements_there {
            out.push(KeyAccess {
                kms_key_id: key,
                grants: Vec::new(),
                key_policy_statements: Vec::new(),
            });
            continue;
        }
        require_shareable(kms, &key).await?;
        let mut grants = Vec::new();
        for account in &receivers.account_ids {
            let name = grant_name(&request.image_id, account);
            for (_, grant_id) in existing.iter().filter(|(n, _)| *n == name) {
                let revoked = kms
                    .revoke_grant()
                    .key_id(&key)
                    .grant_id(grant_id)
                    .send()
                    .await;
                // A grant revoked meanwhile (by a concurrent attempt of this step) is gone, as asked.
                if let Err(e) = revoked {
                    if e.code() != Some("NotFoundException") {
                        return Err(aws("RevokeGrant")(e));
                    }
                }
                grants.push(GrantRecord {
                    account_id: account.clone(),
                    grant_id: grant_id.clone(),
                    name: name.clone(),
                });
            }
        }
        let mut statements = Vec::new();
        if statements_there {
            // Read again under the key's lock: the policy may have changed since.
            statements = edits
                .edit(kms, request, &key, |policy| {
                    let (stripped, removed) = strip_policy(policy, &request.image_id, receivers)?;
                    Ok((Some(stripped).filter(|_| !removed.is_empty()), removed))
                })
                .await?;
        }
        tracing::info!(kms_key_id = %key, grants = grants.len(), statements = ?statements, "key access revoked");
        out.push(KeyAccess {
            kms_key_id: key,
            grants,
            key_policy_statements: statements,
        });
    }
    Ok(out)
}

pub async fn run(
    kms: &aws_sdk_kms::Client,
    edits: &PolicyEdits<'_>,
    request: GrantKmsRequest,
) -> Result<Vec<KeyAccess>> {
    // Boxed: the two futures are deep enough to overflow the compiler's layout query in main.
    match request {
        GrantKmsRequest::Grant(r) => Box::pin(grant(kms, edits, &r)).await,
        GrantKmsRequest::Revoke(r) => Box::pin(revoke(kms, edits, &r)).await,
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

#[cfg(test)]
mod mocked {
    use super::*;
    use aws_sdk_kms::operation::create_grant::CreateGrantOutput;
    use aws_sdk_kms::operation::describe_key::DescribeKeyOutput;
    use aws_sdk_kms::operation::get_key_policy::GetKeyPolicyOutput;
    use aws_sdk_kms::operation::list_grants::ListGrantsOutput;
    use aws_sdk_kms::operation::list_resource_tags::ListResourceTagsOutput;
    use aws_sdk_kms::operation::put_key_policy::PutKeyPolicyOutput;
    use aws_sdk_kms::operation::revoke_grant::RevokeGrantOutput;
    use aws_sdk_kms::types::{GrantListEntry, KeyMetadata, Tag as KmsTag};
    use aws_sdk_kms::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    /// A key-policy lock that is always free: the edits of one test never contend.
    struct FreeLocks {
        ddb: aws_sdk_dynamodb::Client,
        sfn: aws_sdk_sfn::Client,
        taken: Rule,
        released: Rule,
    }

    impl FreeLocks {
        fn new() -> Self {
            use aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput;
            use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
            let taken = mock!(aws_sdk_dynamodb::Client::put_item)
                .match_requests(|r| {
                    r.item()
                        .and_then(|i| i.get("resourceId"))
                        .is_some_and(|v| v.as_s().is_ok_and(|k| k.starts_with("kms-key-policy/")))
                })
                .then_output(|| PutItemOutput::builder().build());
            let released = mock!(aws_sdk_dynamodb::Client::delete_item)
                .then_output(|| DeleteItemOutput::builder().build());
            let ddb = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&taken, &released]);
            let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, &[] as &[&Rule]);
            FreeLocks {
                ddb,
                sfn,
                taken,
                released,
            }
        }

        fn edits(&self) -> PolicyEdits<'_> {
            PolicyEdits {
                lock: RunLock {
                    ddb: &self.ddb,
                    sfn: &self.sfn,
                    table: "locks",
                },
                patience: std::time::Duration::from_millis(10),
            }
        }
    }

    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555";

    fn describe(manager: KeyManagerType, account: &'static str) -> Rule {
        mock!(Client::describe_key).then_output(move || {
            DescribeKeyOutput::builder()
                .key_metadata(
                    KeyMetadata::builder()
                        .key_id("k")
                        .arn(KEY)
                        .aws_account_id(account)
                        .key_manager(manager.clone())
                        .build()
                        .unwrap(),
                )
                .build()
        })
    }

    /// ListResourceTags: the key marked shareable by the stack owner, or not.
    fn shareable(marked: bool) -> Rule {
        mock!(Client::list_resource_tags).then_output(move || {
            let mut out = ListResourceTagsOutput::builder();
            if marked {
                out = out.tags(
                    KmsTag::builder()
                        .tag_key(tags::SHAREABLE)
                        .tag_value("true")
                        .build()
                        .unwrap(),
                );
            }
            out.build()
        })
    }

    fn request(receivers: Receivers) -> KeysRequest {
        KeysRequest {
            execution: "run-1".into(),
            execution_arn: "arn:aws:states:us-east-1:123456789012:execution:ShareImage:run-1"
                .into(),
            image_id: "ami-0abc".into(),
            owner_account: "123456789012".into(),
            kms_key_ids: vec![KEY.into()],
            receivers,
        }
    }

    fn accounts() -> Receivers {
        Receivers {
            account_ids: vec!["210987654321".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn grants_an_account_once_by_name() {
        let list_empty =
            mock!(Client::list_grants).then_output(|| ListGrantsOutput::builder().build());
        let create = mock!(Client::create_grant)
            .match_requests(|r| {
                r.name() == Some("amiflow-ami-0abc-210987654321")
                    && r.operations().len() == GRANT_OPERATIONS.len()
                    && r.grantee_principal() == Some("arn:aws:iam::210987654321:root")
            })
            .then_output(|| CreateGrantOutput::builder().grant_id("g-1").build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            list_empty,
            create,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let out = grant(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap();
        assert_eq!(out[0].grants[0].grant_id, "g-1");
        assert_eq!(rules[2].num_calls(), 1);

        let listed = one_amiflow_grant();
        let create = mock!(Client::create_grant)
            .then_output(|| CreateGrantOutput::builder().grant_id("g-2").build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            listed,
            create,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let out = grant(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap();
        assert_eq!(out[0].grants[0].grant_id, "g-1");
        assert_eq!(
            rules[2].num_calls(),
            0,
            "a second call finds the grant instead of adding one"
        );
    }

    #[tokio::test]
    async fn a_key_not_marked_shareable_is_refused_before_any_change() {
        let create = mock!(Client::create_grant)
            .then_output(|| CreateGrantOutput::builder().grant_id("g-1").build());
        let put =
            mock!(Client::put_key_policy).then_output(|| PutKeyPolicyOutput::builder().build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            mock!(Client::list_grants).then_output(|| ListGrantsOutput::builder().build()),
            create,
            put,
            shareable(false),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let mut both = request(accounts());
        both.receivers.organization_arns =
            vec!["arn:aws:organizations::123456789012:organization/o-abcdef1234".into()];
        let e = grant(&kms, &FreeLocks::new().edits(), &both)
            .await
            .unwrap_err();
        assert_eq!(e.name(), "KeyNotShareable");
        assert!(e.to_string().contains("amiflow:shareable=true"), "{e}");
        assert_eq!([rules[2].num_calls(), rules[3].num_calls()], [0, 0]);
    }

    #[tokio::test]
    async fn revoking_from_a_key_holding_nothing_of_amiflows_changes_nothing() {
        // The undo of a grant refused before any change: an unmarked key, and an AWS managed one.
        let revoke_rule =
            mock!(Client::revoke_grant).then_output(|| RevokeGrantOutput::builder().build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            mock!(Client::list_grants).then_output(|| ListGrantsOutput::builder().build()),
            revoke_rule,
            shareable(false),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let out = revoke(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap();
        assert!(out[0].grants.is_empty() && out[0].key_policy_statements.is_empty());
        assert_eq!(rules[2].num_calls(), 0);
        let managed = mock_client!(
            aws_sdk_kms,
            RuleMode::MatchAny,
            [&describe(KeyManagerType::Aws, "123456789012")]
        );
        assert!(
            revoke(&managed, &FreeLocks::new().edits(), &request(accounts()))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn organizations_go_into_the_key_policy() {
        let receivers = Receivers {
            organization_arns: vec![
                "arn:aws:organizations::123456789012:organization/o-abcdef1234".into(),
            ],
            ..Default::default()
        };
        let get = mock!(Client::get_key_policy).then_output(|| {
            GetKeyPolicyOutput::builder()
                .policy(r#"{"Version":"2012-10-17","Statement":[]}"#)
                .build()
        });
        let put = mock!(Client::put_key_policy)
            .match_requests(|r| {
                r.policy()
                    .is_some_and(|p| p.contains("aws:PrincipalOrgID") && p.contains("o-abcdef1234"))
            })
            .then_output(|| PutKeyPolicyOutput::builder().build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            mock!(Client::list_grants).then_output(|| ListGrantsOutput::builder().build()),
            get,
            put,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let locks = FreeLocks::new();
        let out = grant(&kms, &locks.edits(), &request(receivers.clone()))
            .await
            .unwrap();
        assert_eq!(
            out[0].key_policy_statements,
            ["AmiflowOrgsami0abc", "AmiflowOrgsGrantami0abc"]
        );
        assert_eq!(rules[3].num_calls(), 1);
        // The edit held the key's lock and gave it back.
        assert_eq!(
            [locks.taken.num_calls(), locks.released.num_calls()],
            [1, 1]
        );
    }

    #[tokio::test]
    async fn a_key_policy_another_run_is_editing_is_left_alone_and_the_step_retried() {
        use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        use aws_sdk_dynamodb::types::AttributeValue;
        use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
        use aws_sdk_sfn::types::ExecutionStatus;
        const OTHER: &str = "arn:aws:states:us-east-1:123456789012:execution:ShareImage:run-0";
        let receivers = Receivers {
            organization_arns: vec![
                "arn:aws:organizations::123456789012:organization/o-abcdef1234".into(),
            ],
            ..Default::default()
        };
        let put_policy =
            mock!(Client::put_key_policy).then_output(|| PutKeyPolicyOutput::builder().build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            mock!(Client::list_grants).then_output(|| ListGrantsOutput::builder().build()),
            mock!(Client::get_key_policy).then_output(|| {
                GetKeyPolicyOutput::builder()
                    .policy(r#"{"Version":"2012-10-17","Statement":[]}"#)
                    .build()
            }),
            put_policy,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let refused = mock!(aws_sdk_dynamodb::Client::put_item).then_error(|| {
            PutItemError::generic(crate::test_support::meta("ConditionalCheckFailedException"))
        });
        let held = mock!(aws_sdk_dynamodb::Client::get_item).then_output(|| {
            GetItemOutput::builder()
                .item("executionArn", AttributeValue::S(OTHER.into()))
                .build()
        });
        let running = mock!(aws_sdk_sfn::Client::describe_execution).then_output(|| {
            DescribeExecutionOutput::builder()
                .execution_arn(OTHER)
                .state_machine_arn("arn:aws:states:us-east-1:123456789012:stateMachine:ShareImage")
                .status(ExecutionStatus::Running)
                .start_date(aws_smithy_types::DateTime::from_secs(0))
                .build()
                .unwrap()
        });
        let ddb = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&refused, &held]);
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&running]);
        let edits = PolicyEdits {
            lock: RunLock {
                ddb: &ddb,
                sfn: &sfn,
                table: "locks",
            },
            patience: std::time::Duration::from_millis(250),
        };
        let e = grant(&kms, &edits, &request(receivers)).await.unwrap_err();
        assert_eq!(e.name(), "Throttled");
        assert!(e.to_string().contains(OTHER), "{e}");
        assert_eq!(rules[2].num_calls() + rules[3].num_calls(), 0);
        assert!(refused.num_calls() >= 2, "it waited and asked again");
    }

    #[tokio::test]
    async fn refuses_aws_managed_keys_and_other_accounts_keys() {
        let kms = mock_client!(
            aws_sdk_kms,
            RuleMode::MatchAny,
            [&describe(KeyManagerType::Aws, "123456789012")]
        );
        let e = grant(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap_err();
        assert_eq!(e.name(), "KeyNotManageable");
        assert!(e.to_string().contains("AWS managed"), "{e}");
        let kms = mock_client!(
            aws_sdk_kms,
            RuleMode::MatchAny,
            [&describe(KeyManagerType::Customer, "999999999999")]
        );
        assert!(grant(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap_err()
            .to_string()
            .contains("999999999999"));
    }

    #[tokio::test]
    async fn revoke_removes_only_amiflows_grants_for_those_accounts() {
        let listed = mock!(Client::list_grants).then_output(|| {
            ListGrantsOutput::builder()
                .grants(
                    GrantListEntry::builder()
                        .grant_id("g-1")
                        .name("amiflow-ami-0abc-210987654321")
                        .build(),
                )
                .grants(
                    GrantListEntry::builder()
                        .grant_id("g-other")
                        .name("someone-elses")
                        .build(),
                )
                .build()
        });
        let revoke_rule = mock!(Client::revoke_grant)
            .match_requests(|r| r.grant_id() == Some("g-1"))
            .then_output(|| RevokeGrantOutput::builder().build());
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            listed,
            revoke_rule,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        let out = revoke(&kms, &FreeLocks::new().edits(), &request(accounts()))
            .await
            .unwrap();
        assert_eq!(out[0].grants.len(), 1);
        assert_eq!(rules[2].num_calls(), 1);
    }

    fn one_amiflow_grant() -> Rule {
        mock!(Client::list_grants).then_output(|| {
            ListGrantsOutput::builder()
                .grants(
                    GrantListEntry::builder()
                        .grant_id("g-1")
                        .name("amiflow-ami-0abc-210987654321")
                        .build(),
                )
                .build()
        })
    }

    #[tokio::test]
    async fn a_grant_revoked_meanwhile_counts_as_revoked() {
        let listed = one_amiflow_grant();
        let gone = mock!(Client::revoke_grant).then_error(|| {
            aws_sdk_kms::operation::revoke_grant::RevokeGrantError::generic(
                crate::test_support::meta("NotFoundException"),
            )
        });
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            listed,
            gone,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        assert!(
            revoke(&kms, &FreeLocks::new().edits(), &request(accounts()))
                .await
                .is_ok()
        );

        let refused = mock!(Client::revoke_grant).then_error(|| {
            aws_sdk_kms::operation::revoke_grant::RevokeGrantError::generic(
                crate::test_support::meta("AccessDeniedException"),
            )
        });
        let listed_again = one_amiflow_grant();
        let rules = [
            describe(KeyManagerType::Customer, "123456789012"),
            listed_again,
            refused,
            shareable(true),
        ];
        let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, &rules);
        assert_eq!(
            revoke(&kms, &FreeLocks::new().edits(), &request(accounts()))
                .await
                .unwrap_err()
                .name(),
            "AwsApi"
        );
    }
}
