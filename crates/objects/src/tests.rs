use super::*;

fn store() -> (tempfile::TempDir, DirStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path().join("objects")).unwrap();
    (dir, store)
}

#[test]
fn keys_follow_one_rule_set() {
    for ok in [
        "a",
        "pits/00000000000000000001-00000000000000000001/manifest.pit",
        "base/vol_1.img",
        "x-y_z.9",
    ] {
        check_key(ok).unwrap();
    }
    for bad in [
        "",
        "/a",
        "a/",
        "a//b",
        "./a",
        "a/../b",
        ".partial/x",
        "a b",
        "ä",
        &"a".repeat(1025),
    ] {
        assert!(check_key(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn storage_locations_parse_and_print_back() {
    let cases = [
        (
            "s3://replicas/site-a/g1",
            StorageLocation::S3 {
                bucket: "replicas".into(),
                prefix: "site-a/g1".into(),
            },
        ),
        (
            "s3://replicas",
            StorageLocation::S3 {
                bucket: "replicas".into(),
                prefix: String::new(),
            },
        ),
        (
            "/srv/replicas",
            StorageLocation::Directory("/srv/replicas".into()),
        ),
    ];
    for (text, want) in cases {
        let got = StorageLocation::parse(text).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.to_string(), text);
    }
    assert_eq!(
        StorageLocation::parse("s3://replicas/p/")
            .unwrap()
            .to_string(),
        "s3://replicas/p"
    );
    for bad in [
        "s3://UPPER/x",
        "s3://ab",
        "s3://b-ok/a//b",
        "http://x/y",
        "relative/dir",
        "s3://-bad/x",
    ] {
        let e = StorageLocation::parse(bad).unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn a_put_is_read_back_whole_by_range_and_listed() {
    let (_d, s) = store();
    s.put("pits/2-1/manifest.pit", b"manifest").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    s.put_from("pits/2-1/v.seg", &mut &big[..], big.len() as u64)
        .unwrap();
    s.put("base/v/0", b"chunk").unwrap();

    assert_eq!(s.get("pits/2-1/manifest.pit").unwrap(), b"manifest");
    assert_eq!(
        s.get_range("pits/2-1/v.seg", 1_000_003, 10).unwrap(),
        &big[1_000_003..1_000_013]
    );
    assert_eq!(s.head("pits/2-1/v.seg").unwrap(), Some(big.len() as u64));
    assert_eq!(s.head("pits/2-1/none").unwrap(), None);
    assert!(s.get("nope").unwrap_err().is_not_found());
    assert!(matches!(
        s.get_range("base/v/0", 3, 3).unwrap_err(),
        ObjectError::ShortObject {
            size: 5,
            offset: 3,
            want: 3,
            ..
        }
    ));

    let keys = |p: &str| {
        s.list(p)
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(""),
        ["base/v/0", "pits/2-1/manifest.pit", "pits/2-1/v.seg"]
    );
    assert_eq!(keys("pits/"), ["pits/2-1/manifest.pit", "pits/2-1/v.seg"]);
    assert_eq!(keys("pits/2-1/m"), ["pits/2-1/manifest.pit"]);
    assert_eq!(keys("pi"), ["pits/2-1/manifest.pit", "pits/2-1/v.seg"]);
    assert!(keys("missing/").is_empty());

    // Names one level down hold objects; an object at that level is not one.
    assert_eq!(s.list_prefixes("").unwrap(), ["base", "pits"]);
    assert_eq!(s.list_prefixes("pits/").unwrap(), ["2-1"]);
    assert!(s.list_prefixes("missing/").unwrap().is_empty());
    s.put("top", b"object at the top").unwrap();
    assert_eq!(s.list_prefixes("").unwrap(), ["base", "pits"]);
    s.delete("top").unwrap();

    s.put("base/v/0", b"replaced").unwrap();
    assert_eq!(s.get("base/v/0").unwrap(), b"replaced");
    s.delete("base/v/0").unwrap();
    s.delete("base/v/0").unwrap(); // idempotent
    assert_eq!(keys("base"), Vec::<String>::new());
    assert!(
        !s.root().join("base").exists(),
        "emptied directories are removed"
    );
}

#[test]
fn a_source_of_the_wrong_length_writes_nothing() {
    let (_d, s) = store();
    let chain = |e: ObjectError| {
        let source = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        format!("{e}: {source}")
    };
    let err = chain(s.put_from("k", &mut &b"short"[..], 10).unwrap_err());
    assert!(
        err.contains("put k") && err.contains("ended after 5 of 10"),
        "{err}"
    );
    let err = chain(s.put_from("k", &mut &b"too long"[..], 3).unwrap_err());
    assert!(err.contains("longer than 3"), "{err}");
    assert_eq!(s.head("k").unwrap(), None);
    assert!(s.list("").unwrap().is_empty());
}

#[test]
fn a_crash_mid_put_leaves_the_old_object_and_no_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let s = DirStore::open(&root).unwrap();
    s.put("m", b"old").unwrap();
    // Fail each counted step of a replacing put in turn: the object is the
    // old one or the new one, and reopening clears the partial file.
    for n in 1.. {
        offsite_durable::failpoint::arm(n);
        let r = s.put("m", b"new");
        let fired = offsite_durable::failpoint::fired();
        offsite_durable::failpoint::disarm();
        let s2 = DirStore::open(&root).unwrap();
        let got = s2.get("m").unwrap();
        assert!(got == b"old" || got == b"new", "step {n}: {got:?}");
        assert_eq!(std::fs::read_dir(root.join(".partial")).unwrap().count(), 0);
        if !fired {
            r.unwrap();
            assert_eq!(got, b"new");
            break;
        }
        s.put("m", b"old").unwrap();
    }
}
