//! Reading Server-Sent Events from a streaming response, as a browser's EventSource
//! would: blocks of `id:`, `event:` and `data:` lines, keep-alive comments skipped.

use std::time::{Duration, Instant};

use anyhow::Result;

/// How long a read waits for the next bytes before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One Server-Sent Event.
#[derive(Debug)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads events from a streaming response, calling `each` with each and when it came;
/// stops when `each` says so or the stream ends.
pub async fn read_events(
    mut resp: reqwest::Response,
    mut each: impl FnMut(Sse, Instant) -> bool,
) -> Result<()> {
    let mut buf = String::new();
    while let Some(bytes) = tokio::time::timeout(DEADLINE, resp.chunk()).await?? {
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut ev = Sse {
                id: None,
                event: "message".into(),
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    ev.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if ev.data.is_empty() && ev.id.is_none() {
                continue; // a keep-alive comment
            }
            if !each(ev, now) {
                return Ok(());
            }
        }
    }
    Ok(())
}
