//! The functions' configuration, read from the environment once per cold start by `Deps`, and
//! the polling policies, whose schedule is a pure function of the attempt number.

use serde::{Deserialize, Serialize};

use crate::allow::{parse_accounts, AllowList, TagPowers};
use crate::error::{Error, Result};
use crate::warm_up::WarmUp;

/// A growing polling schedule with a bound on the total time waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollPolicy {
    /// The first interval, in seconds.
    pub initial_seconds: u64,
    /// Intervals double up to this.
    pub max_seconds: u64,
    /// Polling gives up once the intervals waited add up to more than this.
    pub limit_seconds: u64,
}

impl PollPolicy {
    /// The interval before attempt `attempt` (0-based).
    pub fn interval(&self, attempt: u32) -> u64 {
        let doubled = self
            .initial_seconds
            .max(1)
            .saturating_mul(1u64 << attempt.min(32));
        doubled.min(self.max_seconds.max(1))
    }

    /// The total time waited before attempt `attempt`.
    pub fn waited_before(&self, attempt: u32) -> u64 {
        (0..attempt)
            .map(|a| self.interval(a))
            .fold(0u64, u64::saturating_add)
    }

    /// The interval to wait before attempt `attempt`, or `None` once the limit is spent.
    pub fn next_wait(&self, attempt: u32) -> Option<u64> {
        let wait = self.interval(attempt);
        (self.waited_before(attempt).saturating_add(wait) <= self.limit_seconds).then_some(wait)
    }
}

/// Everything a step may be configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The DynamoDB table holding task tokens by image id (wait-image only).
    pub task_table: Option<String>,
    /// The DynamoDB table holding one run lock per source instance (create-image and cleanup).
    pub lock_table: Option<String>,
    /// The S3 bucket of the fleets' plans, results and reports (the fleet function only).
    pub fleet_bucket: Option<String>,
    /// How long a run waits for the AMI event before it falls back to polling.
    pub event_wait_seconds: u64,
    /// How long CopyImage lets a new grant, launch permission and snapshot permission take
    /// effect before the target account copies: EC2 cannot carry grant tokens, and a grant can
    /// take up to about five minutes.
    pub access_propagation_seconds: u64,
    /// The fallback polling of an image.
    pub image_poll: PollPolicy,
    /// The polling of a new instance until it runs and passes its status checks.
    pub instance_poll: PollPolicy,
    /// Who images may be shared with (`AllowedReceivers`).
    pub allowed_receivers: AllowList,
    /// The accounts images may be copied into (`AllowedCopyTargets`).
    pub allowed_copy_targets: Vec<String>,
    /// What a tag alone may ask of a source instance (`TagSourceActions`).
    pub tag_powers: TagPowers,
    /// The call made during init to open the first call's connection (`AMIFLOW_WARM_UP`).
    pub warm_up: Option<WarmUp>,
}

/// KMS: a grant can take up to about five minutes to be in force everywhere.
pub const DEFAULT_ACCESS_PROPAGATION_SECONDS: u64 = 300;

pub const DEFAULT_IMAGE_POLL: PollPolicy = PollPolicy {
    initial_seconds: 30,
    max_seconds: 600,
    // Copies can take hours: the fallback keeps polling for 48 hours before it gives up.
    limit_seconds: 48 * 3600,
};

pub const DEFAULT_INSTANCE_POLL: PollPolicy = PollPolicy {
    initial_seconds: 10,
    max_seconds: 60,
    limit_seconds: 45 * 60,
};

