//! The web console's session: `GET|POST|DELETE /ui/session` (the submitter's
//! `session` module says how the cookie and the CSRF value work).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;
use crate::id::TokenId;

/// `POST /ui/session` as JSON (the sign-in page posts the same field as a form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignInBody {
    /// An API token: the cookie set carries it.
    pub token: String,
}

/// Who is signed in, and the value the console sends as `X-Fleet-CSRF` with every
/// change (`None` when the request came with a bearer token rather than the cookie).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    #[schema(required = true)]
    pub csrf: Option<String>,
    pub name: String,
    pub role: Role,
    /// `None` for the configured admin token.
    #[schema(required = true)]
    pub token_id: Option<TokenId>,
}
