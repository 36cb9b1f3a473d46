//! Fixed-newstyle negotiation: greeting, client flags, then option haggling
//! until the client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`)
//! or leaves.
//!
//! ```text
//! S: greeting (FIXED_NEWSTYLE | NO_ZEROES)
//! C: client flags ──── unknown bits ──► close (proto.md: MUST drop)
//! loop:
//!   C: option ──── bad magic / data > 64 KiB / past deadline ──► close
//!     LIST         → REP_SERVER × n, ACK
//!     INFO, GO     → REP_INFO (EXPORT, NAME, DESCRIPTION, BLOCK_SIZE), ACK
//!                    or ERR_UNKNOWN; GO + ACK ──► transmission
//!     EXPORT_NAME  → size + flags [+ 124 zeroes] ──► transmission
//!                    (unknown export ──► close: this option cannot fail)
//!     ABORT        → ACK ──► close
//!     STRUCTURED_REPLY        → ACK (data sent with it → ERR_INVALID)
//!     LIST_META_CONTEXT       → REP_META_CONTEXT "base:allocation" (id 0) if no
//!                               query or a "base:"/"base:allocation" query, ACK
//!                               (unknown export → ERR_UNKNOWN)
//!     SET_META_CONTEXT        → clears the selection; without STRUCTURED_REPLY
//!                               first → ERR_INVALID; else REP_META_CONTEXT
//!                               "base:allocation" (id 1) if queried, ACK
//!                               (unknown export → ERR_UNKNOWN)
//!     STARTTLS    → ACK ──► TLS handshake, then haggling restarts inside TLS
//!                   with nothing negotiated (listener mode off → ERR_POLICY;
//!                   already in TLS → ERR_INVALID)
//!     anything else (EXTENDED_HEADERS, …) → ERR_UNSUP
//! ```
//!
//! TLS (proto.md "TLS support", modes in [`crate::tls::TlsMode`]): on a
//! listener whose mode is `required` (FORCEDTLS), every option but
//! `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD` until TLS is up, and
//! `EXPORT_NAME` (which cannot fail) closes the connection. Whatever the
//! listener, an export is checked against the session when it is named
//! (`INFO`, `GO`, the meta-context options, `EXPORT_NAME`): one that
//! requires TLS gets `NBD_REP_ERR_TLS_REQD` on a plain session
//! (`NBD_REP_ERR_POLICY` on a listener without TLS, where proto.md forbids
//! `TLS_REQD`); one whose mode is `off` gets `NBD_REP_ERR_POLICY` over TLS.
//! `LIST` leaves out the exports the session could not use. Nothing
//! negotiated before `STARTTLS` survives it (no structured replies, no
//! meta context: CVE-2021-3716 was a server that kept them).
//!
//! `NBD_CMD_BLOCK_STATUS` is allowed in transmission only when the last
//! `SET_META_CONTEXT` selected `base:allocation` for the very export name
//! the client then entered transmission with (proto.md).
//!
//! Every reply to one option is flushed before the next option is read: the
//! client must wait for it (proto.md), so holding it back would deadlock.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::debug;

use super::ServerConfig;
use super::connection::ConnectionError;
use crate::codec::{
    self, BASE_ALLOCATION, ClientOption, InfoRequest, MAX_STRING_LEN, MetaContextRequest,
    OPTION_HEADER_LEN, OptionReply, RepError, client_flags, option_codes, transmission_flags,
};
use crate::device::{Export, ExportRegistry};
use crate::tls::TlsMode;

/// Most option data we buffer. The largest legitimate option is an
/// `NBD_OPT_GO` with a 4 KiB name and a few info requests; anything far
/// bigger is treated as a denial-of-service attempt, which proto.md lets a
/// server answer with a hard disconnect.
pub(crate) const MAX_OPTION_DATA: u32 = 64 << 10;

/// The id of `base:allocation` in `NBD_REP_META_CONTEXT` and block status
/// chunks (it is our only context; ids are per connection).
pub(crate) const ALLOCATION_CONTEXT_ID: u32 = 1;

/// What the options negotiated so far enable.
#[derive(Debug, Default)]
struct Session {
    /// The client sent `NBD_FLAG_C_NO_ZEROES`.
    no_zeroes: bool,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    structured: bool,
    /// The export name the last `NBD_OPT_SET_META_CONTEXT` selected
    /// `base:allocation` for.
    allocation_for: Option<String>,
}

