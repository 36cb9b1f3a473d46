//! The REST API as a contract (issue 17, "API and output"): an unknown
//! name answers 404 on every route that takes one, whatever the operation;
//! user errors are not logged at ERROR by the daemon; and the OpenAPI
//! document holds against a running site (schemathesis).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use offsite_testkit::TestSite;

/// Every route that names a group, VM, plan, plan run, volume, PIT,
/// partner or authorization entry, called with a name that does not exist
/// and an otherwise valid body: (method, path, body).
fn unknown_name_requests() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        // Groups, and the PITs of an unknown group.
        ("GET", "/groups/NOSUCH", None),
        ("DELETE", "/groups/NOSUCH", None),
        ("DELETE", "/groups/NOSUCH?force=true", None),
        ("POST", "/groups/NOSUCH/start", Some("{}")),
        ("POST", "/groups/NOSUCH/pause", None),
        ("POST", "/groups/NOSUCH/resume", None),
        ("POST", "/groups/NOSUCH/set", Some("{}")),
        ("POST", "/groups/NOSUCH/set", Some(r#"{"mode":"sync"}"#)),
        (
            "POST",
            "/groups/NOSUCH/set",
            Some(r#"{"rpo_secs":60,"keep":2}"#),
        ),
        ("DELETE", "/groups/NOSUCH?delete_replica=true", None),
        ("POST", "/groups/NOSUCH/sync", Some("{}")),
        ("POST", "/groups/NOSUCH/sync", Some(r#"{"pit_name":"p1"}"#)),
        ("POST", "/groups/NOSUCH/verify", None),
        ("POST", "/groups/NOSUCH/resync", None),
        ("POST", "/groups/NOSUCH/unfence", None),
        ("POST", "/groups/NOSUCH/unfence?force=true", None),
        ("POST", "/groups/NOSUCH/failover", Some("{}")),
        ("POST", "/groups/NOSUCH/failover", Some(r#"{"test":true}"#)),
        ("POST", "/groups/NOSUCH/failover", Some(r#"{"force":true}"#)),
        ("POST", "/groups/NOSUCH/failover/stop-test", None),
        ("POST", "/groups/NOSUCH/failover/prepare", None),
        ("POST", "/groups/NOSUCH/failover/commit", None),
        ("POST", "/groups/NOSUCH/failover/revert", None),
        ("POST", "/groups/NOSUCH/reverse", Some("{}")),
        (
            "POST",
            "/groups/NOSUCH/reverse",
            Some(r#"{"dry_run":true}"#),
        ),
        (
            "POST",
            "/groups/NOSUCH/export-seed",
            Some(r#"{"to":"/tmp/offsite-no-such-seed"}"#),
        ),
        ("GET", "/groups/NOSUCH/measure", None),
        ("GET", "/groups/NOSUCH/pits", None),
        ("GET", "/groups/NOSUCH/cycles", None),
        ("POST", "/groups/NOSUCH/pits/check", None),
        ("POST", "/groups/NOSUCH/pits/1/export", None),
        ("POST", "/groups/NOSUCH/pits/nightly/export", None),
        ("POST", "/groups/NOSUCH/pits/1/release", None),
        ("POST", "/groups/NOSUCH/pits/nightly/release", None),
        // VMs.
        ("GET", "/vms/NOSUCH", None),
        ("DELETE", "/vms/NOSUCH", None),
        ("PATCH", "/vms/NOSUCH", Some(r#"{"start":"true"}"#)),
        // Plans and plan runs.
        ("GET", "/plans/NOSUCH", None),
        ("DELETE", "/plans/NOSUCH", None),
        ("POST", "/plans/NOSUCH/groups", Some(r#"{"group":"g"}"#)),
        (
            "POST",
            "/plans/NOSUCH/priorities",
            Some(r#"{"vm":"v","priority":1}"#),
        ),
        (
            "POST",
            "/plans/NOSUCH/steps",
            Some(r#"{"name":"s","command":"true"}"#),
        ),
        ("POST", "/plans/NOSUCH/run", Some(r#"{"mode":"test"}"#)),
        ("POST", "/plans/NOSUCH/run", Some(r#"{"resume":true}"#)),
        ("POST", "/plans/NOSUCH/continue", None),
        ("GET", "/plans/NOSUCH/runs", None),
        ("DELETE", "/plans/NOSUCH/groups/g", None),
        ("DELETE", "/plans/NOSUCH/steps/s", None),
        ("GET", "/plan-runs/NOSUCH-1", None),
        ("GET", "/plan-runs/NOSUCH-1/report.html", None),
        // Volumes.
        ("GET", "/volumes/NOSUCH", None),
        ("DELETE", "/volumes/NOSUCH", None),
        ("GET", "/volumes/NOSUCH/url", None),
        ("POST", "/volumes/NOSUCH/clear-dirty", None),
        ("POST", "/volumes/NOSUCH/clear-dirty?force=true", None),
        // Partners and authorization entries.
        ("GET", "/partners/NOSUCH", None),
        ("DELETE", "/partners/NOSUCH", None),
        (
            "PATCH",
            "/partners/NOSUCH",
            Some(r#"{"address":"127.0.0.1:9"}"#),
        ),
        (
            "POST",
            "/partners/NOSUCH/test",
            Some(r#"{"compress":false}"#),
        ),
        ("POST", "/partners/NOSUCH/authz-check", Some("{}")),
        ("DELETE", "/authz/NOSUCH", None),
        // Unknown names inside a body.
        (
            "POST",
            "/vms",
            Some(r#"{"name":"vm1","volumes":["NOSUCH"]}"#),
        ),
        (
            "POST",
            "/groups",
            Some(
                r#"{"name":"g1","partner":"NOSUCH","volumes":["v1"],"mode":"async","rpo_secs":300,"keep":3}"#,
            ),
        ),
    ]
}

#[test]
fn unknown_names_answer_404_on_every_route_and_are_not_logged_as_errors() {
    let site = site("a");
    // A volume exists, so a body naming it is otherwise valid.
    site.create_volume("v1", "1M");
    let mut wrong = Vec::new();
    for (method, path, body) in unknown_name_requests() {
        let (status, answer) = api_request(&site, method, path, body);
        let parsed: Option<serde_json::Value> = serde_json::from_str(&answer).ok();
        let code = parsed
            .as_ref()
            .and_then(|v| v["code"].as_str())
            .unwrap_or_default()
            .to_string();
        let message = parsed
            .as_ref()
            .and_then(|v| v["message"].as_str())
            .unwrap_or_default()
            .to_string();
        if status != 404 || code != "not_found" || !message.contains("NOSUCH") {
            wrong.push(format!("{method} {path}: {status} {answer}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "these requests with an unknown name did not answer 404 not_found naming it:\n{}",
        wrong.join("\n")
    );
    // A user's mistake is not the daemon's error.
    let log = site.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the daemon logged user errors at ERROR:\n{}",
        errors.join("\n")
    );
}

#[test]
fn taken_names_answer_409_conflict() {
    let site = site("a");
    site.create_volume("v1", "1M");
    let requests: &[(&str, &str)] = &[
        ("/volumes", r#"{"name":"v2","size_bytes":1048576}"#),
        ("/vms", r#"{"name":"vm1","volumes":["v1"]}"#),
        (
            "/authz",
            r#"{"allowed_primary":"b","storage_location":"STORE"}"#,
        ),
    ];
    let store = site.scratch().join("store");
    let mut wrong = Vec::new();
    for (path, body) in requests {
        let body = body.replace("STORE", &store.display().to_string());
        let (first, answer) = api_request(&site, "POST", path, Some(&body));
        assert_eq!(first, 200, "POST {path} {body}: {answer}");
        let (second, answer) = api_request(&site, "POST", path, Some(&body));
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if second != 409 || v["code"] != "conflict" {
            wrong.push(format!("POST {path} again: {second} {answer}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "taken names did not answer 409 conflict:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn unknown_pits_of_a_known_group_answer_404_at_both_sites() {
    let (a, b) = group_pair();
    a.create_volume("v1", "1M");
    create_group(&a, "g1", b.name(), &["--volume", "v1"], &[]);
    a.ok(&["group", "start", "g1"]);
    wait_group(&a, "g1", "first PIT", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && st["last_pit"].is_object()
    });
    // At the replica, where the PITs are; at the primary, which forwards
    // a release to the replica.
    let requests: &[(&TestSite, &str, &str, Option<&str>)] = &[
        (&b, "POST", "/groups/g1/pits/NOSUCH/export", None),
        (&b, "POST", "/groups/g1/pits/999999/export", None),
        (&b, "POST", "/groups/g1/pits/NOSUCH/release", None),
        (
            &b,
            "POST",
            "/groups/g1/failover",
            Some(r#"{"test":true,"pit":"NOSUCH"}"#),
        ),
        (&a, "POST", "/groups/g1/pits/NOSUCH/release", None),
        (&a, "POST", "/groups/g1/pits/999999/release", None),
    ];
    let mut wrong = Vec::new();
    for (site, method, path, body) in requests {
        let (status, answer) = api_request(site, method, path, *body);
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if status != 404 || v["code"] != "not_found" {
            wrong.push(format!(
                "{} {method} {path}: {status} {answer}",
                site.name()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "unknown PITs did not answer 404 not_found:\n{}",
        wrong.join("\n")
    );
    // The group is untouched: still replicating, no test failover.
    let st = group_status(&b, "g1");
    assert_eq!(st["state"], "replicating", "{st}");
}

/// The document's list of group states is written by hand; the code can
/// set only the values of `offsite_catalog::GroupState` (the catalog's
/// CHECK constraint refuses others), so the list must be exactly those, so
/// that a new state cannot reach a client that validates against the
/// document.
#[test]
fn every_group_state_the_code_sets_is_declared() {
    let states: Vec<&str> = offsite_catalog::GroupState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert!(states.contains(&"replicating"), "{states:?}");
    assert_eq!(
        offsite_api_types::schema::GROUP_STATES,
        states,
        "group states of the code and of api-types' schema::GROUP_STATES"
    );
}

#[test]
fn the_openapi_document_declares_errors_names_enums_and_ranges() {
    let site = site("a");
    let (status, body) = http_get(&site_addr(&site, "api"), "/api/openapi.json");
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/api/v1/")) {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            let mut want = vec!["401"];
            if path.contains("{name}") || path.contains("{id}") || path.contains("{pattern}") {
                want.push("404");
            }
            let has_query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if op.get("requestBody").is_some() || has_query {
                want.push("400");
            }
            for status in want {
                if responses.get(status).is_none() {
                    missing.push(format!("{method} {path}: {status}"));
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" && (p["name"] == "name" || p["name"] == "pit") {
                    let schema = &p["schema"];
                    if schema["pattern"] != "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
                        || schema["maxLength"] != 64
                    {
                        missing.push(format!("{method} {path}: pattern of {}", p["name"]));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "undeclared:\n{}", missing.join("\n"));
    let schemas = &doc["components"]["schemas"];
    let values = |schema: &str, field: &str| -> Vec<String> {
        schemas[schema]["properties"][field]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{field} has no enum: {}", schemas[schema]))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(
        values("GroupStatus", "mode"),
        ["async", "sync", "continuous"]
    );
    assert_eq!(values("GroupStatus", "role"), ["primary", "replica"]);
    assert!(values("GroupStatus", "state").contains(&"replicating".to_string()));
    assert_eq!(
        values("CreateGroup", "mode"),
        ["async", "sync", "continuous"]
    );
    assert!(values("VolumeInfo", "state").contains(&"ready".to_string()));
    assert!(values("VolumeInfo", "role").contains(&"primary".to_string()));
    let priority = &schemas["PlanSetPriority"]["properties"]["priority"];
    assert_eq!(
        (&priority["minimum"], &priority["maximum"]),
        (&1.into(), &5.into()),
        "{priority}"
    );
    let tier = &schemas["PlanAddStep"]["properties"]["after_tier"];
    assert_eq!(tier["maximum"], 5, "{tier}");
    let rpo = &schemas["CreateGroup"]["properties"]["rpo_secs"];
    assert_eq!(
        (&rpo["minimum"], &rpo["maximum"]),
        (&30.into(), &86400.into()),
        "{rpo}"
    );
    assert_eq!(
        schemas["CreateVolume"]["properties"]["name"]["pattern"],
        "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    );
}

/// Operations left out of the fuzzing, each for a reason that is not the
/// API's: `POST /partners` would have the site dial whatever address the
/// fuzzer makes up, from a machine the test shares; `partner test` sends
/// up to 64 GiB to the partner, minutes per boundary value; `export-seed`
/// creates and writes whatever absolute directory the body names, and
/// `start --seed` moves a seed from such a directory into the replica
/// store (the group is named below, so both would reach the file system
/// of the machine the test runs on); `authz add` and `site set` create the
/// storage location they are given (as root, a made-up directory under
/// `/`); `vm create`, `vm set` and `plan add-step` store shell commands
/// (VM hooks, callouts) that a fuzzed `failover prepare` or plan run would
/// then execute with `sh -c`, as the daemon's user; `GET /stream` is the
/// console's live stream, which by design never ends (the console tests
/// read it). Every other
/// operation is fuzzed, the destructive ones (delete, teardown, failover,
/// reverse) included; see the configuration written below.
const NOT_FUZZED: &[&str] = &[
    "POST /api/v1/partners",
    "POST /api/v1/partners/{name}/test",
    "POST /api/v1/groups/{name}/export-seed",
    "POST /api/v1/groups/{name}/start",
    "POST /api/v1/authz",
    "PATCH /api/v1/site/settings",
    "POST /api/v1/vms",
    "PATCH /api/v1/vms/{name}",
    "POST /api/v1/plans/{name}/steps",
    "GET /api/v1/stream",
];

/// Test cases per operation: enough for the coverage phase (every
/// boundary and wrong type of each field) plus some random bodies, and a
/// run of about a minute on two shared cores.
const MAX_EXAMPLES: &str = "40";

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    if !offsite_testkit::have_tool("schemathesis") {
        return;
    }
    // A site with something in every list: a volume, a VM, a partner and
    // a replicating group, so that the lists' answers (volume and group
    // states, roles, modes) are checked against the document too.
    let (a, b) = group_pair();
    a.create_volume("v1", "1M");
    a.ok(&["vm", "create", "vm1", "--volume", "v1"]);
    create_group(&a, "g1", b.name(), &["--vm", "vm1"], &[]);
    a.ok(&["group", "start", "g1"]);
    wait_group(&a, "g1", "first PIT", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && st["last_pit"].is_object()
    });
    let api = site_addr(&a, "api");
    let token = std::fs::read_to_string(a.dir().join("api.token")).expect("read api.token");
    let mut cmd = Command::new("schemathesis");
    cmd.args(["run", &format!("http://{api}/api/openapi.json")])
        // Every check but positive_data_acceptance: it wants each
        // schema-valid body accepted, and the API refuses (400, with an
        // ApiError, which the other checks verify) what a JSON Schema
        // cannot say: that a plan's two sites differ, that a hook command
        // is not empty, that a HOST:PORT parses, or an integer written
        // as 3.0.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        // A longer run: OFFSITE_SCHEMATHESIS_EXAMPLES=500.
        .args([
            "--max-examples",
            &std::env::var("OFFSITE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into()),
        ])
        // One worker: schemathesis' coverage phase parses Python sources
        // from several threads, which CPython 3.11 before 3.11.8 can fail
        // ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--output-truncate", "false"]);
    for op in NOT_FUZZED {
        cmd.args(["--exclude-name", op]);
    }
    // The seeded names, so that the operations on one group, volume or VM
    // reach the handlers' logic instead of answering 404: every method but
    // DELETE (a teardown or delete early in the run would turn the rest
    // back into 404s; DELETE is fuzzed with made-up names, and the stateful
    // phase deletes the seeded objects through the names it finds in the
    // lists). Failover, reverse, mode changes and the rest run against
    // the live group and must answer as documented whatever its state.
    std::fs::write(
        a.scratch().join("schemathesis.toml"),
        r#"
[[operations]]
include-path-regex = "^/api/v1/groups/\\{name\\}"
exclude-method = "DELETE"
parameters = { "path.name" = "g1" }

[[operations]]
include-path-regex = "^/api/v1/volumes/\\{name\\}"
exclude-method = "DELETE"
parameters = { "path.name" = "v1" }

[[operations]]
include-path-regex = "^/api/v1/vms/\\{name\\}"
exclude-method = "DELETE"
parameters = { "path.name" = "vm1" }
"#,
    )
    .expect("write schemathesis.toml");
    cmd.current_dir(a.scratch());
    let out = output_within(&mut cmd, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown with --nocapture, or when the test fails.
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found server errors or schema violations ({}):\n{stdout}\n{}\nsite log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 40)
    );
    assert!(
        stdout.contains("API Operations:") && !stdout.contains("Tested: 0"),
        "schemathesis tested nothing:\n{stdout}"
    );
    // What the fuzzer sent was the user's mistake, never the site's error.
    let log = a.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the daemon logged errors while fuzzed:\n{}",
        errors.join("\n")
    );
}
