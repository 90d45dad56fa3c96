//! The dependencies of every function, built once per cold start: one SdkConfig, the clients
//! derived from it (which share its HTTP client, so one connection pool), the settings, and the
//! clients of other accounts' roles, kept while their credentials last.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;

use crate::error::{aws, Detail, Error, Result};
use crate::resources::keys::PolicyEdits;
use crate::resources::lock::RunLock;
use crate::settings::Settings;

/// How long grant-kms waits for another run's edit of the same key policy before its step is
/// retried by the state machine (an edit takes two KMS calls).
const KEY_POLICY_PATIENCE: Duration = Duration::from_secs(30);

/// A role's credentials are used again until this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

pub struct Deps {
    pub config: aws_config::SdkConfig,
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub organizations: aws_sdk_organizations::Client,
    pub settings: Settings,
    pub(crate) sts: aws_sdk_sts::Client,
    /// EC2 clients acting through another account's role, by role and external id, with the
    /// time their credentials expire.
    roles: tokio::sync::Mutex<HashMap<(String, String), (aws_sdk_ec2::Client, SystemTime)>>,
}

impl Deps {
    /// Loads the SDK configuration (region, credentials, `AWS_ENDPOINT_URL`) and the settings.
    pub async fn from_env() -> Result<Self> {
        let settings = Settings::from_vars(|k| std::env::var(k).ok())?;
        // Without one given, each client builds an HTTP client of its own: a pool and a TLS
        // session cache per client. One shared client lets the role's EC2 client reuse the
        // connection the function's own EC2 client opened (a request's signature, not its
        // connection, carries the credentials).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build_https();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
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
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            kms: aws_sdk_kms::Client::new(config),
            organizations: aws_sdk_organizations::Client::new(config),
            settings,
            sts: aws_sdk_sts::Client::new(config),
            roles: Default::default(),
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
    /// id the role demands, then a client with those credentials (an hour's). The client is kept
    /// for the life of the execution environment, by role and external id, and used again until
    /// five minutes before its credentials expire, so that a warm function (wait-image's polling
    /// every minute, say) makes one AssumeRole an hour, not one a call. A role that cannot be
    /// assumed is `RoleNotAssumable`, with STS's code; a throttled or failing STS stays
    /// `Throttled` or `ServiceUnavailable`, which the state machines retry.
    pub async fn ec2_as(&self, role_arn: &str, external_id: &str) -> Result<aws_sdk_ec2::Client> {
        let key = (role_arn.to_string(), external_id.to_string());
        let mut roles = self.roles.lock().await;
        if let Some((client, expires)) = roles.get(&key) {
            if still_good(*expires, SystemTime::now()) {
                return Ok(client.clone());
            }
        }
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
        let assumed = self
            .sts
            .assume_role()
            .role_arn(role_arn)
            .external_id(external_id)
            .role_session_name(session_name(&function))
            .send()
            .await
            .map_err(aws("AssumeRole"))
            .map_err(|e| not_assumable(role_arn, e))?;
        let creds = assumed.credentials().ok_or_else(|| {
            Error::UnexpectedAnswer("AssumeRole: the answer has no Credentials".into())
        })?;
        let expires = SystemTime::try_from(*creds.expiration()).unwrap_or(SystemTime::UNIX_EPOCH);
        let credentials = aws_credential_types::Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_string()),
            Some(expires),
            "amiflow-assume-role",
        );
        let conf = aws_sdk_ec2::config::Builder::from(&self.config)
            .credentials_provider(credentials)
            .build();
        let client = aws_sdk_ec2::Client::from_conf(conf);
        roles.insert(key, (client.clone(), expires));
        Ok(client)
    }
}

/// Whether credentials that expire then may still be used now. Pure.
pub fn still_good(expires: SystemTime, now: SystemTime) -> bool {
    expires
        .duration_since(now)
        .is_ok_and(|left| left > CREDENTIALS_MARGIN)
}

/// The role session's name: the function's, in the characters STS allows, at most 64 (the
/// session serves every run the environment serves; each run's resources carry its tag). Pure.
pub fn session_name(function: &str) -> String {
    crate::names::restricted(&format!("amiflow-{function}"), "+=,.@-_", '-', 64)
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
    fn role_credentials_are_used_again_until_five_minutes_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert!(still_good(now + Duration::from_secs(3600), now));
        assert!(still_good(now + Duration::from_secs(301), now));
        assert!(!still_good(now + Duration::from_secs(300), now));
        assert!(!still_good(now - Duration::from_secs(1), now));
    }

    #[test]
    fn session_names_keep_to_what_sts_allows() {
        assert_eq!(session_name("run/1 x"), "amiflow-run-1-x");
        assert_eq!(session_name(&"e".repeat(100)).len(), 64);
    }
}
