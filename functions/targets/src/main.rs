//! targets: with "targetGroups": "follow", the copy joins the source's ELBv2 target groups, is
//! followed until healthy there, and the source leaves them.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::targets().await
}
