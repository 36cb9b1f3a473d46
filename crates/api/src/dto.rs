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
use offsite_replication as replication;

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

as_string!(
    GroupState,
    Role,
    Mode,
    SyncState,
    engine::TlsMode,
    engine::config::ApiTlsMode,
    replication::PointKind
);

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
to_dto!(engine::SiteInfo => SiteInfo { name, fingerprint, listen, api, api_url, api_tls, api_fingerprint, nbd, version, data_dir });
to_dto!(engine::ImportProgress => ImportProgress { copied_bytes, total_bytes, error });
to_dto!(engine::VolumeInfo => VolumeInfo { name, size_bytes, block_size, dirty_bytes, role, state, created_at, url, nbd_tls, connections, import, hydration });
to_dto!(engine::Hydration => Hydration { local_bytes, total_bytes });
to_dto!(engine::Event => Event { id, at, kind, subject, message });
// The console's URL is the replication service's to know: see
// `with_consoles`.
impl ToDto for engine::PartnerInfo {
    type Dto = t::PartnerInfo;
    fn to_dto(self) -> t::PartnerInfo {
        let engine::PartnerInfo {
            name,
            address,
            fingerprint,
            created_at,
            last_handshake_at,
            rtt_ms,
            last_error,
            reachable,
        } = self;
        t::PartnerInfo {
            name,
            address,
            fingerprint,
            created_at,
            last_handshake_at,
            rtt_ms,
            last_error,
            reachable,
            console_url: None,
        }
    }
}

/// Partners with the console URLs the partner monitor learnt, for those
/// reachable now.
pub(crate) fn with_consoles(
    mut partners: Vec<t::PartnerInfo>,
    repl: &offsite_replication::Replication,
) -> Vec<t::PartnerInfo> {
    for p in partners.iter_mut().filter(|p| p.reachable) {
        p.console_url = repl.partner_console(&p.name);
    }
    partners
}
impl ToDto for replication::ReplacedAction {
    type Dto = t::ReplacedAction;
    fn to_dto(self) -> t::ReplacedAction {
        use replication::ReplacedAction as R;
        match self {
            R::FullCopy => t::ReplacedAction::FullCopy,
            R::Unchanged => t::ReplacedAction::Unchanged,
            R::ReverseNext => t::ReplacedAction::ReverseNext,
            R::FailOverFirst => t::ReplacedAction::FailOverFirst,
            R::Pending => t::ReplacedAction::Pending,
        }
    }
}
impl ToDto for replication::AttachAction {
    type Dto = t::AttachAction;
    fn to_dto(self) -> t::AttachAction {
        use replication::AttachAction as A;
        match self {
            A::Attached => t::AttachAction::Attached,
            A::Exists => t::AttachAction::Exists,
            A::NeedsKey => t::AttachAction::NeedsKey,
            A::Failed => t::AttachAction::Failed,
        }
    }
}
to_dto!(replication::AttachedGroup => AttachedGroup { group, action, primary, pits, encrypted, detail });
to_dto!(plan::AdoptedPlan => AdoptedPlan { plan, adopted, detail });
to_dto!(replication::ReplacedGroup => ReplacedGroup { group, action, detail });
to_dto!(plan::SharedPlan => SharedPlan { plan, sent, runs_sent, detail });
to_dto!(engine::AuthzEntry => AuthzEntry { allowed_primary, storage_location, security_tag, created_at });
to_dto!(engine::GroupKeyExport => GroupKeyExport { group, key_id, key });
to_dto!(engine::GroupKeyInfo => GroupKeyInfo { group, key_id });
to_dto!(engine::SiteSettings => SiteSettings { allow_any_partner, default_storage_location, bandwidth_bytes_per_sec });
// The domain's XML stays inside the site (it goes to the partner with a
// group, not to API clients, who read it with `virsh dumpxml`).
impl ToDto for engine::VmInfo {
    type Dto = t::VmInfo;
    fn to_dto(self) -> t::VmInfo {
        let engine::VmInfo {
            name,
            volumes,
            start,
            stop,
            status,
            libvirt_domain,
            libvirt_xml: _,
            libvirt_state,
            quiesce,
            thaw,
            created_at,
        } = self;
        t::VmInfo {
            name,
            volumes,
            start,
            stop,
            status,
            libvirt_domain,
            libvirt_state: libvirt_state.map(|s| s.as_str().to_string()),
            quiesce,
            thaw,
            created_at,
        }
    }
}
to_domain!(CreateVolume => engine::CreateVolume { name, size_bytes, block_size, import_path });
to_domain!(AddPartner => engine::AddPartner { name, address, fingerprint });
to_domain!(AddAuthz => engine::AddAuthz { allowed_primary, storage_location, security_tag });
to_domain!(UpdateSiteSettings => engine::UpdateSiteSettings { allow_any_partner, default_storage_location, bandwidth_bytes_per_sec });
to_domain!(CreateVm => engine::CreateVm { name, volumes, start, stop, status, libvirt, quiesce, thaw });
to_domain!(SetVm => engine::SetVm { start, stop, status, volumes, quiesce, thaw });

