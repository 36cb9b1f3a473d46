//! Decoder and encoder tests: every error path by construction, round trips
//! and no-panic properties.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use crate::*;

fn frame_bytes(message: &Message, compression: Compression) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(message, compression, &mut buf).expect("encodes");
    buf
}

fn decode_one(mut buf: BytesMut) -> Result<Option<Message>, ProtocolError> {
    let message = FrameDecoder::new().decode(&mut buf)?;
    if message.is_some() {
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    }
    Ok(message)
}

/// A frame with arbitrary fields and a correct CRC, to reach the checks
/// behind the CRC.
fn raw_frame(tag: u16, frame_flags: u16, header: &[u8], payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32_le((FIXED_HEADER_LEN + header.len() + payload.len() + TRAILER_LEN) as u32);
    buf.put_u16_le(tag);
    buf.put_u16_le(frame_flags);
    buf.put_u32_le(header.len() as u32);
    buf.put_slice(header);
    let mut crc = crc32c::crc32c(&buf[LENGTH_PREFIX_LEN..]);
    if frame_flags & flags::PAYLOAD_ZSTD != 0 {
        crc = crc32c::crc32c_append(crc, payload);
    }
    buf.put_slice(payload);
    buf.put_u32_le(crc);
    buf
}

fn bulk_header(hash: &[u8; 32], seq: u64) -> Vec<u8> {
    let mut header = hash.to_vec();
    header.extend_from_slice(&seq.to_le_bytes());
    header
}

#[test]
fn every_proper_prefix_needs_more_bytes_and_is_truncated_at_eof() {
    let frame = frame_bytes(
        &Message::BulkData {
            seq: 7,
            payload: Bytes::from_static(b"some block bytes"),
        },
        Compression::None,
    );
    for cut in 0..frame.len() {
        let mut buf = BytesMut::from(&frame[..cut]);
        assert!(FrameDecoder::new().decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), cut, "a partial frame is left in place");
        let eof = FrameDecoder::new().decode_eof(&mut buf);
        if cut == 0 {
            assert!(eof.unwrap().is_none());
        } else {
            assert!(
                matches!(eof, Err(ProtocolError::Truncated { have, .. }) if have == cut),
                "cut at {cut}: {eof:?}"
            );
        }
    }
}

#[test]
fn oversized_length_prefix_fails_before_the_frame_arrives() {
    let mut buf = BytesMut::from(&(MAX_FRAME_LEN + 1).to_le_bytes()[..]);
    let err = FrameDecoder::new().decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { len, max } if len == u64::from(MAX_FRAME_LEN) + 1 && max == MAX_FRAME_LEN),
        "{err:?}"
    );
    let mut buf = BytesMut::from(&[0xff; 4][..]);
    assert!(matches!(
        FrameDecoder::new().decode(&mut buf),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    let mut buf = BytesMut::from(&3u32.to_le_bytes()[..]);
    assert!(matches!(
        FrameDecoder::new().decode(&mut buf),
        Err(ProtocolError::FrameTooShort { len: 3, .. })
    ));
}

#[test]
fn oversized_payload_is_refused_on_encode() {
    let message = Message::BulkData {
        seq: 0,
        payload: Bytes::from(vec![0u8; MAX_PAYLOAD_LEN + 1]),
    };
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        assert!(matches!(
            encode_frame(&message, compression),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
    }
    let largest = Message::BulkData {
        seq: 0,
        payload: Bytes::from(vec![7u8; MAX_PAYLOAD_LEN]),
    };
    let frame = frame_bytes(&largest, Compression::None);
    assert_eq!(decode_one(frame).unwrap(), Some(largest));
}

/// Corrupts every byte after the length prefix, one at a time, three ways,
/// and returns the errors by position.
fn corrupt_each_byte(frame: &BytesMut) -> Vec<(usize, ProtocolError)> {
    let mut errors = Vec::new();
    for at in LENGTH_PREFIX_LEN..frame.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = frame.clone();
            bad[at] ^= flip;
            errors.push((at, decode_one(bad).expect_err("corruption is detected")));
        }
    }
    errors
}

