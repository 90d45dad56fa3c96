//! The one error type of every step, with the stable names that the state machines' Retry and
//! Catch clauses match on. An error that came from AWS keeps the AWS error code as data
//! ([`Error::aws_code`], [`Error::is_code`]), and in the message.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ErrorMetadata;
use lambda_runtime::Diagnostic;

/// Every failure a step can report, each defined once: its name (what Step Functions sees, so
/// Retry and Catch match on it), when it is raised and what the state machines do with it. The
/// enum, `name()`, [`ERROR_NAMES`] and [`ERROR_TABLE`] (the README's table, checked by a contract
/// test) all come from this one list.
macro_rules! errors {
    ($($name:ident: $when:literal => $handling:literal;)+) => {
        #[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
        pub enum Error {
            /// The input is malformed; the message starts with the field's name.
            #[error("{field}: {reason}")]
            InvalidInput { field: String, reason: String },
            $(
                #[doc = $when]
                #[error("{0}")]
                $name(Detail),
            )+
        }

        /// Every error name, in the order of the enum.
        pub const ERROR_NAMES: &[&str] = &["InvalidInput", $(stringify!($name)),+];

        /// Each name, when it is raised, and what the state machines do with it.
        pub const ERROR_TABLE: &[(&str, &str, &str)] = &[
            ("InvalidInput", INVALID_INPUT.0, INVALID_INPUT.1),
            $((stringify!($name), $when, $handling)),+
        ];

        impl Error {
            pub fn name(&self) -> &'static str {
                match self {
                    Error::InvalidInput { .. } => "InvalidInput",
                    $(Error::$name(_) => stringify!($name),)+
                }
            }

            fn detail(&self) -> Option<&Detail> {
                match self {
                    Error::InvalidInput { .. } => None,
                    $(Error::$name(detail) => Some(detail),)+
                }
            }
        }
    };
}

const INVALID_INPUT: (&str, &str) = ("A field is missing, malformed, of the wrong type or unknown, or a target AZ is in another region. The message starts with the field.", "fails the run; nothing was made");

