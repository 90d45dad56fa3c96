//! Preflight: what a run would need, checked before anything is changed. Each row passes, fails
//! or is unknown, with the reason; nothing is created (mutating calls are EC2 DryRun calls, made
//! only from the CLI, where they test the operator's own permissions).
//!
//! Used by `amiflow preflight …` and, when a workflow's input has `"preflight": true`, by the
//! `preflight` function as the workflow's first state.

use aws_sdk_ec2::types::LaunchPermissionModifications;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::carry::checked_first;
use crate::error::{aws, Error, Result};
use crate::input::MigrateInput;
use crate::receivers::{CopyInput, Receivers, ShareInput};
use crate::resources::images::{keys_of, launch_permissions, own_image};
use crate::resources::instances::read_source;
use crate::resources::keys::GRANT_OPERATIONS;
use crate::resources::subnets::{check_offered, check_target, resolve_subnet};
use crate::Deps;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub check: String,
    pub verdict: Verdict,
    pub reason: String,
}

fn row(check: &str, verdict: Verdict, reason: impl Into<String>) -> Row {
    Row {
        check: check.to_string(),
        verdict,
        reason: reason.into(),
    }
}

fn from(check: &str, result: Result<String, Error>) -> Row {
    match result {
        Ok(reason) => row(check, Verdict::Pass, reason),
        Err(e) => row(check, Verdict::Fail, format!("{}: {e}", e.name())),
    }
}

/// A DryRun call: DryRunOperation means it would have been allowed. Pure.
fn dry_run(check: &str, result: Result<impl Sized, Error>) -> Row {
    match result {
        Ok(_) => row(check, Verdict::Pass, "allowed"),
        Err(e) if e.is_code("DryRunOperation") => row(check, Verdict::Pass, "allowed (DryRun)"),
        Err(e) if e.is_code("UnauthorizedOperation") || e.is_code("AccessDenied") => {
            row(check, Verdict::Fail, e.to_string())
        }
        Err(e) => row(check, Verdict::Unknown, format!("the DryRun answered {e}")),
    }
}

/// Whether to make the DryRun calls (the CLI) or report them as unknown (inside a workflow, where
/// the calling role is not the role of the function that would make the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRuns {
    Make,
    Skip,
}

fn skipped(check: &str) -> Row {
    row(check, Verdict::Unknown, "not tried here: a DryRun tests the caller's permissions, and each amiflow function has its own role")
}

