//! Who may do what over the HTTP API. Pure: roles, what each allows, and how a bearer
//! token is made and turned into the hash that PostgreSQL keeps (never the token itself).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::id::TokenId;

/// Every token starts with this, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "flt_";

/// A token's role. Each role allows what the ones below it allow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read jobs, results, executors and groups.
    Reader,
    /// Also submit jobs.
    Submitter,
    /// Also manage groups, executors and tokens.
    Admin,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Submit,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Submitter => "submitter",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reader" => Self::Reader,
            "submitter" => Self::Submitter,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    pub fn allows(self, p: Permission) -> bool {
        let needed = match p {
            Permission::Read => Self::Reader,
            Permission::Submit => Self::Submitter,
            Permission::Admin => Self::Admin,
        };
        self >= needed
    }
}

/// Who is calling, or who submitted a job: the token's id and name (none for the
/// configured bootstrap admin token and for AMQP submissions, which the intake makes on
/// its own behalf) and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub token_id: Option<TokenId>,
    pub name: String,
    pub role: Role,
}

/// The name recorded as the submitter of jobs that came in over AMQP.
pub const AMQP_INTAKE: &str = "amqp-intake";

impl Principal {
    /// The configured bootstrap admin token (it has no row, hence no id).
    pub fn bootstrap_admin() -> Self {
        Self {
            token_id: None,
            name: "admin (configured)".into(),
            role: Role::Admin,
        }
    }

    /// The AMQP intake, submitting what arrives on the submit queue.
    pub fn amqp_intake() -> Self {
        Self {
            token_id: None,
            name: AMQP_INTAKE.into(),
            role: Role::Submitter,
        }
    }
}

/// What a caller wants to do with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAccess {
    /// See it, its tasks (env names only), results and outcome.
    Read,
    /// See its env values too: only its owner and admins.
    ReadSecrets,
    /// Cancel, retry, re-prioritise, hold, release or delete it.
    Control,
}

/// The ownership rule, in one place: an admin may do anything with any job; a reader may
/// read every job (without env values); a submitter reads and controls the jobs it
/// submitted (its own token's), and no other. `owner` is the submitting token's id
/// (`None`: the bootstrap admin or the AMQP intake, which no submitter token owns).
pub fn may(caller: &Principal, owner: Option<TokenId>, access: JobAccess) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::Reader => access == JobAccess::Read,
        Role::Submitter => caller.token_id.is_some() && caller.token_id == owner,
    }
}

/// The only owner whose jobs a caller may list (`None`: every job).
pub fn list_scope(caller: &Principal) -> Option<Option<TokenId>> {
    match caller.role {
        Role::Admin | Role::Reader => None,
        Role::Submitter => Some(caller.token_id),
    }
}

/// A new random token: the prefix and 64 hex digits (244 random bits from the OS).
pub fn new_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{TOKEN_PREFIX}{a}{b}")
}

/// What is stored and looked up: SHA-256 of the token. Tokens are long and random, so a
/// plain hash is enough (no salt or slow hash needed, unlike passwords).
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The token in an `Authorization` header value: `Bearer <token>`, scheme case-insensitive.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_the_ones_below_allow() {
        assert!(Role::Reader.allows(Permission::Read));
        assert!(!Role::Reader.allows(Permission::Submit));
        assert!(!Role::Reader.allows(Permission::Admin));
        assert!(Role::Submitter.allows(Permission::Submit));
        assert!(Role::Submitter.allows(Permission::Read));
        assert!(!Role::Submitter.allows(Permission::Admin));
        assert!(Role::Admin.allows(Permission::Admin));
        assert!(Role::Admin.allows(Permission::Read));
        for r in [Role::Reader, Role::Submitter, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    fn who(role: Role, id: Option<TokenId>) -> Principal {
        Principal {
            token_id: id,
            name: "t".into(),
            role,
        }
    }

    #[test]
    fn a_submitter_reads_and_controls_its_own_jobs_only() {
        let (mine, theirs) = (TokenId::new(), TokenId::new());
        let me = who(Role::Submitter, Some(mine));
        for a in [JobAccess::Read, JobAccess::ReadSecrets, JobAccess::Control] {
            assert!(may(&me, Some(mine), a), "{a:?} own");
            assert!(!may(&me, Some(theirs), a), "{a:?} another's");
            // Jobs of the bootstrap admin or the AMQP intake belong to no submitter.
            assert!(!may(&me, None, a), "{a:?} nobody's");
        }
        // The intake itself is a submitter without a token: it owns nothing by id.
        assert!(!may(&Principal::amqp_intake(), None, JobAccess::Control));
        assert_eq!(list_scope(&me), Some(Some(mine)));
    }

    #[test]
    fn a_reader_reads_every_job_without_secrets_and_an_admin_does_anything() {
        let owner = Some(TokenId::new());
        let reader = who(Role::Reader, Some(TokenId::new()));
        assert!(may(&reader, owner, JobAccess::Read));
        assert!(may(&reader, None, JobAccess::Read));
        assert!(!may(&reader, owner, JobAccess::ReadSecrets));
        assert!(!may(&reader, owner, JobAccess::Control));
        assert_eq!(list_scope(&reader), None);
        for admin in [
            who(Role::Admin, Some(TokenId::new())),
            Principal::bootstrap_admin(),
        ] {
            for a in [JobAccess::Read, JobAccess::ReadSecrets, JobAccess::Control] {
                assert!(may(&admin, owner, a));
                assert!(may(&admin, None, a));
            }
            assert_eq!(list_scope(&admin), None);
        }
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a).len(), 32);
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
