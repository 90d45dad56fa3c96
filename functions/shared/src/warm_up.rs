//! The warm-up: during init, a function makes one call that changes nothing and that its role may
//! make, to the service its first real call goes to, so that the TLS connection (and the TLS
//! library's first use) is paid before the first invocation, not inside it. Which call is the
//! function's `AMIFLOW_WARM_UP` (template.yaml, read with the other settings); none without it. It is bounded in time and never
//! fails the init: a call that is refused or slow only leaves the connection cold.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::{aws, Error, Result};
use crate::Deps;

/// The variable that names the warm-up call.
pub const VARIABLE: &str = "AMIFLOW_WARM_UP";

/// The most the warm-up may add to init (Lambda allows an init 10 s).
pub const LIMIT: Duration = Duration::from_secs(2);

/// The image id the token-table warm-up asks for: no image has it, so the query reads nothing.
const NO_IMAGE: &str = "amiflow-warm-up";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmUp {
    /// EC2 DescribeInstances with DryRun: EC2 checks the permission and does nothing else.
    Ec2DescribeInstances,
    /// EC2 DescribeImages with DryRun.
    Ec2DescribeImages,
    /// A DynamoDB Query of the task-token table for an image id no image has.
    DynamodbQuery,
    /// STS GetCallerIdentity, which needs no permission.
    StsGetCallerIdentity,
}

impl WarmUp {
    const ALL: [WarmUp; 4] = [
        WarmUp::Ec2DescribeInstances,
        WarmUp::Ec2DescribeImages,
        WarmUp::DynamodbQuery,
        WarmUp::StsGetCallerIdentity,
    ];

    /// The IAM action the call needs: the value of `AMIFLOW_WARM_UP` that names it.
    pub fn action(self) -> &'static str {
        match self {
            WarmUp::Ec2DescribeInstances => "ec2:DescribeInstances",
            WarmUp::Ec2DescribeImages => "ec2:DescribeImages",
            WarmUp::DynamodbQuery => "dynamodb:Query",
            WarmUp::StsGetCallerIdentity => "sts:GetCallerIdentity",
        }
    }

    /// The warm-up a value of `AMIFLOW_WARM_UP` names; none when unset or empty. Pure.
    pub fn parse(value: Option<&str>) -> Result<Option<WarmUp>> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        Self::ALL
            .into_iter()
            .find(|w| w.action() == value)
            .map(Some)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|w| w.action()).collect();
                Error::Configuration(
                    format!("{VARIABLE}={value:?} is none of {}", known.join(", ")).into(),
                )
            })
    }
}

/// Whether a warm-up call's answer leaves the connection open and the role allowed: an answer,
/// or EC2's `DryRunOperation` ("the request would have succeeded"). Pure.
pub fn warmed(answer: &Result<()>) -> bool {
    match answer {
        Ok(()) => true,
        Err(e) => e.is_code("DryRunOperation"),
    }
}

/// Makes the warm-up call, at most [`LIMIT`], and logs how it went.
pub async fn run(deps: &Deps, what: WarmUp) {
    let started = Instant::now();
    let answer = match tokio::time::timeout(LIMIT, call(deps, what)).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::ServiceUnavailable(
            format!("no answer within {} s", LIMIT.as_secs()).into(),
        )),
    };
    let ms = started.elapsed().as_millis();
    if warmed(&answer) {
        tracing::info!(warm_up = what.action(), ms, "connection warmed");
    } else if let Err(e) = answer {
        tracing::warn!(warm_up = what.action(), ms, error = %e, "warm-up call failed; the first call opens the connection");
    }
}

async fn call(deps: &Deps, what: WarmUp) -> Result<()> {
    match what {
        WarmUp::Ec2DescribeInstances => deps
            .ec2
            .describe_instances()
            .dry_run(true)
            .send()
            .await
            .map(drop)
            .map_err(aws("DescribeInstances")),
        WarmUp::Ec2DescribeImages => deps
            .ec2
            .describe_images()
            .dry_run(true)
            .send()
            .await
            .map(drop)
            .map_err(aws("DescribeImages")),
        WarmUp::DynamodbQuery => deps
            .dynamodb
            .query()
            .table_name(deps.settings.task_table()?)
            .key_condition_expression("imageId = :image")
            .expression_attribute_values(":image", AttributeValue::S(NO_IMAGE.into()))
            .limit(1)
            .send()
            .await
            .map(drop)
            .map_err(aws("Query")),
        WarmUp::StsGetCallerIdentity => deps
            .sts
            .get_caller_identity()
            .send()
            .await
            .map(drop)
            .map_err(aws("GetCallerIdentity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classify;

    #[test]
    fn the_variable_names_a_warm_up_by_its_iam_action() {
        assert_eq!(WarmUp::parse(None).unwrap(), None);
        assert_eq!(WarmUp::parse(Some(" ")).unwrap(), None);
        for w in WarmUp::ALL {
            assert_eq!(WarmUp::parse(Some(w.action())).unwrap(), Some(w));
        }
        let e = WarmUp::parse(Some("ec2:RunInstances")).unwrap_err();
        assert_eq!(e.name(), "Configuration");
        assert!(
            e.to_string()
                .contains("AMIFLOW_WARM_UP=\"ec2:RunInstances\" is none of ec2:DescribeInstances"),
            "{e}"
        );
    }

    #[test]
    fn a_dry_run_that_would_have_succeeded_warms_and_a_refusal_does_not() {
        assert!(warmed(&Ok(())));
        let dry = classify("DescribeImages", Some("DryRunOperation"), None, Some(412));
        assert!(warmed(&Err(dry)));
        let refused = classify(
            "DescribeImages",
            Some("UnauthorizedOperation"),
            None,
            Some(403),
        );
        assert!(!warmed(&Err(refused)));
    }
}