// The replication service: groups, PITs, failover, reverse, verify, resync.
to_dto!(replication::GroupStatus => GroupStatus { name, mode, role, state, health, health_reason, partner, last_pit, lag_seconds, pending_bytes, rpo_seconds, keep, volumes, initial_progress_percent, initial_bytes_sent, initial_durable_bytes, isolated_bytes, test_failover_pit, sync_state, on_link_loss, eta_seconds, last_error, store_dir, needs_resync, last_drill_at, confirmed_at, seal_interval_seconds, continuous_lag_seconds, transfer, resync, bandwidth_bytes_per_sec, compress, last_app_consistent_pit, app_consistent_age_seconds, app_consistent_every_seconds, quiesce_error, journal, encrypted, key_id });
to_dto!(replication::JournalStatus => JournalStatus { checkpoint_interval_ms, history_seconds, max_bytes, oldest_checkpoint_at, newest_checkpoint_at, checkpoints });
to_dto!(replication::JournalListing => JournalListing { group, site, count, application_consistent, oldest, newest, files, bytes, checkpoints });
to_dto!(replication::CheckpointEntry => CheckpointEntry { id, time, time_ns, consistency, name });
to_dto!(replication::PitRef => PitRef { id, name, created_at, app_consistent });
to_dto!(replication::TransferProgress => TransferProgress { kind, bytes_done, bytes_total, bytes_per_second, eta_seconds });
to_dto!(replication::ResyncProgress => ResyncProgress { blocks_compared, blocks_total, differing_blocks, bytes_sent, elapsed_seconds });
to_dto!(replication::ResyncResult => ResyncResult { group, compared_pit, pit, blocks_compared, differing_blocks, bytes_sent, volumes });
to_dto!(replication::VerifyResult => VerifyResult { group, pit, blocks_compared, differing_blocks, volumes });
to_dto!(replication::VerifyVolume => VerifyVolume { name, blocks_compared, differing_blocks });
to_dto!(replication::GroupMeasure => GroupMeasure { name, cycles, last_cycle_bytes, avg_cycle_bytes, max_cycle_bytes, rpo_seconds, rpo_compliance_percent, bytes_total, bytes_by_kind, errors, lag_seconds, pending_bytes });
to_dto!(replication::PitEntry => PitEntry { id, name, created_at, bytes, app_consistent });
to_dto!(replication::SyncResult => SyncResult { group, pit, hooks, errors });
to_dto!(replication::ExportedVolume => ExportedVolume { name, export, url });
to_dto!(replication::HookReport => HookReport { vm, action, exit_code, duration_ms });
to_dto!(replication::FailoverResult => FailoverResult { group, mode, pit, volumes, vms, duration_ms, errors, point });
to_dto!(replication::RecoveryPoint => RecoveryPoint { kind, id, name, time, app_consistent, pit, requested, before_requested_ms });
to_dto!(replication::SplitBrain => SplitBrain { sites, discarded_on, kept_as_pit });
to_dto!(replication::SplitBrainSide => SplitBrainSide { site, generation, written_bytes });
to_dto!(replication::ReverseResult => ReverseResult { group, pit, volumes, bytes_transferred, rolled_back_bytes, split_brain, full_copy, duration_ms });
to_dto!(replication::PitExport => PitExport { group, pit, volumes, point });
to_dto!(replication::PitCheck => PitCheck { group, pits, damaged });
to_dto!(replication::PitCheckEntry => PitCheckEntry { id, name, ok, error });
to_dto!(replication::SeedExport => SeedExport { group, dir, bytes, files });
to_dto!(replication::AuthzCheckResult => AuthzCheckResult { partner, storage_location, rule });
to_dto!(replication::PartnerTestResult => PartnerTestResult { partner, protocol_version, compression, handshake_ms, rtt_ms, bytes, seconds, mb_per_s });
to_domain!(CreateGroup => replication::CreateGroup { name, partner, vms, volumes, mode, rpo_secs, keep, bandwidth_bytes_per_sec, compress, security_tag, on_link_loss, suspend_timeout_secs, app_consistent_every_secs, checkpoint_interval_ms, journal_history_secs, journal_max_bytes, encrypt });
to_domain!(SetGroup => replication::SetGroup { mode, rpo_secs, keep, bandwidth_bytes_per_sec, compress, app_consistent_every_secs, checkpoint_interval_ms, journal_history_secs, journal_max_bytes });
to_domain!(FailoverRun => replication::FailoverRun { pit, at, test, force, skip_vm_hooks });
to_domain!(ReverseRequest => replication::ReverseRequest { discard_changes_on, dry_run });
to_domain!(PartnerTestRequest => replication::PartnerTestRequest { bytes, compress });

