//! multicall: every function in one binary, running the one that `AMIFLOW_FUNCTION` names.
//! `make bench` weighs it against the eleven binaries (size, build time, cold start); it is not
//! deployed.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let name = std::env::var("AMIFLOW_FUNCTION")
        .map_err(|_| "AMIFLOW_FUNCTION must name the function to run")?;
    amiflow::functions::by_name(&name).await
}
