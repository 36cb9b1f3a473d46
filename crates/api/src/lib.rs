//! The site's REST API: thin axum handlers over [`offsite_engine::Site`].
//!
//! Every route under `/api/v1` needs `Authorization: Bearer TOKEN` (the token
//! in the data directory's `api.token`) or a console session (the web
//! console at `/`, `offsite-console`). `/api/openapi.json` and `/metrics`
//! are open: the first is documentation, the second is for Prometheus
//! scrapers, and neither exposes data. The API listens on loopback by
//! default, over plain HTTP; elsewhere it serves HTTPS ([`serve_tls`],
//! `[api_tls]`), or plain HTTP only when the operator said so.
//!
//! Handlers only parse, call the engine on the blocking pool (the engine
//! does SQLite and file I/O), and map [`offsite_engine::EngineError`] to a
//! status code plus an [`ApiError`] body whose message says what to do.
//! The domain crates know nothing of the REST bodies: `dto` maps their
//! requests and views to and from `offsite-api-types`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use offsite_api_types::{
    AddAuthz, AddPartner, ApiError, AuthzCheckRequest, AuthzCheckResult, AuthzEntry, CreateVm,
    CreateVolume, Event, PartnerInfo, PartnerTestRequest, PartnerTestResult, SetVolumeNbdTls,
    SiteInfo, SiteSettings, UpdateSiteSettings, VmInfo, VolumeInfo, VolumeUrl,
};
use offsite_api_types::{
    CreateGroup, GroupMeasure, GroupStatus, PitEntry, StartGroup, SyncGroup, SyncResult,
    VerifyResult,
};
use offsite_console::Console;
use offsite_engine::{EngineError, ErrorKind, Site, TlsMode};
use offsite_plan::{PlanError, Plans};
use offsite_replication::{ReplError, Replication};
use serde::Deserialize;
use utoipa::OpenApi;

mod dto;
mod metrics;
mod openapi;
mod routes;
mod stream;
pub mod tls;

use dto::{ToDomain, ToDto};
use openapi::{BearerAuth, ErrorResponses};

pub use dto::plan_run_report;
pub use metrics::{MetricsSource, family as metrics_family, group_families};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    site: Arc<Site>,
    repl: Arc<Replication>,
    plans: Arc<Plans>,
    console: Console,
    metrics: Arc<Vec<Arc<dyn MetricsSource>>>,
    /// Turns true when the listener begins its graceful shutdown: the
    /// console's event streams end then (a response that never ends would
    /// hold the shutdown until the browser goes away).
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// State for a site whose API token is `token`; `metrics` add their
    /// families to `/metrics` (the NBD server's counters, ...).
    pub fn new(
        site: Arc<Site>,
        repl: Arc<Replication>,
        plans: Arc<Plans>,
        token: &str,
        metrics: Vec<Arc<dyn MetricsSource>>,
    ) -> ApiState {
        ApiState {
            console: Console::new(token, &site.info().name, false),
            site,
            repl,
            plans,
            metrics: Arc::new(metrics),
            // Never stops until a `serve` gives it its shutdown.
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// The same state with `console` (tests give it sessions on a fake
    /// clock; an HTTPS listener marks its cookie `Secure`).
    pub fn with_console(mut self, console: Console) -> ApiState {
        self.console = console;
        self
    }
}

/// The OpenAPI document of this API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "offsite site API", description = "Control plane of one offsite site."),
    paths(site_show, site_attach_store, settings_show, settings_update, partner_list, partner_add, partner_show, partner_remove, partner_update, partner_replace, partner_test, partner_authz_check,
        authz_list, authz_add, authz_remove, vm_list, vm_create, vm_show, vm_delete, vm_set,
        group_list, group_create, group_status, group_start, group_pause, group_resume, group_set, group_sync,
        group_verify, group_resync, group_unfence, group_failover, group_stop_test, group_failover_prepare, group_reverse, group_failover_commit, group_failover_revert, group_measure, group_cycles, pit_list, checkpoint_list, pit_export, pit_export_at, pit_check, pit_release, group_key_export, group_key_import, group_teardown, group_export_seed, stream::overview, stream::stream, plan_list, plan_create, plan_show, plan_delete, plan_add_group, plan_remove_group, plan_set_priority, plan_set_network_map, plan_add_step, plan_remove_step, plan_run, plan_continue, plan_history, plan_report, plan_report_html, volume_list, volume_create, volume_show, volume_delete, volume_url, volume_clear_dirty, volume_set_nbd_tls, event_list),
    components(schemas(offsite_api_types::CreatePlan, offsite_api_types::PlanAddGroup, offsite_api_types::PlanSetPriority, offsite_api_types::PlanSetNetworkMap, offsite_api_types::PlanAddStep, offsite_api_types::PlanInfo, offsite_api_types::PlanVm, offsite_api_types::PlanStep, offsite_api_types::PlanRunRequest, offsite_api_types::PlanRunReport, offsite_api_types::PlanRunGroup, offsite_api_types::PlanRunStep, offsite_api_types::PlanRunSummary, offsite_api_types::UpdatePartner, offsite_api_types::ReplacePartner, offsite_api_types::PartnerReplaced, offsite_api_types::AttachStore, offsite_api_types::Hydration, offsite_api_types::StoreAttached, offsite_api_types::AttachedGroup, offsite_api_types::AttachAction, offsite_api_types::AdoptedPlan, offsite_api_types::ReplacedGroup, offsite_api_types::ReplacedAction, offsite_api_types::SharedPlan, offsite_api_types::ExportSeed, offsite_api_types::SeedExport, offsite_api_types::PitExport, offsite_api_types::PitExportAt, offsite_api_types::GroupKeyExport, offsite_api_types::ImportGroupKey, offsite_api_types::GroupKeyInfo, offsite_api_types::RecoveryPoint, offsite_api_types::PitCheck, offsite_api_types::PitCheckEntry, offsite_api_types::FailoverRun, offsite_api_types::FailoverResult, offsite_api_types::HookReport, offsite_api_types::ReverseResult, offsite_api_types::ReverseRequest, offsite_api_types::SplitBrain, offsite_api_types::SplitBrainSide, offsite_api_types::ExportedVolume, offsite_api_types::Overview, offsite_api_types::CycleEntry, SetVolumeNbdTls, CreateGroup, GroupStatus, GroupMeasure, PitEntry, offsite_api_types::PitRef, offsite_api_types::JournalStatus, offsite_api_types::JournalListing, offsite_api_types::CheckpointEntry,
        StartGroup, offsite_api_types::SetGroup, SyncGroup, SyncResult, VerifyResult, offsite_api_types::VerifyVolume, offsite_api_types::ResyncResult, offsite_api_types::ResyncProgress, offsite_api_types::TransferProgress, VmInfo, CreateVm, offsite_api_types::SetVm, PartnerTestRequest, PartnerTestResult, AuthzCheckRequest, AuthzCheckResult, SiteSettings, UpdateSiteSettings, PartnerInfo, AddPartner, AuthzEntry, AddAuthz, SiteInfo, VolumeInfo, CreateVolume, VolumeUrl, Event, ApiError, offsite_api_types::ImportProgress)),
    modifiers(&BearerAuth, &ErrorResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// A path parameter whose rejection (bad percent-encoding, ...) is an
/// [`ApiError`] like every other error, not axum's plain-text answer.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Failure> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| Failure::BadBody(format!("malformed path: {e}")))
    }
}

