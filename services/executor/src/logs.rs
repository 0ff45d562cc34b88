//! Live output: what an attempt's stdout and stderr say while it runs, gathered into
//! `log` chunks and sent every [`FLUSH_EVERY`] (or as soon as a stream has
//! [`FLUSH_BYTES`] waiting), at most `cap` bytes per attempt and then a truncation
//! marker. The batching is pure ([`Batcher`]); [`ship`] feeds it from the attempts'
//! pipes and publishes what it gives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::id::{ExecutorId, TaskId};
use fleet_shared::proto::LogChunk;
use tokio::sync::mpsc;

pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
pub const FLUSH_BYTES: usize = 16 * 1024;
/// Pieces waiting for the shipper, per executor: when they are this many, the attempts
/// writing wait (their pipes fill, their commands block), whatever else goes on.
pub const QUEUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

type Key = (TaskId, i32);

/// What the pipes of an attempt send the shipper.
#[derive(Debug)]
pub enum Piece {
    Data {
        key: Key,
        stream: Stream,
        bytes: Vec<u8>,
    },
    /// Both pipes are closed: flush what is left, then forget the attempt; `sent` is
    /// told once that flush is published (so that the result goes after its output).
    End {
        key: Key,
        sent: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// An attempt's end of the live output: its pipes send through it, and stop sending once
/// the cap is reached (the shipper writes the marker).
#[derive(Debug, Clone)]
pub struct Tap {
    pub tx: mpsc::Sender<Piece>,
    pub key: Key,
    pub cap: usize,
    sent: Arc<AtomicUsize>,
}

impl Tap {
    pub fn new(tx: mpsc::Sender<Piece>, key: Key, cap: usize) -> Self {
        Self {
            tx,
            key,
            cap,
            sent: Arc::default(),
        }
    }

    /// Sends what a pipe read (waiting while the shipper is behind); nothing once the
    /// attempt's cap is passed, but one piece past it, so the shipper sees the overflow.
    pub async fn send(&self, stream: Stream, bytes: &[u8]) {
        let before = self.sent.fetch_add(bytes.len(), Ordering::Relaxed);
        if before > self.cap {
            return;
        }
        let _ = self
            .tx
            .send(Piece::Data {
                key: self.key,
                stream,
                bytes: bytes.to_vec(),
            })
            .await;
    }

    /// The attempt's pipes are closed; returns once its last output is published (or
    /// the shipper is gone).
    pub async fn end(&self) {
        if self.sent.load(Ordering::Relaxed) == 0 {
            return; // it wrote nothing: the shipper never heard of it
        }
        let (sent, published) = tokio::sync::oneshot::channel();
        let piece = Piece::End {
            key: self.key,
            sent: Some(sent),
        };
        if self.tx.send(piece).await.is_ok() {
            let _ = published.await;
        }
    }
}

#[derive(Default)]
struct StreamBuf {
    seq: u64,
    offset: u64,
    pending: Vec<u8>,
}

#[derive(Default)]
struct Attempt {
    /// Chunks of both streams so far.
    n: u64,
    /// Bytes taken, both streams.
    taken: usize,
    /// The cap was reached on this stream: its marker is due, then nothing more.
    capped: Option<Stream>,
    marked: bool,
    ended: bool,
    out: StreamBuf,
    err: StreamBuf,
}

impl Attempt {
    fn buf(&mut self, s: Stream) -> &mut StreamBuf {
        match s {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        }
    }
}

/// The chunks waiting to be sent, per attempt and stream.
pub struct Batcher {
    executor: ExecutorId,
    cap: usize,
    attempts: HashMap<Key, Attempt>,
    /// Told after the next flush is published.
    waiting: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Batcher {
    pub fn new(executor: ExecutorId, cap: usize) -> Self {
        Self {
            executor,
            cap,
            attempts: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    /// Takes a piece; true when a stream now holds [`FLUSH_BYTES`] (flush now).
    pub fn push(&mut self, piece: Piece) -> bool {
        match piece {
            Piece::End { key, sent } => {
                self.attempts.entry(key).or_default().ended = true;
                self.waiting.extend(sent);
                true
            }
            Piece::Data { key, stream, bytes } => {
                let cap = self.cap;
                let a = self.attempts.entry(key).or_default();
                if a.capped.is_some() {
                    return false;
                }
                let room = cap.saturating_sub(a.taken);
                let take = bytes.len().min(room);
                a.taken += take;
                if take < bytes.len() {
                    a.capped = Some(stream);
                }
                let buf = a.buf(stream);
                buf.pending.extend_from_slice(&bytes[..take]);
                buf.pending.len() >= FLUSH_BYTES || a.capped.is_some()
            }
        }
    }

    /// The chunks due: every stream with something pending (`all`), or only those with
    /// [`FLUSH_BYTES`] waiting; the markers of attempts that reached their cap; and
    /// attempts that ended are forgotten once flushed. Chunks of one attempt come in the
    /// order they were written, stdout before stderr within one flush.
    pub fn drain(&mut self, all: bool) -> Vec<LogChunk> {
        let mut out = Vec::new();
        let cap = self.cap;
        for (key, a) in self.attempts.iter_mut() {
            let flush_all = all || a.ended || a.capped.is_some();
            let ended = a.ended || a.capped.is_some();
            let Attempt {
                n, out: o, err: e, ..
            } = a;
            for stream in [Stream::Stdout, Stream::Stderr] {
                let buf = match stream {
                    Stream::Stdout => &mut *o,
                    Stream::Stderr => &mut *e,
                };
                if buf.pending.is_empty() || !(flush_all || buf.pending.len() >= FLUSH_BYTES) {
                    continue;
                }
                // At most CHUNK_BYTES a chunk; a character cut by the read is kept for
                // the next chunk, unless nothing more will come.
                loop {
                    let upto = cut(&buf.pending, CHUNK_BYTES, ended);
                    if upto == 0 {
                        break;
                    }
                    let bytes: Vec<u8> = buf.pending.drain(..upto).collect();
                    out.push(LogChunk {
                        task_id: key.0,
                        attempt: key.1,
                        executor_id: self.executor.clone(),
                        seq: buf.seq,
                        stream: stream.as_str().into(),
                        data: String::from_utf8_lossy(&bytes).into_owned(),
                        offset: buf.offset,
                        n: *n,
                        truncated: false,
                    });
                    buf.seq += 1;
                    buf.offset += bytes.len() as u64;
                    *n += 1;
                }
            }
            if let (Some(stream), false) = (a.capped, a.marked) {
                a.marked = true;
                let n = a.n;
                let buf = a.buf(stream);
                let chunk = LogChunk {
                    task_id: key.0,
                    attempt: key.1,
                    executor_id: self.executor.clone(),
                    seq: buf.seq,
                    stream: stream.as_str().into(),
                    data: format!("\n[fleet: live output truncated after {cap} bytes]\n"),
                    offset: buf.offset,
                    n,
                    truncated: true,
                };
                buf.seq += 1;
                a.n += 1;
                out.push(chunk);
            }
        }
        self.attempts
            .retain(|_, a| !(a.ended && a.out.pending.is_empty() && a.err.pending.is_empty()));
        out.sort_by_key(|c| (c.task_id, c.attempt, c.n));
        out
    }
}

/// The most data in one chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// How many of `pending`'s bytes the next chunk takes: at most `max`, ending on a whole
/// character unless `last` (nothing more will come to complete it).
fn cut(pending: &[u8], max: usize, last: bool) -> usize {
    let end = pending.len().min(max);
    if end == 0 || (last && end == pending.len()) {
        return end;
    }
    match std::str::from_utf8(&pending[..end]) {
        Ok(_) => end,
        // A character cut at the end: stop before it.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(e) if e.error_len().is_none() => {
            if last || end < pending.len() {
                end
            } else {
                0
            }
        }
        // Not UTF-8 at all: sent as it is (lossily).
        Err(_) => end,
    }
}

/// Chunks per message at most, in bytes of data.
const MESSAGE_BYTES: usize = 256 * 1024;

/// Splits chunks into messages of at most [`MESSAGE_BYTES`] of data each.
pub fn messages(chunks: Vec<LogChunk>) -> Vec<Vec<LogChunk>> {
    let mut out: Vec<Vec<LogChunk>> = Vec::new();
    let mut size = 0;
    for c in chunks {
        if out.is_empty() || size + c.data.len() > MESSAGE_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += c.data.len();
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// Feeds the batcher from the attempts' pipes and hands each flush to `send`, until
/// every sender is gone.
pub async fn ship<F, Fut>(mut rx: mpsc::Receiver<Piece>, mut batcher: Batcher, mut send: F)
where
    F: FnMut(Vec<LogChunk>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // (flush now, every stream or only the full ones, and stop after)
        let (flush, all, stop) = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => (batcher.push(p), false, false),
                None => (true, true, true),
            },
            _ = tick.tick() => (true, true, false),
        };
        if flush {
            for m in messages(batcher.drain(all)) {
                send(m).await;
            }
            for w in batcher.waiting.drain(..) {
                let _ = w.send(());
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        (TaskId::new(), 1)
    }

    fn data(key: Key, stream: Stream, s: &str) -> Piece {
        Piece::Data {
            key,
            stream,
            bytes: s.as_bytes().to_vec(),
        }
    }

    fn batcher(cap: usize) -> Batcher {
        Batcher::new(ExecutorId::parse("x-1").expect("id"), cap)
    }

    #[test]
    fn chunks_are_numbered_per_stream_and_ordered_across_both() {
        let k = key();
        let mut b = batcher(1 << 20);
        assert!(!b.push(data(k, Stream::Stdout, "one\n")));
        b.push(data(k, Stream::Stderr, "oops\n"));
        let first = b.drain(true);
        b.push(data(k, Stream::Stdout, "two\n"));
        b.push(Piece::End { key: k, sent: None });
        let second = b.drain(false);
        let seen: Vec<(&str, u64, u64, u64, &str)> = first
            .iter()
            .chain(&second)
            .map(|c| (c.stream.as_str(), c.seq, c.offset, c.n, c.data.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("stdout", 0, 0, 0, "one\n"),
                ("stderr", 0, 0, 1, "oops\n"),
                ("stdout", 1, 4, 2, "two\n"),
            ]
        );
        assert!(b.drain(true).is_empty(), "an ended attempt is forgotten");
    }

    #[test]
    fn a_full_stream_asks_for_a_flush_and_a_cut_character_waits() {
        let k = key();
        let mut b = batcher(1 << 20);
        let big = "x".repeat(FLUSH_BYTES);
        assert!(b.push(data(k, Stream::Stdout, &big)));
        assert_eq!(b.drain(false).len(), 1);
        // "é" is two bytes; the read cut it in half.
        let e = "é".as_bytes();
        b.push(Piece::Data {
            key: k,
            stream: Stream::Stdout,
            bytes: vec![b'a', e[0]],
        });
        let c = b.drain(true);
        assert_eq!(c[0].data, "a");
        b.push(Piece::Data {
            key: k,
            stream: Stream::Stdout,
            bytes: vec![e[1], b'b'],
        });
        let c = b.drain(true);
        assert_eq!(c[0].data, "éb");
    }

    #[test]
    fn past_the_cap_one_marker_and_then_nothing() {
        let k = key();
        let mut b = batcher(10);
        b.push(data(k, Stream::Stdout, "12345678"));
        assert!(b.push(data(k, Stream::Stderr, "abcdef")), "the cap flushes");
        b.push(data(k, Stream::Stdout, "more"));
        let c = b.drain(false);
        let total: usize = c
            .iter()
            .filter(|c| !c.truncated)
            .map(|c| c.data.len())
            .sum();
        assert_eq!(total, 10);
        assert_eq!(c.iter().filter(|c| c.truncated).count(), 1);
        let marker = c.last().expect("marker");
        assert!(marker.truncated && marker.stream == "stderr", "{marker:?}");
        b.push(data(k, Stream::Stdout, "still more"));
        assert!(b.drain(true).is_empty());
    }

    #[test]
    fn messages_stay_under_their_size() {
        let k = key();
        let mut b = batcher(usize::MAX);
        for _ in 0..40 {
            b.push(data(k, Stream::Stdout, &"y".repeat(FLUSH_BYTES)));
            b.push(data(k, Stream::Stderr, "e"));
        }
        let chunks = b.drain(true);
        let msgs = messages(chunks);
        assert!(msgs.len() >= 2);
        for m in &msgs {
            assert!(m.iter().map(|c| c.data.len()).sum::<usize>() <= MESSAGE_BYTES);
        }
    }
}
