//! fleet: plans an EvacuateZone run, previews its instances, and writes its report.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::fleet().await
}
