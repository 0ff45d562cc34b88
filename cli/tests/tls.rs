//! The API over HTTPS (issue 14): a submitter with a certificate from the fleet's own CA
//! serves jobs to a client and to `fleetctl --ca-file` that trust that CA, and a client
//! that does not is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use fleet_tests::{client_trusting, job_of, ExecutorSpec, TestFleet};
use serde_json::json;

mod common;
use common::{fleetctl, text};

/// A CA, and a certificate for localhost signed by it: (CA PEM, certificate PEM, key PEM).
fn ca_and_certificate(name: &str) -> Result<(String, String, String)> {
    let ca = fleet_tests::TestCa::new(name)?;
    Ok((ca.ca_pem, ca.cert_pem, ca.key_pem))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_https_serves_only_clients_that_trust_the_fleets_ca() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fleet-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = ca_and_certificate("fleet")?;
    let (ca_file, cert_file, key_file) = (
        write(&dir, "ca.pem", &ca)?,
        write(&dir, "cert.pem", &cert)?,
        write(&dir, "key.pem", &key)?,
    );
    let mut fleet = TestFleet::start_https(
        "tls",
        ca.as_bytes(),
        &cert_file.display().to_string(),
        &key_file.display().to_string(),
    )
    .await?;
    assert!(fleet.api.starts_with("https://"), "{}", fleet.api);
    fleet
        .add_executor(ExecutorSpec::new("tls-1", &["cpu"], 2))
        .await?;
    fleet.wait_executors(&["tls-1"]).await?;

    // The fleet's own client trusts the CA: a job goes in and its result comes out.
    let job = fleet
        .submit(&job_of(2, &["true"], json!({"group": "cpu"})))
        .await?;
    assert_eq!(
        fleet.wait_job(job, Duration::from_secs(60)).await?.state,
        "succeeded"
    );
    // So does fleetctl, given the CA file.
    let ca_arg = ca_file.display().to_string();
    let out = fleetctl(&fleet, &["--ca-file", &ca_arg, "status", &job.to_string()]).await?;
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("succeeded"), "{said}");

    // Without it, fleetctl does not trust the certificate.
    let out = fleetctl(&fleet, &["status", &job.to_string()]).await?;
    assert!(!out.status.success(), "fleetctl trusted an unknown CA");
    let err = text(&out.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    // Nor does a client that trusts another CA.
    let (other_ca, _, _) = ca_and_certificate("other")?;
    let stranger = client_trusting(None, other_ca.as_bytes())?;
    let refused = stranger.get(format!("{}/readyz", fleet.api)).send().await;
    assert!(
        refused.is_err(),
        "a client of another CA was served: {refused:?}"
    );
    // And plain HTTP on the same port gets no HTTP answer.
    let plain = fleet.api.replacen("https://", "http://", 1);
    let answered = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("{plain}/readyz"))
        .send()
        .await;
    assert!(
        answered.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served over the TLS port: {answered:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    fleet.shutdown().await
}
