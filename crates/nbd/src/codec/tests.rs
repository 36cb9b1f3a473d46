use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

#[test]
fn greeting_golden_bytes() {
    // "NBDMAGIC" "IHAVEOPT" then FIXED_NEWSTYLE | NO_ZEROES.
    let expected = hex("4e42444d41474943 49484156454f5054 0003");
    assert_eq!(greeting().as_slice(), expected.as_slice());
    assert_eq!(&greeting()[..16], b"NBDMAGICIHAVEOPT");
}

#[test]
fn opt_go_reply_golden_bytes() {
    let mut out = Vec::new();
    let flags = transmission_flags::HAS_FLAGS
        | transmission_flags::SEND_FLUSH
        | transmission_flags::SEND_FUA
        | transmission_flags::SEND_TRIM
        | transmission_flags::SEND_WRITE_ZEROES
        | transmission_flags::CAN_MULTI_CONN;
    encode_option_reply(
        &mut out,
        option_codes::GO,
        &OptionReply::InfoExport {
            size: 1 << 20,
            flags,
        },
    );
    encode_option_reply(
        &mut out,
        option_codes::GO,
        &OptionReply::InfoBlockSize {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        },
    );
    encode_option_reply(&mut out, option_codes::GO, &OptionReply::Ack);
    let expected = hex(concat!(
        // NBD_REP_INFO / NBD_INFO_EXPORT: size 1 MiB, flags 0x016d
        "0003e889045565a9 00000007 00000003 0000000c",
        "0000 0000000000100000 016d",
        // NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: 1 / 4096 / 32 MiB
        "0003e889045565a9 00000007 00000003 0000000e",
        "0003 00000001 00001000 02000000",
        // NBD_REP_ACK
        "0003e889045565a9 00000007 00000001 00000000",
    ));
    assert_eq!(out, expected);
}

#[test]
fn error_reply_carries_message() {
    let mut out = Vec::new();
    encode_option_reply(
        &mut out,
        option_codes::GO,
        &OptionReply::Error(RepError::Unknown, "no"),
    );
    let expected = hex("0003e889045565a9 00000007 80000006 00000002 6e6f");
    assert_eq!(out, expected);
    let header = decode_option_reply_header(&out).expect("valid header");
    assert_eq!(header.reply_type, RepError::Unknown.code());
    assert_eq!(header.length, 2);
}

#[test]
fn rep_error_codes_match_proto_md() {
    assert_eq!(RepError::Unsup.code(), 0x8000_0001);
    assert_eq!(RepError::Invalid.code(), 0x8000_0003);
    assert_eq!(RepError::Unknown.code(), 0x8000_0006);
    assert_eq!(RepError::Shutdown.code(), 0x8000_0007);
    assert_eq!(RepError::TooBig.code(), 0x8000_0009);
}

#[test]
fn errno_values_match_proto_md() {
    let pairs = [
        (NbdErrno::Perm, 1),
        (NbdErrno::Io, 5),
        (NbdErrno::NoMem, 12),
        (NbdErrno::Inval, 22),
        (NbdErrno::NoSpc, 28),
        (NbdErrno::Overflow, 75),
        (NbdErrno::NotSup, 95),
        (NbdErrno::Shutdown, 108),
    ];
    for (errno, code) in pairs {
        assert_eq!(errno.code(), code, "{errno:?}");
    }
}

#[test]
fn io_error_kinds_map_as_documented() {
    use std::io::ErrorKind as K;
    let cases = [
        (K::PermissionDenied, NbdErrno::Perm),
        (K::ReadOnlyFilesystem, NbdErrno::Perm),
        (K::StorageFull, NbdErrno::NoSpc),
        (K::QuotaExceeded, NbdErrno::NoSpc),
        (K::FileTooLarge, NbdErrno::NoSpc),
        (K::InvalidInput, NbdErrno::Inval),
        (K::Other, NbdErrno::Io),
        (K::UnexpectedEof, NbdErrno::Io),
    ];
    for (kind, errno) in cases {
        assert_eq!(
            NbdErrno::from_io_error(&io::Error::from(kind)),
            errno,
            "{kind:?}"
        );
    }
}

