//! The web console at `/ui`: hand-written HTML, CSS and JavaScript embedded in the binary.
//! Each page is one shell around a script that reads the public API with the session
//! cookie (crate::session); nothing here reads the database but the sign-in check.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(jobs_page))
        .route("/ui/", get(jobs_page))
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/executors", get(executors_page))
        .route("/ui/groups", get(groups_page))
        .route("/ui/fleet", get(fleet_page))
        .route("/ui/signin", get(signin_page))
        .route("/ui/assets/{name}", get(asset))
}

const SHELL: &str = include_str!("../ui/page.html");
const SIGNIN: &str = include_str!("../ui/signin.html");

/// Every file under `/ui/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.css", "text/css", include_str!("../ui/console.css")),
    ("common.js", JS, include_str!("../ui/common.js")),
    ("signin.js", JS, include_str!("../ui/signin.js")),
    ("jobs.js", JS, include_str!("../ui/jobs.js")),
    ("job.js", JS, include_str!("../ui/job.js")),
    ("executors.js", JS, include_str!("../ui/executors.js")),
    ("groups.js", JS, include_str!("../ui/groups.js")),
    ("fleet.js", JS, include_str!("../ui/fleet.js")),
    ("chart.js", JS, include_str!("../ui/chart.js")),
];
const JS: &str = "text/javascript";

/// Scripts and styles from this origin only: no inline script for an injected string
/// to become, no frame to be clicked through.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'";

async fn jobs_page(caller: Result<Caller, ApiError>) -> Response {
    page(caller, "Jobs", "jobs")
}

async fn job_page(caller: Result<Caller, ApiError>, Path(_id): Path<String>) -> Response {
    page(caller, "Job", "job")
}

async fn executors_page(caller: Result<Caller, ApiError>) -> Response {
    page(caller, "Executors", "executors")
}

async fn groups_page(caller: Result<Caller, ApiError>) -> Response {
    page(caller, "Groups", "groups")
}

async fn fleet_page(caller: Result<Caller, ApiError>) -> Response {
    page(caller, "Fleet", "fleet")
}

async fn signin_page() -> Response {
    html(SIGNIN.to_owned())
}

/// A page's shell for a signed-in caller; the sign-in page for anyone else.
fn page(caller: Result<Caller, ApiError>, title: &str, script: &str) -> Response {
    match caller {
        Ok(_) => html(
            SHELL
                .replace("{{title}}", title)
                .replace("{{page}}", script),
        ),
        Err(ApiError::Unauthenticated) => Redirect::to("/ui/signin").into_response(),
        Err(e) => e.into_response(),
    }
}

fn html(body: String) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    secure(&mut r);
    r
}

fn secure(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it a browser sends `Origin: null` with the sign-in form,
    // which the sign-in's origin check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// The assets need no session: they are the same for everyone and hold no data.
async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            let mut r = ([(header::CONTENT_TYPE, *kind)], *body).into_response();
            secure(&mut r);
            r
        }
        None => ApiError::NotFound("asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_a_page_names_is_served() {
        for page in ["jobs", "job", "executors", "groups", "fleet", "signin"] {
            let name = format!("{page}.js");
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
        assert!(SHELL.contains("{{page}}") && SHELL.contains("{{title}}"));
    }

    #[test]
    fn the_console_loads_nothing_from_elsewhere() {
        // SVG's namespace is a name, not an address: nothing is fetched from it.
        let svg_ns = "http://www.w3.org/2000/svg";
        for (name, _, body) in ASSETS
            .iter()
            .chain([("page", "", SHELL), ("signin", "", SIGNIN)].iter())
        {
            let body = body.replace(svg_ns, "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name}"
            );
        }
    }
}
