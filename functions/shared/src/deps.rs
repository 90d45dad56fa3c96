//! The dependencies of every function, built once per cold start: one SdkConfig, the clients
//! derived from it, and the settings.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

use crate::error::Result;
use crate::settings::Settings;

pub struct Deps {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
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
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            ec2: aws_sdk_ec2::Client::new(config),
            sfn: aws_sdk_sfn::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            settings,
        }
    }
}