errors! {
    InstanceNotFound: "The source instance does not exist." => "fails the run";
    SubnetNotFound: "`targetSubnetId` does not exist, or the source's VPC has no subnet in the target AZ." => "fails the run";
    SubnetAmbiguous: "Several subnets of the source's VPC are in the target AZ; give `targetSubnetId`." => "fails the run";
    TargetMismatch: "The subnet is in another VPC or another AZ than asked, or the source is already in the target AZ." => "fails the run";
    InstanceTypeNotOffered: "The instance type is not offered in the target AZ." => "fails the run";
    UnsupportedSource: "The source has an instance-store root, is not in a VPC, or is in a state with no image (pending, stopping, terminated)." => "fails the run";
    SourceProtected: "`sourceAction` asks for something the source's termination or stop protection forbids." => "fails the run before any change";
    InstanceBusy: "Another MigrateInstance run holds the source's run lock (the message names its execution)." => "fails the run before any change";
    ImageNotFound: "The AMI is not visible yet (eventual consistency right after CreateImage)." => "retried with backoff, then rolled back";
    ImageNameRace: "CreateImage found the run's image name taken by a concurrent attempt of the same execution, whose image is not visible yet." => "retried with backoff, then rolled back";
    ImageFailed: "The AMI went `failed`, `deregistered` or `disabled`; its state reason is in the message." => "rolled back";
    ImageWaitTimedOut: "The AMI was still pending after 48 hours of fallback polling." => "rolled back";
    TargetsUnhealthy: "With `\"targetGroups\": \"follow\"`, the copy was not healthy in every target group of the source within `InstanceWaitLimitSeconds` (the message names each group and the copy's state there)." => "rolled back: the copy leaves the groups, and the source is back in them";
    InsufficientCapacity: "RunInstances found no capacity in the target AZ, or (`\"capacity\": \"reserve\"`) CreateCapacityReservation could reserve none, before anything was made." => "rolled back";
    LaunchFailed: "The new instance stopped or terminated before it was verified; its StateReason code and message are in the message." => "rolled back";
    StatusCheckFailed: "The new instance runs but a status check is `impaired`." => "rolled back";
    InstanceWaitTimedOut: "The new instance was not running with both checks `ok` within `InstanceWaitLimitSeconds`." => "rolled back";
    Throttled: "An API refused the call for its rate (RequestLimitExceeded and kin), after the SDK's own retries." => "retried up to 16 times, 2 s then doubling to at most 300 s, each wait a random share of that (long enough for 1,000 runs at RunInstances' bucket: docs/benchmarks.md), then rolled back";
    KeyPolicyBusy: "Another run was editing the same key policy for longer than 30 s (grant-kms holds a lock per key from the read to the write)." => "retried with backoff and jitter, then rolled back";
    ServiceUnavailable: "A 5xx, a time-out or a broken connection." => "retried as `Throttled` is, then rolled back";
    AwsApi: "Any other AWS error, with its code (e.g. `UnauthorizedOperation`)." => "rolled back";
    UnexpectedAnswer: "An AWS answer lacks what the API documents: a create call answered without the new resource's id, a key policy that is not JSON, an execution without its start date." => "rolled back";
    InAutoScalingGroup: "The instance is in an Auto Scaling group (DescribeAutoScalingInstances; the message names the group), which replaces its instances itself: move the group by its subnets instead." => "the instance is refused before any change (EvacuateZone reports it as REFUSED)";
    ToleratedFailuresExceeded: "More children of an EvacuateZone run failed than `toleratedFailures` (or `toleratedFailurePercent`) allows." => "no further child is started; running ones finish or roll back; the fleet fails, its cause naming the report in S3";
    ImageNotOwned: "ShareImage, UnshareImage or CopyImage was given an image of another account." => "fails the run; nothing changed";
    EncryptedImageNotPublic: "`public: true` for an encrypted image." => "fails the run; nothing changed";
    PublicSharingBlocked: "`public: true` while block public access for AMIs (or, with `shareSnapshots`, for snapshots) is on in the account and Region; the cause names the setting, its state and whether a declarative policy manages it." => "fails the run; nothing changed";
    ManagedKeyNeedsReencryption: "The image is encrypted with an AWS managed key (aws/ebs), which no other account can use: ShareImage needs `reencryptKmsKeyId`; CopyImage needs a re-encrypted image." => "fails the run; nothing changed";
    KeyNotManageable: "A key behind the image is AWS managed or belongs to another account, so amiflow cannot grant it." => "taken back";
    KeyNotShareable: "A customer managed key behind the image (or `reencryptKmsKeyId`) is not tagged `amiflow:shareable=true` by its owner; grant-kms may grant and edit only keys so marked." => "fails the run before any change";
    BillingProductNotCopyable: "CopyImage of an image with a billing product (Marketplace, some Windows)." => "fails the run; nothing changed";
    RoleNotAssumable: "The target account's role could not be assumed (trust policy, external id)." => "taken back";
    ReceiverNotAllowed: "ShareImage named a receiver that the stack's non-empty `AllowedReceivers` does not admit; every such receiver is named with its field." => "fails the run; nothing changed";
    CopyTargetNotAllowed: "CopyImage's `targetAccountId` is not in the stack's non-empty `AllowedCopyTargets`." => "fails the run; nothing changed";
    PreflightFailed: "The input asked for `\"preflight\": true` and a check failed; every failed check is in the message." => "fails the run before any change";
    Configuration: "The function's environment is wrong (e.g. no `AMIFLOW_TASK_TABLE`)." => "rolled back";
}

/// What an error says: its message and, when AWS answered it, AWS's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    message: String,
    code: Option<String>,
}