/// A variable that must be set and not empty, or `Configuration` naming it.
pub fn required(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String> {
    var(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Configuration(format!("{name} is not set").into()))
}

impl Settings {
    /// Reads the settings through `var`, so that tests need no process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str, default: u64| -> Result<u64> {
            match var(name) {
                None => Ok(default),
                Some(v) if v.trim().is_empty() => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| {
                    Error::Configuration(
                        format!("{name}={v:?} is not a whole number of seconds").into(),
                    )
                }),
            }
        };
        Ok(Settings {
            task_table: var("AMIFLOW_TASK_TABLE").filter(|t| !t.is_empty()),
            lock_table: var("AMIFLOW_LOCK_TABLE").filter(|t| !t.is_empty()),
            fleet_bucket: var("AMIFLOW_FLEET_BUCKET").filter(|t| !t.is_empty()),
            event_wait_seconds: number("AMIFLOW_EVENT_WAIT_SECONDS", 1800)?,
            access_propagation_seconds: number(
                "AMIFLOW_ACCESS_PROPAGATION_SECONDS",
                DEFAULT_ACCESS_PROPAGATION_SECONDS,
            )?,
            image_poll: PollPolicy {
                initial_seconds: number(
                    "AMIFLOW_IMAGE_POLL_SECONDS",
                    DEFAULT_IMAGE_POLL.initial_seconds,
                )?,
                max_seconds: number(
                    "AMIFLOW_IMAGE_POLL_MAX_SECONDS",
                    DEFAULT_IMAGE_POLL.max_seconds,
                )?,
                limit_seconds: DEFAULT_IMAGE_POLL.limit_seconds,
            },
            instance_poll: PollPolicy {
                initial_seconds: number(
                    "AMIFLOW_INSTANCE_POLL_SECONDS",
                    DEFAULT_INSTANCE_POLL.initial_seconds,
                )?,
                max_seconds: number(
                    "AMIFLOW_INSTANCE_POLL_MAX_SECONDS",
                    DEFAULT_INSTANCE_POLL.max_seconds,
                )?,
                limit_seconds: number(
                    "AMIFLOW_INSTANCE_WAIT_LIMIT_SECONDS",
                    DEFAULT_INSTANCE_POLL.limit_seconds,
                )?,
            },
            allowed_receivers: AllowList::parse(
                "AMIFLOW_ALLOWED_RECEIVERS",
                &var("AMIFLOW_ALLOWED_RECEIVERS").unwrap_or_default(),
            )?,
            allowed_copy_targets: parse_accounts(
                "AMIFLOW_ALLOWED_COPY_TARGETS",
                &var("AMIFLOW_ALLOWED_COPY_TARGETS").unwrap_or_default(),
            )?,
            tag_powers: TagPowers::parse(
                "AMIFLOW_TAG_SOURCE_ACTIONS",
                &var("AMIFLOW_TAG_SOURCE_ACTIONS").unwrap_or_default(),
            )?,
            warm_up: WarmUp::parse(var(crate::warm_up::VARIABLE).as_deref())?,
        })
    }

    /// The settings with no environment at all (the CLI's).
    pub fn defaults() -> Self {
        Settings {
            task_table: None,
            lock_table: None,
            fleet_bucket: None,
            event_wait_seconds: 1800,
            access_propagation_seconds: DEFAULT_ACCESS_PROPAGATION_SECONDS,
            image_poll: DEFAULT_IMAGE_POLL,
            instance_poll: DEFAULT_INSTANCE_POLL,
            allowed_receivers: AllowList::default(),
            allowed_copy_targets: Vec::new(),
            tag_powers: TagPowers::default(),
            warm_up: None,
        }
    }

    pub fn task_table(&self) -> Result<&str> {
        self.task_table
            .as_deref()
            .ok_or_else(|| Error::Configuration("AMIFLOW_TASK_TABLE is not set".into()))
    }

    pub fn lock_table(&self) -> Result<&str> {
        self.lock_table
            .as_deref()
            .ok_or_else(|| Error::Configuration("AMIFLOW_LOCK_TABLE is not set".into()))
    }

    pub fn fleet_bucket(&self) -> Result<&str> {
        self.fleet_bucket
            .as_deref()
            .ok_or_else(|| Error::Configuration("AMIFLOW_FLEET_BUCKET is not set".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn image_fallback_grows_and_keeps_polling_for_48_hours() {
        let p = DEFAULT_IMAGE_POLL;
        assert_eq!(
            [p.interval(0), p.interval(1), p.interval(2), p.interval(5)],
            [30, 60, 120, 600]
        );
        let last = (0..10_000)
            .take_while(|a| p.next_wait(*a).is_some())
            .last()
            .unwrap();
        let total = p.waited_before(last + 1);
        assert!(total <= 48 * 3600 && total > 48 * 3600 - 600, "{total}");
        assert_eq!(p.next_wait(last + 1), None);
    }

    #[test]
    fn settings_default_and_override() {
        let vars: HashMap<&str, &str> = [
            ("AMIFLOW_TASK_TABLE", "tokens"),
            ("AMIFLOW_EVENT_WAIT_SECONDS", "5"),
        ]
        .into();
        let s = Settings::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.task_table().unwrap(), "tokens");
        assert_eq!(s.event_wait_seconds, 5);
        assert_eq!(s.image_poll, DEFAULT_IMAGE_POLL);
        let none = Settings::from_vars(|_| None).unwrap();
        assert_eq!(none.task_table().unwrap_err().name(), "Configuration");
    }

    #[test]
    fn a_bad_number_names_the_variable() {
        let err = Settings::from_vars(|k| {
            (k == "AMIFLOW_INSTANCE_POLL_SECONDS").then(|| "ten".to_string())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("AMIFLOW_INSTANCE_POLL_SECONDS"),
            "{err}"
        );
    }
}
