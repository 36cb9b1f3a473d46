//! Feeds arbitrary bytes to every NBD decoder that sees client input
//! (client flags, option headers and data — including the structured-reply
//! and meta-context options — and request headers) and checks that
//! whatever decodes re-encodes to the same bytes. The client-side decoders
//! of structured reply chunks get the same bytes. A panic, an over-read or
//! a broken round trip is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use offsite_nbd::codec::{self, ClientOption, OPTION_HEADER_LEN, REQUEST_HEADER_LEN, option_codes};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_client_flags(data);

    // As a complete option: header, then the rest as its data.
    if let Ok(header) = codec::decode_option_header(data) {
        let body = &data[OPTION_HEADER_LEN..];
        let len = (header.length as usize).min(body.len());
        check_option(header.option, &body[..len]);
    }

    // As option data for each option we parse, whatever the header said;
    // the first four bytes pick one more (possibly unknown) option code.
    if let Some((code, rest)) = data.split_first_chunk::<4>() {
        check_option(u32::from_be_bytes(*code), rest);
    }
    for code in [
        option_codes::EXPORT_NAME,
        option_codes::ABORT,
        option_codes::LIST,
        option_codes::INFO,
        option_codes::GO,
        option_codes::STRUCTURED_REPLY,
        option_codes::LIST_META_CONTEXT,
        option_codes::SET_META_CONTEXT,
    ] {
        check_option(code, data);
    }

    // As structured reply chunks (what a client of ours would decode).
    if let Ok(header) = codec::decode_chunk_header(data) {
        let payload = &data[codec::STRUCTURED_REPLY_HEADER_LEN..];
        let _ = codec::decode_error_chunk(header.chunk_type, payload);
        if let Ok((id, extents)) = codec::decode_block_status(payload)
            && extents.len() <= codec::MAX_BLOCK_STATUS_DESCRIPTORS
        {
            let mut out = Vec::new();
            codec::encode_block_status(&mut out, header.flags, header.handle, id, &extents);
            assert_eq!(&out[codec::STRUCTURED_REPLY_HEADER_LEN..], payload);
        }
    }

    // As a stream of pipelined requests, the way the server reads them
    // (write payloads are skipped by length, like the server does).
    let mut rest = data;
    while let Ok(request) = codec::decode_request(rest) {
        assert_eq!(request.encode().as_slice(), &rest[..REQUEST_HEADER_LEN]);
        rest = &rest[REQUEST_HEADER_LEN..];
        if request.command == codec::Command::Write {
            let skip = (request.length as usize).min(rest.len());
            rest = &rest[skip..];
        }
    }
});

fn check_option(code: u32, data: &[u8]) {
    match codec::decode_option(code, data) {
        Ok(ClientOption::ExportName(name)) => assert_eq!(name.as_bytes(), data),
        Ok(ClientOption::Info(req) | ClientOption::Go(req)) => {
            assert_eq!(codec::encode_info_request(&req.name, &req.requests), data);
        }
        Ok(ClientOption::List | ClientOption::StructuredReply | ClientOption::StartTls) => {
            assert!(data.is_empty())
        }
        Ok(ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req)) => {
            let queries: Vec<&str> = req.queries.iter().map(String::as_str).collect();
            assert_eq!(
                codec::encode_meta_context_request(&req.name, &queries),
                data
            );
        }
        Ok(ClientOption::Abort | ClientOption::Unsupported(_)) | Err(_) => {}
    }
}
