//! What the fleetctl binary's tests share.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_tests::TestFleet;

/// Runs fleetctl against the fleet as its admin, within a deadline (and with no CA file
/// from the environment: a test that wants one passes `--ca-file`).
pub async fn fleetctl(fleet: &TestFleet, args: &[&str]) -> Result<Output> {
    let token = fleet.cfg.auth.admin_token.clone().unwrap_or_default();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEET_ADDR", &fleet.api)
        .env("FLEET_TOKEN", token)
        .env_remove("FLEET_CA_FILE")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .with_context(|| format!("fleetctl {args:?} did not end within 60 s"))?
        .context("running fleetctl")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