// The plans: definitions, runs and their reports.
to_dto!(plan::PlanInfo => PlanInfo { name, protected_site, recovery_site, description, test_network, network_map, parallel, created_at, groups, vms, steps });
to_dto!(plan::PlanVm => PlanVm { vm, group, priority, wait_for, wait_timeout_secs });
to_dto!(plan::PlanStep => PlanStep { name, kind, command, prompt, after_tier, skip_in_test, timeout_secs });
to_dto!(plan::PlanRunGroup => PlanRunGroup { group, pit, pit_name, pit_created_at, rpo_seconds, pit_app_consistent, journal_oldest, journal_newest, continuous_lag_seconds });
to_dto!(plan::PlanRunStep => PlanRunStep { index, name, kind, group, vm, tier, site, status, started_at, finished_at, duration_ms, output, error });
to_dto!(plan::PlanRunReport => PlanRunReport { id, plan, mode, site, status, from_site, to_site, started_at, finished_at, duration_ms, rto_seconds, groups, steps, errors, waiting_for, html_path, at });
to_dto!(plan::PlanRunSummary => PlanRunSummary { id, mode, site, status, started_at, finished_at, rto_seconds, errors });
to_domain!(CreatePlan => plan::CreatePlan { name, protected_site, recovery_site, description, test_network, parallel });
to_domain!(PlanAddGroup => plan::PlanAddGroup { group });
to_domain!(PlanSetNetworkMap => plan::PlanSetNetworkMap { mappings });
to_domain!(PlanSetPriority => plan::PlanSetPriority { vm, priority, wait_for, no_wait, wait_timeout_secs });
to_domain!(PlanAddStep => plan::PlanAddStep { name, command, prompt, after_tier, skip_in_test, timeout_secs });
to_domain!(PlanRunRequest => plan::PlanRunRequest { mode, resume, at });
to_domain!(PlanRunGroup => plan::PlanRunGroup { group, pit, pit_name, pit_created_at, rpo_seconds, pit_app_consistent, journal_oldest, journal_newest, continuous_lag_seconds });
to_domain!(PlanRunStep => plan::PlanRunStep { index, name, kind, group, vm, tier, site, status, started_at, finished_at, duration_ms, output, error });
to_domain!(PlanRunReport => plan::PlanRunReport { id, plan, mode, site, status, from_site, to_site, started_at, finished_at, duration_ms, rto_seconds, groups, steps, errors, waiting_for, html_path, at });

/// A run's report as the CLI reads it from the API, for the plan crate's
/// text summary and HTML page.
pub fn plan_run_report(r: t::PlanRunReport) -> offsite_plan::PlanRunReport {
    r.to_domain()
}