/// What negotiation produced.
pub(super) enum Negotiated {
    /// The client chose an export and transmission starts.
    Transmission(Bound),
    /// The client aborted (or must be let go without an export).
    Aborted,
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next,
    /// then [`Negotiator::haggle`] again over TLS.
    StartTls,
}

/// An export as fixed for the life of one connection.
pub(super) struct Bound {
    /// The export itself.
    pub export: Export,
    /// Size, read once: the device promises it is constant per connection.
    pub size: u64,
    /// Whether writes get `NBD_EPERM`.
    pub read_only: bool,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Replies use structured chunks (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: bool,
    /// The `base:allocation` context id, when the client selected it for
    /// this export (block status is refused otherwise).
    pub allocation_context: Option<u32>,
}

impl Bound {
    fn new(export: Export, requested_name: &str, session: &Session) -> Self {
        let size = export.device.size();
        let read_only = export.device.read_only();
        let allocation_context = (session.structured
            && session.allocation_for.as_deref() == Some(requested_name))
        .then_some(ALLOCATION_CONTEXT_ID);
        Self {
            export,
            size,
            read_only,
            flags: transmission_flags(read_only),
            structured: session.structured,
            allocation_context,
        }
    }
}

/// Transmission flags for an export.
///
/// `CAN_MULTI_CONN` is sound because every connection to an export shares
/// one [`crate::BlockDevice`], whose `flush` covers writes completed on any
/// connection. Read-only exports do not advertise trim or write-zeroes
/// (clients then never send them; if one does anyway it gets `NBD_EPERM`).
/// `SEND_FAST_ZERO` goes with `SEND_WRITE_ZEROES` (proto.md requires
/// that); whether a given fast zero succeeds is the device's call
/// ([`crate::BlockDevice::can_fast_zero`]). `SEND_CACHE` is always set:
/// a cache request is a hint every device accepts.
pub(super) fn transmission_flags(read_only: bool) -> u16 {
    use transmission_flags as f;
    let mut flags = f::HAS_FLAGS | f::SEND_FLUSH | f::SEND_FUA | f::CAN_MULTI_CONN | f::SEND_CACHE;
    if read_only {
        flags |= f::READ_ONLY;
    } else {
        flags |= f::SEND_TRIM | f::SEND_WRITE_ZEROES | f::SEND_FAST_ZERO;
    }
    flags
}

/// Whether option haggling goes on after an option.
enum Step {
    Continue,
    Done(Negotiated),
}

/// Runs the handshake for one connection.
pub(super) struct Negotiator<'a> {
    pub registry: &'a dyn ExportRegistry,
    pub config: &'a ServerConfig,
    pub shutting_down: &'a AtomicBool,
    /// Negotiation must be over by then; checked before each option so a
    /// client trickling options cannot hold the slot indefinitely (each
    /// single read is bounded by the socket's read timeout).
    pub deadline: Instant,
    /// Called with the export name just before the reply that enters
    /// transmission is sent, so the connection is counted against the
    /// export by the time the client can use it.
    pub on_bind: &'a dyn Fn(&str),
    /// The listener's TLS mode (exports without one of their own take it).
    pub tls: TlsMode,
    /// The session runs inside TLS.
    pub tls_active: bool,
}

/// What the client's flags asked for, carried across `STARTTLS`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientFlags {
    no_zeroes: bool,
}

