//! The command line's contract with scripts (issue 17, "API and output"):
//! exit codes (0 ok, 1 the command failed, 2 a malformed command line),
//! every option with a fixed set of values checked by the parser, and
//! errors as JSON on stdout with `--json`.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// `offsite ARGS` with no site at all (what the parser alone decides).
fn offsite(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("OFFSITE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run offsite")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_bad_value_of_a_fixed_choice_option_is_a_usage_error() {
    // Each option whose values are a fixed set, with a value outside it:
    // (command line, the value named in clap's message).
    let cases: &[(&[&str], &str)] = &[
        (
            &["group", "create", "g", "--partner", "b", "--mode", "foo"],
            "foo",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--partner",
                "b",
                "--compress",
                "lz4",
            ],
            "lz4",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--partner",
                "b",
                "--on-link-loss",
                "panic",
            ],
            "panic",
        ),
        (&["group", "set", "g", "--mode", "semi-sync"], "semi-sync"),
        (&["plan", "run", "p", "--mode", "drill"], "drill"),
        (&["plan", "report", "a-1", "--format", "pdf"], "pdf"),
        (&["plan", "set-priority", "p", "vm", "9"], "9"),
        (
            &[
                "plan",
                "add-step",
                "p",
                "s",
                "--command",
                "true",
                "--after-tier",
                "6",
            ],
            "6",
        ),
        (&["site", "set", "--allow-any-partner", "maybe"], "maybe"),
        (&["events", "--limit", "0"], "0"),
        (&["serve", "--log-format", "xml"], "xml"),
        (
            &["group", "create", "g", "--partner", "b", "--keep", "0"],
            "0",
        ),
        (
            &[
                "plan",
                "create",
                "p",
                "--protected-site",
                "a",
                "--recovery-site",
                "b",
                "--parallel",
                "0",
            ],
            "0",
        ),
    ];
    for (args, value) in cases {
        let out = offsite(args);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "offsite {args:?} should be a usage error (exit 2): {stderr}"
        );
        assert!(
            stderr.contains("invalid value") && stderr.contains(value),
            "offsite {args:?}: clap's message should name the bad value {value:?}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "offsite {args:?}: nothing on stdout without --json: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn every_accepted_spelling_still_parses() {
    // The accepted spellings are the contract: each reaches the site (here
    // none runs, so each fails with 1 for that reason, past the parser).
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 temp dir");
    let mut lines: Vec<Vec<&str>> = Vec::new();
    for mode in ["async", "sync"] {
        lines.push(vec![
            "group",
            "create",
            "g",
            "--partner",
            "b",
            "--mode",
            mode,
        ]);
        lines.push(vec!["group", "set", "g", "--mode", mode]);
    }
    for c in ["zstd", "none"] {
        lines.push(vec![
            "group",
            "create",
            "g",
            "--partner",
            "b",
            "--compress",
            c,
        ]);
    }
    for l in ["degrade", "suspend-writes"] {
        lines.push(vec![
            "group",
            "create",
            "g",
            "--partner",
            "b",
            "--on-link-loss",
            l,
        ]);
    }
    for m in [
        "test",
        "cleanup",
        "planned",
        "disaster",
        "reprotect",
        "failback",
    ] {
        lines.push(vec!["plan", "run", "p", "--mode", m]);
    }
    for f in ["text", "json", "html"] {
        lines.push(vec!["plan", "report", "a-1", "--format", f]);
    }
    for mut args in lines {
        args.extend(["--dir", d]);
        let out = offsite(&args);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "offsite {args:?} should parse and then fail for want of a site: {stderr}"
        );
        assert!(
            stderr.contains("not an offsite data directory"),
            "offsite {args:?}: {stderr}"
        );
    }
}

#[test]
fn with_json_an_error_is_a_json_object_on_stdout() {
    let site = site("a");
    // The site answered with an error: its code and HTTP status.
    let out = site.run(&["volume", "show", "nosuch", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", text(&out.stdout)));
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    assert_eq!(v["error"]["status"], 404, "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains("nosuch"), "{v}");
    // The human line stays on stderr, the same message.
    assert_eq!(text(&out.stderr).trim_end(), format!("error: {message}"));

    // An unknown group on a route that used to answer 403 or 500.
    for args in [
        &["failover", "stop-test", "nosuch", "--json"][..],
        &["group", "status", "nosuch", "--json"],
        &["vm", "show", "nosuch", "--json"],
    ] {
        let out = site.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stdout is not JSON ({e}): {:?}",
                text(&out.stdout)
            )
        });
        assert_eq!(v["error"]["code"], "not_found", "{args:?}: {v}");
    }

    // No site answered: the client's own class of failure, no status.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = offsite(&[
        "volume",
        "show",
        "x",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", text(&out.stdout)));
    assert_eq!(v["error"]["code"], "not_a_site", "{v}");
    assert!(v["error"].get("status").is_none(), "{v}");

    // `site init` on a site: the engine's class, as the API would say it.
    let out = site.run(&[
        "site",
        "init",
        "--name",
        "b",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--nbd",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", text(&out.stdout)));
    assert_eq!(v["error"]["code"], "conflict", "{v}");

    // A malformed command line with --json: exit 2, and JSON too.
    let out = offsite(&[
        "group",
        "create",
        "g",
        "--partner",
        "b",
        "--mode",
        "foo",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", text(&out.stdout)));
    assert_eq!(v["error"]["code"], "usage", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("foo"),
        "{v}"
    );

    // Success is unchanged: one JSON document, the result.
    site.create_volume("v1", "1M");
    let v = site.json(&["volume", "show", "v1"]);
    assert_eq!(v["name"], "v1", "{v}");
}

#[test]
fn plan_report_as_html_and_json_is_refused_as_contradictory() {
    let out = offsite(&["plan", "report", "a-1", "--format", "html", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--json") && stderr.contains("html"),
        "the refusal should name both options: {stderr}"
    );
    // Either alone parses (and then fails for want of a site).
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().unwrap();
    for args in [
        &["plan", "report", "a-1", "--format", "html", "--dir", d][..],
        &[
            "plan", "report", "a-1", "--format", "json", "--json", "--dir", d,
        ],
    ] {
        assert_eq!(offsite(args).status.code(), Some(1), "{args:?}");
    }
}

#[test]
fn a_bad_recovery_time_is_a_usage_error_showing_both_forms() {
    let cases: &[&[&str]] = &[
        &["failover", "run", "g", "--at", "yesterday"],
        &["failover", "run", "g", "--test", "--at", "10 minutes ago"],
        &["pit", "export", "g", "--at", "2026-12-07 08:15"],
        &[
            "plan",
            "run",
            "p",
            "--mode",
            "disaster",
            "--at",
            "5 fortnights ago",
        ],
    ];
    for args in cases {
        let out = offsite(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("2026-12-07T08:15:30Z") && stderr.contains("10m ago"),
            "{args:?} shows an RFC 3339 and a relative time: {stderr}"
        );
    }
    // A PIT and a time at once, or neither for an export: usage errors.
    for args in [
        &["failover", "run", "g", "--pit", "3", "--at", "now"][..],
        &["pit", "export", "g", "3", "--at", "now"],
        &["pit", "export", "g"],
    ] {
        let out = offsite(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
