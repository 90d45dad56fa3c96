//! create-image: checks a migration, takes the source's run lock, captures it, makes its AMI.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    amiflow::functions::create_image().await
}