#[test]
fn export_name_reply_padding_follows_no_zeroes() {
    let mut padded = Vec::new();
    encode_export_name_reply(&mut padded, 512, transmission_flags::HAS_FLAGS, false);
    assert_eq!(padded.len(), 8 + 2 + EXPORT_NAME_PADDING);
    let mut bare = Vec::new();
    encode_export_name_reply(&mut bare, 512, transmission_flags::HAS_FLAGS, true);
    assert_eq!(bare, hex("0000000000000200 0001"));
}

#[test]
fn request_golden_bytes() {
    let req = Request {
        flags: command_flags::FUA,
        command: Command::Write,
        handle: 0x0102_0304_0506_0708,
        offset: 4096,
        length: 512,
    };
    let expected = hex("25609513 0001 0001 0102030405060708 0000000000001000 00000200");
    assert_eq!(req.encode().as_slice(), expected.as_slice());
    assert_eq!(decode_request(&expected), Ok(req));
}

#[test]
fn request_with_bad_magic_is_rejected() {
    let mut raw = Request {
        flags: 0,
        command: Command::Read,
        handle: 1,
        offset: 0,
        length: 1,
    }
    .encode();
    raw[0] ^= 0xff;
    assert!(matches!(
        decode_request(&raw),
        Err(DecodeError::BadMagic { .. })
    ));
    assert_eq!(
        decode_request(&raw[..10]),
        Err(DecodeError::Truncated {
            needed: REQUEST_HEADER_LEN,
            got: 10
        })
    );
}

#[test]
fn option_header_checks_magic() {
    let mut raw = Vec::new();
    encode_option(&mut raw, option_codes::GO, b"abc");
    let header = decode_option_header(&raw).expect("valid");
    assert_eq!(
        header,
        OptionHeader {
            option: option_codes::GO,
            length: 3
        }
    );
    raw[3] = 0;
    assert!(matches!(
        decode_option_header(&raw),
        Err(DecodeError::BadMagic { .. })
    ));
}

#[test]
fn info_request_round_trips() {
    let data = encode_info_request("vol-1", &[info_types::NAME, info_types::BLOCK_SIZE]);
    let decoded = decode_option(option_codes::GO, &data).expect("valid");
    assert_eq!(
        decoded,
        ClientOption::Go(InfoRequest {
            name: "vol-1".into(),
            requests: vec![info_types::NAME, info_types::BLOCK_SIZE],
        })
    );
}

#[test]
fn malformed_info_requests_are_invalid() {
    // Name length runs past the data.
    let mut data = encode_info_request("vol", &[]);
    data[3] = 200;
    assert_eq!(
        decode_option(option_codes::INFO, &data),
        Err(OptionError::Truncated)
    );
    // Trailing garbage.
    let mut data = encode_info_request("vol", &[]);
    data.push(0);
    assert_eq!(
        decode_option(option_codes::GO, &data),
        Err(OptionError::TrailingData { extra: 1 })
    );
    // Huge declared name: rejected before any slicing or allocation.
    let data = [0xff, 0xff, 0xff, 0xff, 0, 0];
    assert!(matches!(
        decode_option(option_codes::GO, &data),
        Err(OptionError::StringTooLong { .. })
    ));
    // NUL inside the name.
    let data = encode_info_request("a\0b", &[]);
    assert_eq!(
        decode_option(option_codes::GO, &data),
        Err(OptionError::InvalidString)
    );
    // Not UTF-8.
    let mut data = encode_info_request("ab", &[]);
    data[4] = 0xff;
    assert_eq!(
        decode_option(option_codes::GO, &data),
        Err(OptionError::InvalidString)
    );
}

#[test]
fn list_with_data_is_invalid_and_abort_ignores_data() {
    assert_eq!(
        decode_option(option_codes::LIST, b"x"),
        Err(OptionError::UnexpectedData { len: 1 })
    );
    assert_eq!(
        decode_option(option_codes::LIST, b""),
        Ok(ClientOption::List)
    );
    assert_eq!(
        decode_option(option_codes::ABORT, b"junk"),
        Ok(ClientOption::Abort)
    );
    assert_eq!(
        decode_option(option_codes::EXTENDED_HEADERS, b""),
        Ok(ClientOption::Unsupported(option_codes::EXTENDED_HEADERS))
    );
}

