//! Authorization entries on the replica site and `partner check` from the
//! primary: no entry, wildcards, most specific entry wins, security tags,
//! allow-any-partner with the default storage location, unpaired sites,
//! and the validation of `authz add`.

mod common;

use std::path::Path;

use common::*;
use offsite_testkit::TestSite;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `partner check NAME [--security-tag T] --json` from `primary`, which
/// must be accepted.
fn check_ok(primary: &TestSite, replica: &TestSite, tag: Option<&str>) -> serde_json::Value {
    let mut args = vec!["partner", "check", replica.name()];
    if let Some(t) = tag {
        args.extend(["--security-tag", t]);
    }
    let r = primary.json(&args);
    assert_eq!(r["partner"].as_str(), Some(replica.name()), "{r}");
    r
}

/// The same, refused; returns the one-line error.
fn check_refused(primary: &TestSite, replica: &TestSite, tag: Option<&str>) -> String {
    let mut args = vec!["partner", "check", replica.name()];
    if let Some(t) = tag {
        args.extend(["--security-tag", t]);
    }
    let err = primary.fails(&args);
    // --json does not turn a refusal into success either.
    args.push("--json");
    primary.fails(&args);
    err
}

fn authz_add(
    replica: &TestSite,
    pattern: &str,
    dir: &Path,
    tag: Option<&str>,
) -> serde_json::Value {
    let d = s(dir);
    let mut args = vec![
        "authz",
        "add",
        "--allowed-primary",
        pattern,
        "--storage-location",
        &d,
    ];
    if let Some(t) = tag {
        args.extend(["--security-tag", t]);
    }
    replica.json(&args)
}

#[test]
fn no_entry_is_refused_with_the_command_that_fixes_it() {
    let a = site("a.example.com");
    let b = site("replica");
    pair(&a, &b);
    let err = check_refused(&a, &b, None);
    assert!(err.contains("no authorization entry"), "{err}");
    assert!(
        err.contains("authz add") && err.contains("a.example.com"),
        "the refusal should suggest `authz add` for this primary: {err}"
    );
    assert!(
        err.contains("replica"),
        "the refusal should name the replica site: {err}"
    );
    // The replica records its decision.
    let refused = events_about(&b, "a.example.com");
    assert!(
        refused.iter().any(|(k, _)| k == "authz.refused"),
        "{refused:?}"
    );
}

#[test]
fn wildcard_entry_accepts_matching_primaries_only() {
    let a = site("a.example.com");
    let o = site("o.example.org");
    let b = site("replica");
    pair(&a, &b);
    pair(&o, &b);
    let dir1 = b.scratch().join("dir1");
    let e = authz_add(&b, "*.example.com", &dir1, None);
    assert_eq!(e["allowed_primary"], "*.example.com", "{e}");
    assert_eq!(
        e["storage_location"].as_str(),
        Some(s(&dir1).as_str()),
        "{e}"
    );
    assert!(e["security_tag"].is_null(), "{e}");
    assert!(dir1.is_dir(), "authz add creates the storage location");

    let r = check_ok(&a, &b, None);
    assert_eq!(
        r["storage_location"].as_str(),
        Some(s(&dir1).as_str()),
        "{r}"
    );
    let rule = r["rule"].as_str().unwrap_or_default();
    assert!(rule.contains("*.example.com"), "{r}");
    let human = a.ok(&["partner", "check", "replica"]);
    assert!(
        human.contains("*.example.com") && human.contains(&s(&dir1)),
        "the human output should name the rule and the location: {human}"
    );
    // A tag is fine when the entry requires none.
    check_ok(&a, &b, Some("anything"));

    let err = check_refused(&o, &b, None);
    assert!(err.contains("no authorization entry"), "{err}");

    // Removing the entry refuses again.
    b.ok(&["authz", "remove", "*.example.com"]);
    check_refused(&a, &b, None);
    assert_eq!(b.json(&["authz", "list"]), serde_json::json!([]));
}

