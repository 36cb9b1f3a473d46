//! Feeds arbitrary bytes to the decoder of a sync group's log batches (what
//! a primary sends into the replica's write log), and checks that whatever
//! decodes re-encodes to the same bytes (checksums aside). A panic, an
//! allocation beyond the input or a broken round trip is a finding.
//!
//! Under `--cfg fuzzing` the decoder does not reject bad CRCs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use offsite_replica_store::{RECORD_TRAILER_LEN, decode_records, encode_record};

fuzz_target!(|data: &[u8]| {
    let Ok(records) = decode_records(data) else {
        return;
    };
    let mut again = Vec::new();
    let mut original = data.to_vec();
    let mut at = 0;
    for r in &records {
        let start = again.len();
        encode_record(r, &mut again);
        let len = again.len() - start;
        // Zero both records' CRCs before comparing.
        again[start + len - RECORD_TRAILER_LEN..start + len].fill(0);
        original[at + len - RECORD_TRAILER_LEN..at + len].fill(0);
        at += len;
    }
    assert_eq!(at, data.len());
    assert_eq!(again, original);
});
