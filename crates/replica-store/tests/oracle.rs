//! Property test against an oracle: random sequences of commits, aborts,
//! removals (of any id, including the newest and unknown ones), renames,
//! base writes and reopens; after every step each visible PIT (and the
//! base) reads back exactly the oracle's image, for every volume.

mod common;

use common::{BACKENDS, Backend, Oracle, Write, commit, fast_tmpdir, kind, pit, specs};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Commit(Vec<Write>, Option<u8>),
    Abort(Vec<Write>),
    /// Removes the visible PIT at this index modulo (count + 1); the extra
    /// slot picks an id that does not exist.
    Remove(usize),
    SetName(usize, Option<u8>),
    WriteBase(usize, u64, u64),
    Reopen,
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    // Volume 0 has 24 blocks, volume 1 has 12; content None = zero block.
    let one = (0usize..2, 0u64..24, prop::option::weighted(0.8, 1u64..1000))
        .prop_map(|(v, b, c)| (v, if v == 0 { b } else { b % 12 }, c));
    prop::collection::vec(one, 0..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (writes(), prop::option::of(0u8..4)).prop_map(|(w, n)| Op::Commit(w, n)),
        1 => writes().prop_map(Op::Abort),
        4 => (0usize..8).prop_map(Op::Remove),
        1 => ((0usize..8), prop::option::of(0u8..4)).prop_map(|(i, n)| Op::SetName(i, n)),
        1 => ((0usize..2), (0u64..10_000), (1u64..1000)).prop_map(|(v, o, s)| Op::WriteBase(v, o, s)),
        1 => Just(Op::Reopen),
    ]
}

fn name(n: Option<u8>) -> Option<String> {
    n.map(|n| format!("keep-{n}"))
}

/// [`run_on`] against every backend.
fn run(ops: Vec<Op>) {
    for backend in BACKENDS {
        run_on(backend, ops.clone());
    }
}

fn run_on(backend: Backend, ops: Vec<Op>) {
    let dir = fast_tmpdir();
    let specs = specs();
    let mut store = backend.create(dir.path(), &specs).unwrap();
    // The local staging area: the store directory's, or the working
    // directory's.
    let work = match backend {
        Backend::Dir => dir.path().to_path_buf(),
        Backend::Objects => dir.path().join("work"),
    };
    let mut oracle = Oracle::new(&specs);
    for op in ops {
        match op {
            Op::Commit(w, n) => {
                commit(&store, &mut oracle, &w, name(n).as_deref());
            }
            Op::Abort(w) => {
                let mut writer = store.begin_pit().unwrap();
                oracle.stage(&mut writer, &w);
                if w.len() % 2 == 0 {
                    writer.abort();
                } else {
                    drop(writer);
                }
            }
            Op::Remove(i) => {
                let id = oracle
                    .pits
                    .get(i % (oracle.pits.len() + 1))
                    .map_or(9999, |p| p.0);
                let want = oracle.remove(id);
                let got = store.remove_pit(pit(id));
                match (want, got) {
                    (Ok(()), Ok(())) => {}
                    (Err(w), Err(e)) => assert_eq!(w, kind(&e), "remove {id}: {e}"),
                    (w, g) => panic!("remove {id}: oracle {w:?}, store {g:?}"),
                }
            }
            Op::SetName(i, n) => {
                let id = oracle
                    .pits
                    .get(i % (oracle.pits.len() + 1))
                    .map_or(9999, |p| p.0);
                let known = oracle.set_name(id, name(n));
                let got = store.set_pit_name(pit(id), name(n));
                assert_eq!(known, got.is_ok(), "set name of {id}: {got:?}");
            }
            Op::WriteBase(v, off, seed) => {
                let spec = &specs[v];
                let off = off % spec.size_bytes;
                let len = (spec.size_bytes - off).min(1500) as usize;
                let data = common::pattern(len, seed);
                let got = store.write_base(&spec.name, off, &data);
                if oracle.pits.is_empty() {
                    got.unwrap();
                    oracle.base[v][off as usize..off as usize + len].copy_from_slice(&data);
                } else {
                    assert_eq!(kind(&got.unwrap_err()), "BaseSealed");
                }
            }
            Op::Reopen => {
                drop(store);
                store = backend.open(dir.path()).unwrap();
            }
        }
        oracle.check(&store);
    }
    // Everything still holds after a final reopen, and every PIT verifies.
    drop(store);
    let store = backend.open(dir.path()).unwrap();
    oracle.check(&store);
    for p in store.pits() {
        store.verify_pit(p.id).unwrap();
    }
    let staging = std::fs::read_dir(work.join("staging")).unwrap().count();
    assert_eq!(staging, 0, "staging is empty after reopen");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_oracle(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

/// A fixed long history, so the interesting paths run on every test run.
#[test]
fn long_fixed_history() {
    let mut ops = Vec::new();
    for i in 0..60u64 {
        let w: Vec<Write> = (0..6)
            .map(|j| {
                let v = ((i + j) % 2) as usize;
                let b = (i * 7 + j * 5) % if v == 0 { 24 } else { 12 };
                (
                    v,
                    b,
                    if (i + j) % 5 == 0 {
                        None
                    } else {
                        Some(i * 100 + j)
                    },
                )
            })
            .collect();
        ops.push(Op::Commit(
            w,
            if i % 9 == 0 {
                Some((i % 4) as u8)
            } else {
                None
            },
        ));
        match i % 4 {
            0 => ops.push(Op::Remove(0)),
            1 => ops.push(Op::Remove(1)),
            2 => ops.push(Op::Remove((i % 5) as usize)),
            _ => ops.push(Op::Reopen),
        }
    }
    run(ops);
}
