//! The transmission phase of one connection: read a request, validate it,
//! run it against the device, queue its reply; repeat in order.
//!
//! Replies are simple unless the client negotiated structured replies.
//! Then a READ is answered with `NBD_REPLY_TYPE_OFFSET_DATA` chunks for
//! the data and `NBD_REPLY_TYPE_OFFSET_HOLE` chunks for the ranges the
//! device reports as reading zero ([`crate::BlockDevice::block_status`]:
//! holes are neither read nor sent), the last chunk flagged DONE; every
//! error is an `NBD_REPLY_TYPE_ERROR` chunk with a message; `BLOCK_STATUS`
//! gets one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk. Other successes keep the
//! simple reply, which proto.md allows. All data of a READ is read before
//! its first chunk goes out, so an error never follows a content chunk.
//!
//! A write the device defers ([`crate::BlockDevice::write_at_deferred`]:
//! a synchronously replicated volume waiting for its replica) is answered
//! by the connection's *completer* thread once it completes, while this
//! loop goes on with the next requests, so the client's queue depth
//! reaches the device (and the replica's group commit). Replies may then
//! arrive out of order, which proto.md allows (they carry the request's
//! handle). Both threads write replies through one locked buffered writer.
//!
//! Validation follows proto.md ("Error values", "Block size constraints"),
//! first match wins:
//!
//! | check                                        | reply         |
//! |----------------------------------------------|---------------|
//! | unknown command (RESIZE, …)                  | `NBD_EINVAL`  |
//! | command flag not valid for the command       | `NBD_EINVAL`  |
//! | BLOCK_STATUS without `base:allocation` selected | `NBD_EINVAL` |
//! | WRITE/TRIM/WRITE_ZEROES on a read-only export | `NBD_EPERM`   |
//! | READ/WRITE/WRITE_ZEROES length > max request | `NBD_EINVAL`  |
//! | READ, TRIM, CACHE or BLOCK_STATUS past the end | `NBD_EINVAL` |
//! | WRITE or WRITE_ZEROES past the end           | `NBD_ENOSPC`  |
//! | BLOCK_STATUS of length 0                     | `NBD_EINVAL`  |
//! | length 0 (in range)                          | success, device not called |
//! | WRITE_ZEROES with FAST_ZERO the device cannot do fast | `NBD_ENOTSUP`, device not called |
//! | device `io::Error`                           | by kind, see [`NbdErrno::from_io_error`] |
//!
//! Command flags accepted: FUA on every command (proto.md: once
//! `SEND_FUA` is advertised the server MUST accept it anywhere), NO_HOLE
//! and FAST_ZERO on WRITE_ZEROES, REQ_ONE on BLOCK_STATUS. `NBD_CMD_CACHE`
//! is a hint ([`crate::BlockDevice::cache`]).
//!
//! A rejected WRITE still has its payload read and discarded, so the stream
//! stays in sync and the connection lives on. The exception is a WRITE whose
//! length exceeds both the configured maximum and 32 MiB: proto.md says
//! lengths below 2^25 SHOULD NOT be treated as denial of service, and above
//! that we will not spend the bandwidth skipping up to 4 GiB of untrusted
//! payload, so we reply `NBD_EINVAL` and close the connection.
//!
//! `NBD_CMD_FLUSH` ignores its offset and length (proto.md reserves them as
//! zero; the reference server ignores them too, and failing a flush over it
//! would only hurt the client). `NBD_CMD_FLAG_NO_HOLE` needs no action:
//! [`crate::BlockDevice::write_zeroes`] must make the range read as zeroes,
//! and whether it allocates is the device's business.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use tracing::{debug, warn};

use super::connection::ConnectionError;
use super::handshake::{Bound, read_array};
use super::{ServerConfig, ServerStats, Shared};
use crate::codec::{
    self, BlockStatusDescriptor, Command, MAX_BLOCK_STATUS_DESCRIPTORS, NbdErrno,
    REQUEST_HEADER_LEN, Request, command_flags, reply_flags,
};
use crate::device::{Allocation, BlockDevice, Extent, Pending};

