//! approval: announces that a `"cutover": "approve"` run waits for its decision (an event with the
//! comparison of source and copy and the task token), for AwaitApproval.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::approval().await
}
