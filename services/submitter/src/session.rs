//! The web console's sign-in: `POST /ui/session` trades an API token for a cookie that
//! the API then accepts in place of `Authorization: Bearer`.
//!
//! The cookie carries the token itself (hex-encoded), `HttpOnly; SameSite=Strict`, and
//! nothing is stored server-side: a session survives a restart of the submitter, works
//! on any submitter behind a balancer, and ends when the token is revoked (within
//! [`crate::auth::CACHE_TTL`]). The price: signing out clears the browser's cookie but
//! cannot end a copy taken from it; that copy is the token, which only revocation ends.
//!
//! CSRF: besides `SameSite=Strict`, a request that changes state and is authenticated by
//! the cookie must carry `X-Fleet-CSRF` with the session's CSRF value (a hash of the
//! token, handed to the console's script by `GET /ui/session`), and an `Origin`, if it
//! has one, of this host. A cross-site form can set neither, so a forged request is a 403.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use fleet_core::api::session::{SessionView, SignInBody};
use fleet_core::api::ErrorResponse;

use crate::auth::Caller;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

pub const COOKIE: &str = "fleet_session";
pub const CSRF_HEADER: &str = "x-fleet-csrf";
/// How long the browser keeps the cookie: a working day.
const MAX_AGE_SECS: u64 = 12 * 3600;
/// Longest token accepted at sign-in (API tokens are far shorter).
const MAX_TOKEN_LEN: usize = 512;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami, sign_in, sign_out))
}

/// The token a request's session cookie carries, if it has one, once the request passes
/// the CSRF rule: `Err` when it changes state without proof that the console sent it.
pub fn token_of(method: &Method, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    if !is_safe(method) {
        let proof = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if proof != Some(csrf_of(&token).as_str()) {
            return Err(ApiError::CrossSite(
                "a change made with the console's cookie needs its X-Fleet-CSRF header",
            ));
        }
        if !same_origin(headers) {
            return Err(ApiError::CrossSite(
                "a change made with the console's cookie must come from this host",
            ));
        }
    }
    Ok(Some(token))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| unhex(v))
        .filter(|t| !t.is_empty())
}

/// The CSRF value bound to a token: knowing it does not reveal the token.
pub fn csrf_of(token: &str) -> String {
    hex(&fleet_shared::auth::token_hash(&format!(
        "fleet-console-csrf:{token}"
    )))
}

/// No `Origin` (same-origin navigations and old browsers), or one naming the `Host`
/// (or the `X-Forwarded-Host` a proxy in front of the submitter sets).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = origin.split_once("://").map_or("", |(_, h)| h);
    ["x-forwarded-host", "host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .any(|h| h.eq_ignore_ascii_case(host))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 || s.len() > 2 * MAX_TOKEN_LEN {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// `GET /ui/session`: who is signed in, and the CSRF value the console's script sends.
#[utoipa::path(get, operation_id = "get_session", path = "/ui/session", tag = "console",
    responses((status = 200, description = "The caller", body = SessionView)),
    security(("bearer" = ["reader"]), ("session" = ["reader"])),
)]
async fn whoami(caller: Caller, headers: HeaderMap) -> Json<SessionView> {
    let csrf = cookie_token(&headers).map(|t| csrf_of(&t));
    Json(SessionView {
        csrf,
        name: caller.who.name,
        role: caller.who.role,
        token_id: caller.who.token_id,
    })
}

