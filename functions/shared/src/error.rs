//! The one error type of every step, with the stable names that the state machines' Retry and
//! Catch clauses match on. The AWS error code, when there is one, stays in the message.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ErrorMetadata;
use lambda_runtime::Diagnostic;

/// Every failure a step can report. `name()` is what Step Functions sees as the error name.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The input is malformed; the message starts with the field's name.
    #[error("{field}: {reason}")]
    InvalidInput { field: String, reason: String },
    #[error("{0}")]
    InstanceNotFound(String),
    #[error("{0}")]
    SubnetNotFound(String),
    #[error("{0}")]
    SubnetAmbiguous(String),
    /// The target does not fit the source: wrong VPC, wrong AZ, or the AZ the source is in.
    #[error("{0}")]
    TargetMismatch(String),
    #[error("{0}")]
    InstanceTypeNotOffered(String),
    /// The source cannot be moved by an AMI (instance-store root, or a state that has no image).
    #[error("{0}")]
    UnsupportedSource(String),
    /// The requested source action is blocked by the source's own protection attribute.
    #[error("{0}")]
    SourceProtected(String),
    /// Another MigrateInstance run holds the source's run lock.
    #[error("{0}")]
    InstanceBusy(String),
    /// The image is not (yet) visible; retried, as it is right after CreateImage.
    #[error("{0}")]
    ImageNotFound(String),
    #[error("{0}")]
    ImageFailed(String),
    #[error("{0}")]
    ImageWaitTimedOut(String),
    #[error("{0}")]
    InsufficientCapacity(String),
    /// The new instance stopped or terminated before it was verified; StateReason in the message.
    #[error("{0}")]
    LaunchFailed(String),
    #[error("{0}")]
    StatusCheckFailed(String),
    #[error("{0}")]
    InstanceWaitTimedOut(String),
    /// The API refused the call for its rate (RequestLimitExceeded and kin); retried.
    #[error("{0}")]
    Throttled(String),
    /// A 5xx, a time-out or a broken connection; retried.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// Any other AWS error, with its code.
    #[error("{0}")]
    AwsApi(String),
    /// The image is not owned by this account; only an owner can share it.
    #[error("{0}")]
    ImageNotOwned(String),
    /// An encrypted image cannot be made public.
    #[error("{0}")]
    EncryptedImageNotPublic(String),
    /// `public: true` while block public access for AMIs or snapshots is on in the account.
    #[error("{0}")]
    PublicSharingBlocked(String),
    /// The image is encrypted with an AWS managed key, which cannot be shared; give a customer managed key to re-encrypt with.
    #[error("{0}")]
    ManagedKeyNeedsReencryption(String),
    /// A KMS key cannot be managed by this account (another account's key, or AWS managed).
    #[error("{0}")]
    KeyNotManageable(String),
    /// A KMS key behind the image is not marked `amiflow:shareable=true` by its owner.
    #[error("{0}")]
    KeyNotShareable(String),
    /// The image has a billing product and cannot be copied to another account.
    #[error("{0}")]
    BillingProductNotCopyable(String),
    /// The target account's role cannot be assumed.
    #[error("{0}")]
    RoleNotAssumable(String),
    /// A receiver is not in the stack's `AllowedReceivers`; every refused receiver is named.
    #[error("{0}")]
    ReceiverNotAllowed(String),
    /// The target account is not in the stack's `AllowedCopyTargets`.
    #[error("{0}")]
    CopyTargetNotAllowed(String),
    /// A check asked for with `"preflight": true` failed; every failed check is in the message.
    #[error("{0}")]
    PreflightFailed(String),
    /// The function's own environment is wrong (a missing table name, say).
    #[error("{0}")]
    Configuration(String),
}

/// Every error name, in the order of the enum. The ASL test checks Retry/Catch against it.
pub const ERROR_NAMES: &[&str] = &[
    "InvalidInput",
    "InstanceNotFound",
    "SubnetNotFound",
    "SubnetAmbiguous",
    "TargetMismatch",
    "InstanceTypeNotOffered",
    "UnsupportedSource",
    "SourceProtected",
    "InstanceBusy",
    "ImageNotFound",
    "ImageFailed",
    "ImageWaitTimedOut",
    "InsufficientCapacity",
    "LaunchFailed",
    "StatusCheckFailed",
    "InstanceWaitTimedOut",
    "Throttled",
    "ServiceUnavailable",
    "AwsApi",
    "ImageNotOwned",
    "EncryptedImageNotPublic",
    "PublicSharingBlocked",
    "ManagedKeyNeedsReencryption",
    "KeyNotManageable",
    "KeyNotShareable",
    "BillingProductNotCopyable",
    "RoleNotAssumable",
    "ReceiverNotAllowed",
    "CopyTargetNotAllowed",
    "PreflightFailed",
    "Configuration",
];