#[test]
fn starttls_option_takes_no_data() {
    assert_eq!(
        decode_option(option_codes::STARTTLS, b""),
        Ok(ClientOption::StartTls)
    );
    assert_eq!(
        decode_option(option_codes::STARTTLS, b"x"),
        Err(OptionError::UnexpectedData { len: 1 })
    );
}

#[test]
fn structured_reply_option_takes_no_data() {
    assert_eq!(
        decode_option(option_codes::STRUCTURED_REPLY, b""),
        Ok(ClientOption::StructuredReply)
    );
    assert_eq!(
        decode_option(option_codes::STRUCTURED_REPLY, b"xy"),
        Err(OptionError::UnexpectedData { len: 2 })
    );
}

#[test]
fn meta_context_request_golden_bytes() {
    let data = encode_meta_context_request("vol", &[BASE_ALLOCATION, "qemu:dirty-bitmap:b"]);
    let expected = hex(concat!(
        "00000003 766f6c",                                 // name "vol"
        "00000002",                                        // two queries
        "0000000f 626173653a616c6c6f636174696f6e",         // "base:allocation"
        "00000013 71656d753a64697274792d6269746d61703a62", // "qemu:dirty-bitmap:b"
    ));
    assert_eq!(data, expected);
    let request = MetaContextRequest {
        name: "vol".into(),
        queries: vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:b".into()],
    };
    assert_eq!(
        decode_option(option_codes::SET_META_CONTEXT, &data),
        Ok(ClientOption::SetMetaContext(request.clone()))
    );
    assert_eq!(
        decode_option(option_codes::LIST_META_CONTEXT, &data),
        Ok(ClientOption::ListMetaContext(request))
    );
}

#[test]
fn malformed_meta_context_requests_are_invalid() {
    let set = option_codes::SET_META_CONTEXT;
    // A query count the data cannot hold: refused before any loop.
    let mut data = encode_meta_context_request("v", &[]);
    data[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode_option(set, &data), Err(OptionError::Truncated));
    // A query running past the data.
    let mut data = encode_meta_context_request("v", &["base:allocation"]);
    data.truncate(data.len() - 1);
    assert_eq!(decode_option(set, &data), Err(OptionError::Truncated));
    // Trailing bytes.
    let mut data = encode_meta_context_request("v", &["base:"]);
    data.extend_from_slice(b"zz");
    assert_eq!(
        decode_option(set, &data),
        Err(OptionError::TrailingData { extra: 2 })
    );
    // An over-long query.
    let mut data = encode_meta_context_request("", &[]);
    data[4..8].copy_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&(MAX_STRING_LEN as u32 + 1).to_be_bytes());
    assert_eq!(
        decode_option(set, &data),
        Err(OptionError::StringTooLong {
            len: MAX_STRING_LEN + 1
        })
    );
    // No count at all.
    assert_eq!(
        decode_option(option_codes::LIST_META_CONTEXT, &[0, 0, 0, 0]),
        Err(OptionError::Truncated)
    );
}

#[test]
fn meta_context_reply_golden_bytes() {
    let mut out = Vec::new();
    encode_option_reply(
        &mut out,
        option_codes::SET_META_CONTEXT,
        &OptionReply::MetaContext {
            id: 1,
            name: BASE_ALLOCATION,
        },
    );
    let expected = hex(concat!(
        "0003e889045565a9 0000000a 00000004 00000013",
        "00000001 626173653a616c6c6f636174696f6e",
    ));
    assert_eq!(out, expected);
}