/// `POST /ui/session` with `{"token": "…"}` (answers 200 and the session as `GET`
/// does) or the sign-in page's form `token=…` (answers 303 to the console, or back to
/// the sign-in page when the token is refused).
#[utoipa::path(post, path = "/ui/session", tag = "console",
    request_body(content(
        (SignInBody = "application/json"),
        (SignInBody = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "Signed in (JSON): the `fleet_session` cookie is set", body = SessionView,
            headers(("Set-Cookie" = String, description = "`fleet_session`, HttpOnly, SameSite=Strict"))),
        (status = 303, description = "Signed in (form): to the console, or back to the sign-in page if the token was refused",
            headers(("Location" = String))),
        (status = 400, description = "No token, or a bad body", body = ErrorResponse),
        (status = 401, description = "The token is unknown or revoked (JSON)", body = ErrorResponse),
        (status = 403, description = "The request came from another origin", body = ErrorResponse),
    ),
    security(()),
)]
async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // A cross-site form could otherwise sign a victim in with the forger's token.
    if !same_origin(&headers) {
        return Err(ApiError::CrossSite("sign in from this host's own page"));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed: Result<SignInBody, ApiError> = if form {
        serde_urlencoded::from_bytes(&body).map_err(|_| invalid("token", "is required"))
    } else {
        crate::error::parse_json(&body).map_err(ApiError::Invalid)
    };
    let token = parsed?.token.trim().to_owned();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(invalid(
            "token",
            format!("must be 1 to {MAX_TOKEN_LEN} bytes"),
        ));
    }
    let who = s
        .auth()
        .principal(s.pool(), Some(&format!("Bearer {token}")))
        .await;
    let who = match (who, form) {
        (Ok(who), _) => who,
        (Err(ApiError::Unauthenticated), true) => {
            return Ok(Redirect::to("/ui/signin?refused=1").into_response())
        }
        (Err(e), _) => return Err(e),
    };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={MAX_AGE_SECS}{}",
        hex(token.as_bytes()),
        if s.serves_https() || behind_https(&headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut r = if form {
        Redirect::to("/ui").into_response()
    } else {
        Json(SessionView {
            csrf: Some(csrf_of(&token)),
            name: who.name,
            role: who.role,
            token_id: who.token_id,
        })
        .into_response()
    };
    set_cookie(&mut r, &cookie)?;
    Ok(r)
}

/// `DELETE /ui/session`: clears the cookie (204). Needs no session: it only forgets.
#[utoipa::path(delete, path = "/ui/session", tag = "console",
    responses((status = 204, description = "Signed out: the cookie is cleared",
        headers(("Set-Cookie" = String, description = "`fleet_session` with Max-Age=0")))),
    security(()),
)]
async fn sign_out(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        if s.serves_https() || behind_https(&headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut r, &cookie)?;
    Ok(r)
}

/// Served over HTTPS (`http.tls_cert_file`), or behind a TLS proxy (`X-Forwarded-Proto:
/// https`), the cookie is marked `Secure`, never to be sent in clear.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(r: &mut Response, cookie: &str) -> Result<(), ApiError> {
    let v = HeaderValue::from_str(cookie).map_err(|_| invalid("token", "not a valid token"))?;
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("test header"));
        }
        h
    }

    #[test]
    fn the_cookie_carries_the_token_hex_encoded() {
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={}", hex(b"flt_x")))]);
        assert_eq!(
            token_of(&Method::GET, &h).expect("a read"),
            Some("flt_x".into())
        );
        assert!(cookie_token(&headers(&[("cookie", "fleet_session=zz")])).is_none());
    }

    #[test]
    fn a_change_by_cookie_needs_the_csrf_header_and_this_origin() {
        let cookie = format!("{COOKIE}={}", hex(b"flt_x"));
        let csrf = csrf_of("flt_x");
        let no_proof = headers(&[("cookie", &cookie)]);
        assert!(token_of(&Method::POST, &no_proof).is_err());
        let wrong = headers(&[("cookie", &cookie), (CSRF_HEADER, "00")]);
        assert!(token_of(&Method::PATCH, &wrong).is_err());
        let ok = headers(&[
            ("cookie", &cookie),
            (CSRF_HEADER, &csrf),
            ("host", "fleet:7070"),
            ("origin", "http://fleet:7070"),
        ]);
        assert_eq!(
            token_of(&Method::POST, &ok).expect("proved"),
            Some("flt_x".into())
        );
        let elsewhere = headers(&[
            ("cookie", &cookie),
            (CSRF_HEADER, &csrf),
            ("host", "fleet:7070"),
            ("origin", "http://evil.example"),
        ]);
        assert!(token_of(&Method::POST, &elsewhere).is_err());
    }

    #[test]
    fn without_a_cookie_nothing_is_asked() {
        assert_eq!(
            token_of(&Method::POST, &HeaderMap::new()).expect("no cookie"),
            None
        );
    }
}
