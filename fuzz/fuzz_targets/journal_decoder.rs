//! Feeds arbitrary bytes to the decoders of a replica's journal (see
//! `offsite_replica_store::journal`): the entries of a journal file (write
//! records and checkpoint records) and a journal file's index. Whatever
//! decodes must re-encode to the same bytes (checksums aside). A panic,
//! an allocation beyond the input or a broken round trip is a finding.
//!
//! Under `--cfg fuzzing` the decoders do not reject bad CRCs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use offsite_replica_store::journal::{decode_journal_index, encode_journal_index};
use offsite_replica_store::{RECORD_TRAILER_LEN, decode_journal_entries, encode_journal_entry};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = decode_journal_entries(data) {
        let mut again = Vec::new();
        let mut original = data.to_vec();
        let mut at = 0;
        for e in &entries {
            let start = again.len();
            encode_journal_entry(e, &mut again);
            let len = again.len() - start;
            // Zero both entries' CRCs before comparing.
            again[start + len - RECORD_TRAILER_LEN..start + len].fill(0);
            original[at + len - RECORD_TRAILER_LEN..at + len].fill(0);
            at += len;
        }
        assert_eq!(at, data.len());
        assert_eq!(again, original);
    }
    if let Ok(index) = decode_journal_index(data) {
        let mut again = encode_journal_index(&index);
        let mut original = data.to_vec();
        let n = again.len();
        assert_eq!(n, original.len());
        again[n - 4..].fill(0);
        original[n - 4..].fill(0);
        assert_eq!(again, original);
    }
});