#[test]
fn any_corrupted_byte_fails_a_checksum() {
    let body = Bytes::from_static(br#"{"volume":"db","blocks":[1,2,3]}"#);
    let message = Message::Request {
        id: 3,
        kind: 1,
        body: body.clone(),
    };
    let frame = frame_bytes(&message, Compression::None);
    let payload_at = frame.len() - TRAILER_LEN - body.len();
    for (at, err) in corrupt_each_byte(&frame) {
        let ok = match at {
            // The header length locates the CRC's range: a wild one is caught
            // by its range check, a plausible one by the CRC.
            8..12 => matches!(
                err,
                ProtocolError::HeaderTooLarge { .. }
                    | ProtocolError::Checksum(ChecksumKind::FrameCrc32c)
            ),
            // An uncompressed payload is covered by its BLAKE3 hash.
            at if (payload_at..frame.len() - TRAILER_LEN).contains(&at) => {
                matches!(err, ProtocolError::Checksum(ChecksumKind::PayloadBlake3))
            }
            _ => matches!(err, ProtocolError::Checksum(ChecksumKind::FrameCrc32c)),
        };
        assert!(ok, "byte {at}: {err:?}");
    }

    // A compressed payload is CRC-checked before zstd sees it.
    let message = Message::BulkData {
        seq: 1,
        payload: Bytes::from(b"block ".repeat(1000)),
    };
    let frame = frame_bytes(&message, Compression::Zstd { level: 1 });
    assert_eq!(
        u16::from_le_bytes([frame[6], frame[7]]),
        flags::PAYLOAD_ZSTD
    );
    for (at, err) in corrupt_each_byte(&frame) {
        let ok = match at {
            8..12 => matches!(
                err,
                ProtocolError::HeaderTooLarge { .. }
                    | ProtocolError::Checksum(ChecksumKind::FrameCrc32c)
            ),
            _ => matches!(err, ProtocolError::Checksum(ChecksumKind::FrameCrc32c)),
        };
        assert!(ok, "byte {at}: {err:?}");
    }
}

#[test]
fn unknown_and_zero_tags_are_refused() {
    for tag in [0u16, 12, 99, u16::MAX] {
        let err = decode_one(raw_frame(tag, 0, &[], &[])).unwrap_err();
        assert!(
            matches!(err, ProtocolError::UnknownTag(t) if t == tag),
            "{err:?}"
        );
    }
}

#[test]
fn a_payload_that_does_not_match_its_hash_fails_blake3() {
    let payload = b"the block as it was sent";
    let mut hash = *blake3::hash(payload).as_bytes();
    hash[0] ^= 1;
    let err = decode_one(raw_frame(8, 0, &bulk_header(&hash, 1), payload)).unwrap_err();
    assert!(
        matches!(err, ProtocolError::Checksum(ChecksumKind::PayloadBlake3)),
        "{err:?}"
    );

    // Same after decompression: the hash covers the uncompressed bytes.
    let data = vec![0x5a; 4096];
    let packed = zstd::bulk::compress(&data, 1).unwrap();
    let good = *blake3::hash(&data).as_bytes();
    let frame = raw_frame(8, flags::PAYLOAD_ZSTD, &bulk_header(&good, 1), &packed);
    assert!(matches!(
        decode_one(frame),
        Ok(Some(Message::BulkData { .. }))
    ));
    let mut wrong = good;
    wrong[31] ^= 0x40;
    let frame = raw_frame(8, flags::PAYLOAD_ZSTD, &bulk_header(&wrong, 1), &packed);
    assert!(matches!(
        decode_one(frame),
        Err(ProtocolError::Checksum(ChecksumKind::PayloadBlake3))
    ));
}

#[test]
fn compressed_payloads_round_trip_and_shrink() {
    let message = Message::BulkData {
        seq: 42,
        payload: Bytes::from(b"offsite ".repeat(128 << 10)),
    };
    let frame = frame_bytes(&message, Compression::Zstd { level: 1 });
    assert!(
        frame.len() < 64 << 10,
        "1 MiB of text became {} bytes",
        frame.len()
    );
    assert_eq!(
        u16::from_le_bytes([frame[6], frame[7]]),
        flags::PAYLOAD_ZSTD
    );
    assert_eq!(decode_one(frame).unwrap(), Some(message));

    // Incompressible (and tiny) payloads go out as they are.
    let mut noise = vec![0u8; 64 << 10];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for payload in [noise, b"tiny".to_vec()] {
        let message = Message::BulkData {
            seq: 1,
            payload: Bytes::from(payload),
        };
        let frame = frame_bytes(&message, Compression::Zstd { level: 1 });
        assert_eq!(u16::from_le_bytes([frame[6], frame[7]]), 0);
        assert_eq!(decode_one(frame).unwrap(), Some(message));
    }
}

#[test]
fn a_compressed_payload_may_not_expand_past_the_maximum() {
    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    let packed = zstd::bulk::compress(&big, 1).unwrap();
    let hash = *blake3::hash(&big).as_bytes();
    let err = decode_one(raw_frame(
        8,
        flags::PAYLOAD_ZSTD,
        &bulk_header(&hash, 0),
        &packed,
    ))
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::PayloadTooLarge { .. }),
        "{err:?}"
    );

    let err = decode_one(raw_frame(
        8,
        flags::PAYLOAD_ZSTD,
        &bulk_header(&hash, 0),
        b"not zstd",
    ))
    .unwrap_err();
    assert!(matches!(err, ProtocolError::Zstd(_)), "{err:?}");
}

