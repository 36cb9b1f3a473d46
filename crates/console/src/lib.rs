//! The web console of an offsite site, served by the daemon on its API
//! listener: the page and its scripts (embedded in the binary: nothing to
//! build, install or keep in step), console sessions (`session`), and the
//! security headers every response of the listener carries.
//!
//! The page is plain HTML, CSS and JavaScript modules written by hand in
//! `assets/`: it calls the same REST API as the CLI (`/api/v1`, with the
//! session cookie instead of the bearer token) and listens to the live
//! stream (`/api/v1/stream`). A framework would need a Node toolchain to
//! rebuild its output; the console's dozen views do not need one.
//!
//! Routes added here (the API crate merges them and authorizes `/api/v1`
//! with [`Console::authorize`]):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the page |
//! | `GET /assets/{file}` | its scripts and style |
//! | `POST /console/login` | `{"token": "..."}` → session cookie + `{"csrf": ...}` |
//! | `GET /console/session` | the session's CSRF token, for a reloaded page (204: no session) |
//! | `POST /console/logout` | ends the session (CSRF token required) |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub mod session;

pub use session::{Clock, Denied, Granted, Sessions, SystemClock};

/// What every response of the API listener says about itself: scripts and
/// styles only from the site itself (no inline script, so an injected tag
/// cannot run), no framing, no referrer, no MIME sniffing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A failed login waits this long before it answers, so guessing the token
/// over the network is slower still than its 256 bits make it.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);

/// One embedded file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../assets/index.html");

/// The page's scripts and style, by the name under `/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/views.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/api.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/favicon.svg"),
    },
];

/// The console of one site.
#[derive(Debug, Clone)]
pub struct Console {
    sessions: Arc<Sessions>,
    token: Arc<str>,
    /// `offsite_SITE`: one cookie per site, so that the consoles of two
    /// sites reached on one host name (SSH tunnels to `localhost`, which
    /// cookies do not tell apart by port) keep their own sessions.
    cookie_name: Arc<str>,
    /// Mark the cookie `Secure` (the listener serves HTTPS).
    secure_cookie: bool,
}

/// How a request to `/api/v1` authenticated, when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `Authorization: Bearer` with the API token (scripts, the CLI).
    Bearer,
    /// A console session (the cookie, and the CSRF token for actions).
    Session,
}

/// Why a request to `/api/v1` is refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials at all.
    Missing,
    /// A bearer token that is not the site's.
    WrongToken,
    /// A session cookie that names no live session.
    SessionEnded,
    /// An action with a session cookie but no valid CSRF token.
    Csrf,
}

impl Refusal {
    /// HTTP status, stable error code and message of the refusal.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer TOKEN`; the token is in the site's api.token file",
            ),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API token was refused; use the token in the site's api.token file",
            ),
            Refusal::SessionEnded => (
                StatusCode::UNAUTHORIZED,
                "session_ended",
                "the console session has ended (logout, expiry or a daemon restart); log in again",
            ),
            Refusal::Csrf => (
                StatusCode::FORBIDDEN,
                "csrf",
                "the action lacks the console session's CSRF token; reload the console and retry",
            ),
        }
    }
}

impl Console {
    /// The console of site `site`, whose API token is `token`.
    pub fn new(token: &str, site: &str, secure_cookie: bool) -> Console {
        Console::with_sessions(token, site, secure_cookie, Sessions::default())
    }

    /// As [`Console::new`], with the given sessions (tests use a fake
    /// clock).
    pub fn with_sessions(
        token: &str,
        site: &str,
        secure_cookie: bool,
        sessions: Sessions,
    ) -> Console {
        Console {
            sessions: Arc::new(sessions),
            token: token.trim().into(),
            cookie_name: format!("offsite_{site}").into(),
            secure_cookie,
        }
    }

    /// The same console with its cookie marked `Secure` or not (`Secure`
    /// when the listener serves HTTPS: the browser then never sends the
    /// session over plain HTTP).
    pub fn with_secure_cookie(mut self, secure: bool) -> Console {
        self.secure_cookie = secure;
        self
    }

