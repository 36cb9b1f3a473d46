//! The REST bodies of `offsite-api-types` from and to the domain types of
//! the engine, the replication service and the plans: the one place where
//! the HTTP contract meets the domain (which does not depend on it).
//!
//! Every mapping names every field on both sides (the macros destructure
//! the source and build the target), so a field added on one side without
//! its counterpart does not compile. Typed states, roles and modes become
//! the strings of the JSON contract here.

use std::collections::BTreeMap;

use offsite_api_types as t;
use offsite_catalog::{GroupState, Mode, Role, SyncState};
use offsite_engine as engine;
use offsite_plan as plan;

/// A domain value as its REST body.
pub(crate) trait ToDto {
    /// The body.
    type Dto;
    /// Maps `self`.
    fn to_dto(self) -> Self::Dto;
}

/// A REST request body as the domain request it carries.
pub(crate) trait ToDomain {
    /// The domain request.
    type Domain;
    /// Maps `self`.
    fn to_domain(self) -> Self::Domain;
}

/// Values the same on both sides.
macro_rules! same {
    ($($ty:ty),* $(,)?) => {$(
        impl ToDto for $ty {
            type Dto = $ty;
            fn to_dto(self) -> $ty {
                self
            }
        }
        impl ToDomain for $ty {
            type Domain = $ty;
            fn to_domain(self) -> $ty {
                self
            }
        }
    )*};
}

same!(String, bool, u8, u16, u32, u64, i32, i64, usize, f64);

/// Bodies the api crate builds itself (nothing to map).
macro_rules! body {
    ($($ty:ident),* $(,)?) => {$(
        impl ToDto for t::$ty {
            type Dto = t::$ty;
            fn to_dto(self) -> t::$ty {
                self
            }
        }
    )*};
}

body!(VolumeUrl);

impl<T: ToDto> ToDto for Option<T> {
    type Dto = Option<T::Dto>;
    fn to_dto(self) -> Self::Dto {
        self.map(ToDto::to_dto)
    }
}

impl<T: ToDto> ToDto for Vec<T> {
    type Dto = Vec<T::Dto>;
    fn to_dto(self) -> Self::Dto {
        self.into_iter().map(ToDto::to_dto).collect()
    }
}

impl<T: ToDto> ToDto for BTreeMap<String, T> {
    type Dto = BTreeMap<String, T::Dto>;
    fn to_dto(self) -> Self::Dto {
        self.into_iter().map(|(k, v)| (k, v.to_dto())).collect()
    }
}

impl<T: ToDomain> ToDomain for Option<T> {
    type Domain = Option<T::Domain>;
    fn to_domain(self) -> Self::Domain {
        self.map(ToDomain::to_domain)
    }
}

impl<T: ToDomain> ToDomain for Vec<T> {
    type Domain = Vec<T::Domain>;
    fn to_domain(self) -> Self::Domain {
        self.into_iter().map(ToDomain::to_domain).collect()
    }
}

/// The typed enums of the catalog's state module travel as their strings.
macro_rules! as_string {
    ($($ty:ty),* $(,)?) => {$(
        impl ToDto for $ty {
            type Dto = String;
            fn to_dto(self) -> String {
                self.as_str().to_string()
            }
        }
    )*};
}

as_string!(GroupState, Role, Mode, SyncState);

/// A domain type to the body of the same fields.
macro_rules! to_dto {
    ($($from:ident)::+ => $to:ident { $($f:ident),* $(,)? }) => {
        impl ToDto for $($from)::+ {
            type Dto = t::$to;
            fn to_dto(self) -> t::$to {
                let $($from)::+ { $($f),* } = self;
                t::$to { $($f: $f.to_dto()),* }
            }
        }
    };
}

/// A request body to the domain request of the same fields.
macro_rules! to_domain {
    ($from:ident => $($to:ident)::+ { $($f:ident),* $(,)? }) => {
        impl ToDomain for t::$from {
            type Domain = $($to)::+;
            fn to_domain(self) -> $($to)::+ {
                let t::$from { $($f),* } = self;
                $($to)::+ { $($f: $f.to_domain()),* }
            }
        }
    };
}