/// A query string whose rejection is an [`ApiError`] (see [`ApiPath`]).
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Failure> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| Failure::BadBody(format!("malformed query: {e}")))
    }
}

/// The router: `/api/v1/...`, `/api/openapi.json`, `/metrics`.
pub fn router(state: ApiState) -> Router {
    let v1 = routes::site()
        .merge(routes::groups())
        .merge(routes::plans_and_console())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest(offsite_api_types::API_PREFIX, v1)
        .route("/api/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::render))
        .merge(state.console.router())
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route; see /api/openapi.json".into(),
            )
        })
        .with_state(state)
        .layer(middleware::from_fn(offsite_console::security_headers))
}

/// Serves the API on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (state, shutdown) = stopping_with(state, shutdown);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `state` told when `shutdown` completes ([`ApiState::stopping`]), and
/// the shutdown that tells it.
fn stopping_with(
    mut state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (ApiState, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    state.stopping = rx;
    (state, async move {
        shutdown.await;
        // Receivers gone: no stream to end.
        let _ = tx.send(true);
    })
}

/// As [`serve`], over HTTPS with `certificate` ([`tls::TlsListener`]).
/// The console's session cookie is marked `Secure`: the browser then sends
/// it over HTTPS only.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    certificate: Arc<tls::ServedCertificate>,
    mut state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = tls::server_config(certificate)?;
    state.console = state.console.clone().with_secure_cookie(true);
    let (state, shutdown) = stopping_with(state, shutdown);
    axum::serve(tls::TlsListener::new(listener, config), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Lets a request to `/api/v1` through with the bearer token (scripts,
/// the CLI) or a console session (its cookie, and its CSRF token for
/// actions); see `offsite_console::Console::authorize`.
async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match state.console.authorize(req.method(), req.headers()) {
        Ok(_) => next.run(req).await,
        Err(refusal) => {
            let (status, code, message) = refusal.parts();
            error(status, code, message.into())
        }
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message,
        }),
    )
        .into_response()
}

/// A failed request as an HTTP response.
enum Failure {
    /// The engine refused or failed.
    Engine(EngineError),
    /// The request body did not parse.
    BadBody(String),
    /// Talking to a partner failed or was refused.
    Repl(ReplError),
    /// A recovery-plan request failed.
    Plan(PlanError),
}

