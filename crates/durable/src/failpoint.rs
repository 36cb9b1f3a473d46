//! Test hook: make the N-th crash-relevant file-system step of this thread
//! fail, and every step after it ("the disk froze"), to simulate a crash at
//! that point. Not part of the API (hidden from the docs).
//!
//! *Counted* steps are the ones whose order matters for crash safety:
//! creating a file or directory, fsync of a file or directory, rename,
//! remove, and writes of small metadata files. Bulk data writes are not
//! counted (crashing between two data writes of a staging file is no
//! different from crashing before its fsync), but they do fail once the
//! failpoint has fired: after the injected failure the "disk" is frozen and
//! nothing the process does reaches it any more, like after a real crash.
//!
//! The state is per thread, so tests running in parallel do not disturb
//! each other; every user of this crate (cbt, store, replica) shares it, so
//! one counter covers a whole operation across crates.

use std::cell::Cell;
use std::io;

#[derive(Clone, Copy)]
struct Fp {
    /// Counted steps since the last `disarm` or `arm`.
    steps: u64,
    /// Fail the step with this 1-based number (0 = disarmed).
    fail_at: u64,
    /// The failure was injected: every later step fails too.
    fired: bool,
    /// The kind of the injected error.
    kind: io::ErrorKind,
}

const DISARMED: Fp = Fp {
    steps: 0,
    fail_at: 0,
    fired: false,
    kind: io::ErrorKind::Other,
};

thread_local! {
    static FP: Cell<Fp> = const { Cell::new(DISARMED) };
}

/// Fail the `n`-th counted step from now (1-based) and all later ones.
pub fn arm(n: u64) {
    arm_with(n, io::ErrorKind::Other);
}

/// [`arm`] with the `io::ErrorKind` the injected errors carry (for example
/// `StorageFull`, to test how a full disk is reported).
pub fn arm_with(n: u64, kind: io::ErrorKind) {
    FP.with(|c| {
        c.set(Fp {
            steps: 0,
            fail_at: n,
            fired: false,
            kind,
        })
    });
}

/// Stop failing and reset the step counter.
pub fn disarm() {
    FP.with(|c| c.set(DISARMED));
}

/// Counted steps since the last `arm`/`disarm`.
pub fn steps() -> u64 {
    FP.with(|c| c.get().steps)
}

/// Whether the armed failure happened.
pub fn fired() -> bool {
    FP.with(|c| c.get().fired)
}

fn injected(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "injected failure (test failpoint)")
}

/// The failpoint check before a mutation; `counted` steps advance the count.
pub(crate) fn step(counted: bool) -> io::Result<()> {
    FP.with(|c| {
        let mut s = c.get();
        if s.fired {
            return Err(injected(s.kind));
        }
        if counted {
            s.steps += 1;
            if s.fail_at != 0 && s.steps >= s.fail_at {
                s.fired = true;
                c.set(s);
                return Err(injected(s.kind));
            }
            c.set(s);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fires_and_freezes() {
        disarm();
        step(true).unwrap();
        step(false).unwrap();
        assert_eq!(steps(), 1);
        arm_with(2, io::ErrorKind::StorageFull);
        step(true).unwrap();
        step(false).unwrap();
        let e = step(true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(fired());
        // Frozen: uncounted steps fail too.
        assert!(step(false).is_err());
        disarm();
        assert!(!fired());
        step(false).unwrap();
    }
}