pub async fn migrate(deps: &Deps, input: &Value, dry_runs: DryRuns) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut parsed = match MigrateInput::parse(input, &deps.region) {
        Ok(p) => p,
        Err(e) => return vec![from("input", Err(e))],
    };
    if let Some(az) = &parsed.target_availability_zone {
        match crate::resources::zones::name_of(
            &deps.ec2,
            "targetAvailabilityZone",
            az,
            &deps.region,
        )
        .await
        {
            Ok(name) => parsed.target_availability_zone = Some(name),
            Err(e) => return vec![from("input", Err(e))],
        }
    }
    rows.push(row("input", Verdict::Pass, "well formed"));
    let capture = match read_source(&deps.ec2, &parsed.instance_id).await {
        Ok(c) => c,
        Err(e) => {
            rows.push(from("source instance", Err(e)));
            return rows;
        }
    };
    rows.push(row(
        "source instance",
        Verdict::Pass,
        format!(
            "{} {} in {}, EBS root, {} volumes",
            capture.instance_id,
            capture.state,
            capture.availability_zone,
            capture.volumes.len()
        ),
    ));
    rows.push(from(
        "not in an Auto Scaling group",
        crate::resources::groups::refuse_member(&deps.autoscaling, &parsed.instance_id)
            .await
            .map(|_| "in no group".to_string()),
    ));
    rows.push(from(
        "source action",
        checked_first(&capture, parsed.source_action).map(|_| {
            format!(
                "{:?} is allowed by the source's protection",
                parsed.source_action
            )
        }),
    ));
    let subnet = match resolve_subnet(&deps.ec2, &parsed, &capture).await {
        Ok(s) => s,
        Err(e) => {
            rows.push(from("target subnet", Err(e)));
            return rows;
        }
    };
    rows.push(from(
        "target subnet",
        check_target(
            &capture,
            &subnet,
            parsed.target_availability_zone.as_deref(),
        )
        .map(|_| {
            format!(
                "{} in {} of {}",
                subnet.subnet_id, subnet.availability_zone, subnet.vpc_id
            )
        }),
    ));
    let instance_type = parsed
        .instance_type
        .clone()
        .unwrap_or_else(|| capture.instance_type.clone());
    rows.push(from(
        "instance type offered",
        check_offered(&deps.ec2, &instance_type, &subnet.availability_zone)
            .await
            .map(|_| format!("{instance_type} in {}", subnet.availability_zone)),
    ));
    rows.push(match &capture.elastic_ip {
        Some(eip) => row(
            "elastic IP",
            Verdict::Pass,
            format!(
                "{} ({}) is a VPC address and moves to the new instance",
                eip.public_ip, eip.allocation_id
            ),
        ),
        None => row("elastic IP", Verdict::Pass, "none on the source"),
    });
    if dry_runs == DryRuns::Skip {
        rows.push(skipped("CreateImage (DryRun)"));
        rows.push(skipped("RunInstances in the target subnet (DryRun)"));
        rows.push(row(
            "instance quota",
            Verdict::Unknown,
            "the running-instance quota is in Service Quotas, which amiflow does not read",
        ));
        return rows;
    }
    rows.push(dry_run(
        "CreateImage (DryRun)",
        deps.ec2
            .create_image()
            .instance_id(&parsed.instance_id)
            .name("amiflow-preflight")
            .dry_run(true)
            .send()
            .await
            .map_err(aws("CreateImage")),
    ));
    let mut launch = deps
        .ec2
        .run_instances()
        .image_id("ami-00000000")
        .instance_type(aws_sdk_ec2::types::InstanceType::from(
            instance_type.as_str(),
        ))
        .subnet_id(&subnet.subnet_id)
        .set_security_group_ids(Some(capture.security_group_ids.clone()))
        .set_key_name(capture.key_name.clone())
        .min_count(1)
        .max_count(1)
        .dry_run(true);
    if let Some(profile) = &capture.iam_instance_profile_arn {
        launch = launch.iam_instance_profile(
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .arn(profile)
                .build(),
        );
    }
    rows.push(dry_run(
        "RunInstances in the target subnet (DryRun)",
        launch.send().await.map_err(aws("RunInstances")),
    ));
    rows.push(row(
        "instance quota",
        Verdict::Unknown,
        "the running-instance quota is in Service Quotas, which amiflow does not read",
    ));
    rows
}

