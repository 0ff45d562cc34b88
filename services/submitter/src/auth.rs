//! Bearer tokens on the API: every handler takes a [`Caller`] and says what it needs.
//! A missing or unknown token is 401, a role that does not allow the call 403.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_shared::auth::{self, JobAccess, Permission, Principal, Role};
use fleet_shared::db::{admin, DbError, Pool};
use fleet_shared::id::TokenId;

use crate::error::ApiError;

/// How long a token's role (or its absence) is remembered: a revoked token stops working
/// within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

/// A token hash's principal (`None`: no such live token) and when that was looked up.
type Cached = (Option<Principal>, Instant);

pub struct Authenticator {
    /// SHA-256 of the bootstrap admin token from configuration.
    admin: Option<Vec<u8>>,
    disabled: bool,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
}

impl Authenticator {
    pub fn new(cfg: &fleet_shared::config::AuthConfig) -> Self {
        Self {
            admin: cfg
                .admin_token
                .as_deref()
                .map(|t| auth::token_hash(t.trim())),
            disabled: cfg.disabled,
            cache: Mutex::default(),
        }
    }

    /// Who holds the token in an `Authorization` header value, if anyone.
    pub async fn principal(
        &self,
        pool: &Pool,
        header: Option<&str>,
    ) -> Result<Principal, ApiError> {
        if self.disabled {
            return Ok(Principal {
                token_id: None,
                name: "anonymous (auth disabled)".into(),
                role: Role::Admin,
            });
        }
        let token = header
            .and_then(auth::bearer)
            .ok_or(ApiError::Unauthenticated)?;
        let hash = auth::token_hash(token);
        if self.admin.as_deref() == Some(hash.as_slice()) {
            return Ok(Principal::bootstrap_admin());
        }
        if let Some(hit) = self.cached(&hash) {
            return hit.ok_or(ApiError::Unauthenticated);
        }
        let client = pool.get().await.map_err(DbError::from)?;
        let who = admin::token_principal(&client, &hash).await?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(hash, (who.clone(), Instant::now()));
        }
        who.ok_or(ApiError::Unauthenticated)
    }

    fn cached(&self, hash: &[u8]) -> Option<Option<Principal>> {
        let c = self.cache.lock().ok()?;
        let (who, at) = c.get(hash)?;
        (at.elapsed() < CACHE_TTL).then(|| who.clone())
    }

    /// Forgets every cached answer (after a revocation, so it takes effect here at once).
    pub fn forget(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }
}

/// The authenticated caller of a request (extracted in `state`, from the
/// [`Authenticator`] the app state holds).
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Principal,
}

impl Caller {
    pub fn need(&self, p: Permission) -> Result<&Self, ApiError> {
        if self.who.role.allows(p) {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(self.who.role, p))
        }
    }

    /// Whether the caller may do `access` to a job of `owner` (see [`auth::may`]). A
    /// job the caller may not even read is answered as absent (404), so that its
    /// existence does not leak; one it may read but not control is a 403.
    pub fn may(&self, owner: Option<TokenId>, access: JobAccess) -> Result<(), ApiError> {
        if auth::may(&self.who, owner, access) {
            Ok(())
        } else if auth::may(&self.who, owner, JobAccess::Read) {
            Err(ApiError::NotYours(self.who.role))
        } else {
            Err(ApiError::NotFound("job"))
        }
    }
}
