//! How a command fails, by exit status: 1 a run that ran and failed (its error name is printed),
//! 2 a refusal before anything was asked of AWS or of a run (a flag, an input field, a run that is
//! not in the state the command needs), 3 an AWS call that failed (credentials, permissions,
//! throttling, an endpoint not reached), printed with AWS's error code and message.

use std::process::ExitCode;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub const RUN_FAILED: u8 = 1;
pub const REFUSED: u8 = 2;
pub const API_FAILED: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Refused(String),
    Api(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Refused(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        Failure::Refused(reason.to_string())
    }
}

impl Failure {
    /// Prints the failure and answers its exit status.
    pub fn exit(&self) -> ExitCode {
        match self {
            Failure::Refused(reason) => {
                eprintln!("error: {reason}");
                ExitCode::from(REFUSED)
            }
            Failure::Api(reason) => {
                eprintln!("error: {reason}");
                ExitCode::from(API_FAILED)
            }
        }
    }
}

/// An AWS call's failure as `Operation: Code: message` (or, without an answer from AWS, what
/// stopped the call: no credentials, no connection, a time-out).
pub fn api<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |err| Failure::Api(describe(operation, &err))
}

/// The text of an AWS call's failure. Pure.
pub fn describe<E, R>(operation: &str, err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => format!(
            "{operation}: {}: {}",
            service.code().unwrap_or("an error without a code"),
            service.message().unwrap_or("no message")
        ),
        None => format!("{operation}: {}", amiflow::error::display_chain(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::operation::describe_execution::DescribeExecutionError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[test]
    fn an_aws_error_shows_its_code_and_message() {
        let err: SdkError<DescribeExecutionError, Response> = SdkError::service_error(
            DescribeExecutionError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("User: arn:aws:sts::1:assumed-role/ops is not authorized to perform: states:DescribeExecution")
                    .build(),
            ),
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        );
        assert_eq!(
            describe("DescribeExecution", &err),
            "DescribeExecution: AccessDeniedException: User: arn:aws:sts::1:assumed-role/ops is not authorized to perform: states:DescribeExecution"
        );
        assert_eq!(api("DescribeExecution")(err), Failure::Api(describe_text()));
    }

    fn describe_text() -> String {
        "DescribeExecution: AccessDeniedException: User: arn:aws:sts::1:assumed-role/ops is not authorized to perform: states:DescribeExecution".into()
    }
}