/// Status and code of an engine error.
fn engine_status(e: &EngineError) -> (StatusCode, &'static str) {
    match e.kind() {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        ErrorKind::Busy => (StatusCode::CONFLICT, "busy"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// Status and code of a replication error: the engine's own classes, a
/// partner that refused (403), one that cannot be reached or answered
/// nonsense (502: the fault is beyond this site).
fn repl_status(e: &ReplError) -> (StatusCode, &'static str) {
    match e {
        ReplError::Engine(e) => engine_status(e),
        ReplError::NoSuchPartner(_) => (StatusCode::NOT_FOUND, "not_found"),
        ReplError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
        e if e.is_unreachable() => (StatusCode::BAD_GATEWAY, "unreachable"),
        ReplError::Identity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        _ => (StatusCode::BAD_GATEWAY, "partner_error"),
    }
}

impl Failure {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Failure::Engine(e) => engine_status(e),
            Failure::BadBody(_) => (StatusCode::BAD_REQUEST, "invalid"),
            Failure::Repl(e) => repl_status(e),
            Failure::Plan(PlanError::Repl(e)) => repl_status(e),
            Failure::Plan(PlanError::Engine(e)) => engine_status(e),
            // The plan's other site could not be reached: nothing changed,
            // and the fault is beyond this site (502), as for replication.
            Failure::Plan(PlanError::Partner { source, .. }) if source.is_unreachable() => {
                (StatusCode::BAD_GATEWAY, "unreachable")
            }
            Failure::Plan(e) => match e.kind() {
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                ErrorKind::Conflict | ErrorKind::Busy => (StatusCode::CONFLICT, "conflict"),
                ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
                ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Engine(e) => e.to_string(),
            Failure::BadBody(m) => m.clone(),
            Failure::Repl(e) => e.to_string(),
            Failure::Plan(e) => e.to_string(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let message = self.message();
        // Only the site's own failures are errors of the daemon; a user's
        // mistake (an unknown name, a refused request: 4xx) is not, and a
        // partner's failure (502) is the partner's, so it is a warning here.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "API request failed");
        } else if status.is_server_error() {
            tracing::warn!(error = %message, "API request failed at the partner");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "API request refused");
        }
        error(status, code, message)
    }
}

type ApiResult<T> = Result<Json<T>, Failure>;

/// Runs blocking engine work off the async workers.
async fn blocking<T: ToDto + Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> ApiResult<T::Dto> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(|v| Json(v.to_dto())).map_err(Failure::Engine),
        Err(e) => Err(Failure::Engine(EngineError::Invalid(format!(
            "internal error: request handler failed ({e}); see the daemon log"
        )))),
    }
}

#[utoipa::path(get, path = "/api/v1/site", responses((status = 200, body = SiteInfo)))]
async fn site_show(State(s): State<ApiState>) -> Json<SiteInfo> {
    Json(s.site.info().to_dto())
}

/// Parses a JSON body, turning axum's rejection into our error shape.
fn body<T>(b: JsonBody<T>) -> Result<T, Failure> {
    b.map(|Json(Object(v))| v)
        .map_err(|e| Failure::BadBody(format!("malformed request body: {e}")))
}

type JsonBody<T> = Result<Json<Object<T>>, axum::extract::rejection::JsonRejection>;

/// A request body that must be a JSON object, as the document declares:
/// serde's derived structs also accept an array of their fields in order
/// (`[null, null]` would be an empty update), which no client means.
struct Object<T>(T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        T::deserialize(serde_json::Value::Object(map))
            .map(Object)
            .map_err(D::Error::custom)
    }
}

#[utoipa::path(get, path = "/api/v1/site/settings", responses((status = 200, body = SiteSettings)))]
async fn settings_show(State(s): State<ApiState>) -> ApiResult<SiteSettings> {
    blocking(move || s.site.settings()).await
}

#[utoipa::path(patch, path = "/api/v1/site/settings", request_body = UpdateSiteSettings,
    responses((status = 200, body = SiteSettings), (status = 400, body = ApiError)))]
async fn settings_update(
    State(s): State<ApiState>,
    b: JsonBody<UpdateSiteSettings>,
) -> ApiResult<SiteSettings> {
    let req = body(b)?.to_domain();
    blocking(move || s.site.update_settings(&req)).await
}

#[utoipa::path(get, path = "/api/v1/partners", responses((status = 200, body = [PartnerInfo])))]
async fn partner_list(State(s): State<ApiState>) -> ApiResult<Vec<PartnerInfo>> {
    let repl = s.repl.clone();
    let Json(partners) = blocking(move || s.site.partners()).await?;
    Ok(Json(dto::with_consoles(partners, &repl)))
}

#[utoipa::path(post, path = "/api/v1/partners", request_body = AddPartner,
    responses((status = 200, body = PartnerInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn partner_add(State(s): State<ApiState>, b: JsonBody<AddPartner>) -> ApiResult<PartnerInfo> {
    let req = body(b)?.to_domain();
    blocking(move || s.site.add_partner(&req)).await
}

#[utoipa::path(get, path = "/api/v1/partners/{name}", params(("name" = String, Path)),
    responses((status = 200, body = PartnerInfo), (status = 404, body = ApiError)))]