#[test]
fn structured_chunks_golden_bytes() {
    assert_eq!(
        encode_none_chunk(7).as_slice(),
        hex("668e33ef 0001 0000 0000000000000007 00000000").as_slice()
    );
    assert_eq!(
        encode_offset_data_header(0, 7, 4096, 512).as_slice(),
        hex("668e33ef 0000 0001 0000000000000007 00000208 0000000000001000").as_slice()
    );
    assert_eq!(
        encode_offset_hole(reply_flags::DONE, 7, 8192, 65536).as_slice(),
        hex("668e33ef 0001 0002 0000000000000007 0000000c 0000000000002000 00010000").as_slice()
    );
    let mut out = Vec::new();
    let extents = [
        BlockStatusDescriptor {
            length: 4096,
            flags: 0,
        },
        BlockStatusDescriptor {
            length: 1 << 20,
            flags: allocation_flags::HOLE | allocation_flags::ZERO,
        },
    ];
    encode_block_status(&mut out, reply_flags::DONE, 9, 1, &extents);
    let expected = hex(concat!(
        "668e33ef 0001 0005 0000000000000009 00000014",
        "00000001 00001000 00000000 00100000 00000003",
    ));
    assert_eq!(out, expected);
    let header = decode_chunk_header(&out).expect("valid chunk");
    assert_eq!(
        header,
        ChunkHeader {
            flags: reply_flags::DONE,
            chunk_type: chunk_types::BLOCK_STATUS,
            handle: 9,
            length: 20,
        }
    );
    assert_eq!(
        decode_block_status(&out[STRUCTURED_REPLY_HEADER_LEN..]),
        Ok((1, extents.to_vec()))
    );

    let mut out = Vec::new();
    encode_error_chunk(&mut out, reply_flags::DONE, 3, NbdErrno::NotSup, "no", None);
    assert_eq!(
        out,
        hex("668e33ef 0001 8001 0000000000000003 00000008 0000005f 0002 6e6f")
    );
    assert_eq!(
        decode_error_chunk(chunk_types::ERROR, &out[STRUCTURED_REPLY_HEADER_LEN..]),
        Ok((95, "no".into(), None))
    );
    let mut out = Vec::new();
    encode_error_chunk(&mut out, 0, 3, NbdErrno::Io, "", Some(512));
    assert_eq!(
        out,
        hex("668e33ef 0000 8002 0000000000000003 0000000e 00000005 0000 0000000000000200")
    );
    assert_eq!(
        decode_error_chunk(
            chunk_types::ERROR_OFFSET,
            &out[STRUCTURED_REPLY_HEADER_LEN..]
        ),
        Ok((5, String::new(), Some(512)))
    );
}