/// proto.md: a payload shorter than 2^25 bytes SHOULD NOT be considered a
/// denial-of-service attack, so an over-limit write up to this size has its
/// payload skipped rather than the connection dropped.
const PORTABLE_PAYLOAD_LIMIT: u32 = 1 << 25;
/// Data buffers up to this size are kept for reuse by the connection; larger
/// ones are allocated per request so an idle connection does not pin
/// `max_request_bytes` of memory.
const RETAINED_BUFFER: usize = 1 << 20;
/// Largest `NBD_REPLY_TYPE_OFFSET_DATA` chunk: its 32-bit length must also
/// hold the 8-byte offset, whatever `max_request_bytes` is.
const MAX_DATA_CHUNK: u64 = 1 << 30;

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    Cache,
    BlockStatus,
}

impl Op {
    fn modifies(self) -> bool {
        matches!(self, Op::Write | Op::Trim | Op::WriteZeroes)
    }
}

/// A reply that waits for a deferred write.
struct Deferred {
    pending: Box<dyn Pending>,
    request: Request,
}

type Completer<'scope> = (
    mpsc::Sender<Deferred>,
    std::thread::ScopedJoinHandle<'scope, ()>,
);

fn lock<W>(writer: &Mutex<W>) -> std::sync::MutexGuard<'_, W> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// The completer thread: answers deferred writes as they complete (in the
/// order they were deferred; a device completes them in that order), and
/// sends the replies once nothing more is ready: before it waits for a
/// write, or finds no more.
fn complete<W: Write>(rx: mpsc::Receiver<Deferred>, writer: &Mutex<W>, stats: &ServerStats) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(d) = next {
            // Replies held while this thread waits would hold the client's
            // next requests back too (at a queue depth of 32 that cost a
            // whole replica round trip per batch of replies).
            if !d.pending.ready() && lock(writer).flush().is_err() {
                return;
            }
            let result = d.pending.wait();
            let header = match result {
                Ok(()) => {
                    match d.request.command {
                        Command::Write => {
                            ServerStats::bump(&stats.writes, 1);
                            ServerStats::bump(&stats.bytes_written, u64::from(d.request.length));
                        }
                        _ => ServerStats::bump(&stats.write_zeroes, 1),
                    }
                    codec::encode_simple_reply(0, d.request.handle)
                }
                Err(err) => {
                    let errno = NbdErrno::from_io_error(&err);
                    debug!(command = ?d.request.command, offset = d.request.offset,
                           error = %err, ?errno, "deferred NBD write failed");
                    ServerStats::bump(&stats.errors, 1);
                    codec::encode_simple_reply(errno.code(), d.request.handle)
                }
            };
            if lock(writer).write_all(&header).is_err() {
                return; // the socket is gone; the request loop sees it too
            }
            next = rx.try_recv().ok();
        }
        if lock(writer).flush().is_err() {
            return;
        }
    }
}

/// Whether the connection goes on after a request.
enum Flow {
    Continue,
    Disconnect,
}

/// Per-connection transmission state.
pub(super) struct Transmission<'a> {
    bound: &'a Bound,
    device: &'a dyn BlockDevice,
    config: &'a ServerConfig,
    stats: &'a ServerStats,
    shutting_down: &'a AtomicBool,
    /// Reused data buffer for requests up to [`RETAINED_BUFFER`].
    buf: Vec<u8>,
    /// Only the first device error per connection is logged as a warning;
    /// a failing disk under QD32 would otherwise flood the log.
    device_error_logged: bool,
    /// The last request's deferred completion (its reply is the
    /// completer's to send).
    deferred: Option<Box<dyn Pending>>,
}