async fn partner_show(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<PartnerInfo> {
    blocking(move || s.site.partner(&name)).await
}

#[utoipa::path(delete, path = "/api/v1/partners/{name}", params(("name" = String, Path)),
    responses((status = 200, body = PartnerInfo), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn partner_remove(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<PartnerInfo> {
    blocking(move || {
        let p = s.site.partner(&name)?;
        s.site.remove_partner(&name).map(|()| p)
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/partners/{name}/test", params(("name" = String, Path)),
    request_body = PartnerTestRequest,
    responses((status = 200, body = PartnerTestResult), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn partner_test(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<PartnerTestRequest>,
) -> ApiResult<PartnerTestResult> {
    let req = body(b)?.to_domain();
    repl(s.repl.partner_test(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/partners/{name}/authz-check", params(("name" = String, Path)),
    request_body = AuthzCheckRequest,
    responses((status = 200, body = AuthzCheckResult), (status = 403, body = ApiError), (status = 502, body = ApiError)))]
async fn partner_authz_check(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<AuthzCheckRequest>,
) -> ApiResult<AuthzCheckResult> {
    let req = body(b)?;
    repl(s.repl.authz_check(&name, req.security_tag).await)
}

fn repl<T: ToDto>(r: Result<T, ReplError>) -> ApiResult<T::Dto> {
    r.map(|v| Json(v.to_dto())).map_err(Failure::Repl)
}

#[utoipa::path(get, path = "/api/v1/groups", responses((status = 200, body = [GroupStatus])))]
async fn group_list(State(s): State<ApiState>) -> ApiResult<Vec<GroupStatus>> {
    repl(s.repl.group_list().await)
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = CreateGroup,
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 502, body = ApiError)))]
async fn group_create(
    State(s): State<ApiState>,
    b: JsonBody<CreateGroup>,
) -> ApiResult<GroupStatus> {
    let req = body(b)?.to_domain();
    repl(s.repl.create_group(req).await)
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", params(("name" = String, Path)),
    responses((status = 200, body = GroupStatus), (status = 404, body = ApiError)))]
async fn group_status(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<GroupStatus> {
    repl(s.repl.group_status(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/start", params(("name" = String, Path)), request_body = StartGroup,
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError)))]
async fn group_start(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<StartGroup>,
) -> ApiResult<GroupStatus> {
    let req = body(b)?;
    repl(s.repl.start_group(&name, req.seed).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/pause", params(("name" = String, Path)),
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError)))]
async fn group_pause(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<GroupStatus> {
    repl(s.repl.pause_group(&name, true).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/set", params(("name" = String, Path)), request_body = offsite_api_types::SetGroup,
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError)))]
async fn group_set(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::SetGroup>,
) -> ApiResult<GroupStatus> {
    let req = body(b)?.to_domain();
    repl(s.repl.set_group(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/resume", params(("name" = String, Path)),
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError)))]
async fn group_resume(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<GroupStatus> {
    repl(s.repl.pause_group(&name, false).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/sync", params(("name" = String, Path)), request_body = SyncGroup,
    responses((status = 200, body = SyncResult), (status = 400, body = ApiError), (status = 502, body = ApiError)))]
async fn group_sync(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<SyncGroup>,
) -> ApiResult<SyncResult> {
    let req = body(b)?;
    repl(
        s.repl
            .sync_checkpoint(&name, req.pit_name, !req.no_wait, req.quiesce)
            .await,
    )
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/verify", params(("name" = String, Path)),
    responses((status = 200, body = VerifyResult), (status = 400, body = ApiError), (status = 502, body = ApiError)))]
