//! The stack owner's allow-lists: who images may be shared with (`AllowedReceivers`), which
//! accounts they may be copied into (`AllowedCopyTargets`), and what a tag alone may ask of a
//! source instance (`TagSourceActions`). The decisions are pure; `ou_ancestors` reads where an
//! OU sits in its organization.
//!
//! A tag-started run may only name what the lists admit; an empty list admits nothing by tag.
//! ShareImage and CopyImage check a non-empty list whichever way the run was started; with an
//! empty list, a run started directly is governed by who may start the execution.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::SourceAction;
use crate::receivers::{is_organization_arn, is_ou_arn, Receivers};

/// AWS Organizations nests OUs at most five levels under the root.
pub const MAX_OU_DEPTH: usize = 5;

/// Who images may be shared with: account ids, organizations, OUs (and those beneath them), and
/// `public` if the owner allows public images at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    pub accounts: Vec<String>,
    /// Organization ids (`o-…`).
    pub organizations: Vec<String>,
    /// OU ids (`ou-…`).
    pub ous: Vec<String>,
    pub public: bool,
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The organization id (`o-…`) of an organization or OU ARN.
pub fn org_of(arn: &str) -> Option<&str> {
    arn.split('/').find(|p| p.starts_with("o-"))
}

/// The OU id (`ou-…`) of an OU ARN.
pub fn ou_of(arn: &str) -> Option<&str> {
    arn.rsplit('/').next().filter(|p| p.starts_with("ou-"))
}

impl AllowList {
    /// Parses a comma-separated list; `name` is the variable it came from, for the error.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut list = AllowList::default();
        for item in items(text) {
            if is_account_id(item) {
                list.accounts.push(item.to_string());
            } else if is_organization_arn(item) {
                list.organizations.extend(org_of(item).map(str::to_string));
            } else if is_ou_arn(item) {
                list.ous.extend(ou_of(item).map(str::to_string));
            } else if item == "public" {
                list.public = true;
            } else {
                return Err(Error::Configuration(
                    format!(
                    "{name}: {item:?} is not an account id, organization ARN, OU ARN or `public`"
                )
                    .into(),
                ));
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.ous.is_empty()
            && !self.public
    }

    /// Whether the list admits the OU without knowing its ancestors: its organization or the OU
    /// itself is listed.
    pub fn admits_ou_directly(&self, ou_arn: &str) -> bool {
        org_of(ou_arn).is_some_and(|o| self.organizations.iter().any(|a| a == o))
            || ou_of(ou_arn).is_some_and(|o| self.ous.iter().any(|a| a == o))
    }

    /// The OUs whose ancestors must be read to decide (not admitted directly, while the list
    /// names OUs that could hold them). Pure.
    pub fn ous_to_trace<'a>(&self, receivers: &'a Receivers) -> Vec<&'a str> {
        if self.ous.is_empty() {
            return Vec::new();
        }
        receivers
            .organizational_unit_arns
            .iter()
            .filter(|arn| !self.admits_ou_directly(arn))
            .map(String::as_str)
            .collect()
    }

    /// Every receiver the list does not admit, named by its input field and value.
    /// `ancestors(ou_arn)` gives the OU ids above an OU, when they could be read. Pure.
    pub fn refusals(
        &self,
        receivers: &Receivers,
        ancestors: impl Fn(&str) -> Option<Vec<String>>,
    ) -> Vec<String> {
        let mut refused = Vec::new();
        for (i, account) in receivers.account_ids.iter().enumerate() {
            if !self.accounts.contains(account) {
                refused.push(format!("accountIds[{i}] {account}"));
            }
        }
        for (i, arn) in receivers.organization_arns.iter().enumerate() {
            if !org_of(arn).is_some_and(|o| self.organizations.iter().any(|a| a == o)) {
                refused.push(format!("organizationArns[{i}] {arn}"));
            }
        }
        for (i, arn) in receivers.organizational_unit_arns.iter().enumerate() {
            let beneath =
                || ancestors(arn).is_some_and(|above| above.iter().any(|a| self.ous.contains(a)));
            if !self.admits_ou_directly(arn) && !beneath() {
                refused.push(format!("organizationalUnitArns[{i}] {arn}"));
            }
        }
        if receivers.public && !self.public {
            refused.push("public".to_string());
        }
        refused
    }
}

/// Parses `AllowedCopyTargets`: account ids.
pub fn parse_accounts(name: &str, text: &str) -> Result<Vec<String>> {
    items(text)
        .map(|item| {
            if is_account_id(item) {
                Ok(item.to_string())
            } else {
                Err(Error::Configuration(
                    format!("{name}: {item:?} is not a 12-digit account id").into(),
                ))
            }
        })
        .collect()
}