/// Whether a key's policy or grants let a receiver use it the way a shared image needs: reads
/// them, and asks [`key_access_rows`].
async fn receiver_may_use(deps: &Deps, key: &str, receivers: &Receivers) -> Vec<Row> {
    let policy = deps
        .kms
        .get_key_policy()
        .key_id(key)
        .policy_name("default")
        .send()
        .await
        .ok()
        .and_then(|p| p.policy().map(str::to_string));
    let grants: Vec<KeyGrant> = deps
        .kms
        .list_grants()
        .key_id(key)
        .send()
        .await
        .map(|g| {
            g.grants()
                .iter()
                .map(|g| KeyGrant {
                    grantee: g.grantee_principal().unwrap_or_default().to_string(),
                    operations: g
                        .operations()
                        .iter()
                        .map(|o| o.as_str().to_string())
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    key_access_rows(key, receivers, &grants, policy.as_deref())
}

/// A grant on a key: to whom, for which operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub grantee: String,
    pub operations: Vec<String>,
}

/// For each receiver, whether a grant (with every operation EC2 needs) or a key-policy statement
/// lets it use the key. Pure.
pub fn key_access_rows(
    key: &str,
    receivers: &Receivers,
    grants: &[KeyGrant],
    policy: Option<&str>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let statements: Vec<Value> = policy
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .and_then(|p| p.get("Statement").cloned())
        .map(|s| {
            if s.is_array() {
                s.as_array().cloned().unwrap_or_default()
            } else {
                vec![s]
            }
        })
        .unwrap_or_default();
    let text = |v: &Value| v.to_string();
    for account in &receivers.account_ids {
        let by_grant = grants.iter().any(|g| {
            g.grantee.contains(account.as_str())
                && GRANT_OPERATIONS
                    .iter()
                    .all(|op| g.operations.iter().any(|o| o == op))
        });
        let by_policy = statements
            .iter()
            .any(|s| s["Effect"] == "Allow" && text(&s["Principal"]).contains(account.as_str()));
        let check = format!("KMS {key} for {account}");
        rows.push(if by_grant || by_policy {
            row(&check, Verdict::Pass, if by_grant { "a grant gives the operations EC2 needs" } else { "the key policy names the account" })
        } else {
            row(&check, Verdict::Fail, format!("no grant and no key-policy statement lets {account} use the key; the receiver could not launch or copy the image (ShareImage's grant-kms adds it)"))
        });
    }
    for (ids, kind) in [
        (receivers.organization_ids(), "organization"),
        (receivers.ou_paths(), "OU"),
    ] {
        for id in ids {
            let check = format!("KMS {key} for {kind} {id}");
            let found = statements
                .iter()
                .any(|s| s["Effect"] == "Allow" && text(&s["Condition"]).contains(id.as_str()));
            rows.push(if found {
                row(&check, Verdict::Pass, "a key-policy statement admits it")
            } else {
                row(
                    &check,
                    Verdict::Fail,
                    "no key-policy statement admits it (ShareImage's grant-kms adds one)",
                )
            });
        }
    }
    rows
}

pub async fn share(deps: &Deps, input: &Value, dry_runs: DryRuns) -> Vec<Row> {
    let parsed = match ShareInput::parse(input) {
        Ok(p) => p,
        Err(e) => return vec![from("input", Err(e))],
    };
    let mut rows = vec![row("input", Verdict::Pass, "well formed")];
    let image = match own_image(&deps.ec2, "imageId", &parsed.sharing.image_id).await {
        Ok(i) => i,
        Err(e) => {
            rows.push(from("image", Err(e)));
            return rows;
        }
    };
    rows.push(row(
        "image",
        Verdict::Pass,
        format!(
            "{} is this account's, {}",
            parsed.sharing.image_id, image.state
        ),
    ));
    let receivers = match parsed.receivers_for(&image.owner) {
        Ok(r) => r,
        Err(e) => {
            rows.push(from("receivers", Err(e)));
            return rows;
        }
    };
    match keys_of(&deps.ec2, &deps.kms, &image.snapshot_ids).await {
        Err(e) => rows.push(from("KMS keys", Err(e))),
        Ok((customer, managed)) => {
            if parsed.sharing.receivers.public && !(customer.is_empty() && managed.is_empty()) {
                rows.push(row(
                    "public",
                    Verdict::Fail,
                    "the image is encrypted; encrypted images cannot be public",
                ));
            }
            if !managed.is_empty() {
                rows.push(match &parsed.reencrypt_kms_key_id {
                    Some(k) => row(
                        "AWS managed key",
                        Verdict::Pass,
                        format!("the run re-encrypts a copy with {k} and shares the copy"),
                    ),
                    None => row(
                        "AWS managed key",
                        Verdict::Fail,
                        format!(
                            "{} cannot be shared; give --reencrypt-kms-key-id",
                            managed.join(", ")
                        ),
                    ),
                });
            }
            if customer.is_empty() && managed.is_empty() {
                rows.push(row("KMS keys", Verdict::Pass, "the image is not encrypted"));
            }
            for key in &customer {
                rows.extend(receiver_may_use(deps, key, &receivers).await);
            }
        }
    }
    if dry_runs == DryRuns::Skip {
        rows.push(skipped("ModifyImageAttribute (DryRun)"));
        return rows;
    }
    let permissions = LaunchPermissionModifications::builder()
        .set_add(Some(launch_permissions(&receivers)))
        .build();
    rows.push(dry_run(
        "ModifyImageAttribute (DryRun)",
        deps.ec2
            .modify_image_attribute()
            .image_id(&parsed.sharing.image_id)
            .launch_permission(permissions)
            .dry_run(true)
            .send()
            .await
            .map_err(aws("ModifyImageAttribute")),
    ));
    rows
}

pub async fn copy(deps: &Deps, input: &Value, dry_runs: DryRuns) -> Vec<Row> {
    let parsed = match CopyInput::parse(input, &deps.region) {
        Ok(p) => p,
        Err(e) => return vec![from("input", Err(e))],
    };
    let mut rows = vec![row("input", Verdict::Pass, "well formed")];
    match own_image(&deps.ec2, "sourceImageId", &parsed.source_image_id).await {
        Err(e) => rows.push(from("image", Err(e))),
        Ok(image) => {
            rows.push(row(
                "image",
                Verdict::Pass,
                format!(
                    "{} is this account's, {}",
                    parsed.source_image_id, image.state
                ),
            ));
            rows.push(if image.product_codes > 0 {
                row(
                    "billing products",
                    Verdict::Fail,
                    "the image has a billing product; AWS does not copy it to another account",
                )
            } else {
                row("billing products", Verdict::Pass, "none")
            });
            match keys_of(&deps.ec2, &deps.kms, &image.snapshot_ids).await {
                Ok((_, managed)) if !managed.is_empty() => rows.push(row(
                    "source keys",
                    Verdict::Fail,
                    format!(
                        "{} is AWS managed; no other account can use it",
                        managed.join(", ")
                    ),
                )),
                Ok((customer, _)) => rows.push(row(
                    "source keys",
                    Verdict::Pass,
                    if customer.is_empty() {
                        "not encrypted".to_string()
                    } else {
                        format!(
                            "{}: the run grants them to {}",
                            customer.join(", "),
                            parsed.target_account_id
                        )
                    },
                )),
                Err(e) => rows.push(from("source keys", Err(e))),
            }
        }
    }
    let target = match deps
        .ec2_as(&parsed.target_role_arn, &parsed.external_id)
        .await
    {
        Ok(target) => {
            rows.push(row(
                "target role",
                Verdict::Pass,
                format!("{} can be assumed", parsed.target_role_arn),
            ));
            target
        }
        Err(e) => {
            rows.push(from("target role", Err(e)));
            return rows;
        }
    };
    if dry_runs == DryRuns::Skip {
        rows.push(skipped("CopyImage as the target (DryRun)"));
        return rows;
    }
    rows.push(dry_run(
        "CopyImage as the target (DryRun)",
        target
            .copy_image()
            .source_image_id(&parsed.source_image_id)
            .source_region(&parsed.source_region)
            .name(&parsed.name)
            .encrypted(true)
            .kms_key_id(&parsed.target_kms_key_id)
            .dry_run(true)
            .send()
            .await
            .map_err(aws("CopyImage")),
    ));
    rows.push(row("copy quota", Verdict::Unknown, "the concurrent AMI copy quota (300 per destination region) is not reported by an API amiflow reads"));
    rows
}

/// The preflight function's request: the workflow and its input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightRequest {
    pub workflow: String,
    pub input: Value,
}

/// Runs a workflow's checks as its first state; any failed check fails the run before anything
/// is changed, naming every failed check.
pub async fn run(deps: &Deps, request: PreflightRequest) -> Result<Vec<Row>> {
    let rows = match request.workflow.as_str() {
        "migrate" => migrate(deps, &request.input, DryRuns::Skip).await,
        "share" => share(deps, &request.input, DryRuns::Skip).await,
        "copy" => copy(deps, &request.input, DryRuns::Skip).await,
        other => {
            return Err(Error::invalid(
                "workflow",
                format!("{other:?} is not migrate, share or copy"),
            ))
        }
    };
    outcome(rows)
}

/// The checks' result: every row, or `PreflightFailed` naming every failed check. Pure.
pub fn outcome(rows: Vec<Row>) -> Result<Vec<Row>> {
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .map(|r| format!("{}: {}", r.check, r.reason))
        .collect();
    if failed.is_empty() {
        Ok(rows)
    } else {
        Err(Error::PreflightFailed(failed.join("; ").into()))
    }
}

pub fn print(rows: &[Row], json_output: bool) {
    if json_output {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| json!({"check": r.check, "result": r.verdict, "reason": r.reason}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(10);
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "unknown",
        };
        println!("{verdict:<8} {:<width$}  {}", r.check, r.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classify;

    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/k";
    const B: &str = "210987654321";

    fn receivers(accounts: &[&str], ous: &[&str]) -> Receivers {
        Receivers {
            account_ids: accounts.iter().map(|a| a.to_string()).collect(),
            organization_arns: vec![],
            organizational_unit_arns: ous.iter().map(|o| o.to_string()).collect(),
            public: false,
        }
    }

    fn verdicts(rows: &[Row]) -> Vec<(String, Verdict)> {
        rows.iter().map(|r| (r.check.clone(), r.verdict)).collect()
    }

    #[test]
    fn an_account_may_use_a_key_through_a_full_grant_or_the_key_policy() {
        let full = KeyGrant {
            grantee: format!("arn:aws:iam::{B}:root"),
            operations: GRANT_OPERATIONS.iter().map(|o| o.to_string()).collect(),
        };
        let rows = key_access_rows(
            KEY,
            &receivers(&[B], &[]),
            std::slice::from_ref(&full),
            None,
        );
        assert_eq!(
            verdicts(&rows),
            [(format!("KMS {KEY} for {B}"), Verdict::Pass)]
        );

        // A grant missing an operation EC2 needs does not count.
        let partial = KeyGrant {
            operations: vec!["Decrypt".into()],
            ..full
        };
        let rows = key_access_rows(KEY, &receivers(&[B], &[]), &[partial], None);
        assert_eq!(rows[0].verdict, Verdict::Fail);
        assert!(
            rows[0].reason.contains("grant-kms adds it"),
            "{}",
            rows[0].reason
        );

        let policy = format!(
            r#"{{"Statement":{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{B}:root"}},"Action":"kms:Decrypt","Resource":"*"}}}}"#
        );
        let rows = key_access_rows(KEY, &receivers(&[B], &[]), &[], Some(&policy));
        assert_eq!(rows[0].verdict, Verdict::Pass);
        assert_eq!(rows[0].reason, "the key policy names the account");
    }

    #[test]
    fn an_ou_may_use_a_key_only_through_a_key_policy_statement_naming_its_path() {
        let ou = "arn:aws:organizations::123456789012:ou/o-abcdef1234/ou-ab12-cdef5678";
        let path = "o-abcdef1234/*/ou-ab12-cdef5678/*";
        let none = key_access_rows(
            KEY,
            &receivers(&[], &[ou]),
            &[],
            Some(r#"{"Statement":[]}"#),
        );
        assert_eq!(
            verdicts(&none),
            [(format!("KMS {KEY} for OU {path}"), Verdict::Fail)]
        );
        let policy = format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"*"}},"Action":"kms:Decrypt","Resource":"*","Condition":{{"ForAnyValue:StringLike":{{"aws:PrincipalOrgPaths":["{path}"]}}}}}}]}}"#
        );
        let admitted = key_access_rows(KEY, &receivers(&[], &[ou]), &[], Some(&policy));
        assert_eq!(admitted[0].verdict, Verdict::Pass);
    }

    #[test]
    fn a_failed_check_fails_the_run_naming_every_failed_check() {
        let rows = vec![
            row("input", Verdict::Pass, "well formed"),
            row("target subnet", Verdict::Fail, "SubnetNotFound: none"),
            row("instance quota", Verdict::Unknown, "not read"),
            row("elastic IP", Verdict::Fail, "gone"),
        ];
        let e = outcome(rows.clone()).unwrap_err();
        assert_eq!(e.name(), "PreflightFailed");
        assert_eq!(
            e.to_string(),
            "target subnet: SubnetNotFound: none; elastic IP: gone"
        );
        let passed: Vec<Row> = rows
            .into_iter()
            .filter(|r| r.verdict != Verdict::Fail)
            .collect();
        assert_eq!(outcome(passed.clone()).unwrap(), passed);
    }

    #[test]
    fn a_dry_run_passes_on_dry_run_operation_and_fails_on_a_refusal() {
        let answered =
            |code| Err::<(), _>(classify("RunInstances", Some(code), Some("m"), Some(412)));
        assert_eq!(
            dry_run("c", answered("DryRunOperation")).verdict,
            Verdict::Pass
        );
        let refused = dry_run("c", answered("UnauthorizedOperation"));
        assert_eq!(refused.verdict, Verdict::Fail);
        assert_eq!(refused.reason, "RunInstances: UnauthorizedOperation: m");
        assert_eq!(
            dry_run("c", answered("InvalidParameter")).verdict,
            Verdict::Unknown
        );
        assert_eq!(dry_run("c", Ok::<(), Error>(())).verdict, Verdict::Pass);
    }
}
