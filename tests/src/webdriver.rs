//! A headless Chromium driven over WebDriver, for the web console's tests.
//!
//! The W3C WebDriver protocol is JSON over HTTP; the few commands the tests need (open a
//! page, find, click, type, read text, run a script, take a screenshot) are a page of
//! code over the reqwest client the harness already has, where a WebDriver crate would
//! bring its own HTTP stack. `chromedriver` runs Debian's `chromium`, both from
//! `apt-get install chromium chromium-driver` (`.ci/run` installs them when missing).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

/// The key under which WebDriver returns an element's reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    _driver: tokio::process::Child,
    /// The driver's process group, with the browser's processes in it.
    group: Option<u32>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pgid) = self.group.and_then(|g| i32::try_from(g).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Where the driver and the browser are: `FLEET_CHROMEDRIVER` and `FLEET_CHROMIUM`, or
/// Debian's paths.
fn installed(var: &str, default: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.exists() {
        bail!(
            "{} not found: the console's browser tests need Debian's chromium and \
             chromedriver: apt-get install -y chromium chromium-driver (.ci/run installs \
             them; {var} names another path)",
            path.display()
        );
    }
    Ok(path)
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub async fn start() -> Result<Self> {
        let driver = installed("FLEET_CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let chromium = installed("FLEET_CHROMIUM", "/usr/bin/chromium")?;
        let addr = crate::free_addr()?;
        let port = addr.rsplit(':').next().unwrap_or_default().to_owned();
        // Its own process group, which Chromium's processes join: dropping the browser
        // ends them all, even when a failing test never quits its session.
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        fleet_shared::tls::install_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://{addr}");
        crate::wait_for(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async {
                let ready = match http.get(format!("{base}/status")).send().await {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                Ok(ready.filter(|v| v["value"]["ready"] == true).map(|_| ()))
            },
        )
        .await?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // Root in CI: Chromium's sandbox needs an unprivileged user.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--no-first-run", "--disable-extensions"]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let Some(id) = resp["value"]["sessionId"].as_str() else {
            bail!("chromedriver did not open a session: {resp}");
        };
        Ok(Self {
            session: format!("{base}/session/{id}"),
            http,
            group: child.id(),
            _driver: child,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp: Value = req.send().await?.json().await?;
        let value = resp.get("value").cloned().unwrap_or(Value::Null);
        if let Some(e) = value.get("error").and_then(Value::as_str) {
            bail!(
                "webdriver {method} {path}: {e}: {}",
                value["message"].as_str().unwrap_or_default()
            );
        }
        Ok(value)
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    pub async fn url(&self) -> Result<String> {
        Ok(self
            .cmd(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The elements matching a CSS selector now (none is not an error).
    pub async fn find_all(&self, css: &str) -> Result<Vec<String>> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits for an element matching `css` to be on the page.
    pub async fn find(&self, css: &str) -> Result<String> {
        crate::wait_for(
            &format!("an element {css}"),
            Duration::from_secs(20),
            || async { Ok(self.find_all(css).await?.into_iter().next()) },
        )
        .await
    }

    /// Clicks the first element matching `css`, once there is one. Pages redraw as they
    /// refresh: an element replaced between finding and clicking is found again.
    pub async fn click(&self, css: &str) -> Result<()> {
        crate::wait_for(
            &format!("to click {css}"),
            Duration::from_secs(20),
            || async {
                let Some(e) = self.find_all(css).await?.into_iter().next() else {
                    return Ok(None);
                };
                match self
                    .cmd(reqwest::Method::POST, &format!("/element/{e}/click"), None)
                    .await
                {
                    Ok(_) => Ok(Some(())),
                    Err(err) if err.to_string().contains("stale element") => Ok(None),
                    Err(err) => Err(err),
                }
            },
        )
        .await
    }

    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> Result<String> {
        let Some(e) = self.find_all(css).await?.into_iter().next() else {
            return Ok(String::new());
        };
        // The element may be replaced between finding and reading: read it as gone.
        Ok(self
            .cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default())
    }

    /// Waits until the text of `css` contains `want`; returns that text.
    pub async fn wait_text(&self, css: &str, want: &str, deadline: Duration) -> Result<String> {
        crate::wait_for(&format!("{css} to show {want:?}"), deadline, || async {
            let t = self.text(css).await?;
            Ok(t.contains(want).then_some(t))
        })
        .await
    }

    /// Runs an async script in the page: its last argument is the callback to call with
    /// the result.
    pub async fn run_async(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Writes a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (the driver's processes end when the browser is dropped).
    pub async fn quit(self) -> Result<()> {
        self.cmd(reqwest::Method::DELETE, "", None).await?;
        Ok(())
    }
}
