//! Encrypted groups through the fake link: the key made at the primary
//! and kept at both sites, a directory store sealed with it (its objects
//! hold no plaintext block), and an older replica, which ignores the key,
//! refused rather than given the group in the clear.

use super::*;
use crate::wire::kinds;

fn create(name: &str, volumes: &[&str], encrypt: bool) -> CreateGroup {
    CreateGroup {
        name: name.into(),
        partner: "b".into(),
        vms: Vec::new(),
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        mode: "async".into(),
        rpo_secs: 60,
        keep: 3,
        bandwidth_bytes_per_sec: None,
        compress: Some(false),
        security_tag: None,
        on_link_loss: None,
        suspend_timeout_secs: None,
        app_consistent_every_secs: None,
        checkpoint_interval_ms: None,
        journal_history_secs: None,
        journal_max_bytes: None,
        encrypt,
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("listing the objects") {
        let path = e.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::read(&path).expect("reading an object"),
            ));
        }
    }
    out
}

#[tokio::test]
async fn an_encrypted_group_seals_its_directory_store_with_the_key_both_sites_hold() {
    let p = Pair::new();
    let v = p.volume("v", 32);
    for b in [0, 5, 9] {
        write(&v, b, 0xa7);
    }
    p.a.create_group(create("g", &["v"], true)).await.unwrap();
    p.begin_initial("g").await.unwrap();
    write(&v, 20, 0xa7);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));

    let key_a = std::fs::read(p.a.site.layout().group_key("g")).unwrap();
    let key_b = std::fs::read(p.b.site.layout().group_key("g")).unwrap();
    assert_eq!(key_a, key_b, "both sites hold the group's key");
    let (sa, sb) = (
        p.a.group_status("g").await.unwrap(),
        p.b.group_status("g").await.unwrap(),
    );
    assert!(sa.encrypted && sb.encrypted);
    assert_eq!(sa.key_id, sb.key_id);
    assert!(sa.key_id.is_some());

    let dir = std::path::PathBuf::from(p.row(&p.b, "g").store_dir.unwrap());
    assert!(dir.join(offsite_engine::objects::DESCRIPTOR_FILE).exists());
    let objects = files_under(&dir.join(offsite_engine::objects::DIR_OBJECTS));
    assert!(
        objects.len() >= 3,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (path, body) in &objects {
        assert!(
            body.starts_with(b"OFSSEAL\0"),
            "{} is not sealed",
            path.display()
        );
        assert!(
            !body.windows(BS).any(|w| w.iter().all(|&b| b == 0xa7)),
            "{} holds a plaintext block",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_replica_that_ignores_the_key_gets_no_group_in_the_clear() {
    let p = Pair::new();
    p.volume("v", 16);
    // What an offsite from before encryption does with the request.
    p.to_b.inject(Fault::DropField(kinds::GROUP_CREATE, "key"));
    let e =
        p.a.create_group(create("g", &["v"], true))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("cannot encrypt replicas"), "{e}");
    assert!(p.a.site.groups().get("g").is_err());
    assert!(p.b.site.groups().get("g").is_err(), "undone at the replica");
    assert!(
        !p.a.site.layout().group_key("g").exists(),
        "the unused key is not kept"
    );
    // Without encryption the same replica takes the group.
    p.a.create_group(create("g", &["v"], false)).await.unwrap();
    let st = p.a.group_status("g").await.unwrap();
    assert!(!st.encrypted && st.key_id.is_none());
}
