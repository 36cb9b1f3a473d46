//! Schema details of the OpenAPI document that the Rust types do not
//! carry: the name alphabet and the fixed value sets of string fields
//! (kept as strings in the bodies, declared as enums in the document).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

/// Names of sites, volumes, VMs, groups, plans and PITs (`names::validate`
/// in the engine): 1–64 of `[A-Za-z0-9._-]`, starting with a letter or
/// digit.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// Longest name.
pub const NAME_MAX_LEN: usize = 64;

/// Most unnamed PITs a group keeps (`--keep`): far beyond any retention
/// an RPO of 30 s to 24 h calls for, and a bound the document can state.
pub const MAX_KEEP: u32 = 100_000;

/// Replication modes of a group.
pub const MODES: &[&str] = &["async", "sync", "continuous"];
/// Roles of a group on a site.
pub const GROUP_ROLES: &[&str] = &["primary", "replica"];
/// States of a group.
pub const GROUP_STATES: &[&str] = &[
    "ready-for-initial-replication",
    "initial-replication",
    "replicating",
    "resynchronizing",
    "paused",
    "prepared-for-failover",
    "test-failover",
    "failed-over",
    // An old primary that learnt its group was failed over elsewhere
    // (fenced until `group unfence` or `reverse`).
    "failed-over-elsewhere",
];
/// Health of a group.
pub const HEALTHS: &[&str] = &["normal", "warning", "critical"];
/// States of a sync group's stream.
pub const SYNC_STATES: &[&str] = &[
    "in-sync",
    "resynchronizing",
    "degraded",
    "suspended",
    "streaming",
    "spilled",
];
/// What a sync group does when its partner is lost.
pub const LINK_LOSS: &[&str] = &["degrade", "suspend-writes"];
/// Roles of a volume.
/// The kinds of point a recovery to a time (`at`) may use.
pub const POINT_KINDS: &[&str] = &["pit", "checkpoint"];
pub const VOLUME_ROLES: &[&str] = &["primary", "promoted"];
/// States of a volume.
pub const VOLUME_STATES: &[&str] = &["ready", "importing", "failed"];
/// NBD TLS modes of a listener or an export.
pub const NBD_TLS_MODES: &[&str] = &["off", "optional", "required"];
/// Modes of the API listener's TLS (`[api_tls] mode`).
pub const API_TLS_MODES: &[&str] = &["off", "self-signed", "files"];
/// Modes of a recovery plan run.
pub const RUN_MODES: &[&str] = &[
    "test",
    "cleanup",
    "planned",
    "disaster",
    "reprotect",
    "failback",
];

fn one_of(values: &[&str], nullable: bool) -> RefOr<Schema> {
    let ty = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    let mut values: Vec<Option<&str>> = values.iter().copied().map(Some).collect();
    if nullable {
        values.push(None);
    }
    ObjectBuilder::new()
        .schema_type(ty)
        .enum_values(Some(values))
        .into()
}

/// A name (see [`NAME_PATTERN`]).
pub fn name() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NAME_PATTERN))
        .min_length(Some(1))
        .max_length(Some(NAME_MAX_LEN))
        .into()
}

/// An optional name.
pub fn name_opt() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(NAME_PATTERN))
        .min_length(Some(1))
        .max_length(Some(NAME_MAX_LEN))
        .into()
}

/// A list of names.
pub fn names() -> RefOr<Schema> {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(name())
        .into()
}

/// `async` or `sync`.
pub fn mode() -> RefOr<Schema> {
    one_of(MODES, false)
}
/// `async`, `sync` or absent.
pub fn mode_opt() -> RefOr<Schema> {
    one_of(MODES, true)
}
/// A group's role.
pub fn group_role() -> RefOr<Schema> {
    one_of(GROUP_ROLES, false)
}
/// A group's state.
pub fn group_state() -> RefOr<Schema> {
    one_of(GROUP_STATES, false)
}
/// A group's health.
pub fn health() -> RefOr<Schema> {
    one_of(HEALTHS, false)
}
/// A sync group's stream state, absent for async groups.
pub fn sync_state_opt() -> RefOr<Schema> {
    one_of(SYNC_STATES, true)
}
/// A sync group's link-loss policy, absent for async groups.
pub fn link_loss_opt() -> RefOr<Schema> {
    one_of(LINK_LOSS, true)
}
/// What a recovery to a time used.
pub fn point_kind() -> RefOr<Schema> {
    one_of(POINT_KINDS, false)
}
/// A volume's role.
pub fn volume_role() -> RefOr<Schema> {
    one_of(VOLUME_ROLES, false)
}
/// A volume's state.
pub fn volume_state() -> RefOr<Schema> {
    one_of(VOLUME_STATES, false)
}
/// An export's NBD TLS mode.
pub fn nbd_tls() -> RefOr<Schema> {
    one_of(NBD_TLS_MODES, false)
}
/// The API listener's TLS mode.
pub fn api_tls() -> RefOr<Schema> {
    one_of(API_TLS_MODES, false)
}
/// A volume's own NBD TLS mode; null takes the listener's.
pub fn nbd_tls_opt() -> RefOr<Schema> {
    one_of(NBD_TLS_MODES, true)
}
/// A plan run's mode.
pub fn run_mode() -> RefOr<Schema> {
    one_of(RUN_MODES, false)
}
/// A plan run's mode, absent with `resume`.
pub fn run_mode_opt() -> RefOr<Schema> {
    one_of(RUN_MODES, true)
}
