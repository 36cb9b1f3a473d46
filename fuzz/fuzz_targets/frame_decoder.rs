//! Feeds arbitrary bytes to the site-to-site frame decoder, the way a
//! session reads them (a stream of frames, then end of stream), and checks
//! that whatever decodes re-encodes: byte for byte (checksums aside) when
//! the frame was not compressed, to the same message when it was. A panic,
//! an allocation beyond the frame bounds or a broken round trip is a
//! finding.
//!
//! cargo-fuzz builds with `--cfg fuzzing`, under which the decoder does not
//! reject bad CRCs and BLAKE3 hashes (random bytes would almost never pass
//! them), so the fuzzer reaches the header parsers and zstd.
//!
//! The first byte's low bit says whether the decoder accepts `BulkData`
//! without its payload hash (a session that negotiated
//! `SELF_CHECKED_BULK`); such a frame must be exactly what `BulkFrame`
//! builds for the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use offsite_protocol::bytes::BytesMut;
use offsite_protocol::{
    BulkFrame, Compression, FIXED_HEADER_LEN, FrameDecoder, LENGTH_PREFIX_LEN, Message,
    PAYLOAD_HASH_LEN, PayloadHash, TRAILER_LEN, encode, flags,
};

fuzz_target!(|data: &[u8]| {
    let Some((mode, data)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(data);
    let mut decoder = FrameDecoder::new();
    decoder.accept_unhashed_bulk(mode & 1 == 1);
    loop {
        let before = buf.clone();
        match decoder.decode(&mut buf) {
            Ok(Some(message)) => {
                let consumed = &before[..before.len() - buf.len()];
                let frame_flags = u16::from_le_bytes([consumed[6], consumed[7]]);
                let compressed = frame_flags & flags::PAYLOAD_ZSTD;
                if frame_flags & flags::PAYLOAD_UNHASHED != 0 {
                    assert!(mode & 1 == 1, "an unhashed frame decoded where refused");
                    let Message::BulkData { seq, payload } = &message else {
                        panic!("only BulkData may go without its hash: {message:?}");
                    };
                    let mut frame = BulkFrame::default();
                    frame.payload_buf().extend_from_slice(payload);
                    let rebuilt = frame.finish(*seq, PayloadHash::Omitted).expect("it decoded");
                    let mut again = BytesMut::from(&rebuilt[..]);
                    assert_eq!(decoder.decode(&mut again).expect("rebuilt"), Some(message));
                    if compressed == 0 {
                        assert_eq!(
                            without_checksums(&rebuilt, false),
                            without_checksums(consumed, false)
                        );
                    }
                    continue;
                }
                let mut again = BytesMut::new();
                encode(&message, Compression::None, &mut again).expect("a decoded message encodes");
                if compressed == 0 {
                    assert_eq!(
                        without_checksums(&again, message.tag().has_payload()),
                        without_checksums(consumed, message.tag().has_payload())
                    );
                } else {
                    let back = FrameDecoder::new()
                        .decode(&mut again)
                        .expect("re-encoded frame decodes");
                    assert_eq!(back.as_ref(), Some(&message));
                }
            }
            Ok(None) => {
                let _ = decoder.decode_eof(&mut buf);
                break;
            }
            Err(_) => break,
        }
    }
});

/// The frame with its CRC trailer and payload hash zeroed.
fn without_checksums(frame: &[u8], hashed: bool) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let crc_at = frame.len() - TRAILER_LEN;
    frame[crc_at..].fill(0);
    if hashed {
        let at = LENGTH_PREFIX_LEN + FIXED_HEADER_LEN;
        frame[at..at + PAYLOAD_HASH_LEN].fill(0);
    }
    frame
}
