//! Test fixtures: an in-memory [`BlockDevice`], a registry of them, a server
//! on 127.0.0.1:0, and a minimal hand-written NBD client that speaks the
//! wire format through `offsite_nbd::codec` (so tests also exercise the
//! client-side decoders).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{self, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use offsite_nbd::codec::{
    self, Command, OptionReplyHeader, Request, SimpleReply, client_flags, info_types, option_codes,
    reply_types,
};
use offsite_nbd::{
    BlockDevice, Export, ExportRegistry, Extent, NbdServer, ServerConfig, TlsPolicy,
};

/// Client sockets time out so a server bug fails a test instead of hanging it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A RAM-backed device with call counters and error injection.
#[derive(Debug, Default)]
pub struct MemDevice {
    pub data: Mutex<Vec<u8>>,
    pub read_only: bool,
    /// When set, every data operation fails with this kind.
    pub fail_with: Mutex<Option<io::ErrorKind>>,
    /// Each write sleeps this long first (to hold a request in flight).
    pub write_delay: Mutex<Duration>,
    pub calls: AtomicU64,
    pub flushes: AtomicU64,
    pub fua_writes: AtomicU64,
    /// Writes and releases as the server announced them: `"write+"` for a
    /// write with `more_writes`, `"write"` without, `"release"`.
    pub hints: Mutex<Vec<&'static str>>,
    /// `can_fast_zero`'s answer.
    pub fast_zero: std::sync::atomic::AtomicBool,
    /// Ranges `cache` was called with.
    pub cached: Mutex<Vec<(u64, u64)>>,
    /// Bytes `read_at` was asked for.
    pub bytes_read: AtomicU64,
}

/// Granule of [`MemDevice`]'s block status: all-zero 4 KiB blocks (aligned
/// to the device) are holes.
pub const MEM_GRANULE: u64 = 4096;

impl MemDevice {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; size]),
            ..Self::default()
        })
    }

    pub fn read_only(size: usize) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; size]),
            read_only: true,
            ..Self::default()
        })
    }

    pub fn fail(&self, kind: Option<io::ErrorKind>) {
        *self.fail_with.lock().unwrap() = kind;
    }

    fn enter(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match *self.fail_with.lock().unwrap() {
            Some(kind) => Err(io::Error::new(kind, "injected failure")),
            None => Ok(()),
        }
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).unwrap();
        let end = start + usize::try_from(len).unwrap();
        assert!(
            end <= self.data.lock().unwrap().len(),
            "server sent an out-of-range request to the device"
        );
        assert!(len > 0, "server sent an empty request to the device");
        start..end
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.enter()?;
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::SeqCst);
        let range = self.range(offset, buf.len() as u64);
        buf.copy_from_slice(&self.data.lock().unwrap()[range]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let delay = *self.write_delay.lock().unwrap();
        std::thread::sleep(delay);
        self.enter()?;
        assert!(!self.read_only, "write reached a read-only device");
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        let range = self.range(offset, buf.len() as u64);
        self.data.lock().unwrap()[range].copy_from_slice(buf);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.enter()?;
        let range = self.range(offset, len);
        self.data.lock().unwrap()[range].fill(0);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.enter()?;
        let range = self.range(offset, len);
        self.data.lock().unwrap()[range].fill(0);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.enter()?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn write_at_deferred(
        &self,
        buf: &[u8],
        offset: u64,
        fua: bool,
        more_writes: bool,
    ) -> io::Result<Option<Box<dyn offsite_nbd::Pending>>> {
        self.hints
            .lock()
            .unwrap()
            .push(if more_writes { "write+" } else { "write" });
        self.write_at(buf, offset, fua).map(|()| None)
    }

    fn release_writes(&self) {
        self.hints.lock().unwrap().push("release");
    }

    /// All-zero [`MEM_GRANULE`] blocks are holes, found through the
    /// library's `extents_by_seek`/`probe_data_end` as a real device would.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.enter()?;
        self.range(offset, len);
        let data = self.data.lock().unwrap();
        let size = data.len() as u64;
        let zero_block = |b: u64| {
            let lo = (b * MEM_GRANULE) as usize;
            let hi = ((b + 1) * MEM_GRANULE).min(size) as usize;
            data[lo..hi].iter().all(|&x| x == 0)
        };
        let next_data = |at: u64| -> io::Result<Option<u64>> {
            let mut b = at / MEM_GRANULE;
            while b * MEM_GRANULE < size {
                if !zero_block(b) {
                    return Ok(Some((b * MEM_GRANULE).max(at)));
                }
                b += 1;
            }
            Ok(None)
        };
        offsite_nbd::extents_by_seek(offset, len, next_data, |at| {
            offsite_nbd::probe_data_end(at, size, MEM_GRANULE, u64::MAX, next_data)
        })
    }

    fn can_fast_zero(&self, _offset: u64, _len: u64) -> bool {
        self.fast_zero.load(Ordering::SeqCst)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.enter()?;
        self.cached.lock().unwrap().push((offset, len));
        Ok(())
    }
}