impl<'a> Transmission<'a> {
    pub fn new(bound: &'a Bound, shared: &'a Shared) -> Self {
        Self {
            bound,
            device: bound.export.device.as_ref(),
            config: &shared.config,
            stats: &shared.stats,
            shutting_down: &shared.shutting_down,
            buf: Vec::new(),
            device_error_logged: false,
            deferred: None,
        }
    }

    /// Serves requests until the client disconnects, the server shuts down
    /// or the stream becomes unusable; replies to deferred writes are all
    /// written before it returns.
    pub fn serve<R: Read, W: Write + Send>(
        &mut self,
        reader: &mut BufReader<R>,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        let stats = self.stats;
        std::thread::scope(|scope| {
            let mut completer: Option<Completer<'_>> = None;
            let mut spawn = || {
                let (tx, rx) = mpsc::channel();
                let handle = scope.spawn(move || complete(rx, writer, stats));
                (tx, handle)
            };
            let result = self.serve_loop(reader, writer, &mut completer, &mut spawn);
            if let Some((tx, handle)) = completer.take() {
                drop(tx);
                // The completer returns nothing; a panic in it was printed
                // by the panic hook and the socket is closed either way.
                let _ = handle.join();
            }
            result
        })
    }

    fn serve_loop<'s, R: Read, W: Write>(
        &mut self,
        reader: &mut BufReader<R>,
        writer: &Mutex<W>,
        completer: &mut Option<Completer<'s>>,
        spawn: &mut dyn FnMut() -> Completer<'s>,
    ) -> Result<(), ConnectionError> {
        loop {
            // Checked between requests: one already started is finished and
            // answered, but no new one is started once shutdown begins.
            if self.shutting_down.load(Ordering::SeqCst) {
                debug!("server shutting down; closing NBD connection");
                return Ok(());
            }
            // EOF on a request boundary: the client hung up without
            // NBD_CMD_DISC, or shutdown() closed our read side.
            if reader.fill_buf()?.is_empty() {
                debug!("NBD client closed the connection");
                return Ok(());
            }
            let header = read_array::<REQUEST_HEADER_LEN, _>(reader)?;
            let request = codec::decode_request(&header)?;
            let flow = self.handle(&request, reader, writer)?;
            if let Some(pending) = self.deferred.take() {
                let (tx, _) = completer.get_or_insert_with(&mut *spawn);
                // Fails only when the completer found the socket gone:
                // the next read or write here fails too and ends the loop.
                let _ = tx.send(Deferred { pending, request });
            }
            if let Flow::Disconnect = flow {
                debug!("NBD client sent NBD_CMD_DISC");
                return Ok(());
            }
            // Flush only when no complete request is waiting: pipelined
            // requests then share one send, and we never block in read()
            // while holding replies the client is waiting for.
            if reader.buffer().len() < REQUEST_HEADER_LEN {
                self.device.release_writes();
                lock(writer).flush()?;
            }
        }
    }

    fn handle<R: Read, W: Write>(
        &mut self,
        request: &Request,
        reader: &mut BufReader<R>,
        writer: &Mutex<W>,
    ) -> Result<Flow, ConnectionError> {
        if request.command == Command::Disc {
            // proto.md: no reply; offset, length and flags are irrelevant.
            return Ok(Flow::Disconnect);
        }
        // Every arm below sends exactly one reply (or fails the connection).
        match self.check(request) {
            Ok(Op::Read) => self.read(request, writer)?,
            Ok(Op::Write) => self.write(request, Ok(()), reader, writer)?,
            Err(errno) if request.command == Command::Write => {
                self.write(request, Err(errno), reader, writer)?;
            }
            Err(errno) => self.reply_error(writer, request, errno)?,
            Ok(op @ (Op::Flush | Op::Trim | Op::WriteZeroes | Op::Cache)) => {
                self.payloadless(op, request, writer)?;
            }
            Ok(Op::BlockStatus) => self.block_status(request, writer)?,
        }
        Ok(Flow::Continue)
    }

    /// Runs a validated FLUSH, TRIM, WRITE_ZEROES or CACHE and replies.
    fn payloadless<W: Write>(
        &mut self,
        op: Op,
        request: &Request,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        let fua = request.flags & command_flags::FUA != 0;
        let offset = request.offset;
        let length = u64::from(request.length);
        let device = self.device;
        let (result, counter) = match op {
            Op::Flush => (device.flush(), &self.stats.flushes),
            Op::Trim => (
                skip_empty(length, || device.trim(offset, length, fua)),
                &self.stats.trims,
            ),
            Op::Cache => (
                skip_empty(length, || device.cache(offset, length)),
                &self.stats.caches,
            ),
            _ if length == 0 => (Ok(()), &self.stats.write_zeroes),
            _ if request.flags & command_flags::FAST_ZERO != 0
                && !device.can_fast_zero(offset, length) =>
            {
                // proto.md: fail quickly, without side effects.
                return self.reply_error(writer, request, NbdErrno::NotSup);
            }
            _ => match device.write_zeroes_deferred(offset, length, fua) {
                Ok(Some(pending)) => {
                    self.deferred = Some(pending);
                    return Ok(());
                }
                Ok(None) => (Ok(()), &self.stats.write_zeroes),
                Err(e) => (Err(e), &self.stats.write_zeroes),
            },
        };
        match result {
            Ok(()) => {
                ServerStats::bump(counter, 1);
                self.reply_ok(writer, request)
            }
            Err(err) => {
                let errno = self.device_failed(request, &err);
                self.reply_error(writer, request, errno)
            }
        }
    }

    /// Validates a request against the export; see the module table.
    fn check(&self, request: &Request) -> Result<Op, NbdErrno> {
        use command_flags as cf;
        let (op, allowed_flags) = match request.command {
            Command::Read => (Op::Read, cf::FUA),
            Command::Write => (Op::Write, cf::FUA),
            Command::Flush => (Op::Flush, cf::FUA),
            Command::Trim => (Op::Trim, cf::FUA),
            Command::WriteZeroes => (Op::WriteZeroes, cf::FUA | cf::NO_HOLE | cf::FAST_ZERO),
            Command::Cache => (Op::Cache, cf::FUA),
            Command::BlockStatus => (Op::BlockStatus, cf::FUA | cf::REQ_ONE),
            // RESIZE is not advertised.
            _ => return Err(NbdErrno::Inval),
        };
        if request.flags & !allowed_flags != 0 {
            return Err(NbdErrno::Inval);
        }
        if op == Op::BlockStatus && (self.bound.allocation_context.is_none() || request.length == 0)
        {
            return Err(NbdErrno::Inval);
        }
        if op.modifies() && self.bound.read_only {
            return Err(NbdErrno::Perm);
        }
        // proto.md applies the maximum block size to READ, WRITE and
        // WRITE_ZEROES; TRIM may cover any in-range length.
        if matches!(op, Op::Read | Op::Write | Op::WriteZeroes)
            && request.length > self.config.max_request_bytes
        {
            return Err(NbdErrno::Inval);
        }
        if op != Op::Flush {
            let end = request.offset.checked_add(u64::from(request.length));
            if end.is_none_or(|end| end > self.bound.size) {
                return Err(match op {
                    Op::Write | Op::WriteZeroes => NbdErrno::NoSpc,
                    _ => NbdErrno::Inval,
                });
            }
        }
        Ok(op)
    }

    /// Runs a validated READ and replies with its data.
    fn read<W: Write>(
        &mut self,
        request: &Request,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        if self.bound.structured {
            return self.read_structured(request, writer);
        }
        let len = request.length as usize;
        let mut scratch = Vec::new();
        let buf = data_buffer(&mut self.buf, &mut scratch, len);
        let result = skip_empty(len as u64, || self.device.read_at(buf, request.offset));
        match result {
            Ok(()) => {
                // The data is complete before the header goes out, so a
                // device error can never follow a success header (which
                // proto.md would force us to answer with a hard disconnect).
                let mut w = lock(writer);
                w.write_all(&codec::encode_simple_reply(0, request.handle))?;
                w.write_all(buf)?;
                ServerStats::bump(&self.stats.reads, 1);
                ServerStats::bump(&self.stats.bytes_read, len as u64);
            }
            Err(err) => {
                let errno = self.device_failed(request, &err);
                self.reply_error(writer, request, errno)?;
            }
        }
        Ok(())
    }

    /// A READ answered in structured chunks: the ranges the device reports
    /// as reading zero become hole chunks (not read), the rest is read in
    /// full before the first chunk is sent.
    fn read_structured<W: Write>(
        &mut self,
        request: &Request,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        let len = u64::from(request.length);
        if len == 0 {
            lock(writer).write_all(&codec::encode_none_chunk(request.handle))?;
            ServerStats::bump(&self.stats.reads, 1);
            return Ok(());
        }
        // A device that cannot say reads everything: the answer is only
        // an optimisation here.
        let extents = match self.device.block_status(request.offset, len) {
            Ok(extents) => extents,
            Err(err) => {
                debug!(offset = request.offset, length = len, error = %err,
                       "block status failed; reading the whole range");
                Vec::new()
            }
        };
        let runs = read_runs(&extents, len);
        let mut scratch = Vec::new();
        let buf = data_buffer(&mut self.buf, &mut scratch, len as usize);
        let device = self.device;
        let result = runs
            .iter()
            .filter(|&&(_, _, zero)| !zero)
            .try_for_each(|&(at, n, _)| {
                let slice = &mut buf[at as usize..(at + n) as usize];
                device.read_at(slice, request.offset + at)
            });
        if let Err(err) = result {
            let errno = self.device_failed(request, &err);
            return self.reply_error(writer, request, errno);
        }
        let mut w = lock(writer);
        let mut sent = 0u64;
        let mut holes = 0u64;
        for (i, &(at, n, zero)) in runs.iter().enumerate() {
            let last = i + 1 == runs.len();
            if zero {
                let flags = if last { reply_flags::DONE } else { 0 };
                // Runs are at most the request's u32 length.
                w.write_all(&codec::encode_offset_hole(
                    flags,
                    request.handle,
                    request.offset + at,
                    n as u32,
                ))?;
                holes += n;
                continue;
            }
            let mut piece = at;
            while piece < at + n {
                let m = (at + n - piece).min(MAX_DATA_CHUNK);
                let flags = if last && piece + m == at + n {
                    reply_flags::DONE
                } else {
                    0
                };
                w.write_all(&codec::encode_offset_data_header(
                    flags,
                    request.handle,
                    request.offset + piece,
                    m as u32,
                ))?;
                w.write_all(&buf[piece as usize..(piece + m) as usize])?;
                piece += m;
            }
            sent += n;
        }
        ServerStats::bump(&self.stats.reads, 1);
        ServerStats::bump(&self.stats.bytes_read, sent);
        ServerStats::bump(&self.stats.hole_bytes, holes);
        Ok(())
    }

    /// Answers a validated BLOCK_STATUS with one `base:allocation` chunk.
    fn block_status<W: Write>(
        &mut self,
        request: &Request,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        let len = u64::from(request.length);
        let extents = match self.device.block_status(request.offset, len) {
            Ok(extents) => extents,
            Err(err) => {
                let errno = self.device_failed(request, &err);
                return self.reply_error(writer, request, errno);
            }
        };
        let req_one = request.flags & command_flags::REQ_ONE != 0;
        let descriptors = descriptors(&extents, len, req_one);
        let mut out = Vec::with_capacity(32 + 8 * descriptors.len());
        codec::encode_block_status(
            &mut out,
            reply_flags::DONE,
            request.handle,
            self.bound
                .allocation_context
                .unwrap_or(super::handshake::ALLOCATION_CONTEXT_ID),
            &descriptors,
        );
        lock(writer).write_all(&out)?;
        ServerStats::bump(&self.stats.block_status, 1);
        Ok(())
    }

    /// Reads a WRITE's payload (or skips it if `verdict` rejected the
    /// request), runs it and replies.
    fn write<R: Read, W: Write>(
        &mut self,
        request: &Request,
        verdict: Result<(), NbdErrno>,
        reader: &mut BufReader<R>,
        writer: &Mutex<W>,
    ) -> Result<(), ConnectionError> {
        let limit = self.config.max_request_bytes.max(PORTABLE_PAYLOAD_LIMIT);
        if request.length > limit {
            self.reply_error(writer, request, NbdErrno::Inval)?;
            lock(writer).flush()?;
            return Err(ConnectionError::OversizedWrite {
                length: request.length,
                limit,
            });
        }
        if let Err(errno) = verdict {
            skip_payload(reader, request.length)?;
            return self.reply_error(writer, request, errno);
        }
        let len = request.length as usize;
        let mut scratch = Vec::new();
        let buf = data_buffer(&mut self.buf, &mut scratch, len);
        reader.read_exact(buf)?;
        let fua = request.flags & command_flags::FUA != 0;
        // A client with a queue depth sends writes in bursts (it refills
        // its queue when replies arrive): a replicated device can then send
        // the burst as one batch rather than its first write alone.
        let next = reader.buffer();
        let more_writes = !fua
            && next.len() >= REQUEST_HEADER_LEN
            && Command::from_wire(u16::from_be_bytes([next[6], next[7]])) == Command::Write;
        let result = if len == 0 {
            Ok(None)
        } else {
            self.device
                .write_at_deferred(buf, request.offset, fua, more_writes)
        };
        match result {
            Ok(Some(pending)) => {
                self.deferred = Some(pending);
                Ok(())
            }
            Ok(None) => {
                ServerStats::bump(&self.stats.writes, 1);
                ServerStats::bump(&self.stats.bytes_written, len as u64);
                self.reply_ok(writer, request)
            }
            Err(err) => {
                let errno = self.device_failed(request, &err);
                self.reply_error(writer, request, errno)
            }
        }
    }

    fn device_failed(&mut self, request: &Request, err: &io::Error) -> NbdErrno {
        let errno = NbdErrno::from_io_error(err);
        if self.device_error_logged {
            debug!(command = ?request.command, offset = request.offset, length = request.length,
                   error = %err, ?errno, "NBD device error");
        } else {
            self.device_error_logged = true;
            warn!(command = ?request.command, offset = request.offset, length = request.length,
                  error = %err, ?errno,
                  "NBD device error (further ones on this connection are logged at debug level)");
        }
        errno
    }

    fn reply_ok<W: Write>(
        &self,
        writer: &Mutex<W>,
        request: &Request,
    ) -> Result<(), ConnectionError> {
        lock(writer).write_all(&codec::encode_simple_reply(0, request.handle))?;
        Ok(())
    }

    fn reply_error<W: Write>(
        &self,
        writer: &Mutex<W>,
        request: &Request,
        errno: NbdErrno,
    ) -> Result<(), ConnectionError> {
        debug!(command = ?request.command, offset = request.offset, length = request.length,
               flags = request.flags, ?errno, "NBD request failed");
        ServerStats::bump(&self.stats.errors, 1);
        if self.bound.structured {
            // Structured clients get the reason in words; a READ must not
            // get a simple reply at all once structured replies are on.
            let mut out = Vec::new();
            let message = format!("{:?}: {}", request.command, errno_text(errno));
            codec::encode_error_chunk(
                &mut out,
                reply_flags::DONE,
                request.handle,
                errno,
                &message,
                None,
            );
            lock(writer).write_all(&out)?;
        } else {
            lock(writer).write_all(&codec::encode_simple_reply(errno.code(), request.handle))?;
        }
        Ok(())
    }
}

