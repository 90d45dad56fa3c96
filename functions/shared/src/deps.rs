//! The dependencies of every function, built once per cold start: one SdkConfig, the clients
//! derived from it, and the settings.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

use crate::error::Result;
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

    /// An EC2 client acting in another account through a role there, derived from the one
    /// SdkConfig: aws-config's assume-role provider, with the external id the role demands.
    pub async fn ec2_as(
        &self,
        role_arn: &str,
        external_id: &str,
        execution: &str,
    ) -> aws_sdk_ec2::Client {
        let session: String = format!("amiflow-{execution}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .external_id(external_id)
            .session_name(session)
            .configure(&self.config)
            .build()
            .await;
        let conf = aws_sdk_ec2::config::Builder::from(&self.config)
            .credentials_provider(provider)
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}
