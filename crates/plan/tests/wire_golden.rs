//! Golden JSON of the recovery plans' site-to-site bodies (kinds 40–42,
//! `tests/fixtures/plan/*.json`): each fixture decodes as its kind and
//! encodes back to the same bytes, so field names, order and types are
//! pinned. The fixtures are the v1 encoding (what an un-upgraded peer
//! sends); if this test fails, the wire changed: add an optional field
//! instead, and a line in `offsite_replication::control`'s changelog.

use offsite_plan::wire::{PlanPut, PlanRequest, RunRecord, SiteOp, SiteOpDone, kinds};
use offsite_replication::control::{Reply, Rpc};

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plan")
        .join(name);
    let mut text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    text
}

fn check(kind: u16, name: &str) -> PlanRequest {
    let golden = fixture(name);
    let request = PlanRequest::decode(kind, &golden).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (k, body) = request.encode();
    assert_eq!(k, kind);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&golden),
        "{name}: the encoding changed"
    );
    request
}

#[test]
fn plan_bodies_match_their_fixtures() {
    let PlanRequest::Put(put) = check(kinds::PLAN_PUT, "40-plan_put.json") else {
        panic!("PLAN_PUT");
    };
    assert_eq!(put.plan.vms.len(), 1);
    assert!(!put.delete);
    assert_eq!(<PlanPut as Rpc>::KIND, 40);
    let PlanRequest::SiteOp(op) = check(kinds::PLAN_SITE_OP, "41-plan_site_op.json") else {
        panic!("PLAN_SITE_OP");
    };
    assert_eq!((op.op.as_str(), op.vm.as_deref()), ("stop-vm", Some("web")));
    assert_eq!(<SiteOp as Rpc>::KIND, 41);
    let PlanRequest::RunRecord(r) = check(kinds::PLAN_RUN_RECORD, "42-plan_run_record.json") else {
        panic!("PLAN_RUN_RECORD");
    };
    assert_eq!(r.report.steps.len(), 1);
    assert_eq!(<RunRecord as Rpc>::KIND, 42);

    let golden = fixture("reply-site-op-done.json");
    let done = SiteOpDone::decode(&golden).unwrap();
    assert_eq!(done.encode(), golden);
}

#[test]
fn other_kinds_are_not_plan_requests() {
    assert!(PlanRequest::decode(43, b"{}").is_err());
    assert!(PlanRequest::decode(kinds::PLAN_SITE_OP, b"{\"op\":1}").is_err());
}