/// A short human-readable text for an error chunk.
fn errno_text(errno: NbdErrno) -> &'static str {
    match errno {
        NbdErrno::Perm => "operation not permitted (read-only export)",
        NbdErrno::Io => "I/O error on the device",
        NbdErrno::NoMem => "out of memory",
        NbdErrno::Inval => "invalid request",
        NbdErrno::NoSpc => "no space (request past the end of the export, or storage full)",
        NbdErrno::Overflow => "request too large",
        NbdErrno::NotSup => "not supported (a fast zero the device cannot do faster than writing)",
        NbdErrno::Shutdown => "server is shutting down",
    }
}

/// The device's extents of a `len`-byte read as `(offset in the request,
/// length, reads zero)` runs covering exactly `0..len`: extents past `len`
/// are cut, a shortfall is read as data, adjacent runs of one kind merge.
fn read_runs(extents: &[Extent], len: u64) -> Vec<(u64, u64, bool)> {
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = 0u64;
    let mut push = |at: u64, n: u64, zero: bool| match runs.last_mut() {
        Some((_, m, z)) if *z == zero => *m += n,
        _ => runs.push((at, n, zero)),
    };
    for e in extents {
        if at >= len {
            break;
        }
        let n = e.length.min(len - at);
        if n == 0 {
            continue;
        }
        push(at, n, e.allocation.reads_zero());
        at += n;
    }
    if at < len {
        push(at, len - at, false);
    }
    runs
}