#[test]
fn structural_errors_behind_a_good_crc() {
    let ping = [0u8; 16];
    assert!(matches!(
        decode_one(raw_frame(4, 0x0004, &ping, &[])),
        Err(ProtocolError::UnknownFlags(0x0004))
    ));
    assert!(matches!(
        decode_one(raw_frame(4, flags::PAYLOAD_UNHASHED, &ping, &[])),
        Err(ProtocolError::UnhashedPayload(MessageTag::Ping))
    ));
    assert!(matches!(
        decode_one(raw_frame(4, 0, &ping, b"x")),
        Err(ProtocolError::UnexpectedPayload(MessageTag::Ping))
    ));
    assert!(matches!(
        decode_one(raw_frame(4, flags::PAYLOAD_ZSTD, &ping, &[])),
        Err(ProtocolError::UnexpectedPayload(MessageTag::Ping))
    ));
    assert!(matches!(
        decode_one(raw_frame(4, 0, &ping[..15], &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Ping,
            ..
        })
    ));
    assert!(matches!(
        decode_one(raw_frame(4, 0, &[0u8; 17], &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Ping,
            ..
        })
    ));
    // Header length pointing past the frame.
    let mut frame = raw_frame(4, 0, &ping, &[]);
    frame[8..12].copy_from_slice(&100u32.to_le_bytes());
    assert!(matches!(
        decode_one(frame),
        Err(ProtocolError::HeaderTooLarge { .. })
    ));
    // Zero codes and kinds, bad status, empty version range, bad UTF-8.
    let mut refuse = vec![0, 0, 2, 0];
    refuse.extend_from_slice(b"no");
    assert!(matches!(
        decode_one(raw_frame(3, 0, &refuse, &[])),
        Err(ProtocolError::Malformed { .. })
    ));
    let empty_hash = *blake3::hash(b"").as_bytes();
    let mut request = empty_hash.to_vec();
    request.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        decode_one(raw_frame(10, 0, &request, &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Request,
            ..
        })
    ));
    let mut response = empty_hash.to_vec();
    response.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 3]);
    assert!(matches!(
        decode_one(raw_frame(11, 0, &response, &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Response,
            ..
        })
    ));
    let hello = [2, 0, 1, 0, 0, 0, 0, 0, 1, 0, b'a'];
    assert!(matches!(
        decode_one(raw_frame(1, 0, &hello, &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Hello,
            ..
        })
    ));
    let hello = [1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0xff];
    assert!(matches!(
        decode_one(raw_frame(1, 0, &hello, &[])),
        Err(ProtocolError::Malformed {
            message: MessageTag::Hello,
            ..
        })
    ));
    let mut long_name = vec![1, 0, 1, 0, 0, 0, 0, 0, 0, 1];
    long_name.extend_from_slice(&[b'a'; 256]);
    assert!(matches!(
        decode_one(raw_frame(1, 0, &long_name, &[])),
        Err(ProtocolError::FieldTooLong {
            field: "site_name",
            len: 256,
            ..
        })
    ));
}

#[test]
fn invalid_fields_are_refused_on_encode() {
    let bad = [
        Message::Hello {
            versions: 0..=1,
            site_name: "a".into(),
            features: Features::NONE,
        },
        Message::Hello {
            versions: std::ops::RangeInclusive::new(3, 2),
            site_name: "a".into(),
            features: Features::NONE,
        },
        Message::Hello {
            versions: 1..=1,
            site_name: "a".repeat(MAX_NAME_LEN + 1),
            features: Features::NONE,
        },
        Message::Request {
            id: 1,
            kind: 0,
            body: Bytes::new(),
        },
        Message::HelloRefuse {
            code: RefuseCode::Other(0),
            message: String::new(),
        },
        Message::Error {
            code: ErrorCode::Internal,
            message: "x".repeat(MAX_TEXT_LEN + 1),
        },
    ];
    for message in bad {
        assert!(
            encode_frame(&message, Compression::None).is_err(),
            "{message:?}"
        );
    }
}