/// What a tag alone may ask of a source instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagPowers {
    /// The source actions a tag may name; `keep` always.
    pub source_actions: Vec<SourceAction>,
    /// Whether a tag-started run may reboot the source for a consistent image. Without it, the
    /// image is taken without a reboot.
    pub reboot: bool,
}

impl Default for TagPowers {
    fn default() -> Self {
        TagPowers {
            source_actions: vec![SourceAction::Keep],
            reboot: false,
        }
    }
}

impl TagPowers {
    /// Parses `TagSourceActions`: any of `keep`, `stop`, `terminate`, `reboot`.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut powers = TagPowers::default();
        for item in items(text) {
            let action = match item {
                "keep" => SourceAction::Keep,
                "stop" => SourceAction::Stop,
                "terminate" => SourceAction::Terminate,
                "reboot" => {
                    powers.reboot = true;
                    continue;
                }
                other => {
                    return Err(Error::Configuration(
                        format!("{name}: {other:?} is not one of keep, stop, terminate, reboot")
                            .into(),
                    ))
                }
            };
            if !powers.source_actions.contains(&action) {
                powers.source_actions.push(action);
            }
        }
        Ok(powers)
    }

    pub fn allows(&self, action: SourceAction) -> bool {
        self.source_actions.contains(&action)
    }
}

/// The OU ids above `ou_id`, nearest first, up to the root (not included). Organizations answers
/// only the management account and delegated administrators; any refusal is the caller's to
/// turn into a refusal of the receiver.
pub async fn ou_ancestors(
    organizations: &aws_sdk_organizations::Client,
    ou_id: &str,
) -> std::result::Result<Vec<String>, String> {
    let mut above = Vec::new();
    let mut child = ou_id.to_string();
    for _ in 0..MAX_OU_DEPTH {
        let parents = organizations
            .list_parents()
            .child_id(&child)
            .send()
            .await
            .map_err(|e| {
                let e = crate::error::aws("ListParents")(e);
                let code = e.aws_code().unwrap_or("unknown");
                format!("organizations:ListParents on {child} was refused ({code})")
            })?;
        let Some(parent) = parents.parents().first() else {
            break;
        };
        let id = parent.id().unwrap_or_default().to_string();
        if !id.starts_with("ou-") {
            break;
        }
        above.push(id.clone());
        child = id;
    }
    Ok(above)
}

/// The ancestors of every OU the list needs traced: `None` where they could not be read (the
/// refusal is logged, and the OU is then admitted only if listed itself or by its organization).
pub async fn trace(
    organizations: &aws_sdk_organizations::Client,
    list: &AllowList,
    receivers: &Receivers,
) -> HashMap<String, Option<Vec<String>>> {
    let mut traced = HashMap::new();
    for arn in list.ous_to_trace(receivers) {
        let Some(ou) = ou_of(arn) else { continue };
        let above = match ou_ancestors(organizations, ou).await {
            Ok(above) => Some(above),
            Err(why) => {
                tracing::warn!(ou = %arn, %why, "cannot tell which OUs hold this one");
                None
            }
        };
        traced.insert(arn.to_string(), above);
    }
    traced
}

/// ShareImage's check of a non-empty `AllowedReceivers`, whichever way the run was started.
pub async fn check_receivers(
    organizations: &aws_sdk_organizations::Client,
    list: &AllowList,
    receivers: &Receivers,
) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let traced = trace(organizations, list, receivers).await;
    let refused = list.refusals(receivers, |arn| traced.get(arn).cloned().flatten());
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::ReceiverNotAllowed(
        format!(
        "not in the stack's AllowedReceivers: {} (an OU is admitted by itself, an OU above it that \
         Organizations shows, or its organization)",
        refused.join(", ")
    )
        .into(),
    ))
}