impl ToDto for offsite_catalog::CycleRow {
    type Dto = t::CycleEntry;
    fn to_dto(self) -> t::CycleEntry {
        let offsite_catalog::CycleRow {
            started_at,
            finished_at,
            bytes,
            pit,
            error,
        } = self;
        t::CycleEntry {
            started_at,
            finished_at,
            bytes,
            pit,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domain value and its body serialize to the same JSON (the
    /// domain types of repl and plan keep serde for the site-to-site
    /// messages that carry them).
    fn same_json<T>(v: T)
    where
        T: ToDto + serde::Serialize + Clone,
        T::Dto: serde::Serialize,
    {
        let domain = serde_json::to_string(&v).unwrap();
        let body = serde_json::to_string(&v.to_dto()).unwrap();
        assert_eq!(domain, body);
    }

    fn status(sync: bool) -> replication::GroupStatus {
        replication::GroupStatus {
            name: "g".into(),
            mode: if sync { Mode::Sync } else { Mode::Async },
            role: Role::Primary,
            state: GroupState::FailedOverElsewhere,
            health: "critical".into(),
            health_reason: Some("why".into()),
            partner: "b".into(),
            last_pit: Some(replication::PitRef {
                id: 7,
                name: Some("n".into()),
                created_at: "2024-01-01T00:00:00Z".into(),
                app_consistent: sync,
            }),
            lag_seconds: 3,
            pending_bytes: 4096,
            rpo_seconds: 300,
            keep: 24,
            volumes: vec!["v1".into(), "v2".into()],
            initial_progress_percent: Some(12.5),
            initial_bytes_sent: 9,
            initial_durable_bytes: sync.then_some(10),
            isolated_bytes: 11,
            test_failover_pit: sync.then_some(6),
            sync_state: sync.then_some(SyncState::Degraded),
            on_link_loss: sync.then(|| "suspend-writes".into()),
            eta_seconds: Some(5),
            last_error: None,
            store_dir: Some("/s".into()),
            needs_resync: sync.then(|| "verify".into()),
            last_drill_at: sync.then(|| "2024-01-01T00:00:02Z".into()),
            confirmed_at: sync.then(|| "2024-01-01T00:00:01Z".into()),
            seal_interval_seconds: sync.then_some(30),
            continuous_lag_seconds: sync.then_some(0.25),
            transfer: sync.then(|| replication::TransferProgress {
                kind: "initial".into(),
                bytes_done: 1,
                bytes_total: 2,
                bytes_per_second: 3,
                eta_seconds: None,
            }),
            resync: sync.then_some(replication::ResyncProgress {
                blocks_compared: 1,
                blocks_total: 2,
                differing_blocks: 3,
                bytes_sent: 4,
                elapsed_seconds: 5,
            }),
            bandwidth_bytes_per_sec: sync.then_some(1000),
            compress: sync,
            last_app_consistent_pit: sync.then(|| replication::PitRef {
                id: 6,
                name: None,
                created_at: "2024-01-01T00:00:00Z".into(),
                app_consistent: true,
            }),
            app_consistent_age_seconds: sync.then_some(60),
            app_consistent_every_seconds: sync.then_some(3600),
            quiesce_error: sync.then(|| "VM db: quiesce hook exited with 1".into()),
            journal: sync.then(|| replication::JournalStatus {
                checkpoint_interval_ms: 1000,
                history_seconds: 86400,
                max_bytes: 10 << 30,
                oldest_checkpoint_at: Some("2024-01-01T00:00:00.5Z".into()),
                newest_checkpoint_at: Some("2024-01-01T01:00:00.5Z".into()),
                checkpoints: Some(3601),
            }),
            encrypted: sync,
            key_id: sync.then(|| "00112233445566778899aabbccddeeff".into()),
        }
    }

    #[test]
    fn group_status_maps_states_to_their_strings() {
        let body = status(true).to_dto();
        assert_eq!(body.mode, "sync");
        assert_eq!(body.role, "primary");
        assert_eq!(body.state, "failed-over-elsewhere");
        assert_eq!(body.sync_state.as_deref(), Some("degraded"));
        same_json(status(true));
        same_json(status(false));
    }

    #[test]
    fn results_map_field_for_field() {
        let volume = replication::ExportedVolume {
            name: "v".into(),
            export: "v@g.test".into(),
            url: "nbd://h:1/v@g.test".into(),
        };
        same_json(replication::FailoverResult {
            group: "g".into(),
            mode: "test".into(),
            pit: 3,
            volumes: vec![volume.clone()],
            vms: vec![replication::HookReport {
                vm: "vm".into(),
                action: "start".into(),
                exit_code: Some(0),
                duration_ms: 4,
            }],
            duration_ms: 5,
            errors: vec!["e".into()],
            point: Some(replication::RecoveryPoint {
                kind: replication::PointKind::Checkpoint,
                id: 42,
                name: Some("before-upgrade".into()),
                time: "2026-12-07T08:15:30Z".into(),
                app_consistent: true,
                pit: 3,
                requested: "2026-12-07T08:15:31Z".into(),
                before_requested_ms: 1000,
            }),
        });
        for split_brain in [
            None,
            Some(replication::SplitBrain {
                sites: vec![replication::SplitBrainSide {
                    site: "a".into(),
                    generation: "pit 3".into(),
                    written_bytes: 4096,
                }],
                discarded_on: Some("a".into()),
                kept_as_pit: None,
            }),
        ] {
            same_json(replication::ReverseResult {
                group: "g".into(),
                pit: 4,
                volumes: vec![volume.clone()],
                bytes_transferred: 1,
                rolled_back_bytes: 2,
                split_brain,
                full_copy: false,
                duration_ms: 3,
            });
        }
        same_json(replication::GroupMeasure {
            name: "g".into(),
            cycles: 1,
            last_cycle_bytes: 2,
            avg_cycle_bytes: 3,
            max_cycle_bytes: 4,
            rpo_seconds: 5,
            rpo_compliance_percent: 99.5,
            bytes_total: 6,
            bytes_by_kind: [("cycle".to_string(), 6)].into_iter().collect(),
            errors: 0,
            lag_seconds: 7,
            pending_bytes: 8,
        });
        same_json(replication::SyncResult {
            group: "g".into(),
            pit: Some(replication::PitEntry {
                id: 1,
                name: None,
                created_at: "t".into(),
                bytes: 2,
                app_consistent: false,
            }),
            hooks: Vec::new(),
            errors: Vec::new(),
        });
        same_json(replication::SyncResult {
            group: "g".into(),
            pit: Some(replication::PitEntry {
                id: 2,
                name: None,
                created_at: "t".into(),
                bytes: 2,
                app_consistent: true,
            }),
            hooks: vec![replication::HookReport {
                vm: "db".into(),
                action: "quiesce".into(),
                exit_code: Some(0),
                duration_ms: 3,
            }],
            errors: vec!["the thaw hook of VM db exited with 1".into()],
        });
    }

    #[test]
    fn plan_run_report_maps_both_ways() {
        let report = plan::PlanRunReport {
            id: "a-1".into(),
            plan: "p".into(),
            mode: "test".into(),
            site: "b".into(),
            status: "succeeded".into(),
            from_site: "a".into(),
            to_site: "b".into(),
            started_at: "t0".into(),
            finished_at: Some("t1".into()),
            duration_ms: 5,
            rto_seconds: Some(1.5),
            groups: vec![plan::PlanRunGroup {
                group: "g".into(),
                pit: Some(3),
                pit_name: None,
                pit_created_at: Some("t".into()),
                rpo_seconds: Some(2.0),
                pit_app_consistent: true,
                journal_oldest: None,
                journal_newest: None,
                continuous_lag_seconds: None,
            }],
            steps: vec![plan::PlanRunStep {
                index: 0,
                name: "start vm".into(),
                kind: "start-vm".into(),
                group: Some("g".into()),
                vm: Some("vm".into()),
                tier: Some(1),
                site: "b".into(),
                status: "succeeded".into(),
                started_at: None,
                finished_at: None,
                duration_ms: Some(1),
                output: String::new(),
                error: None,
            }],
            errors: vec![],
            waiting_for: None,
            html_path: Some("/r.html".into()),
            at: Some("2026-12-07T08:15:30Z".into()),
        };
        same_json(report.clone());
        assert_eq!(plan_run_report(report.clone().to_dto()), report);
    }

    #[test]
    fn keep_bound_is_the_documented_one() {
        assert_eq!(replication::MAX_KEEP, t::schema::MAX_KEEP);
    }

    #[test]
    fn api_tls_modes_are_the_documented_ones() {
        use engine::config::ApiTlsMode as M;
        let modes: Vec<String> = [M::Off, M::SelfSigned, M::Files]
            .into_iter()
            .map(ToDto::to_dto)
            .collect();
        assert_eq!(modes, t::schema::API_TLS_MODES);
    }

    #[test]
    fn point_kinds_are_the_documented_ones() {
        use replication::PointKind as K;
        let kinds: Vec<String> = [K::Pit, K::Checkpoint]
            .into_iter()
            .map(ToDto::to_dto)
            .collect();
        assert_eq!(kinds, t::schema::POINT_KINDS);
    }
}