/// Exports by name.
#[derive(Default)]
pub struct MemRegistry {
    exports: Mutex<HashMap<String, Export>>,
}

impl MemRegistry {
    pub fn add(&self, name: &str, description: &str, device: Arc<MemDevice>) {
        self.add_with_tls(name, description, device, None);
    }

    /// Adds an export with a TLS mode of its own (`None`: the listener's).
    pub fn add_with_tls(
        &self,
        name: &str,
        description: &str,
        device: Arc<MemDevice>,
        tls: Option<offsite_nbd::TlsMode>,
    ) {
        self.exports.lock().unwrap().insert(
            name.to_owned(),
            Export {
                name: name.to_owned(),
                description: description.to_owned(),
                device,
                tls,
            },
        );
    }
}

impl ExportRegistry for MemRegistry {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.exports.lock().unwrap().get(name).cloned()
    }

    fn list(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .exports
            .lock()
            .unwrap()
            .values()
            .map(|e| (e.name.clone(), e.description.clone()))
            .collect();
        out.sort();
        out
    }
}

/// A server with one 1 MiB writable export `vol` and a read-only `ro`.
pub struct Fixture {
    pub server: NbdServer,
    pub registry: Arc<MemRegistry>,
    pub vol: Arc<MemDevice>,
    pub ro: Arc<MemDevice>,
}

pub const VOL_SIZE: usize = 1 << 20;

pub fn start_server(config: ServerConfig) -> Fixture {
    start_server_with_tls(config, TlsPolicy::off())
}

/// Like [`start_server`], offering `tls`.
pub fn start_server_with_tls(config: ServerConfig, tls: TlsPolicy) -> Fixture {
    let registry = Arc::new(MemRegistry::default());
    let vol = MemDevice::new(VOL_SIZE);
    let ro = MemDevice::read_only(64 << 10);
    registry.add("vol", "test volume", Arc::clone(&vol));
    registry.add("ro", "", Arc::clone(&ro));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = NbdServer::start_with_tls(
        listener,
        Arc::clone(&registry) as Arc<dyn ExportRegistry>,
        config,
        tls,
    )
    .expect("start server");
    Fixture {
        server,
        registry,
        vol,
        ro,
    }
}

/// What a successful `NBD_OPT_GO`/`NBD_OPT_INFO` told us.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub name: Option<String>,
    pub description: Option<String>,
    pub block_size: Option<(u32, u32, u32)>,
}