#[test]
fn frames_back_to_back_decode_in_order() {
    let messages = [
        Message::Ping {
            nonce: 1,
            sent_at_micros: 2,
        },
        Message::Bye,
        Message::BulkAck { seq: 3, bytes: 4 },
    ];
    let mut buf = BytesMut::new();
    for m in &messages {
        encode(m, Compression::None, &mut buf).unwrap();
    }
    buf.put_slice(&[9, 0]); // start of a next frame
    let mut decoder = FrameDecoder::new();
    for m in &messages {
        assert_eq!(decoder.decode(&mut buf).unwrap().as_ref(), Some(m));
    }
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], &[9, 0]);
}

#[tokio::test]
async fn framed_reader_reads_a_stream_and_reports_truncation() {
    let (mut client, server) = tokio::io::duplex(1024);
    let big = Message::BulkData {
        seq: 9,
        payload: Bytes::from(vec![1u8; 300_000]),
    };
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        write_message(&mut client, &sent, Compression::None)
            .await
            .unwrap();
        write_message(&mut client, &Message::Bye, Compression::None)
            .await
            .unwrap();
        let half = frame_bytes(&Message::BulkAck { seq: 1, bytes: 2 }, Compression::None);
        use tokio::io::AsyncWriteExt;
        client.write_all(&half[..10]).await.unwrap();
    });
    let mut reader = FramedReader::new(server);
    assert_eq!(reader.read_message().await.unwrap(), Some(big));
    assert_eq!(reader.read_message().await.unwrap(), Some(Message::Bye));
    writer.await.unwrap();
    let err = reader.read_message().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Protocol(ProtocolError::Truncated { have: 10, need: 32 })
        ),
        "{err:?}"
    );
}

/// A read cancelled half-way through a large frame (a session's reader is
/// stopped for a handover while a frame arrives) keeps what it read: the
/// next read finishes the frame, and `into_parts` hands over every byte.
#[tokio::test]
async fn a_cancelled_read_of_a_large_frame_loses_nothing() {
    use tokio::io::AsyncWriteExt;
    let big = Message::BulkData {
        seq: 4,
        payload: Bytes::from(vec![4u8; 300_000]),
    };
    let bytes = frame_bytes(&big, Compression::None);
    let after = frame_bytes(&Message::Bye, Compression::None);
    for handover in [false, true] {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&bytes[..200_000]).await.unwrap();
        let mut reader = FramedReader::new(server);
        let cancelled =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.read_message()).await;
        assert!(cancelled.is_err(), "the frame is not complete yet");
        client.write_all(&bytes[200_000..]).await.unwrap();
        client.write_all(&after).await.unwrap();
        if handover {
            let (server, ahead) = reader.into_parts();
            assert_eq!(ahead.len(), 200_000);
            reader = FramedReader::with_buffer(server, ahead);
        }
        assert_eq!(reader.read_message().await.unwrap(), Some(big.clone()));
        assert_eq!(reader.read_message().await.unwrap(), Some(Message::Bye));
    }
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..40).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Bytes::from),
        (0usize..20_000, any::<u8>()).prop_map(|(n, b)| Bytes::from(vec![b; n])),
    ]
}

fn versions() -> impl Strategy<Value = std::ops::RangeInclusive<u16>> {
    (1u16..=u16::MAX, 0u16..=u16::MAX).prop_map(|(a, span)| a..=a.saturating_add(span))
}

fn refuse_code() -> impl Strategy<Value = RefuseCode> {
    (1u16..=u16::MAX).prop_map(|v| RefuseCode::from_u16(v).unwrap())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    (1u16..=u16::MAX).prop_map(|v| ErrorCode::from_u16(v).unwrap())
}