// The engine: the site, volumes, partners, authorization, settings, VMs.
to_dto!(engine::SiteInfo => SiteInfo { name, fingerprint, listen, api, nbd, version, data_dir });
to_dto!(engine::ImportProgress => ImportProgress { copied_bytes, total_bytes, error });
to_dto!(engine::VolumeInfo => VolumeInfo { name, size_bytes, block_size, dirty_bytes, role, state, created_at, url, connections, import });
to_dto!(engine::Event => Event { id, at, kind, subject, message });
to_dto!(engine::PartnerInfo => PartnerInfo { name, address, fingerprint, created_at, last_handshake_at, rtt_ms, last_error, reachable });
to_dto!(engine::AuthzEntry => AuthzEntry { allowed_primary, storage_location, security_tag, created_at });
to_dto!(engine::SiteSettings => SiteSettings { allow_any_partner, default_storage_location, bandwidth_bytes_per_sec });
to_dto!(engine::VmInfo => VmInfo { name, volumes, start, stop, status, created_at });
to_domain!(CreateVolume => engine::CreateVolume { name, size_bytes, block_size, import_path });
to_domain!(AddPartner => engine::AddPartner { name, address, fingerprint });
to_domain!(AddAuthz => engine::AddAuthz { allowed_primary, storage_location, security_tag });
to_domain!(UpdateSiteSettings => engine::UpdateSiteSettings { allow_any_partner, default_storage_location, bandwidth_bytes_per_sec });
to_domain!(CreateVm => engine::CreateVm { name, volumes, start, stop, status });
to_domain!(SetVm => engine::SetVm { start, stop, status, volumes });

// Bodies the replication service and the plans still build themselves.
body!(
    GroupStatus,
    GroupMeasure,
    PitEntry,
    SyncResult,
    VerifyResult,
    ResyncResult,
    FailoverResult,
    ReverseResult,
    PitExport,
    PitCheck,
    SeedExport,
    PartnerTestResult,
    AuthzCheckResult,
);

// The plans: definitions, runs and their reports.
to_dto!(plan::PlanInfo => PlanInfo { name, protected_site, recovery_site, description, test_network, parallel, created_at, groups, vms, steps });
to_dto!(plan::PlanVm => PlanVm { vm, group, priority, wait_for, wait_timeout_secs });
to_dto!(plan::PlanStep => PlanStep { name, kind, command, prompt, after_tier, skip_in_test, timeout_secs });
to_dto!(plan::PlanRunGroup => PlanRunGroup { group, pit, pit_name, pit_created_at, rpo_seconds });
to_dto!(plan::PlanRunStep => PlanRunStep { index, name, kind, group, vm, tier, site, status, started_at, finished_at, duration_ms, output, error });
to_dto!(plan::PlanRunReport => PlanRunReport { id, plan, mode, site, status, from_site, to_site, started_at, finished_at, duration_ms, rto_seconds, groups, steps, errors, waiting_for, html_path });
to_dto!(plan::PlanRunSummary => PlanRunSummary { id, mode, site, status, started_at, finished_at, rto_seconds, errors });
to_domain!(CreatePlan => plan::CreatePlan { name, protected_site, recovery_site, description, test_network, parallel });
to_domain!(PlanAddGroup => plan::PlanAddGroup { group });
to_domain!(PlanSetPriority => plan::PlanSetPriority { vm, priority, wait_for, no_wait, wait_timeout_secs });
to_domain!(PlanAddStep => plan::PlanAddStep { name, command, prompt, after_tier, skip_in_test, timeout_secs });
to_domain!(PlanRunRequest => plan::PlanRunRequest { mode, resume });
to_domain!(PlanRunGroup => plan::PlanRunGroup { group, pit, pit_name, pit_created_at, rpo_seconds });
to_domain!(PlanRunStep => plan::PlanRunStep { index, name, kind, group, vm, tier, site, status, started_at, finished_at, duration_ms, output, error });
to_domain!(PlanRunReport => plan::PlanRunReport { id, plan, mode, site, status, from_site, to_site, started_at, finished_at, duration_ms, rto_seconds, groups, steps, errors, waiting_for, html_path });

/// A run's report as the CLI reads it from the API, for the plan crate's
/// text summary and HTML page.
pub fn plan_run_report(r: t::PlanRunReport) -> offsite_plan::PlanRunReport {
    r.to_domain()
}
