//! The console's routes and its authorization, driven in-process.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::get;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "0123456789abcdef";

fn app(console: &Console) -> Router {
    let c = console.clone();
    let guarded = Router::new().route(
        "/api/v1/thing",
        get(|| async { "read" }).post(|| async { "done" }),
    );
    guarded
        .route_layer(axum::middleware::from_fn(
            move |req: Request<Body>, next: Next| {
                let c = c.clone();
                async move {
                    match c.authorize(req.method(), req.headers()) {
                        Ok(_) => next.run(req).await,
                        Err(r) => {
                            let (status, code, message) = r.parts();
                            refuse(status, code, message)
                        }
                    }
                }
            },
        ))
        .merge(console.router())
        .layer(axum::middleware::from_fn(security_headers))
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn login_req(token: &str) -> Request<Body> {
    Request::post("/console/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"token\": \"{token}\"}}")))
        .unwrap()
}

/// Logs in; returns the cookie pair (`offsite_site-a=ID`) and the CSRF token.
async fn login(app: &Router) -> (String, String) {
    let (status, headers, body) = send(app, login_req(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP console: {set}");
    let pair = set.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("offsite_site-a="), "{pair}");
    let info: SessionInfo = serde_json::from_str(&body).unwrap();
    assert!(!body.contains(TOKEN));
    (pair, info.csrf)
}

fn with_cookie(method: Method, uri: &str, cookie: &str, csrf: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, cookie);
    if let Some(t) = csrf {
        b = b.header("X-CSRF-Token", t);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let app = app(&Console::new(TOKEN, "site-a", false));
    let (status, headers, body) = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("<script type=\"module\" src=\"/assets/app.js\">"));
    assert!(!body.contains("<script>"), "no inline script in the page");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    for a in ASSETS {
        let (status, headers, _) = send(
            &app,
            Request::get(format!("/assets/{}", a.name))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", a.name);
        assert_eq!(headers[header::CONTENT_TYPE], a.content_type);
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    }
    let (status, _, _) = send(
        &app,
        Request::get("/assets/../lib.rs")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_ne!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_token_gets_no_session() {
    let app = app(&Console::new(TOKEN, "site-a", false));
    let (status, headers, body) = send(&app, login_req("guess")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!headers.contains_key(header::SET_COOKIE));
    assert!(body.contains("api.token"), "{body}");
    let (status, _, _) = send(
        &app,
        Request::post("/console/login")
            .body(Body::from("token=x"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reads_need_the_cookie_and_actions_the_csrf_token_too() {
    let console = Console::new(TOKEN, "site-a", false);
    let app = app(&console);
    let (cookie, csrf) = login(&app).await;

    let (status, _, body) = send(
        &app,
        with_cookie(Method::GET, "/api/v1/thing", &cookie, None),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "read"));

    let (status, _, body) = send(
        &app,
        with_cookie(Method::POST, "/api/v1/thing", &cookie, None),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("\"csrf\""), "{body}");
    let (status, _, _) = send(
        &app,
        with_cookie(Method::POST, "/api/v1/thing", &cookie, Some("wrong")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = send(
        &app,
        with_cookie(Method::POST, "/api/v1/thing", &cookie, Some(&csrf)),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));

    // No cookie at all, or a made-up one.
    let (status, _, _) = send(
        &app,
        Request::post("/api/v1/thing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(
        &app,
        with_cookie(Method::GET, "/api/v1/thing", "offsite_site-a=feed", None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("session_ended"), "{body}");
}

#[tokio::test]
async fn the_bearer_token_still_works_for_scripts() {
    let app = app(&Console::new(TOKEN, "site-a", false));
    let bearer = |t: &str| {
        Request::post("/api/v1/thing")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, _) = send(&app, bearer(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, bearer("nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_reloaded_page_gets_its_csrf_token_back_and_logout_ends_the_session() {
    let app = app(&Console::new(TOKEN, "site-a", false));
    let (cookie, csrf) = login(&app).await;
    let (status, _, body) = send(
        &app,
        with_cookie(Method::GET, "/console/session", &cookie, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let info: SessionInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info.csrf, csrf);

    // Logout is an action: it needs the CSRF token.
    let (status, _, _) = send(
        &app,
        with_cookie(Method::POST, "/console/logout", &cookie, None),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = send(
        &app,
        with_cookie(Method::POST, "/console/logout", &cookie, Some(&csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _, _) = send(
        &app,
        with_cookie(Method::GET, "/api/v1/thing", &cookie, None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(
        &app,
        with_cookie(Method::GET, "/console/session", &cookie, None),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn another_sites_cookie_is_not_a_session_here() {
    let a = app(&Console::new(TOKEN, "site-a", false));
    let b = app(&Console::new(TOKEN, "site-b", false));
    let (cookie, csrf) = login(&a).await;
    // Same host, other port: the browser sends site-a's cookie to site-b.
    let (status, _, _) = send(
        &b,
        with_cookie(Method::POST, "/api/v1/thing", &cookie, Some(&csrf)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_https_console_marks_its_cookie_secure() {
    let app = app(&Console::new(TOKEN, "site-a", true));
    let (_, headers, _) = send(&app, login_req(TOKEN)).await;
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
}