impl Detail {
    /// A message AWS answered with `code` (e.g. `InvalidSnapshot.NotFound`).
    pub fn aws(message: String, code: Option<&str>) -> Self {
        Detail {
            message,
            code: code.map(str::to_string),
        }
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Detail {
            message,
            code: None,
        }
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::ops::Deref for Detail {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl Error {
    /// The AWS error code this error came from, if AWS answered it.
    pub fn aws_code(&self) -> Option<&str> {
        self.detail()?.code.as_deref()
    }

    /// Whether AWS answered this error with `code`: the one way amiflow asks which AWS error it
    /// got (never the message's text).
    pub fn is_code(&self, code: &str) -> bool {
        self.aws_code() == Some(code)
    }

    /// Whether the state machines retry this error (it names a rate limit or a transient failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Throttled(_) | Error::ServiceUnavailable(_))
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
    let text = Detail::aws(
        format!(
            "{operation}: {}: {}",
            code.unwrap_or("Unknown"),
            message.unwrap_or("no message")
        ),
        code,
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
            Error::ServiceUnavailable(format!("{operation}: {}", display_chain(&err)).into())
        }
        _ => Error::AwsApi(format!("{operation}: {}", display_chain(&err)).into()),
    }
}

/// An error and every error under it, joined with `: ` (what the SDK's errors say only in their
/// sources). Shared with the CLI.
pub fn display_chain(err: &dyn std::error::Error) -> String {
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

/// The id a create call's answer must carry; its absence is `UnexpectedAnswer`, never an empty id
/// that a later step would act on.
pub fn answered_id(operation: &str, field: &str, id: Option<&str>) -> Result<String> {
    match id {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(Error::UnexpectedAnswer(
            format!("{operation}: the answer has no {field}").into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_name_is_listed_once() {
        let samples = [
            Error::invalid("f", "r"),
            Error::InstanceNotFound(String::new().into()),
            Error::SubnetNotFound(String::new().into()),
            Error::SubnetAmbiguous(String::new().into()),
            Error::TargetMismatch(String::new().into()),
            Error::InstanceTypeNotOffered(String::new().into()),
            Error::UnsupportedSource(String::new().into()),
            Error::SourceProtected(String::new().into()),
            Error::InstanceBusy(String::new().into()),
            Error::ImageNotFound(String::new().into()),
            Error::ImageNameRace(String::new().into()),
            Error::ImageFailed(String::new().into()),
            Error::ImageWaitTimedOut(String::new().into()),
            Error::TargetsUnhealthy(String::new().into()),
            Error::InsufficientCapacity(String::new().into()),
            Error::LaunchFailed(String::new().into()),
            Error::StatusCheckFailed(String::new().into()),
            Error::InstanceWaitTimedOut(String::new().into()),
            Error::Throttled(String::new().into()),
            Error::KeyPolicyBusy(String::new().into()),
            Error::ServiceUnavailable(String::new().into()),
            Error::AwsApi(String::new().into()),
            Error::UnexpectedAnswer(String::new().into()),
            Error::InAutoScalingGroup(String::new().into()),
            Error::ToleratedFailuresExceeded(String::new().into()),
            Error::ImageNotOwned(String::new().into()),
            Error::EncryptedImageNotPublic(String::new().into()),
            Error::PublicSharingBlocked(String::new().into()),
            Error::ManagedKeyNeedsReencryption(String::new().into()),
            Error::KeyNotManageable(String::new().into()),
            Error::KeyNotShareable(String::new().into()),
            Error::BillingProductNotCopyable(String::new().into()),
            Error::RoleNotAssumable(String::new().into()),
            Error::ReceiverNotAllowed(String::new().into()),
            Error::CopyTargetNotAllowed(String::new().into()),
            Error::PreflightFailed(String::new().into()),
            Error::Configuration(String::new().into()),
        ];
        let names: Vec<&str> = samples.iter().map(Error::name).collect();
        assert_eq!(names, ERROR_NAMES);
    }

    #[test]
    fn a_create_answer_without_its_id_is_an_unexpected_answer() {
        assert_eq!(
            answered_id("RunInstances", "InstanceId", Some("i-1")).unwrap(),
            "i-1"
        );
        for missing in [None, Some("")] {
            let e = answered_id("CreateGrant", "GrantId", missing).unwrap_err();
            assert_eq!(
                e,
                Error::UnexpectedAnswer("CreateGrant: the answer has no GrantId".into())
            );
        }
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
        assert_eq!(e.name(), "Throttled");
        assert_eq!(
            e.to_string(),
            "CreateImage: RequestLimitExceeded: slow down"
        );
        assert_eq!(e.aws_code(), Some("RequestLimitExceeded"));
        assert!(e.is_code("RequestLimitExceeded") && !e.is_code("Throttling"));
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
        assert_eq!(e.name(), "AwsApi");
        assert_eq!(e.to_string(), "RunInstances: UnauthorizedOperation: no");
        assert!(e.is_code("UnauthorizedOperation"));
        // An error amiflow raised itself carries no AWS code.
        assert_eq!(Error::ImageFailed("failed".into()).aws_code(), None);
    }
}
