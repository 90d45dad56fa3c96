//! The dependencies of every function, built once per cold start: one SdkConfig, the clients
//! derived from it, and the settings.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

use crate::error::{aws, Detail, Error, Result};
use crate::resources::keys::PolicyEdits;
use crate::resources::lock::RunLock;
use crate::settings::Settings;

/// How long grant-kms waits for another run's edit of the same key policy before its step is
/// retried by the state machine (an edit takes two KMS calls).
const KEY_POLICY_PATIENCE: Duration = Duration::from_secs(30);

pub struct Deps {
    pub config: aws_config::SdkConfig,
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub organizations: aws_sdk_organizations::Client,
    pub settings: Settings,
}

impl Deps {
    /// Loads the SDK configuration (region, credentials, `AWS_ENDPOINT_URL`) and the settings.
    pub async fn from_env() -> Result<Self> {
        let settings = Settings::from_vars(|k| std::env::var(k).ok())?;
        let config = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .load()
            .await;
        Ok(Self::from_config(&config, settings))
    }

    pub fn from_config(config: &aws_config::SdkConfig, settings: Settings) -> Self {
        Deps {
            config: config.clone(),
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            ec2: aws_sdk_ec2::Client::new(config),
            sfn: aws_sdk_sfn::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            kms: aws_sdk_kms::Client::new(config),
            organizations: aws_sdk_organizations::Client::new(config),
            settings,
        }
    }

    /// The run lock on the table in `AMIFLOW_LOCK_TABLE` (create-image, cleanup, grant-kms).
    pub fn run_lock(&self) -> Result<RunLock<'_>> {
        Ok(RunLock {
            ddb: &self.dynamodb,
            sfn: &self.sfn,
            table: self.settings.lock_table()?,
        })
    }

    /// Key-policy edits serialised on the run lock's table (grant-kms).
    pub fn policy_edits(&self) -> Result<PolicyEdits<'_>> {
        Ok(PolicyEdits {
            lock: self.run_lock()?,
            patience: KEY_POLICY_PATIENCE,
        })
    }

    /// An EC2 client acting in another account through a role there: AssumeRole with the external
    /// id the role demands, then a client with those credentials (an hour's, longer than any
    /// step). A role that cannot be assumed is `RoleNotAssumable`, with STS's code; a throttled or
    /// failing STS stays `Throttled` or `ServiceUnavailable`, which the state machines retry.
    pub async fn ec2_as(
        &self,
        role_arn: &str,
        external_id: &str,
        execution: &str,
    ) -> Result<aws_sdk_ec2::Client> {
        let assumed = aws_sdk_sts::Client::new(&self.config)
            .assume_role()
            .role_arn(role_arn)
            .external_id(external_id)
            .role_session_name(session_name(execution))
            .send()
            .await
            .map_err(aws("AssumeRole"))
            .map_err(|e| not_assumable(role_arn, e))?;
        let creds = assumed.credentials().ok_or_else(|| {
            Error::UnexpectedAnswer("AssumeRole: the answer has no Credentials".into())
        })?;
        let credentials = aws_credential_types::Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_string()),
            std::time::SystemTime::try_from(*creds.expiration()).ok(),
            "amiflow-assume-role",
        );
        let conf = aws_sdk_ec2::config::Builder::from(&self.config)
            .credentials_provider(credentials)
            .build();
        Ok(aws_sdk_ec2::Client::from_conf(conf))
    }
}

/// The role session's name: the execution's, in the characters STS allows, at most 64. Pure.
pub fn session_name(execution: &str) -> String {
    crate::names::restricted(&format!("amiflow-{execution}"), "+=,.@-_", '-', 64)
}

/// An AssumeRole refusal is the role's fault (`RoleNotAssumable`, naming it); a rate limit or an
/// outage is not, and is retried. Pure.
pub fn not_assumable(role_arn: &str, error: Error) -> Error {
    if error.is_retryable() {
        return error;
    }
    Error::RoleNotAssumable(Detail::aws(
        format!(
            "targetRoleArn: {role_arn} could not be assumed with the given externalId: {error}"
        ),
        error.aws_code(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classify;

    #[test]
    fn a_refused_assume_role_names_the_role_and_keeps_stss_code() {
        let refused = classify(
            "AssumeRole",
            Some("AccessDenied"),
            Some("not authorized"),
            Some(403),
        );
        let e = not_assumable("arn:aws:iam::210987654321:role/amiflow-copy", refused);
        assert_eq!(e.name(), "RoleNotAssumable");
        assert!(
            e.to_string().starts_with(
                "targetRoleArn: arn:aws:iam::210987654321:role/amiflow-copy could not be assumed"
            ),
            "{e}"
        );
        assert!(e.is_code("AccessDenied"));
        let throttled = classify("AssumeRole", Some("Throttling"), None, Some(400));
        assert_eq!(
            not_assumable("arn:aws:iam::1:role/r", throttled).name(),
            "Throttled"
        );
    }

    #[test]
    fn session_names_keep_to_what_sts_allows() {
        assert_eq!(session_name("run/1 x"), "amiflow-run-1-x");
        assert_eq!(session_name(&"e".repeat(100)).len(), 64);
    }
}
