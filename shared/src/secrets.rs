//! Secret environment values at rest: sealed by the submitter before they are stored
//! (`tasks.env_secret`), opened by the dispatcher when it builds a request, with the key
//! of `secrets.key` (32 bytes as 64 hex digits; the same on both).
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): a random 24-byte nonce per
//! value is safe to draw at random (no counter to keep across processes), and the tag
//! makes a changed or moved ciphertext fail to open. The task's id is the associated
//! data, so a sealed value copied onto another task does not open there. Stored as
//! `1 || nonce || ciphertext`: the first byte is the format's version.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secrets.key: {0}")]
    BadKey(String),
    #[error("a sealed secret does not open with this secrets.key (another key, or changed)")]
    Open,
    #[error("a sealed secret is not in a known format")]
    Format,
}

/// The key, ready to seal and open. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// From 64 hex digits (32 bytes), e.g. `openssl rand -hex 32`.
    pub fn from_hex(key: &str) -> Result<Self, SecretError> {
        let key = key.trim();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecretError::BadKey(format!(
                "must be 64 hex digits (32 bytes; `openssl rand -hex 32`), got {} characters",
                key.chars().count()
            )));
        }
        let bytes = (0..32)
            .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SecretError::BadKey("must be 64 hex digits".into()))?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| SecretError::BadKey("must be 32 bytes".into()))?;
        Ok(Self { cipher })
    }

    /// Seals a task's secret variables, bound to the task's id.
    pub fn seal(&self, task: uuid::Uuid, env: &BTreeMap<String, String>) -> Vec<u8> {
        // Strings and a map of strings always serialize.
        let plain = serde_json::to_vec(env).unwrap_or_default();
        let nonce = XNonce::generate();
        let payload = Payload {
            msg: &plain,
            aad: task.as_bytes(),
        };
        // Encryption with a valid key cannot fail for a message of this size.
        let sealed = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Self::seal`] made for this task.
    pub fn open(
        &self,
        task: uuid::Uuid,
        sealed: &[u8],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        let (version, rest) = sealed.split_first().ok_or(SecretError::Format)?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(SecretError::Format);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Format)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: task.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SecretError::Format)
    }
}

/// The box of `secrets.key`, if one is configured.
pub fn from_config(cfg: &crate::config::SecretsConfig) -> Result<Option<SecretBox>, SecretError> {
    cfg.key.as_deref().map(SecretBox::from_hex).transpose()
}

/// What the submitter does with a job's secrets: the patterns that make an `env`
/// variable secret, and the key that seals them.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub sealer: Option<SecretBox>,
    pub patterns: Vec<String>,
}

impl Policy {
    /// From a validated configuration (a bad key was refused then; here it is none).
    pub fn from_config(cfg: &crate::config::SecretsConfig) -> Self {
        Self {
            sealer: from_config(cfg).ok().flatten(),
            patterns: cfg.env_patterns.clone(),
        }
    }

    /// Moves the job's `env` variables that the patterns name into `env_secret`; refuses
    /// a job with secrets when there is no key to seal them (naming the field).
    pub fn prepare(&self, job: &mut crate::job::ValidJob) -> Result<(), crate::job::FieldError> {
        job.mark_secrets(|k| crate::job::name_matches(k, &self.patterns));
        match (job.first_secret(), &self.sealer) {
            (Some(field), None) => Err(crate::job::FieldError {
                field,
                message: "secret values need a key to be stored encrypted, and this fleet has \
                          none: set secrets.key (FLEET_SECRETS__KEY, 64 hex digits from \
                          `openssl rand -hex 32`) on the submitter and the dispatcher"
                    .into(),
            }),
            _ => Ok(()),
        }
    }
}

/// `body` with secret env values replaced by `"<redacted>"`, for a copy kept where others
/// read (a dead letter): every value of an `env_secret` object, and the values of `env`
/// objects whose names `is_secret` says are secret, at any depth (a job's tasks, a
/// `requests` list). A body that is not JSON is returned as it is.
pub fn redact_json(body: &[u8], is_secret: impl Fn(&str) -> bool + Copy) -> Vec<u8> {
    redact_json_values(body, is_secret).0
}

/// [`redact_json`], and the secret values it took out (to keep them out of anything
/// else said of the body, such as a parser's message that quotes it).
pub fn redact_json_values(
    body: &[u8],
    is_secret: impl Fn(&str) -> bool + Copy,
) -> (Vec<u8>, Vec<String>) {
    fn take(value: &mut serde_json::Value, found: &mut Vec<String>) {
        if let serde_json::Value::String(s) = value {
            found.push(std::mem::take(s));
        }
        *value = serde_json::Value::from(REDACTED);
    }
    fn walk(
        v: &mut serde_json::Value,
        is_secret: impl Fn(&str) -> bool + Copy,
        found: &mut Vec<String>,
    ) -> bool {
        let mut changed = false;
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match (k.as_str(), child) {
                        ("env_secret", serde_json::Value::Object(vars)) => {
                            for value in vars.values_mut() {
                                take(value, found);
                                changed = true;
                            }
                        }
                        // Not a map: refused for that, and kept out whatever it is.
                        ("env_secret", other) => {
                            take(other, found);
                            changed = true;
                        }
                        ("env", serde_json::Value::Object(vars)) => {
                            for (name, value) in vars.iter_mut() {
                                if is_secret(name) {
                                    take(value, found);
                                    changed = true;
                                }
                            }
                        }
                        (_, child) => changed |= walk(child, is_secret, found),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    changed |= walk(item, is_secret, found);
                }
            }
            _ => {}
        }
        changed
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (body.to_vec(), Vec::new());
    };
    let mut found = Vec::new();
    if walk(&mut v, is_secret, &mut found) {
        let out = serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec());
        (out, found)
    } else {
        (body.to_vec(), found)
    }
}

/// What stands for a secret value in a redacted copy.
pub const REDACTED: &str = "<redacted>";

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("API_TOKEN".to_string(), "hunter2".to_string())])
    }

    #[test]
    fn a_sealed_value_opens_for_its_task_only_and_shows_nothing_in_clear() {
        let b = SecretBox::from_hex(KEY).expect("key");
        let task = uuid::Uuid::new_v4();
        let sealed = b.seal(task, &env());
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_ne!(sealed, b.seal(task, &env()), "a fresh nonce each time");
        assert_eq!(b.open(task, &sealed), Ok(env()));
        assert_eq!(
            b.open(uuid::Uuid::new_v4(), &sealed),
            Err(SecretError::Open)
        );
        let mut changed = sealed.clone();
        if let Some(last) = changed.last_mut() {
            *last ^= 1;
        }
        assert_eq!(b.open(task, &changed), Err(SecretError::Open));
        let other = SecretBox::from_hex(&KEY.replace("00", "ff")).expect("key");
        assert_eq!(other.open(task, &sealed), Err(SecretError::Open));
        assert_eq!(b.open(task, &[]), Err(SecretError::Format));
        assert_eq!(b.open(task, &[2; 60]), Err(SecretError::Format));
    }

    #[test]
    fn a_key_must_be_32_bytes_in_hex() {
        assert!(SecretBox::from_hex("abc").is_err());
        assert!(SecretBox::from_hex(&"zz".repeat(32)).is_err());
        assert!(SecretBox::from_hex(&"é".repeat(32)).is_err());
        assert!(SecretBox::from_hex(&format!(" {KEY}\n")).is_ok());
        assert_eq!(
            format!("{:?}", SecretBox::from_hex(KEY)),
            "Ok(SecretBox(..))"
        );
    }

    #[test]
    fn a_redacted_copy_keeps_everything_but_the_secret_values() {
        let body = br#"{"type":"submit","job":{"tasks":[{"argv":["x"],
            "env":{"DB_PASSWORD":"p1","HOME":"/"},"env_secret":{"K":"p2"}}]}}"#;
        let is_secret = |k: &str| k.contains("PASSWORD");
        let out = String::from_utf8(redact_json(body, is_secret)).expect("utf-8");
        assert!(!out.contains("p1") && !out.contains("p2"), "{out}");
        assert!(
            out.contains(r#""HOME":"/""#) && out.contains(r#""argv":["x"]"#),
            "{out}"
        );
        let requests = br#"{"requests":[{"env":{"A":"s1"}}]}"#;
        let out = String::from_utf8(redact_json(requests, |_| true)).expect("utf-8");
        assert!(!out.contains("s1"), "{out}");
        assert_eq!(redact_json(b"not json", |_| true), b"not json");
    }
}