/// Every [`Message`] variant with arbitrary valid fields.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (versions(), text(MAX_NAME_LEN), any::<u32>()).prop_map(|(versions, site_name, f)| {
            Message::Hello {
                versions,
                site_name,
                features: Features::from_bits(f),
            }
        }),
        (1u16..=u16::MAX, text(MAX_NAME_LEN), any::<u32>()).prop_map(|(version, site_name, f)| {
            Message::HelloAccept {
                version,
                site_name,
                features: Features::from_bits(f),
            }
        }),
        (refuse_code(), text(MAX_TEXT_LEN))
            .prop_map(|(code, message)| Message::HelloRefuse { code, message }),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, sent_at_micros)| Message::Ping {
            nonce,
            sent_at_micros
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, sent_at_micros)| Message::Pong {
            nonce,
            sent_at_micros
        }),
        (error_code(), text(MAX_TEXT_LEN))
            .prop_map(|(code, message)| Message::Error { code, message }),
        Just(Message::Bye),
        (any::<u64>(), payload()).prop_map(|(seq, payload)| Message::BulkData { seq, payload }),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, bytes)| Message::BulkAck { seq, bytes }),
        (any::<u64>(), 1u16..=u16::MAX, payload()).prop_map(|(id, kind, body)| Message::Request {
            id,
            kind,
            body
        }),
        (any::<u64>(), any::<bool>(), payload()).prop_map(|(id, ok, body)| Message::Response {
            id,
            ok,
            body
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message(), zstd in any::<bool>()) {
        let compression = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
        let frame = frame_bytes(&message, compression);
        prop_assert_eq!(frame_len_hint(&frame), Some(frame.len()));
        prop_assert_eq!(decode_one(frame).unwrap(), Some(message));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = FrameDecoder::new();
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let _ = decoder.decode_eof(&mut buf);
    }

    #[test]
    fn corrupted_valid_frames_never_panic(
        message in message(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = frame_bytes(&message, Compression::Zstd { level: 1 });
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        let _ = FrameDecoder::new().decode_eof(&mut frame);
    }
}

#[tokio::test]
async fn framed_reader_reuses_large_frame_buffers_and_reports_their_truncation() {
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let block = |seq| Message::BulkData {
        seq,
        payload: Bytes::from(vec![seq as u8; 1 << 20]),
    };
    let writer = tokio::spawn(async move {
        for seq in 0..3 {
            write_message(&mut client, &block(seq), Compression::None)
                .await
                .unwrap();
        }
        let big = frame_bytes(&block(3), Compression::None);
        use tokio::io::AsyncWriteExt;
        client.write_all(&big[..200_000]).await.unwrap();
    });
    let mut reader = FramedReader::new(server);
    let payload_ptr = |m: Option<Message>| match m {
        Some(Message::BulkData { payload, .. }) => payload.as_ptr() as usize,
        other => panic!("expected a block, got {other:?}"),
    };
    let first = payload_ptr(reader.read_message().await.unwrap());
    // The first block is dropped, so its buffer is reused for the next.
    let second = payload_ptr(reader.read_message().await.unwrap());
    assert_eq!(first, second);
    assert_eq!(reader.read_message().await.unwrap(), Some(block(2)));
    let err = reader.read_message().await.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Protocol(ProtocolError::Truncated { have: 200_000, .. })
        ),
        "{err:?}"
    );
    writer.await.unwrap();
}

#[test]
fn decode_frame_takes_exactly_one_frame() {
    let frame = frame_bytes(&Message::Bye, Compression::None).freeze();
    let mut decoder = FrameDecoder::new();
    assert_eq!(decoder.decode_frame(frame.clone()).unwrap(), Message::Bye);
    assert!(matches!(
        decoder.decode_frame(frame.slice(..frame.len() - 1)),
        Err(ProtocolError::LengthMismatch { .. })
    ));
    assert!(matches!(
        decoder.decode_frame(frame.slice(..2)),
        Err(ProtocolError::Truncated { have: 2, need: 4 })
    ));
    assert!(matches!(
        decoder.decode_frame(Bytes::from_static(&[0xff; 8])),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

/// A payload appended into a [`BulkFrame`] and finished with its hash is
/// byte for byte the frame [`encode`] makes of the same `BulkData`.
#[test]
fn a_bulk_frame_built_in_place_is_the_encoded_frame() {
    for len in [0usize, 1, 4140, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut frame = BulkFrame::with_capacity(16);
        frame.payload_buf().extend_from_slice(&payload);
        assert_eq!(frame.payload(), &payload[..]);
        let built = frame.finish(42, PayloadHash::Blake3).unwrap();
        let message = Message::BulkData {
            seq: 42,
            payload: Bytes::from(payload),
        };
        assert_eq!(built, frame_bytes(&message, Compression::None).freeze());
    }
}

/// A frame finished in place is the same frame, and once reset its buffer
/// builds the next one as a new frame would (a sender reuses buffers).
#[test]
fn a_bulk_frame_finished_in_place_and_reset_builds_the_next_one() {
    let mut reused = BulkFrame::with_capacity(16);
    for (seq, len) in [(7u64, 70_000usize), (8, 3), (9, 4140)] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 3 + seq as usize) as u8).collect();
        let mut fresh = BulkFrame::with_capacity(16);
        fresh.payload_buf().extend_from_slice(&payload);
        reused.reset();
        reused.payload_buf().extend_from_slice(&payload);
        for hash in [PayloadHash::Blake3, PayloadHash::Omitted] {
            let want = fresh.clone().finish(seq, hash).unwrap();
            let mut again = reused.clone();
            assert_eq!(again.finish_in_place(seq, hash).unwrap(), &want[..]);
        }
        assert_eq!(
            reused.finish_in_place(seq, PayloadHash::Omitted).unwrap(),
            &fresh.clone().finish(seq, PayloadHash::Omitted).unwrap()[..]
        );
    }
}