#[test]
fn malformed_chunks_are_rejected() {
    let mut raw = encode_none_chunk(1);
    raw[0] ^= 1;
    assert!(matches!(
        decode_chunk_header(&raw),
        Err(DecodeError::BadMagic { .. })
    ));
    assert!(decode_block_status(&[0, 0, 0, 1]).is_err());
    assert!(decode_block_status(&[0, 0, 0, 1, 0, 0, 0, 1, 0]).is_err());
    assert!(decode_error_chunk(chunk_types::ERROR, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
    assert!(decode_error_chunk(chunk_types::ERROR_OFFSET, &[0, 0, 0, 5, 0, 0, 1]).is_err());
}

#[test]
fn long_strings_are_clamped_on_encode() {
    let long = "é".repeat(MAX_STRING_LEN); // 2 bytes per char
    let mut out = Vec::new();
    encode_option_reply(&mut out, option_codes::INFO, &OptionReply::InfoName(&long));
    let header = decode_option_reply_header(&out).expect("valid");
    assert_eq!(header.length as usize, 2 + MAX_STRING_LEN);
    assert!(std::str::from_utf8(&out[OPTION_REPLY_HEADER_LEN + 2..]).is_ok());
}

#[test]
fn simple_reply_round_trips() {
    let raw = encode_simple_reply(NbdErrno::Inval.code(), 42);
    assert_eq!(
        raw.as_slice(),
        hex("67446698 00000016 000000000000002a").as_slice()
    );
    assert_eq!(
        decode_simple_reply(&raw),
        Ok(SimpleReply {
            error: 22,
            handle: 42
        })
    );
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), option in any::<u32>()) {
        let _ = decode_client_flags(&bytes);
        let _ = decode_option_header(&bytes);
        let _ = decode_option(option, &bytes);
        for code in [option_codes::EXPORT_NAME, option_codes::LIST, option_codes::INFO, option_codes::GO,
                     option_codes::STRUCTURED_REPLY, option_codes::LIST_META_CONTEXT,
                     option_codes::SET_META_CONTEXT] {
            let _ = decode_option(code, &bytes);
        }
        let _ = decode_request(&bytes);
        let _ = decode_option_reply_header(&bytes);
        let _ = decode_simple_reply(&bytes);
        let _ = decode_chunk_header(&bytes);
        let _ = decode_block_status(&bytes);
        let _ = decode_error_chunk(chunk_types::ERROR, &bytes);
        let _ = decode_error_chunk(chunk_types::ERROR_OFFSET, &bytes);
    }

    #[test]
    fn meta_context_request_round_trips(
        name in "[^\u{0}]{0,64}",
        queries in proptest::collection::vec("[^\u{0}]{0,40}", 0..8),
        set in any::<bool>(),
    ) {
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        let data = encode_meta_context_request(&name, &refs);
        let request = MetaContextRequest { name, queries };
        let (code, expected) = if set {
            (option_codes::SET_META_CONTEXT, ClientOption::SetMetaContext(request))
        } else {
            (option_codes::LIST_META_CONTEXT, ClientOption::ListMetaContext(request))
        };
        prop_assert_eq!(decode_option(code, &data), Ok(expected));
        // Any cut of valid data is an error, never a panic or a shorter request.
        for cut in 0..data.len() {
            prop_assert!(decode_option(code, &data[..cut]).is_err());
        }
    }

    #[test]
    fn block_status_chunk_round_trips(
        handle in any::<u64>(),
        id in any::<u32>(),
        extents in proptest::collection::vec((1u32.., any::<u32>()), 1..64),
    ) {
        let extents: Vec<BlockStatusDescriptor> = extents
            .into_iter()
            .map(|(length, flags)| BlockStatusDescriptor { length, flags })
            .collect();
        let mut out = Vec::new();
        encode_block_status(&mut out, reply_flags::DONE, handle, id, &extents);
        let header = decode_chunk_header(&out).unwrap();
        prop_assert_eq!(header.handle, handle);
        prop_assert_eq!(header.length as usize, out.len() - STRUCTURED_REPLY_HEADER_LEN);
        prop_assert_eq!(decode_block_status(&out[STRUCTURED_REPLY_HEADER_LEN..]), Ok((id, extents)));
    }

    #[test]
    fn error_chunk_round_trips(handle in any::<u64>(), message in "[^\u{0}]{0,80}",
                               offset in proptest::option::of(any::<u64>())) {
        let mut out = Vec::new();
        encode_error_chunk(&mut out, reply_flags::DONE, handle, NbdErrno::Inval, &message, offset);
        let header = decode_chunk_header(&out).unwrap();
        prop_assert_eq!(header.length as usize, out.len() - STRUCTURED_REPLY_HEADER_LEN);
        prop_assert_eq!(
            decode_error_chunk(header.chunk_type, &out[STRUCTURED_REPLY_HEADER_LEN..]),
            Ok((22, message, offset))
        );
    }

    #[test]
    fn request_round_trips(flags in any::<u16>(), command in any::<u16>(), handle in any::<u64>(),
                           offset in any::<u64>(), length in any::<u32>()) {
        let req = Request { flags, command: Command::from_wire(command), handle, offset, length };
        let raw = req.encode();
        prop_assert_eq!(decode_request(&raw), Ok(req));
        prop_assert_eq!(req.command.to_wire(), command);
    }

    #[test]
    fn info_request_round_trips_for_any_valid_name(
        name in "[^\u{0}]{0,64}",
        requests in proptest::collection::vec(any::<u16>(), 0..16),
    ) {
        let data = encode_info_request(&name, &requests);
        let decoded = decode_option(option_codes::INFO, &data);
        prop_assert_eq!(decoded, Ok(ClientOption::Info(InfoRequest { name, requests })));
    }
}
