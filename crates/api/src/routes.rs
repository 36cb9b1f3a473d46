//! The routes under `/api/v1`, by area; `router` nests them behind the
//! token check.

use axum::Router;
use axum::routing::get;

use super::*;

/// `/api/v1`: the site, its partners, authorization entries and volumes.
pub(crate) fn site() -> Router<ApiState> {
    Router::new()
        .route("/site", get(site_show))
        .route("/site/settings", get(settings_show).patch(settings_update))
        .route("/site/attach-store", axum::routing::post(site_attach_store))
        .route("/partners", get(partner_list).post(partner_add))
        .route(
            "/partners/{name}",
            get(partner_show)
                .delete(partner_remove)
                .patch(partner_update),
        )
        .route("/partners/{name}/test", axum::routing::post(partner_test))
        .route(
            "/partners/{name}/replace",
            axum::routing::post(partner_replace),
        )
        .route(
            "/partners/{name}/authz-check",
            axum::routing::post(partner_authz_check),
        )
        .route("/authz", get(authz_list).post(authz_add))
        .route("/authz/{pattern}", axum::routing::delete(authz_remove))
        .route("/volumes", get(volume_list).post(volume_create))
        .route("/volumes/{name}", get(volume_show).delete(volume_delete))
        .route("/volumes/{name}/url", get(volume_url))
        .route(
            "/volumes/{name}/clear-dirty",
            axum::routing::post(volume_clear_dirty),
        )
        .route(
            "/volumes/{name}/nbd-tls",
            axum::routing::post(volume_set_nbd_tls),
        )
}

/// `/api/v1/groups`: replication groups, their PITs, failover and reverse.
pub(crate) fn groups() -> Router<ApiState> {
    Router::new()
        .route("/groups", get(group_list).post(group_create))
        .route("/groups/{name}", get(group_status).delete(group_teardown))
        .route(
            "/groups/{name}/pits/{pit}/export",
            axum::routing::post(pit_export),
        )
        .route("/groups/{name}/pits/check", axum::routing::post(pit_check))
        .route(
            "/groups/{name}/key",
            axum::routing::get(group_key_export).post(group_key_import),
        )
        .route(
            "/groups/{name}/pits/export",
            axum::routing::post(pit_export_at),
        )
        .route(
            "/groups/{name}/pits/{pit}/release",
            axum::routing::post(pit_release),
        )
        .route("/groups/{name}/start", axum::routing::post(group_start))
        .route("/groups/{name}/pause", axum::routing::post(group_pause))
        .route("/groups/{name}/set", axum::routing::post(group_set))
        .route("/groups/{name}/resume", axum::routing::post(group_resume))
        .route("/groups/{name}/sync", axum::routing::post(group_sync))
        .route("/groups/{name}/verify", axum::routing::post(group_verify))
        .route("/groups/{name}/resync", axum::routing::post(group_resync))
        .route("/groups/{name}/unfence", axum::routing::post(group_unfence))
        .route(
            "/groups/{name}/failover",
            axum::routing::post(group_failover),
        )
        .route(
            "/groups/{name}/failover/stop-test",
            axum::routing::post(group_stop_test),
        )
        .route(
            "/groups/{name}/failover/prepare",
            axum::routing::post(group_failover_prepare),
        )
        .route("/groups/{name}/reverse", axum::routing::post(group_reverse))
        .route(
            "/groups/{name}/failover/commit",
            axum::routing::post(group_failover_commit),
        )
        .route(
            "/groups/{name}/failover/revert",
            axum::routing::post(group_failover_revert),
        )
        .route(
            "/groups/{name}/export-seed",
            axum::routing::post(group_export_seed),
        )
        .route("/groups/{name}/measure", get(group_measure))
        .route("/groups/{name}/cycles", get(group_cycles))
        .route("/groups/{name}/pits", get(pit_list))
        .route("/groups/{name}/checkpoints", get(checkpoint_list))
}

/// `/api/v1`: recovery plans and their runs, VMs, events, and the
/// console's live view.
pub(crate) fn plans_and_console() -> Router<ApiState> {
    Router::new()
        .route("/plans", get(plan_list).post(plan_create))
        .route("/plans/{name}", get(plan_show).delete(plan_delete))
        .route("/plans/{name}/groups", axum::routing::post(plan_add_group))
        .route(
            "/plans/{name}/priorities",
            axum::routing::post(plan_set_priority),
        )
        .route(
            "/plans/{name}/network-map",
            axum::routing::post(plan_set_network_map),
        )
        .route("/plans/{name}/steps", axum::routing::post(plan_add_step))
        .route(
            "/plans/{name}/groups/{group}",
            axum::routing::delete(plan_remove_group),
        )
        .route(
            "/plans/{name}/steps/{step}",
            axum::routing::delete(plan_remove_step),
        )
        .route("/plans/{name}/run", axum::routing::post(plan_run))
        .route("/plans/{name}/continue", axum::routing::post(plan_continue))
        .route("/plans/{name}/runs", get(plan_history))
        .route("/plan-runs/{id}", get(plan_report))
        .route("/plan-runs/{id}/report.html", get(plan_report_html))
        .route("/vms", get(vm_list).post(vm_create))
        .route("/vms/{name}", get(vm_show).delete(vm_delete).patch(vm_set))
        .route("/events", get(event_list))
        .route("/overview", get(stream::overview))
        .route("/stream", get(stream::stream))
}
