//! Feeds arbitrary bytes to the decoder of a sealed (client-side
//! encrypted) replica object (`offsite_objects::sealed`): the header
//! parser, the size checks and the chunk walk of `open`, which must refuse
//! anything that was not sealed with the key without panicking or
//! allocating beyond the input. Whatever header decodes must re-encode to
//! the same bytes (its CRC aside), and the stored-size formula and its
//! inverse must agree on every size.
//!
//! Under `--cfg fuzzing` the decoder skips the header CRC and the key-id
//! check, so random bytes reach the chunk walk and the cipher.

#![no_main]

use libfuzzer_sys::fuzz_target;
use offsite_objects::GroupKey;
use offsite_objects::sealed::{self, HEADER_LEN, Header, plaintext_len, sealed_len};

fuzz_target!(|data: &[u8]| {
    let key = GroupKey::from_bytes([7; 32]);
    if let Ok(header) = Header::decode(data) {
        let mut again = header.encode();
        let mut original = [0u8; HEADER_LEN];
        original.copy_from_slice(&data[..HEADER_LEN]);
        again[60..].fill(0);
        original[60..].fill(0);
        assert_eq!(again, original);
    }
    // Random bytes never authenticate: a success would be a forgery.
    if let Ok(plain) = sealed::open(&key, "pits/1-1/v.seg", data) {
        panic!(
            "{} bytes opened to {} bytes of plaintext",
            data.len(),
            plain.len()
        );
    }
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        if let Some(len) = plaintext_len(n) {
            assert_eq!(sealed_len(len, sealed::CHUNK_SIZE), Some(n));
        }
    }
});