/// A blocking NBD client good enough to drive the server byte by byte.
pub struct Client {
    pub stream: TcpStream,
    next_handle: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            next_handle: 1,
        }
    }

    /// Connects, reads the greeting and sends FIXED_NEWSTYLE | NO_ZEROES.
    pub fn negotiated(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr);
        client.handshake(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES);
        client
    }

    /// Connects and enters transmission on `export`.
    pub fn open(addr: SocketAddr, export: &str) -> (Self, ExportInfo) {
        let mut client = Self::negotiated(addr);
        let info = client
            .go(export)
            .unwrap_or_else(|e| panic!("GO {export} failed with {e:#x}"));
        (client, info)
    }

    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).expect("read from server");
        buf
    }

    pub fn handshake(&mut self, flags: u32) {
        let greeting = self.read_exact(codec::GREETING_LEN);
        assert_eq!(greeting, codec::greeting());
        self.stream.write_all(&flags.to_be_bytes()).unwrap();
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut out = Vec::new();
        codec::encode_option(&mut out, option, data);
        self.stream.write_all(&out).unwrap();
    }

    pub fn read_option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let raw = self.read_exact(codec::OPTION_REPLY_HEADER_LEN);
        let header = codec::decode_option_reply_header(&raw).expect("option reply magic");
        let data = self.read_exact(header.length as usize);
        (header, data)
    }

    /// Sends INFO or GO and collects replies up to the final one.
    pub fn info_or_go(&mut self, option: u32, export: &str) -> Result<ExportInfo, u32> {
        self.send_option(
            option,
            &codec::encode_info_request(export, &[info_types::BLOCK_SIZE]),
        );
        let mut info = ExportInfo::default();
        loop {
            let (header, data) = self.read_option_reply();
            assert_eq!(header.option, option);
            match header.reply_type {
                reply_types::INFO => {
                    let kind = u16::from_be_bytes([data[0], data[1]]);
                    let body = &data[2..];
                    match kind {
                        info_types::EXPORT => {
                            assert_eq!(data.len(), 12);
                            info.size = u64::from_be_bytes(body[..8].try_into().unwrap());
                            info.flags = u16::from_be_bytes(body[8..10].try_into().unwrap());
                        }
                        info_types::NAME => {
                            info.name = Some(String::from_utf8(body.to_vec()).unwrap());
                        }
                        info_types::DESCRIPTION => {
                            info.description = Some(String::from_utf8(body.to_vec()).unwrap());
                        }
                        info_types::BLOCK_SIZE => {
                            assert_eq!(data.len(), 14);
                            let word = |i: usize| {
                                u32::from_be_bytes(body[i * 4..i * 4 + 4].try_into().unwrap())
                            };
                            info.block_size = Some((word(0), word(1), word(2)));
                        }
                        other => panic!("unexpected info type {other}"),
                    }
                }
                reply_types::ACK => return Ok(info),
                err if err & reply_types::ERROR_BIT != 0 => return Err(err),
                other => panic!("unexpected reply type {other:#x}"),
            }
        }
    }

    pub fn go(&mut self, export: &str) -> Result<ExportInfo, u32> {
        self.info_or_go(option_codes::GO, export)
    }

    /// Sends raw bytes (requests built by the test, sent in one write).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_request(&mut self, command: Command, flags: u16, offset: u64, length: u32) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        let req = Request {
            flags,
            command,
            handle,
            offset,
            length,
        };
        self.stream.write_all(&req.encode()).unwrap();
        handle
    }

    pub fn read_reply(&mut self) -> SimpleReply {
        let raw = self.read_exact(codec::SIMPLE_REPLY_HEADER_LEN);
        codec::decode_simple_reply(&raw).expect("simple reply magic")
    }

    /// Sends a request without payload and returns its error code.
    pub fn command(&mut self, command: Command, flags: u16, offset: u64, length: u32) -> u32 {
        let handle = self.send_request(command, flags, offset, length);
        let reply = self.read_reply();
        assert_eq!(reply.handle, handle);
        reply.error
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        let handle = self.send_request(
            Command::Write,
            flags,
            offset,
            u32::try_from(data.len()).unwrap(),
        );
        self.stream.write_all(data).unwrap();
        let reply = self.read_reply();
        assert_eq!(reply.handle, handle);
        reply.error
    }

    pub fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        let handle = self.send_request(Command::Read, 0, offset, length);
        let reply = self.read_reply();
        assert_eq!(reply.handle, handle);
        if reply.error != 0 {
            return Err(reply.error);
        }
        Ok(self.read_exact(length as usize))
    }

    /// True if the server closed the connection (EOF or reset) within the
    /// client timeout, with no further bytes sent.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

// Real client tools (interop.rs, tls.rs).

/// A client tool that hangs must fail the test, not stall the suite.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds `tool` on PATH; `None` means skip (outside CI only).
pub fn require(tool: &str) -> Option<()> {
    let found = process::Command::new("which")
        .arg(tool)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(());
    }
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is required under CI (install qemu-utils and libnbd-bin)");
    }
    eprintln!("skipping: {tool} not installed (apt install qemu-utils libnbd-bin)");
    None
}

/// Runs a command to completion within [`TOOL_TIMEOUT`], killing it if not.
pub fn run(cmd: &mut process::Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    // Drain pipes on threads so a chatty tool cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tool") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {TOOL_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().expect("stdout reader"),
        stderr: err_thread.join().expect("stderr reader"),
    }
}

pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
