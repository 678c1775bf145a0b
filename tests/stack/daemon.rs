//! The Docker daemon of the stack answers through bollard.

use pushfleet_tests::StackEnv;

#[tokio::test]
async fn daemon_answers_ping_and_version() -> anyhow::Result<()> {
    let env = StackEnv::load()?;
    let docker = pushfleet_tests::docker(&env)?;
    let ping = docker.ping().await?;
    assert_eq!(ping, "OK");
    let version = docker.version().await?;
    let api = version.api_version.unwrap_or_default();
    assert!(!api.is_empty(), "the daemon reported no API version");
    Ok(())
}