async fn group_verify(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<VerifyResult> {
    repl(s.repl.verify_group(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/resync", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::ResyncResult), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn group_resync(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::ResyncResult> {
    repl(s.repl.resync_group(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/failover", params(("name" = String, Path)),
    request_body = offsite_api_types::FailoverRun,
    responses((status = 200, body = offsite_api_types::FailoverResult), (status = 400, body = ApiError)))]
async fn group_failover(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::FailoverRun>,
) -> ApiResult<offsite_api_types::FailoverResult> {
    let req = body(b)?.to_domain();
    repl(s.repl.failover_run(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/failover/prepare", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::FailoverResult), (status = 400, body = ApiError)))]
async fn group_failover_prepare(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::FailoverResult> {
    repl(s.repl.failover_prepare(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/failover/commit", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::FailoverResult), (status = 400, body = ApiError)))]
async fn group_failover_commit(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::FailoverResult> {
    repl(s.repl.failover_commit(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/failover/revert", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::FailoverResult), (status = 400, body = ApiError)))]
async fn group_failover_revert(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::FailoverResult> {
    repl(s.repl.failover_revert(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/reverse", params(("name" = String, Path)),
    request_body = offsite_api_types::ReverseRequest,
    responses((status = 200, body = offsite_api_types::ReverseResult), (status = 400, body = ApiError)))]
async fn group_reverse(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::ReverseRequest>,
) -> ApiResult<offsite_api_types::ReverseResult> {
    let req = body(b)?.to_domain();
    let reversed = s.repl.reverse(&name, &req).await.map_err(Failure::Repl)?;
    // A rebuilt partner got the group again with a full copy: the plans it
    // lacks follow (each once all its groups are there).
    if reversed.full_copy && !req.dry_run {
        let site = s.site.clone();
        let g = name.clone();
        if let Ok(Ok(row)) = tokio::task::spawn_blocking(move || site.groups().get(&g)).await
            && let Err(e) = s.plans.share_with(&row.partner).await
        {
            tracing::warn!(group = %name, "sending the plans to {}: {e}", row.partner);
        }
    }
    Ok(Json(reversed.to_dto()))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/failover/stop-test", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::FailoverResult), (status = 400, body = ApiError)))]
async fn group_stop_test(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::FailoverResult> {
    repl(s.repl.stop_test(&name).await)
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/measure", params(("name" = String, Path)),
    responses((status = 200, body = GroupMeasure), (status = 404, body = ApiError)))]
async fn group_measure(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<GroupMeasure> {
    repl(s.repl.group_measure(&name).await)
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/pits", params(("name" = String, Path)),
    responses((status = 200, body = [PitEntry]), (status = 404, body = ApiError)))]
async fn pit_list(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Vec<PitEntry>> {
    repl(s.repl.pit_list(&name).await)
}

#[derive(Debug, Deserialize)]
struct CheckpointQuery {
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/checkpoints",
    params(("name" = String, Path, description = "group name"),
        ("all" = Option<bool>, Query, description = "list every reachable checkpoint, not only the summary")),
    responses((status = 200, body = offsite_api_types::JournalListing), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn checkpoint_list(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<CheckpointQuery>,
) -> ApiResult<offsite_api_types::JournalListing> {
    repl(s.repl.list_checkpoints(&name, q.all).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/pits/{pit}/export",
    params(("name" = String, Path), ("pit" = String, Path, description = "PIT id or name")),
    responses((status = 200, body = offsite_api_types::PitExport), (status = 400, body = ApiError)))]
async fn pit_export(
    State(s): State<ApiState>,
    ApiPath((name, pit)): ApiPath<(String, String)>,
) -> ApiResult<offsite_api_types::PitExport> {
    repl(s.repl.pit_export(&name, &pit).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/pits/export", params(("name" = String, Path)),
    request_body = offsite_api_types::PitExportAt,
    responses((status = 200, body = offsite_api_types::PitExport), (status = 400, body = ApiError)))]
async fn pit_export_at(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PitExportAt>,
) -> ApiResult<offsite_api_types::PitExport> {
    let req = body(b)?;
    repl(s.repl.pit_export_at(&name, &req.at).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/pits/check", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::PitCheck), (status = 400, body = ApiError)))]
async fn pit_check(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::PitCheck> {
    repl(s.repl.pit_check(&name).await)
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/pits/{pit}/release",
    params(("name" = String, Path), ("pit" = String, Path, description = "PIT id or name")),
    responses((status = 200, body = [PitEntry]), (status = 400, body = ApiError)))]
async fn pit_release(
    State(s): State<ApiState>,
    ApiPath((name, pit)): ApiPath<(String, String)>,
) -> ApiResult<Vec<PitEntry>> {
    if let Err(e) = s.repl.pit_release(&name, &pit).await {
        return Err(Failure::Repl(e));
    }
    repl(s.repl.pit_list(&name).await)
}

#[utoipa::path(get, path = "/api/v1/groups/{name}/key", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::GroupKeyExport), (status = 404, body = ApiError)))]
async fn group_key_export(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::GroupKeyExport> {
    blocking(move || s.site.export_group_key(&name)).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/key", params(("name" = String, Path)),
    request_body = offsite_api_types::ImportGroupKey,
    responses((status = 200, body = offsite_api_types::GroupKeyInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn group_key_import(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::ImportGroupKey>,
) -> ApiResult<offsite_api_types::GroupKeyInfo> {
    let req = body(b)?;
    blocking(move || s.site.import_group_key(&name, &req.key)).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/export-seed", params(("name" = String, Path)),
    request_body = offsite_api_types::ExportSeed,
    responses((status = 200, body = offsite_api_types::SeedExport), (status = 400, body = ApiError)))]
async fn group_export_seed(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::ExportSeed>,
) -> ApiResult<offsite_api_types::SeedExport> {
    let req = body(b)?;
    repl(s.repl.export_seed(&name, &req.to).await)
}

#[derive(Debug, serde::Deserialize)]
struct TeardownQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    delete_replica: bool,
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/unfence",
    params(("name" = String, Path), ("force" = Option<bool>, Query, description = "unfence although the partner still holds the group failed over, or cannot be asked")),
    responses((status = 200, body = GroupStatus), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn group_unfence(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<GroupStatus> {
    repl(s.repl.unfence_group(&name, q.force).await)
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}",
    params(("name" = String, Path), ("force" = Option<bool>, Query, description = "tear down this side although the partner cannot be reached"),
        ("delete_replica" = Option<bool>, Query, description = "delete the replica's store and its PITs instead of keeping them aside")),
    responses((status = 200, body = GroupStatus), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn group_teardown(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<TeardownQuery>,
) -> ApiResult<GroupStatus> {
    let status = s.repl.group_status(&name).await.map_err(Failure::Repl)?;
    s.repl
        .teardown(&name, q.force, q.delete_replica)
        .await
        .map_err(Failure::Repl)?;
    Ok(Json(status.to_dto()))
}

#[utoipa::path(get, path = "/api/v1/vms", responses((status = 200, body = [VmInfo])))]
async fn vm_list(State(s): State<ApiState>) -> ApiResult<Vec<VmInfo>> {
    blocking(move || s.site.vms()).await
}

#[utoipa::path(post, path = "/api/v1/vms", request_body = CreateVm,
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn vm_create(State(s): State<ApiState>, b: JsonBody<CreateVm>) -> ApiResult<VmInfo> {
    let req = body(b)?.to_domain();
    blocking(move || s.site.create_vm(&req)).await
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 200, body = VmInfo), (status = 404, body = ApiError)))]
async fn vm_show(State(s): State<ApiState>, ApiPath(name): ApiPath<String>) -> ApiResult<VmInfo> {
    blocking(move || s.site.vm_with_state(&name)).await
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    responses((status = 200, body = VmInfo), (status = 404, body = ApiError)))]
async fn vm_delete(State(s): State<ApiState>, ApiPath(name): ApiPath<String>) -> ApiResult<VmInfo> {
    blocking(move || s.site.delete_vm(&name)).await
}

#[utoipa::path(patch, path = "/api/v1/vms/{name}", params(("name" = String, Path)),
    request_body = offsite_api_types::SetVm,
    responses((status = 200, body = VmInfo), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 403, body = ApiError)))]
async fn vm_set(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::SetVm>,
) -> ApiResult<VmInfo> {
    let req = body(b)?.to_domain();
    repl(s.repl.set_vm(&name, &req).await)
}

#[utoipa::path(patch, path = "/api/v1/partners/{name}", params(("name" = String, Path)),
    request_body = offsite_api_types::UpdatePartner,
    responses((status = 200, body = PartnerInfo), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn partner_update(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::UpdatePartner>,
) -> ApiResult<PartnerInfo> {
    let req = body(b)?;
    blocking(move || s.site.set_partner_address(&name, &req.address)).await
}

#[utoipa::path(post, path = "/api/v1/partners/{name}/replace", params(("name" = String, Path)),
    request_body = offsite_api_types::ReplacePartner,
    responses((status = 200, body = offsite_api_types::PartnerReplaced), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn partner_replace(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::ReplacePartner>,
) -> ApiResult<offsite_api_types::PartnerReplaced> {
    let req = body(b)?;
    let (partner, groups) = s
        .repl
        .replace_partner(&name, &req.address, &req.fingerprint)
        .await
        .map_err(Failure::Repl)?;
    let plans = s.plans.share_with(&name).await.map_err(Failure::Plan)?;
    Ok(Json(offsite_api_types::PartnerReplaced {
        partner: partner.to_dto(),
        groups: groups.to_dto(),
        plans: plans.to_dto(),
    }))
}

#[utoipa::path(post, path = "/api/v1/site/attach-store",
    request_body = offsite_api_types::AttachStore,
    responses((status = 200, body = offsite_api_types::StoreAttached), (status = 400, body = ApiError)))]
async fn site_attach_store(
    State(s): State<ApiState>,
    b: JsonBody<offsite_api_types::AttachStore>,
) -> ApiResult<offsite_api_types::StoreAttached> {
    let req = body(b)?;
    let attached = s
        .repl
        .attach_store(&req.location, &req.keys)
        .await
        .map_err(Failure::Repl)?;
    let plans = s.plans.adopt(attached.plans).await.map_err(Failure::Plan)?;
    Ok(Json(offsite_api_types::StoreAttached {
        groups: attached.groups.to_dto(),
        plans: plans.to_dto(),
    }))
}

#[utoipa::path(get, path = "/api/v1/authz", responses((status = 200, body = [AuthzEntry])))]
async fn authz_list(State(s): State<ApiState>) -> ApiResult<Vec<AuthzEntry>> {
    blocking(move || s.site.authz_entries()).await
}

#[utoipa::path(post, path = "/api/v1/authz", request_body = AddAuthz,
    responses((status = 200, body = AuthzEntry), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn authz_add(State(s): State<ApiState>, b: JsonBody<AddAuthz>) -> ApiResult<AuthzEntry> {
    let req = body(b)?.to_domain();
    blocking(move || s.site.add_authz(&req)).await
}

#[utoipa::path(delete, path = "/api/v1/authz/{pattern}", params(("pattern" = String, Path)),
    responses((status = 200, body = AuthzEntry), (status = 404, body = ApiError)))]
async fn authz_remove(
    State(s): State<ApiState>,
    ApiPath(pattern): ApiPath<String>,
) -> ApiResult<AuthzEntry> {
    blocking(move || {
        let entry = s
            .site
            .authz_entries()?
            .into_iter()
            .find(|e| e.allowed_primary == pattern);
        s.site.remove_authz(&pattern)?;
        entry.ok_or_else(|| {
            EngineError::Invalid(format!("authorization entry {pattern:?} vanished"))
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/volumes", responses((status = 200, body = [VolumeInfo])))]
async fn volume_list(State(s): State<ApiState>) -> ApiResult<Vec<VolumeInfo>> {
    blocking(move || s.site.list_volumes()).await
}

#[utoipa::path(post, path = "/api/v1/volumes", request_body = CreateVolume,
    responses((status = 200, body = VolumeInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn volume_create(
    State(s): State<ApiState>,
    b: JsonBody<CreateVolume>,
) -> ApiResult<VolumeInfo> {
    let req = body(b)?.to_domain();
    blocking(move || s.site.create_volume(&req)).await
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}", params(("name" = String, Path)),
    responses((status = 200, body = VolumeInfo), (status = 404, body = ApiError)))]
async fn volume_show(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<VolumeInfo> {
    blocking(move || s.site.volume_info(&name)).await
}

#[utoipa::path(delete, path = "/api/v1/volumes/{name}", params(("name" = String, Path)),
    responses((status = 200, body = VolumeUrl), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn volume_delete(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<VolumeUrl> {
    blocking(move || {
        let url = s.site.volume_url(&name);
        s.site
            .delete_volume(&name)
            .map(|()| VolumeUrl { name, url })
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/url", params(("name" = String, Path)),
    responses((status = 200, body = VolumeUrl), (status = 404, body = ApiError)))]
async fn volume_url(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<VolumeUrl> {
    blocking(move || {
        s.site.volume_info(&name).map(|v| VolumeUrl {
            name: v.name,
            url: v.url,
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/clear-dirty",
    params(("name" = String, Path), ("force" = Option<bool>, Query, description = "clear a volume of a replication group anyway; the group then needs `group resync`")),
    responses((status = 200, body = VolumeInfo), (status = 404, body = ApiError),
        (status = 409, description = "the volume is in a replication group and force was not given", body = ApiError)))]
async fn volume_clear_dirty(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<VolumeInfo> {
    blocking(move || s.site.clear_dirty(&name, q.force)).await
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/nbd-tls", params(("name" = String, Path)),
    request_body = SetVolumeNbdTls,
    responses((status = 200, body = VolumeInfo), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn volume_set_nbd_tls(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<SetVolumeNbdTls>,
) -> ApiResult<VolumeInfo> {
    let mode = match body(b)?.mode.as_deref().map(str::parse::<TlsMode>) {
        None => None,
        Some(Ok(mode)) => Some(mode),
        Some(Err(e)) => return Err(Failure::BadBody(e.to_string())),
    };
    blocking(move || s.site.set_volume_nbd_tls(&name, mode)).await
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    limit: Option<u32>,
}

/// Most events one request returns.
const MAX_EVENTS: u32 = 10_000;

#[utoipa::path(get, path = "/api/v1/events",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "how many of the newest events (default 100)")),
    responses((status = 200, body = [Event])))]
async fn event_list(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Vec<Event>> {
    let limit = q.limit.unwrap_or(100);
    // Out of range is refused rather than clamped, as the document says.
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(Failure::BadBody(format!(
            "limit {limit} is outside 1..{MAX_EVENTS}"
        )));
    }
    blocking(move || s.site.events(limit)).await
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

fn plan<T: ToDto>(r: Result<T, PlanError>) -> ApiResult<T::Dto> {
    r.map(|v| Json(v.to_dto())).map_err(Failure::Plan)
}

#[utoipa::path(get, path = "/api/v1/plans", responses((status = 200, body = [offsite_api_types::PlanInfo])))]
async fn plan_list(State(s): State<ApiState>) -> ApiResult<Vec<offsite_api_types::PlanInfo>> {
    plan(s.plans.list().await)
}

#[utoipa::path(post, path = "/api/v1/plans", request_body = offsite_api_types::CreatePlan,
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn plan_create(
    State(s): State<ApiState>,
    b: JsonBody<offsite_api_types::CreatePlan>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    let req = body(b)?.to_domain();
    plan(s.plans.create(&req).await)
}

#[utoipa::path(get, path = "/api/v1/plans/{name}", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 404, body = ApiError)))]
async fn plan_show(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    plan(s.plans.show(&name).await)
}

#[utoipa::path(delete, path = "/api/v1/plans/{name}", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 404, body = ApiError)))]
async fn plan_delete(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    plan(s.plans.delete(&name).await)
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/groups", params(("name" = String, Path)),
    request_body = offsite_api_types::PlanAddGroup,
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError)))]
async fn plan_add_group(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PlanAddGroup>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    let req = body(b)?.to_domain();
    plan(s.plans.add_group(&name, &req).await)
}

#[utoipa::path(delete, path = "/api/v1/plans/{name}/groups/{group}", params(("name" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn plan_remove_group(
    State(s): State<ApiState>,
    ApiPath((name, group)): ApiPath<(String, String)>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    plan(s.plans.remove_group(&name, &group).await)
}

#[utoipa::path(delete, path = "/api/v1/plans/{name}/steps/{step}", params(("name" = String, Path), ("step" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 502, body = ApiError)))]
async fn plan_remove_step(
    State(s): State<ApiState>,
    ApiPath((name, step)): ApiPath<(String, String)>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    plan(s.plans.remove_step(&name, &step).await)
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/priorities", params(("name" = String, Path)),
    request_body = offsite_api_types::PlanSetPriority,
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError)))]
async fn plan_set_priority(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PlanSetPriority>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    let req = body(b)?.to_domain();
    plan(s.plans.set_priority(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/network-map", params(("name" = String, Path)),
    request_body = offsite_api_types::PlanSetNetworkMap,
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError)))]
async fn plan_set_network_map(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PlanSetNetworkMap>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    let req = body(b)?.to_domain();
    plan(s.plans.set_network_map(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/steps", params(("name" = String, Path)),
    request_body = offsite_api_types::PlanAddStep,
    responses((status = 200, body = offsite_api_types::PlanInfo), (status = 400, body = ApiError)))]
async fn plan_add_step(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PlanAddStep>,
) -> ApiResult<offsite_api_types::PlanInfo> {
    let req = body(b)?.to_domain();
    plan(s.plans.add_step(&name, &req).await)
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/run", params(("name" = String, Path)),
    request_body = offsite_api_types::PlanRunRequest,
    responses((status = 200, body = offsite_api_types::PlanRunReport), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn plan_run(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    b: JsonBody<offsite_api_types::PlanRunRequest>,
) -> ApiResult<offsite_api_types::PlanRunReport> {
    let req = body(b)?.to_domain();
    // Its own task: a client that goes away does not cancel the run.
    let plans = s.plans.clone();
    let run = tokio::spawn(async move { plans.run(&name, &req).await }).await;
    plan(run.unwrap_or_else(|e| {
        Err(PlanError::Invalid(format!(
            "internal error: the run failed ({e}); see the daemon log"
        )))
    }))
}

#[utoipa::path(post, path = "/api/v1/plans/{name}/continue", params(("name" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanRunReport), (status = 409, body = ApiError)))]
async fn plan_continue(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<offsite_api_types::PlanRunReport> {
    let plans = s.plans.clone();
    let run = tokio::spawn(async move { plans.continue_run(&name).await }).await;
    plan(run.unwrap_or_else(|e| {
        Err(PlanError::Invalid(format!(
            "internal error: the run failed ({e}); see the daemon log"
        )))
    }))
}

#[utoipa::path(get, path = "/api/v1/plans/{name}/runs", params(("name" = String, Path)),
    responses((status = 200, body = [offsite_api_types::PlanRunSummary]), (status = 404, body = ApiError)))]
async fn plan_history(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Vec<offsite_api_types::PlanRunSummary>> {
    plan(s.plans.history(&name).await)
}

#[derive(Debug, Deserialize)]
struct CyclesQuery {
    hours: Option<u32>,
}

/// Hours of cycles one request returns at most.
const MAX_CYCLE_HOURS: u32 = 24 * 31;

#[utoipa::path(get, path = "/api/v1/groups/{name}/cycles",
    params(("name" = String, Path, description = "group name"),
        ("hours" = Option<u32>, Query, minimum = 1, maximum = 744, description = "cycles started in the last this many hours (default 6)")),
    responses((status = 200, body = [offsite_api_types::CycleEntry])))]
async fn group_cycles(
    State(s): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<CyclesQuery>,
) -> ApiResult<Vec<offsite_api_types::CycleEntry>> {
    let hours = q.hours.unwrap_or(6);
    if !(1..=MAX_CYCLE_HOURS).contains(&hours) {
        return Err(Failure::BadBody(format!(
            "hours {hours} is outside 1..{MAX_CYCLE_HOURS}"
        )));
    }
    blocking(move || {
        s.site.groups().get(&name)?;
        // Catalog times are RFC 3339 in UTC to the second: they compare
        // as text.
        let since = (time::OffsetDateTime::now_utc() - time::Duration::hours(i64::from(hours)))
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let rows = s.site.groups().cycles(&name)?;
        Ok(rows
            .into_iter()
            .filter(|c| c.started_at >= since)
            .collect::<Vec<_>>())
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/plan-runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = offsite_api_types::PlanRunReport), (status = 404, body = ApiError)))]
async fn plan_report(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<offsite_api_types::PlanRunReport> {
    plan(s.plans.report(&id).await)
}

/// What a run's HTML report may do when the console shows it in a frame:
/// its own inline style and SVG, nothing else (no script, no request, no
/// form), framed only by this site's pages.
const REPORT_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'";

#[utoipa::path(get, path = "/api/v1/plan-runs/{id}/report.html",
    params(("id" = String, Path, description = "run id, SITE-N")),
    responses((status = 200, content_type = "text/html", description = "the run's self-contained HTML report")))]
async fn plan_report_html(State(s): State<ApiState>, ApiPath(id): ApiPath<String>) -> Response {
    match s.plans.report(&id).await {
        Ok(report) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, REPORT_POLICY),
                (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
            ],
            offsite_plan::report::html(&report),
        )
            .into_response(),
        Err(e) => Failure::Plan(e).into_response(),
    }
}
