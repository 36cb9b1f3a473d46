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
        decode_option(option_codes::STRUCTURED_REPLY, b""),
        Ok(ClientOption::Unsupported(option_codes::STRUCTURED_REPLY))
    );
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
        for code in [option_codes::EXPORT_NAME, option_codes::LIST, option_codes::INFO, option_codes::GO] {
            let _ = decode_option(code, &bytes);
        }
        let _ = decode_request(&bytes);
        let _ = decode_option_reply_header(&bytes);
        let _ = decode_simple_reply(&bytes);
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