/// CopyImage's check of a non-empty `AllowedCopyTargets`, whichever way the run was started. Pure.
pub fn check_copy_target(list: &[String], account: &str) -> Result<()> {
    if list.is_empty() || list.iter().any(|a| a == account) {
        return Ok(());
    }
    Err(Error::CopyTargetNotAllowed(
        format!(
            "targetAccountId: {account} is not in the stack's AllowedCopyTargets ({})",
            list.join(", ")
        )
        .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "arn:aws:organizations::111111111111:organization/o-abcdefghij";
    const OU_TOP: &str = "arn:aws:organizations::111111111111:ou/o-abcdefghij/ou-abcd-11111111";
    const OU_CHILD: &str = "arn:aws:organizations::111111111111:ou/o-abcdefghij/ou-abcd-22222222";
    const OU_OTHER_ORG: &str =
        "arn:aws:organizations::999999999999:ou/o-zzzzzzzzzz/ou-zzzz-33333333";

    fn receivers(accounts: &[&str], orgs: &[&str], ous: &[&str], public: bool) -> Receivers {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Receivers {
            account_ids: own(accounts),
            organization_arns: own(orgs),
            organizational_unit_arns: own(ous),
            public,
        }
    }

    #[test]
    fn a_list_names_accounts_organizations_ous_and_public() {
        let list = AllowList::parse("X", &format!("222222222222, {ORG},{OU_TOP}, public")).unwrap();
        assert_eq!(list.accounts, ["222222222222"]);
        assert_eq!(list.organizations, ["o-abcdefghij"]);
        assert_eq!(list.ous, ["ou-abcd-11111111"]);
        assert!(list.public && !list.is_empty());
        assert!(AllowList::parse("X", " , ").unwrap().is_empty());
        let err = AllowList::parse("AMIFLOW_ALLOWED_RECEIVERS", "2222").unwrap_err();
        assert_eq!(err.name(), "Configuration");
        assert!(
            err.to_string().contains("AMIFLOW_ALLOWED_RECEIVERS"),
            "{err}"
        );
    }

    #[test]
    fn only_listed_receivers_pass() {
        let list = AllowList::parse("X", "222222222222").unwrap();
        let asked = receivers(&["222222222222", "333333333333"], &[ORG], &[], true);
        assert_eq!(
            list.refusals(&asked, |_| None),
            [
                "accountIds[1] 333333333333".to_string(),
                format!("organizationArns[0] {ORG}"),
                "public".to_string()
            ]
        );
        assert!(list
            .refusals(&receivers(&["222222222222"], &[], &[], false), |_| None)
            .is_empty());
    }

    #[test]
    fn an_organization_admits_its_ous_and_an_ou_those_beneath_it() {
        let by_org = AllowList::parse("X", ORG).unwrap();
        assert!(by_org
            .refusals(&receivers(&[], &[], &[OU_CHILD], false), |_| None)
            .is_empty());
        assert!(by_org
            .ous_to_trace(&receivers(&[], &[], &[OU_CHILD], false))
            .is_empty());

        let by_ou = AllowList::parse("X", OU_TOP).unwrap();
        let child = receivers(&[], &[], &[OU_CHILD], false);
        assert_eq!(by_ou.ous_to_trace(&child), [OU_CHILD]);
        let beneath = |_: &str| Some(vec!["ou-abcd-11111111".to_string()]);
        assert!(by_ou.refusals(&child, beneath).is_empty());
        // Ancestry that could not be read, or that does not reach a listed OU, refuses.
        assert_eq!(by_ou.refusals(&child, |_| None).len(), 1);
        assert_eq!(
            by_ou
                .refusals(&child, |_| Some(vec!["ou-abcd-99999999".into()]))
                .len(),
            1
        );
        // The organization itself is not admitted by one of its OUs.
        assert_eq!(
            by_ou
                .refusals(&receivers(&[], &[ORG], &[], false), |_| None)
                .len(),
            1
        );
        assert_eq!(
            by_ou
                .refusals(&receivers(&[], &[], &[OU_OTHER_ORG], false), |_| None)
                .len(),
            1
        );
    }

    #[test]
    fn copy_targets_are_account_ids() {
        assert_eq!(
            parse_accounts("X", "222222222222,333333333333").unwrap(),
            ["222222222222", "333333333333"]
        );
        assert!(parse_accounts("X", "").unwrap().is_empty());
        assert_eq!(
            parse_accounts("X", ORG).unwrap_err().name(),
            "Configuration"
        );
        let listed = vec!["222222222222".to_string()];
        assert!(check_copy_target(&listed, "222222222222").is_ok());
        assert!(check_copy_target(&[], "333333333333").is_ok());
        let refused = check_copy_target(&listed, "333333333333").unwrap_err();
        assert_eq!(refused.name(), "CopyTargetNotAllowed");
        assert!(
            refused
                .to_string()
                .starts_with("targetAccountId: 333333333333"),
            "{refused}"
        );
    }

    #[test]
    fn tags_keep_by_default_and_reboot_only_when_allowed() {
        let default = TagPowers::parse("X", "").unwrap();
        assert!(default.allows(SourceAction::Keep));
        assert!(!default.allows(SourceAction::Stop) && !default.allows(SourceAction::Terminate));
        assert!(!default.reboot);
        let opted = TagPowers::parse("X", "keep,terminate,reboot").unwrap();
        assert!(opted.allows(SourceAction::Terminate) && !opted.allows(SourceAction::Stop));
        assert!(opted.reboot);
        assert_eq!(
            TagPowers::parse("X", "delete").unwrap_err().name(),
            "Configuration"
        );
    }
}