#[test]
fn most_specific_entry_wins() {
    let p = site("p.dc1.example.com");
    let q = site("q.example.com");
    let r = site("r.other.net");
    let b = site("replica");
    for primary in [&p, &q, &r] {
        pair(primary, &b);
    }
    let root = b.scratch();
    let (d0, d1, d2, d3) = (
        root.join("any"),
        root.join("dir1"),
        root.join("dir2"),
        root.join("exact"),
    );
    authz_add(&b, "*.example.com", &d1, None);
    authz_add(&b, "*.dc1.example.com", &d2, None);
    let at = |primary: &TestSite| {
        check_ok(primary, &b, None)["storage_location"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(at(&p), s(&d2));
    assert_eq!(at(&q), s(&d1));
    check_refused(&r, &b, None);

    authz_add(&b, "*", &d0, None);
    assert_eq!(at(&r), s(&d0), "`*` matches everyone else");
    assert_eq!(at(&p), s(&d2), "`*` loses to every suffix");

    authz_add(&b, "p.dc1.example.com", &d3, None);
    let res = check_ok(&p, &b, None);
    assert_eq!(
        res["storage_location"].as_str(),
        Some(s(&d3).as_str()),
        "{res}"
    );
    assert!(
        res["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("p.dc1.example.com"),
        "{res}"
    );
    assert_eq!(at(&q), s(&d1));

    let list = b.json(&["authz", "list"]);
    let patterns: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["allowed_primary"].as_str())
        .collect();
    for want in [
        "*",
        "*.example.com",
        "*.dc1.example.com",
        "p.dc1.example.com",
    ] {
        assert!(patterns.contains(&want), "{want} missing from {list}");
    }
    b.ok(&["authz", "remove", "p.dc1.example.com"]);
    assert_eq!(at(&p), s(&d2));
}

#[test]
fn security_tag_must_match_the_entry() {
    let a = site("a.example.com");
    let b = site("replica");
    pair(&a, &b);
    let dir = b.scratch().join("gold");
    let e = authz_add(&b, "*.example.com", &dir, Some("gold"));
    assert_eq!(e["security_tag"], "gold", "{e}");

    let err = check_refused(&a, &b, None);
    assert!(
        err.contains("*.example.com") && err.contains("gold") && err.contains("none"),
        "the refusal should name the entry, the required tag and that none was presented: {err}"
    );
    let err = check_refused(&a, &b, Some("silver"));
    assert!(
        err.contains("*.example.com") && err.contains("gold") && err.contains("silver"),
        "the refusal should name the entry and both tags: {err}"
    );
    let r = check_ok(&a, &b, Some("gold"));
    assert_eq!(
        r["storage_location"].as_str(),
        Some(s(&dir).as_str()),
        "{r}"
    );
    assert!(
        r["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("*.example.com"),
        "{r}"
    );

    let list = b.json(&["authz", "list"]);
    assert_eq!(list[0]["security_tag"], "gold", "{list}");
}

#[test]
fn allow_any_partner_uses_the_default_storage_location() {
    let a = site("a.example.com");
    let b = site("replica");
    pair(&a, &b);
    let shown = b.json(&["site", "set"]);
    assert_eq!(shown["allow_any_partner"], false, "{shown}");
    let default = b.dir().join("replicas");
    assert_eq!(
        shown["default_storage_location"].as_str(),
        Some(s(&default).as_str()),
        "{shown}"
    );
    check_refused(&a, &b, None);

    let set = b.json(&["site", "set", "--allow-any-partner", "true"]);
    assert_eq!(set["allow_any_partner"], true, "{set}");
    let r = check_ok(&a, &b, None);
    assert_eq!(r["rule"], "allow-any-partner", "{r}");
    assert_eq!(
        r["storage_location"].as_str(),
        Some(s(&default).as_str()),
        "{r}"
    );
    assert!(default.is_dir(), "the default storage location is created");

    let elsewhere = b.scratch().join("elsewhere").join("nested");
    let set = b.json(&["site", "set", "--default-storage-location", &s(&elsewhere)]);
    assert_eq!(
        set["allow_any_partner"], true,
        "other settings are kept: {set}"
    );
    assert_eq!(
        set["default_storage_location"].as_str(),
        Some(s(&elsewhere).as_str())
    );
    let r = check_ok(&a, &b, Some("any-tag"));
    assert_eq!(r["rule"], "allow-any-partner", "{r}");
    assert_eq!(
        r["storage_location"].as_str(),
        Some(s(&elsewhere).as_str()),
        "{r}"
    );
    assert!(elsewhere.is_dir());

    // A matching entry still wins over allow-any-partner, tag and all.
    let tagged = b.scratch().join("tagged");
    authz_add(&b, "a.example.com", &tagged, Some("gold"));
    let err = check_refused(&a, &b, None);
    assert!(err.contains("gold"), "{err}");
    let r = check_ok(&a, &b, Some("gold"));
    assert_eq!(
        r["storage_location"].as_str(),
        Some(s(&tagged).as_str()),
        "{r}"
    );
    b.ok(&["authz", "remove", "a.example.com"]);

    b.json(&["site", "set", "--allow-any-partner", "false"]);
    let err = check_refused(&a, &b, None);
    assert!(err.contains("no authorization entry"), "{err}");
    let text = b.ok(&["site", "set"]);
    assert!(text.contains("allow any partner"), "{text}");
}

#[test]
fn unpaired_site_cannot_even_ask() {
    let c = site("c.example.com");
    let b = site("replica");
    b.json(&["site", "set", "--allow-any-partner", "true"]);
    authz_add(&b, "*", &b.scratch().join("all"), None);
    // C pins B; B does not pin C.
    pin(&c, &b);
    let err = c.fails(&["partner", "check", "replica"]);
    assert!(
        err.contains("refused this site's certificate") && err.contains(&fingerprint_of(&c)),
        "an unpaired site is refused during TLS, before any authorization: {err}"
    );
    wait_until(
        "B counts the TLS refusal",
        std::time::Duration::from_secs(30),
        || repl_metric(&b, "offsite_repl_tls_refused_total") >= 1,
    );
    assert!(
        !events_about(&b, "c.example.com")
            .iter()
            .any(|(k, _)| k.starts_with("authz.")),
        "no authorization decision is made for an unauthenticated site"
    );
}

#[test]
fn authz_add_and_remove_validate_input() {
    let b = site("replica");
    let dir = b.scratch().join("d");
    authz_add(&b, "*.example.com", &dir, None);
    let d = s(&dir);
    let add = |pattern: &str, loc: &str, extra: &[&str]| {
        let mut args = vec![
            "authz",
            "add",
            "--allowed-primary",
            pattern,
            "--storage-location",
            loc,
        ];
        args.extend_from_slice(extra);
        b.fails(&args)
    };
    let err = add("*.example.com", &d, &[]);
    assert!(err.contains("already exists"), "duplicate pattern: {err}");
    for bad in ["*foo", "a.*", "**", "*.", "bad name", ""] {
        let err = add(bad, &d, &[]);
        assert!(
            err.contains("allowed-primary") || err.contains("invalid"),
            "{bad:?}: {err}"
        );
    }
    let err = add("x", &d, &["--security-tag", ""]);
    assert!(err.contains("security tag"), "{err}");
    // A storage location that cannot be created (under a regular file).
    let file = b.scratch().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = add("y", &s(&file.join("sub")), &[]);
    assert!(err.contains("storage location"), "{err}");

    // The API refuses a relative storage location (the CLI must not send
    // one resolved against its own working directory to a remote site; see
    // `relative_storage_location_is_refused_by_the_cli`).
    let (status, body) = api_request(
        &b,
        "POST",
        "/authz",
        Some(r#"{"allowed_primary":"z","storage_location":"relative/dir","security_tag":null}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("relative"), "{body}");

    let err = b.fails(&["authz", "remove", "no.such.pattern"]);
    assert!(err.contains("no.such.pattern"), "{err}");
    let list = b.json(&["authz", "list"]);
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "only the valid entry: {list}"
    );
    b.ok(&["authz", "remove", "*.example.com"]);
    b.fails(&["authz", "remove", "*.example.com"]);
    let text = b.ok(&["authz", "list"]);
    assert!(
        text.contains("authz add"),
        "an empty list says how to add: {text}"
    );
}

/// The brief: `authz add` with a relative `--storage-location` exits 1.
/// The CLI instead resolves it against its own working directory
/// (crates/cli/src/main.rs, `absolute(&storage_location)`), which with
/// `--url` names a directory on the wrong machine.
#[test]
#[ignore = "product bug: the CLI absolutizes a relative --storage-location instead of refusing it"]
fn relative_storage_location_is_refused_by_the_cli() {
    let b = site("replica");
    let err = b.fails(&[
        "authz",
        "add",
        "--allowed-primary",
        "x",
        "--storage-location",
        "relative/dir",
    ]);
    assert!(err.contains("relative"), "{err}");
    let err = b.fails(&["site", "set", "--default-storage-location", "relative/dir"]);
    assert!(err.contains("relative"), "{err}");
}