/// The device's extents as block status descriptors for a `len`-byte
/// request: zero-length extents dropped, cut at `len` (proto.md allows the
/// last to run past it, but the device's view there was not asked for),
/// adjacent equal ones merged, at most [`MAX_BLOCK_STATUS_DESCRIPTORS`]
/// (one with `REQ_ONE`); never empty (an empty answer becomes "data").
fn descriptors(extents: &[Extent], len: u64, req_one: bool) -> Vec<BlockStatusDescriptor> {
    let limit = if req_one {
        1
    } else {
        MAX_BLOCK_STATUS_DESCRIPTORS
    };
    let mut out: Vec<BlockStatusDescriptor> = Vec::new();
    let mut at = 0u64;
    for e in extents {
        if at >= len {
            break;
        }
        // `len` is a request's u32 length, so the cut fits in u32.
        let n = e.length.min(len - at) as u32;
        if n == 0 {
            continue;
        }
        let flags = e.allocation.flags();
        let full = out.len() == limit;
        match out.last_mut() {
            Some(last) if last.flags == flags => last.length += n,
            _ if full => break,
            _ => out.push(BlockStatusDescriptor { length: n, flags }),
        }
        at += u64::from(n);
    }
    if out.is_empty() {
        out.push(BlockStatusDescriptor {
            length: len as u32,
            flags: Allocation::Data.flags(),
        });
    }
    out
}

/// Zero-length requests succeed without touching the device: proto.md
/// leaves their behaviour unspecified apart from "SHOULD NOT disconnect",
/// and devices need not handle empty ranges.
fn skip_empty(length: u64, op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    if length == 0 { Ok(()) } else { op() }
}

/// A `len`-byte buffer: the connection's retained one when small enough,
/// otherwise a fresh allocation in `scratch` that is freed after the request.
fn data_buffer<'b>(
    retained: &'b mut Vec<u8>,
    scratch: &'b mut Vec<u8>,
    len: usize,
) -> &'b mut [u8] {
    if len <= RETAINED_BUFFER {
        if retained.len() < len {
            retained.resize(len, 0);
        }
        &mut retained[..len]
    } else {
        *scratch = vec![0u8; len];
        &mut scratch[..]
    }
}

/// Reads and drops a rejected write's payload so the next request header is
/// found where the client put it.
fn skip_payload<R: Read>(reader: &mut R, length: u32) -> io::Result<()> {
    let skipped = io::copy(
        &mut reader.by_ref().take(u64::from(length)),
        &mut io::sink(),
    )?;
    if skipped < u64::from(length) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