impl Negotiator<'_> {
    /// Sends the greeting and reads the client's flags.
    pub fn greet<R: Read, W: Write>(
        &self,
        reader: &mut R,
        writer: &mut W,
    ) -> Result<ClientFlags, ConnectionError> {
        writer.write_all(&codec::greeting())?;
        writer.flush()?;

        let flags = codec::decode_client_flags(&read_array::<4, _>(reader)?)?;
        if flags & !client_flags::ALL != 0 {
            return Err(ConnectionError::ClientFlags(flags));
        }
        // A client without C_FIXED_NEWSTYLE only ever sends EXPORT_NAME,
        // which we handle identically; proto.md allows honouring fixed
        // newstyle for it anyway.
        Ok(ClientFlags {
            no_zeroes: flags & client_flags::NO_ZEROES != 0,
        })
    }

    /// Haggles over options until transmission, close or `STARTTLS`,
    /// starting from nothing negotiated.
    pub fn haggle<R: Read, W: Write>(
        &self,
        reader: &mut R,
        writer: &mut W,
        flags: ClientFlags,
    ) -> Result<Negotiated, ConnectionError> {
        let mut session = Session {
            no_zeroes: flags.no_zeroes,
            ..Session::default()
        };

        let mut out = Vec::new();
        loop {
            if Instant::now() >= self.deadline {
                return Err(ConnectionError::HandshakeTimeout(
                    self.config.handshake_timeout,
                ));
            }
            let header = codec::decode_option_header(&read_array::<OPTION_HEADER_LEN, _>(reader)?)?;
            if header.length > MAX_OPTION_DATA {
                return Err(ConnectionError::OptionTooLong {
                    option: header.option,
                    length: header.length,
                    limit: MAX_OPTION_DATA,
                });
            }
            // Bounded by MAX_OPTION_DATA just above.
            let mut data = vec![0u8; header.length as usize];
            reader.read_exact(&mut data)?;

            out.clear();
            let step = self.handle_option(header.option, &data, &mut session, &mut out)?;
            if let Step::Done(Negotiated::Transmission(bound)) = &step {
                (self.on_bind)(&bound.export.name);
            }
            writer.write_all(&out)?;
            writer.flush()?;
            if let Step::Done(negotiated) = step {
                return Ok(negotiated);
            }
        }
    }

    fn handle_option(
        &self,
        code: u32,
        data: &[u8],
        session: &mut Session,
        out: &mut Vec<u8>,
    ) -> Result<Step, ConnectionError> {
        // proto.md: SET_META_CONTEXT replaces the selection even when it fails.
        if code == option_codes::SET_META_CONTEXT {
            session.allocation_for = None;
        }
        if let Some(step) = self.tls_gate(code, out)? {
            return Ok(step);
        }
        let Some(option) = self.decode_option(code, data, out)? else {
            return Ok(Step::Continue);
        };
        if self.shutting_down.load(Ordering::SeqCst)
            && let Some(step) = shutting_down_answer(&option, code, out)
        {
            return Ok(step);
        }
        self.answer(option, code, session, out)
    }

    /// FORCEDTLS: nothing but STARTTLS and ABORT before TLS, whatever the
    /// option's data says; `Some` is the refusal.
    fn tls_gate(&self, code: u32, out: &mut Vec<u8>) -> Result<Option<Step>, ConnectionError> {
        if self.tls == TlsMode::Required
            && !self.tls_active
            && code != option_codes::STARTTLS
            && code != option_codes::ABORT
        {
            if code == option_codes::EXPORT_NAME {
                return Err(ConnectionError::TlsRequired);
            }
            reply(
                out,
                code,
                OptionReply::Error(
                    RepError::TlsReqd,
                    "this NBD server requires TLS: connect with TLS credentials (NBD_OPT_STARTTLS first)",
                ),
            );
            return Ok(Some(Step::Continue));
        }
        Ok(None)
    }

    /// The option's data decoded; `None` when it was malformed and the
    /// client was told so (an `EXPORT_NAME` cannot be answered: the
    /// connection ends).
    fn decode_option(
        &self,
        code: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<ClientOption>, ConnectionError> {
        match codec::decode_option(code, data) {
            Ok(option) => Ok(Some(option)),
            Err(err) if code == option_codes::EXPORT_NAME => {
                Err(ConnectionError::BadExportName(err))
            }
            Err(err) => {
                debug!(option = code, error = %err, "invalid NBD option");
                let message = err.to_string();
                reply(out, code, OptionReply::Error(RepError::Invalid, &message));
                Ok(None)
            }
        }
    }

    /// Answers a decoded option.
    fn answer(
        &self,
        option: ClientOption,
        code: u32,
        session: &mut Session,
        out: &mut Vec<u8>,
    ) -> Result<Step, ConnectionError> {
        match option {
            ClientOption::ExportName(name) => {
                let Some(export) = self.registry.lookup(&name) else {
                    return Err(ConnectionError::UnknownExport(name));
                };
                if let Some((_, reason)) = self.tls_refusal(&export) {
                    return Err(ConnectionError::ExportTls(reason));
                }
                let bound = Bound::new(export, &name, session);
                codec::encode_export_name_reply(out, bound.size, bound.flags, session.no_zeroes);
                Ok(Step::Done(Negotiated::Transmission(bound)))
            }
            ClientOption::Abort => {
                reply(out, code, OptionReply::Ack);
                Ok(Step::Done(Negotiated::Aborted))
            }
            ClientOption::List => {
                self.list_exports(code, out);
                Ok(Step::Continue)
            }
            ClientOption::Info(request) => {
                self.describe(code, &request, session, out);
                Ok(Step::Continue)
            }
            ClientOption::Go(request) => Ok(match self.describe(code, &request, session, out) {
                Some(bound) => Step::Done(Negotiated::Transmission(bound)),
                None => Step::Continue,
            }),
            ClientOption::StartTls => Ok(self.start_tls(code, out)),
            ClientOption::StructuredReply => {
                session.structured = true;
                reply(out, code, OptionReply::Ack);
                Ok(Step::Continue)
            }
            ClientOption::ListMetaContext(request) => {
                self.meta_contexts(code, &request, session, out);
                Ok(Step::Continue)
            }
            ClientOption::SetMetaContext(request) => {
                if !session.structured {
                    reply(
                        out,
                        code,
                        OptionReply::Error(
                            RepError::Invalid,
                            "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first",
                        ),
                    );
                } else {
                    self.meta_contexts(code, &request, session, out);
                }
                Ok(Step::Continue)
            }
            ClientOption::Unsupported(_) => {
                debug!(option = code, "unsupported NBD option");
                reply(
                    out,
                    code,
                    OptionReply::Error(RepError::Unsup, "option not supported"),
                );
                Ok(Step::Continue)
            }
        }
    }

    /// Answers `NBD_OPT_LIST`: the exports this session may use.
    fn list_exports(&self, code: u32, out: &mut Vec<u8>) {
        for (name, description) in self.registry.list() {
            // A longer name could never be requested (proto.md's
            // string limit), so listing it would only mislead;
            // nor would an export this session may not use.
            let usable = || {
                self.registry
                    .lookup(&name)
                    .is_some_and(|e| self.tls_refusal(&e).is_none())
            };
            if name.len() <= MAX_STRING_LEN && usable() {
                reply(
                    out,
                    code,
                    OptionReply::Server {
                        name: &name,
                        description: &description,
                    },
                );
            }
        }
        reply(out, code, OptionReply::Ack);
    }

    /// Answers `NBD_OPT_STARTTLS` (proto.md "Server-side requirements").
    fn start_tls(&self, code: u32, out: &mut Vec<u8>) -> Step {
        if self.tls_active {
            let message = "TLS is already on";
            reply(out, code, OptionReply::Error(RepError::Invalid, message));
            return Step::Continue;
        }
        if self.tls == TlsMode::Off {
            let message = "this NBD server does not offer TLS (its [nbd_tls] mode is off)";
            reply(out, code, OptionReply::Error(RepError::Policy, message));
            return Step::Continue;
        }
        reply(out, code, OptionReply::Ack);
        Step::Done(Negotiated::StartTls)
    }

    /// Why `export` cannot be used in this session, if it cannot: the
    /// error to reply and its message.
    fn tls_refusal(&self, export: &Export) -> Option<(RepError, String)> {
        let name = &export.name;
        match (export.tls.unwrap_or(self.tls), self.tls_active) {
            // proto.md: a NOTLS server never sends TLS_REQD.
            (TlsMode::Required, false) if self.tls == TlsMode::Off => Some((
                RepError::Policy,
                format!(
                    "export {name:?} requires TLS, which this NBD server does not offer \
                     (its [nbd_tls] mode is off)"
                ),
            )),
            (TlsMode::Required, false) => Some((
                RepError::TlsReqd,
                format!(
                    "export {name:?} requires TLS: connect with TLS credentials (NBD_OPT_STARTTLS)"
                ),
            )),
            (TlsMode::Off, true) => Some((
                RepError::Policy,
                format!("export {name:?} is served without TLS only (its NBD TLS mode is off)"),
            )),
            _ => None,
        }
    }

    /// Answers `NBD_OPT_LIST_META_CONTEXT` and (already checked for
    /// structured replies) `NBD_OPT_SET_META_CONTEXT`. Queries outside the
    /// `base:` namespace, or for other leaves, are ignored as proto.md
    /// asks; the empty leaf `base:` is a wildcard when listing only.
    fn meta_contexts(
        &self,
        code: u32,
        request: &MetaContextRequest,
        session: &mut Session,
        out: &mut Vec<u8>,
    ) {
        let Some(export) = self.registry.lookup(&request.name) else {
            let message = format!("export {:?} not found", request.name);
            reply(out, code, OptionReply::Error(RepError::Unknown, &message));
            return;
        };
        if let Some((error, message)) = self.tls_refusal(&export) {
            reply(out, code, OptionReply::Error(error, &message));
            return;
        }
        let setting = code == option_codes::SET_META_CONTEXT;
        let selected = if setting {
            request.queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            request.queries.is_empty()
                || request
                    .queries
                    .iter()
                    .any(|q| q == BASE_ALLOCATION || q == "base:")
        };
        if selected {
            let id = if setting { ALLOCATION_CONTEXT_ID } else { 0 };
            reply(
                out,
                code,
                OptionReply::MetaContext {
                    id,
                    name: BASE_ALLOCATION,
                },
            );
            if setting {
                session.allocation_for = Some(request.name.clone());
            }
        }
        reply(out, code, OptionReply::Ack);
    }

    /// Answers `NBD_OPT_INFO`/`NBD_OPT_GO`; returns the export on success.
    ///
    /// All four info items are sent whether or not they were requested
    /// (proto.md allows unrequested items; clients ignore what they do not
    /// use). `NBD_INFO_BLOCK_SIZE` in particular must reach clients because
    /// our maximum request size is smaller than the protocol default.
    fn describe(
        &self,
        code: u32,
        request: &InfoRequest,
        session: &Session,
        out: &mut Vec<u8>,
    ) -> Option<Bound> {
        let Some(export) = self.registry.lookup(&request.name) else {
            debug!(export = %request.name, "NBD client asked for unknown export");
            let message = format!("export {:?} not found", request.name);
            reply(out, code, OptionReply::Error(RepError::Unknown, &message));
            return None;
        };
        if let Some((error, message)) = self.tls_refusal(&export) {
            debug!(export = %request.name, %message, "NBD export refused for its TLS mode");
            reply(out, code, OptionReply::Error(error, &message));
            return None;
        }
        let bound = Bound::new(export, &request.name, session);
        reply(
            out,
            code,
            OptionReply::InfoExport {
                size: bound.size,
                flags: bound.flags,
            },
        );
        reply(out, code, OptionReply::InfoName(&bound.export.name));
        if !bound.export.description.is_empty() {
            reply(
                out,
                code,
                OptionReply::InfoDescription(&bound.export.description),
            );
        }
        reply(
            out,
            code,
            OptionReply::InfoBlockSize {
                // We accept any alignment: devices take byte offsets.
                minimum: 1,
                preferred: self.config.preferred_block_size,
                maximum: self.config.max_request_bytes,
            },
        );
        reply(out, code, OptionReply::Ack);
        Some(bound)
    }
}

fn reply(out: &mut Vec<u8>, option: u32, reply: OptionReply<'_>) {
    codec::encode_option_reply(out, option, &reply);
}

/// Reads exactly `N` bytes.
pub(super) fn read_array<const N: usize, R: Read>(reader: &mut R) -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    reader.read_exact(&mut buf)?;
    Ok(buf)
}

/// While the server shuts down, every option but ABORT is refused
/// (`None`: the option goes on to be answered).
fn shutting_down_answer(option: &ClientOption, code: u32, out: &mut Vec<u8>) -> Option<Step> {
    match option {
        ClientOption::Abort => None,
        // Cannot carry an error; just let the client go.
        ClientOption::ExportName(_) => Some(Step::Done(Negotiated::Aborted)),
        _ => {
            reply(
                out,
                code,
                OptionReply::Error(RepError::Shutdown, "server is shutting down"),
            );
            Some(Step::Continue)
        }
    }
}