impl Error {
    /// Whether the state machines retry this error (it names a rate limit or a transient failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Throttled(_) | Error::ServiceUnavailable(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "InvalidInput",
            Error::InstanceNotFound(_) => "InstanceNotFound",
            Error::SubnetNotFound(_) => "SubnetNotFound",
            Error::SubnetAmbiguous(_) => "SubnetAmbiguous",
            Error::TargetMismatch(_) => "TargetMismatch",
            Error::InstanceTypeNotOffered(_) => "InstanceTypeNotOffered",
            Error::UnsupportedSource(_) => "UnsupportedSource",
            Error::SourceProtected(_) => "SourceProtected",
            Error::InstanceBusy(_) => "InstanceBusy",
            Error::ImageNotFound(_) => "ImageNotFound",
            Error::ImageFailed(_) => "ImageFailed",
            Error::ImageWaitTimedOut(_) => "ImageWaitTimedOut",
            Error::InsufficientCapacity(_) => "InsufficientCapacity",
            Error::LaunchFailed(_) => "LaunchFailed",
            Error::StatusCheckFailed(_) => "StatusCheckFailed",
            Error::InstanceWaitTimedOut(_) => "InstanceWaitTimedOut",
            Error::Throttled(_) => "Throttled",
            Error::ServiceUnavailable(_) => "ServiceUnavailable",
            Error::AwsApi(_) => "AwsApi",
            Error::ImageNotOwned(_) => "ImageNotOwned",
            Error::EncryptedImageNotPublic(_) => "EncryptedImageNotPublic",
            Error::PublicSharingBlocked(_) => "PublicSharingBlocked",
            Error::ManagedKeyNeedsReencryption(_) => "ManagedKeyNeedsReencryption",
            Error::KeyNotManageable(_) => "KeyNotManageable",
            Error::KeyNotShareable(_) => "KeyNotShareable",
            Error::BillingProductNotCopyable(_) => "BillingProductNotCopyable",
            Error::RoleNotAssumable(_) => "RoleNotAssumable",
            Error::ReceiverNotAllowed(_) => "ReceiverNotAllowed",
            Error::CopyTargetNotAllowed(_) => "CopyTargetNotAllowed",
            Error::PreflightFailed(_) => "PreflightFailed",
            Error::Configuration(_) => "Configuration",
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(error: Error) -> Self {
        Diagnostic {
            error_type: error.name().to_string(),
            error_message: error.to_string(),
        }
    }
}

// Codes that mean "slow down", and codes of a transient failure: the SDK's own lists, which its
// retry strategy has already applied a few times when we see them.
use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};

/// Classifies an AWS error by its code, HTTP status and kind. Pure, so every branch is tested.
pub fn classify(
    operation: &str,
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
) -> Error {
    let text = format!(
        "{operation}: {}: {}",
        code.unwrap_or("Unknown"),
        message.unwrap_or("no message")
    );
    match code {
        Some(c) if THROTTLING_ERRORS.contains(&c) => Error::Throttled(text),
        Some(c) if TRANSIENT_ERRORS.contains(&c) => Error::ServiceUnavailable(text),
        Some("InsufficientInstanceCapacity") | Some("InsufficientCapacity") => {
            Error::InsufficientCapacity(text)
        }
        Some("InvalidAMIID.NotFound") | Some("InvalidAMIID.Unavailable") => {
            Error::ImageNotFound(text)
        }
        Some("InvalidInstanceID.NotFound") | Some("InvalidInstanceID.Malformed") => {
            Error::InstanceNotFound(text)
        }
        Some("InvalidSubnetID.NotFound") | Some("InvalidSubnetID.Malformed") => {
            Error::SubnetNotFound(text)
        }
        Some("ServiceUnavailable") | Some("InternalError") | Some("Unavailable") => {
            Error::ServiceUnavailable(text)
        }
        _ if status.is_some_and(|s| s >= 500) => Error::ServiceUnavailable(text),
        _ => Error::AwsApi(text),
    }
}

/// Maps an SDK error of any operation into [`Error`]; use as `.map_err(aws("DescribeImages"))`.
pub fn aws<E>(operation: &'static str) -> impl FnOnce(SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |err| match &err {
        SdkError::ServiceError(service) => {
            let meta: &ErrorMetadata = service.err().meta();
            classify(
                operation,
                meta.code(),
                meta.message(),
                Some(service.raw().status().as_u16()),
            )
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::ServiceUnavailable(format!("{operation}: {}", display_chain(&err)))
        }
        _ => Error::AwsApi(format!("{operation}: {}", display_chain(&err))),
    }
}