    /// The name of this site's session cookie.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The session id the request's cookie carries, if any.
    pub fn session_id<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::cookie_value(h, &self.cookie_name))
    }

    /// The console's sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn token_matches(&self, presented: &str) -> bool {
        bool::from(presented.trim().as_bytes().ct_eq(self.token.as_bytes()))
    }

    /// Authorizes a request to the API: the bearer token wins when present
    /// (scripts); otherwise the session cookie, and for an action (any
    /// method but GET and HEAD) the session's CSRF token too.
    pub fn authorize(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(t) = bearer {
            return if self.token_matches(t) {
                Ok(Caller::Bearer)
            } else {
                Err(Refusal::WrongToken)
            };
        }
        let Some(id) = self.session_id(headers) else {
            return Err(Refusal::Missing);
        };
        let action = !matches!(*method, Method::GET | Method::HEAD);
        let csrf = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        match self.sessions.check(id, action, csrf) {
            Ok(_) => Ok(Caller::Session),
            Err(Denied::NoSession) => Err(Refusal::SessionEnded),
            Err(Denied::BadCsrf) => Err(Refusal::Csrf),
        }
    }

    /// The page, its assets and the session routes.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/", get(index))
            .route("/assets/{file}", get(asset))
            .route("/console/login", post(login))
            .route("/console/session", get(session_info))
            .route("/console/logout", post(logout))
            .with_state(self.clone())
    }

    fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let text = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.cookie_name
        );
        // Ids are hex and the rest is fixed text: always a valid header.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Adds the security headers to every response of the listener (the API's
/// JSON too: a browser may be pointed at it). A response that set its own,
/// stricter policy keeps it (a plan's HTML report, shown in a sandboxed
/// frame).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The body of a refusal, shaped like every API error (`{code, message}`).
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(ErrorBody { code, message })).into_response()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                // The assets change with the binary: revalidate, never
                // serve a page's old script after an upgrade.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such console asset; reload the console",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

/// What a login or `GET /console/session` answers.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// The CSRF token every action of this session must send in
    /// `X-CSRF-Token`.
    pub csrf: String,
    /// Seconds until the session ends unless used.
    pub expires_in: u64,
}

async fn login(State(c): State<Console>, body: axum::body::Bytes) -> Response {
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the login body must be JSON: {\"token\": \"...\"}",
        );
    };
    if !c.token_matches(&token) {
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        tracing::warn!("console login refused: wrong token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token was refused; use the token in the site's api.token file",
        );
    }
    let (id, csrf) = c.sessions.create();
    tracing::info!("console session started");
    let expires_in = session::IDLE_TIMEOUT.as_secs();
    let cookie = c.cookie(&id, session::MAX_AGE.as_secs());
    (
        [(header::SET_COOKIE, cookie)],
        Json(SessionInfo { csrf, expires_in }),
    )
        .into_response()
}

async fn session_info(State(c): State<Console>, headers: HeaderMap) -> Response {
    let granted = c
        .session_id(&headers)
        .map(|id| c.sessions.check(id, false, None));
    match granted {
        Some(Ok(g)) => Json(SessionInfo {
            csrf: g.csrf,
            expires_in: g.expires_in,
        })
        .into_response(),
        // Not logged in is the normal state of a fresh page, not an error:
        // the page shows its login form.
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    match c.authorize(&Method::POST, &headers) {
        Ok(Caller::Session) => {
            if let Some(id) = c.session_id(&headers) {
                c.sessions.end(id);
            }
            tracing::info!("console session ended by logout");
            (
                StatusCode::NO_CONTENT,
                [(header::SET_COOKIE, c.cookie("", 0))],
            )
                .into_response()
        }
        Ok(Caller::Bearer) => refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "logout ends a console session; a bearer token has none",
        ),
        Err(r) => {
            let (status, code, message) = r.parts();
            refuse(status, code, message)
        }
    }
}

#[cfg(test)]
mod tests;