/// A frame handed over as an [`EncodedFrame`] writes the same bytes as
/// the finished frame, with or without its hash.
#[test]
fn a_bulk_frame_as_an_encoded_frame_writes_the_same_bytes() {
    for hash in [PayloadHash::Blake3, PayloadHash::Omitted] {
        let mut frame = BulkFrame::with_capacity(16);
        frame.payload_buf().extend_from_slice(&[5u8; 4140]);
        let want = frame.clone().finish(9, hash).unwrap();
        let encoded = frame.into_encoded(9, hash).unwrap();
        assert_eq!(encoded.len(), want.len());
        let mut out = BytesMut::new();
        encoded.write_to(&mut out);
        assert_eq!(&out[..], &want[..]);
    }
}

/// Without its hash a `BulkData` frame decodes only where the session
/// negotiated it, and the flag means nothing on any other message.
#[test]
fn unhashed_bulk_frames_decode_only_where_accepted() {
    let mut frame = BulkFrame::default();
    frame.payload_buf().extend_from_slice(b"records");
    let built = frame.finish(7, PayloadHash::Omitted).unwrap();
    // 4 + 8 + 8 (seq) + 7 + 4 bytes: no hash.
    assert_eq!(built.len(), 31);
    let refused = FrameDecoder::new().decode(&mut BytesMut::from(&built[..]));
    assert!(
        matches!(
            refused,
            Err(ProtocolError::UnhashedPayload(MessageTag::BulkData))
        ),
        "{refused:?}"
    );
    let mut decoder = FrameDecoder::new();
    decoder.accept_unhashed_bulk(true);
    let mut buf = BytesMut::from(&built[..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Message::BulkData {
            seq: 7,
            payload: Bytes::from_static(b"records"),
        })
    );
    assert!(buf.is_empty());
    // Hashed frames still decode, and still fail a wrong hash.
    let hashed = frame_bytes(
        &Message::BulkData {
            seq: 8,
            payload: Bytes::from_static(b"x"),
        },
        Compression::None,
    );
    assert!(decoder.decode(&mut hashed.clone()).unwrap().is_some());
    // The flag on a request is refused even where bulk frames may omit it.
    let request = raw_frame(
        MessageTag::Request.as_u16(),
        flags::PAYLOAD_UNHASHED,
        &[1, 0, 0, 0, 0, 0, 0, 0, 5, 0],
        b"{}",
    );
    assert!(matches!(
        decoder.decode(&mut request.clone()),
        Err(ProtocolError::UnhashedPayload(MessageTag::Request))
    ));
    // Any corrupted byte of the head (after the length prefix) or the
    // trailer fails the CRC; the payload is the records' to check (each
    // has a CRC32C of its own).
    let bytes = BytesMut::from(&built[..]);
    for at in (4..20).chain(built.len() - 4..built.len()) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(decoder.decode(&mut bad).is_err(), "byte {at}");
    }
}

#[test]
fn a_bulk_frame_refuses_an_oversized_payload_and_takes_back_a_partial_one() {
    let mut frame = BulkFrame::default();
    frame.payload_buf().extend_from_slice(b"keep");
    frame.payload_buf().extend_from_slice(b"drop");
    frame.truncate_payload(4);
    assert_eq!(frame.payload(), b"keep");
    assert_eq!(frame.clone().into_payload(), Bytes::from_static(b"keep"));
    let mut big = BulkFrame::default();
    big.payload_buf()
        .resize(BULK_HEAD_ROOM + MAX_PAYLOAD_LEN + 1, 0);
    assert!(matches!(
        big.finish(1, PayloadHash::Omitted),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
}