fn display_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_name_is_listed_once() {
        let samples = [
            Error::invalid("f", "r"),
            Error::InstanceNotFound(String::new()),
            Error::SubnetNotFound(String::new()),
            Error::SubnetAmbiguous(String::new()),
            Error::TargetMismatch(String::new()),
            Error::InstanceTypeNotOffered(String::new()),
            Error::UnsupportedSource(String::new()),
            Error::SourceProtected(String::new()),
            Error::InstanceBusy(String::new()),
            Error::ImageNotFound(String::new()),
            Error::ImageFailed(String::new()),
            Error::ImageWaitTimedOut(String::new()),
            Error::InsufficientCapacity(String::new()),
            Error::LaunchFailed(String::new()),
            Error::StatusCheckFailed(String::new()),
            Error::InstanceWaitTimedOut(String::new()),
            Error::Throttled(String::new()),
            Error::ServiceUnavailable(String::new()),
            Error::AwsApi(String::new()),
            Error::ImageNotOwned(String::new()),
            Error::EncryptedImageNotPublic(String::new()),
            Error::PublicSharingBlocked(String::new()),
            Error::ManagedKeyNeedsReencryption(String::new()),
            Error::KeyNotManageable(String::new()),
            Error::KeyNotShareable(String::new()),
            Error::BillingProductNotCopyable(String::new()),
            Error::RoleNotAssumable(String::new()),
            Error::ReceiverNotAllowed(String::new()),
            Error::CopyTargetNotAllowed(String::new()),
            Error::PreflightFailed(String::new()),
            Error::Configuration(String::new()),
        ];
        let names: Vec<&str> = samples.iter().map(Error::name).collect();
        assert_eq!(names, ERROR_NAMES);
    }

    #[test]
    fn invalid_input_names_the_field_first() {
        let d: Diagnostic = Error::invalid("targetSubnetId", "must look like subnet-0abc").into();
        assert_eq!(d.error_type, "InvalidInput");
        assert_eq!(
            d.error_message,
            "targetSubnetId: must look like subnet-0abc"
        );
    }

    #[test]
    fn throttling_codes_become_throttled_and_keep_the_code() {
        let e = classify(
            "CreateImage",
            Some("RequestLimitExceeded"),
            Some("slow down"),
            Some(503),
        );
        assert_eq!(
            e,
            Error::Throttled("CreateImage: RequestLimitExceeded: slow down".into())
        );
    }

    #[test]
    fn every_code_the_sdk_retries_is_retried_here_too() {
        for code in [
            "RequestThrottledException",
            "EC2ThrottledException",
            "ThrottlingException",
            "TooManyRequestsException",
        ] {
            assert_eq!(
                classify("CreateGrant", Some(code), None, Some(400)).name(),
                "Throttled",
                "{code}"
            );
        }
        for code in ["RequestTimeout", "RequestTimeoutException"] {
            assert_eq!(
                classify("CopyImage", Some(code), None, Some(400)).name(),
                "ServiceUnavailable",
                "{code}"
            );
        }
    }

    #[test]
    fn capacity_image_and_instance_codes_have_their_own_names() {
        assert_eq!(
            classify(
                "RunInstances",
                Some("InsufficientInstanceCapacity"),
                None,
                Some(500)
            )
            .name(),
            "InsufficientCapacity"
        );
        assert_eq!(
            classify(
                "DescribeImages",
                Some("InvalidAMIID.NotFound"),
                None,
                Some(400)
            )
            .name(),
            "ImageNotFound"
        );
        assert_eq!(
            classify(
                "DescribeInstances",
                Some("InvalidInstanceID.NotFound"),
                None,
                Some(400)
            )
            .name(),
            "InstanceNotFound"
        );
        assert_eq!(
            classify(
                "DescribeSubnets",
                Some("InvalidSubnetID.NotFound"),
                None,
                Some(400)
            )
            .name(),
            "SubnetNotFound"
        );
    }

    #[test]
    fn server_errors_are_retryable_and_client_errors_are_not() {
        assert_eq!(
            classify("RunInstances", Some("Whatever"), None, Some(503)).name(),
            "ServiceUnavailable"
        );
        assert_eq!(
            classify("RunInstances", Some("InternalError"), None, Some(400)).name(),
            "ServiceUnavailable"
        );
        let e = classify(
            "RunInstances",
            Some("UnauthorizedOperation"),
            Some("no"),
            Some(403),
        );
        assert_eq!(
            e,
            Error::AwsApi("RunInstances: UnauthorizedOperation: no".into())
        );
    }
}
