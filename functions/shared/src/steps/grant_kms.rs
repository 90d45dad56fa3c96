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

use aws_sdk_kms::types::GrantOperation;
use serde::{Deserialize, Serialize};

use crate::error::{answered_id, aws, Error, Result};
use crate::receivers::Receivers;
use crate::resources::keys::{
    existing_grants, grant_name, manageable, merge_policy, org_statements, owned, policy_of,
    require_shareable, strip_policy, PolicyEdits, GRANT_OPERATIONS,
};
use crate::resources::lock::Claimant;

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

impl KeysRequest {
    /// The run, as the holder of a key-policy edit's lock.
    pub fn claimant(&self) -> Claimant<'_> {
        Claimant {
            execution: &self.execution,
            execution_arn: &self.execution_arn,
        }
    }
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
                    .map_err(aws("CreateGrant"))
                    .and_then(|made| answered_id("CreateGrant", "GrantId", made.grant_id()))?,
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
                .edit(kms, &request.claimant(), &key, |policy| {
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
                match revoked.map_err(aws("RevokeGrant")) {
                    Err(e) if !e.is_code("NotFoundException") => return Err(e),
                    _ => {}
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
                .edit(kms, &request.claimant(), &key, |policy| {
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
mod mocked {
    use super::*;
    use crate::resources::lock::RunLock;
    use crate::tags;
    use aws_sdk_kms::operation::create_grant::CreateGrantOutput;
    use aws_sdk_kms::operation::describe_key::DescribeKeyOutput;
    use aws_sdk_kms::operation::get_key_policy::GetKeyPolicyOutput;
    use aws_sdk_kms::operation::list_grants::ListGrantsOutput;
    use aws_sdk_kms::operation::list_resource_tags::ListResourceTagsOutput;
    use aws_sdk_kms::operation::put_key_policy::PutKeyPolicyOutput;
    use aws_sdk_kms::operation::revoke_grant::RevokeGrantOutput;
    use aws_sdk_kms::types::KeyManagerType;
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
        assert_eq!(e.name(), "KeyPolicyBusy");
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
