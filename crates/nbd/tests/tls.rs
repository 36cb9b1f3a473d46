//! NBD over TLS (`NBD_OPT_STARTTLS`): the matrix of listener modes,
//! credentials and clients, with real clients (`nbdinfo`, `qemu-img`,
//! `qemu-io`, all GnuTLS) where they are installed, and a hand-driven
//! client (OpenSSL) for the protocol's corners. Certificates are made at
//! test time with the `openssl` command, in QEMU's directory layout.
//!
//! Like interop.rs, a test whose tool is missing skips outside CI and fails
//! under it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    CLIENT_TIMEOUT, Client, Fixture, MemDevice, assert_success, require, run, start_server_with_tls,
};
use offsite_nbd::codec::{
    self, Command as NbdCommand, OptionReplyHeader, option_codes, reply_types,
};
use offsite_nbd::{ServerConfig, TlsAcceptor, TlsCredentials, TlsMode, TlsPolicy};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

const ERR_POLICY: u32 = reply_types::ERROR_BIT | 2;
const ERR_INVALID: u32 = reply_types::ERROR_BIT | 3;
const ERR_TLS_REQD: u32 = reply_types::ERROR_BIT | 5;

/// Certificates and keys in QEMU's layout, made once per test.
struct Pki {
    _dir: tempfile::TempDir,
    /// ca-cert.pem, server-cert.pem, server-key.pem.
    server: PathBuf,
    /// ca-cert.pem, client-cert.pem, client-key.pem (signed by the CA).
    client: PathBuf,
    /// Trusts the server, but its client certificate is from another CA.
    rogue: PathBuf,
    /// The server's keys.psk (alice's key).
    psk: PathBuf,
    /// keys.psk with alice's key, for a client.
    psk_client: PathBuf,
    /// keys.psk with another key for alice.
    psk_wrong: PathBuf,
}

const ALICE_KEY: &str = "8a4f0e4c5b0f2b4a9f3d2c1e0b7a69580123456789abcdeffedcba9876543210";
const WRONG_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

impl Pki {
    fn generate() -> Option<Pki> {
        require("openssl")?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Shared with the daemon's TLS tests (crates/cli/tests/nbd_tls.rs).
        let script = include_str!("pki.sh");
        let output = run(Command::new("sh").arg("-c").arg(script).current_dir(root));
        assert_success("making test certificates", &output);
        let psk = |dir: &str, key: &str| {
            let path = root.join(dir).join("keys.psk");
            std::fs::write(&path, format!("alice:{key}\n")).unwrap();
            path
        };
        Some(Pki {
            server: root.join("server"),
            client: root.join("client"),
            rogue: root.join("rogue"),
            psk: psk("psk", ALICE_KEY),
            psk_client: psk("psk-client", ALICE_KEY),
            psk_wrong: psk("psk-wrong", WRONG_KEY),
            _dir: dir,
        })
    }

    fn x509(&self) -> TlsCredentials {
        TlsCredentials {
            x509_dir: Some(self.server.clone()),
            psk_file: None,
            verify_peer: true,
        }
    }

    fn psk(&self) -> TlsCredentials {
        TlsCredentials {
            x509_dir: None,
            psk_file: Some(self.psk.clone()),
            verify_peer: true,
        }
    }
}

/// A server with `vol` (the listener's mode), `ro`, and two exports with
/// modes of their own: `secret` (required) and `plain` (off).
fn server(mode: TlsMode, credentials: Option<TlsCredentials>) -> Fixture {
    let acceptor = credentials.map(|c| TlsAcceptor::new(&c).expect("load credentials"));
    let policy = TlsPolicy::new(mode, acceptor).expect("policy");
    let f = start_server_with_tls(ServerConfig::default(), policy);
    let registry = &f.registry;
    registry.add_with_tls(
        "secret",
        "",
        MemDevice::new(64 << 10),
        Some(TlsMode::Required),
    );
    registry.add_with_tls("plain", "", MemDevice::new(64 << 10), Some(TlsMode::Off));
    f
}

fn nbdinfo(uri: &str) -> Output {
    run(Command::new("nbdinfo").arg(uri))
}

fn x509_uri(addr: SocketAddr, export: &str, dir: &Path) -> String {
    format!("nbds://{addr}/{export}?tls-certificates={}", dir.display())
}

fn psk_uri(addr: SocketAddr, export: &str, file: &Path) -> String {
    // libnbd takes the PSK identity from the URI's user part.
    format!(
        "nbds://alice@{addr}/{export}?tls-psk-file={}",
        file.display()
    )
}

/// `qemu-img`/`qemu-io` arguments for an NBD export through `creds`
/// (`--object ... --image-opts ...`).
fn qemu_args(addr: SocketAddr, export: &str, creds: Option<String>) -> Vec<String> {
    let mut opts = format!(
        "driver=nbd,host={},port={},export={export}",
        addr.ip(),
        addr.port()
    );
    let mut args = Vec::new();
    if let Some(object) = creds {
        args.extend(["--object".to_string(), object]);
        opts.push_str(",tls-creds=tls0");
    }
    args.extend(["--image-opts".to_string(), opts]);
    args
}

fn x509_object(dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        dir.display()
    )
}

fn psk_object(file: &Path) -> String {
    let dir = file.parent().unwrap();
    format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        dir.display()
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn x509_clients_with_a_certificate_get_in() {
    let (Some(pki), Some(()), Some(())) = (Pki::generate(), require("nbdinfo"), require("qemu-io"))
    else {
        return;
    };
    let f = server(TlsMode::Required, Some(pki.x509()));
    let addr = f.server.local_addr();

    let output = nbdinfo(&x509_uri(addr, "vol", &pki.client));
    assert_success("nbdinfo over TLS (x509)", &output);
    assert!(text(&output).contains("with TLS"), "{}", text(&output));

    let output = run(Command::new("qemu-io")
        .args(qemu_args(addr, "vol", Some(x509_object(&pki.client))))
        .args(["-c", "write -P 0xab 0 64k"])
        .args(["-c", "read -P 0xab 0 64k"])
        .args(["-c", "flush"]));
    assert_success("qemu-io over TLS (x509)", &output);
    assert!(
        !text(&output).contains("Pattern verification failed"),
        "{}",
        text(&output)
    );
    assert!(
        f.vol.data.lock().unwrap()[..64 << 10]
            .iter()
            .all(|&b| b == 0xab)
    );

    let output = run(Command::new("qemu-img").arg("info").args(qemu_args(
        addr,
        "vol",
        Some(x509_object(&pki.client)),
    )));
    assert_success("qemu-img info over TLS (x509)", &output);
    assert!(text(&output).contains("1 MiB"), "{}", text(&output));
}

#[test]
fn psk_clients_with_the_key_get_in() {
    let (Some(pki), Some(()), Some(())) =
        (Pki::generate(), require("nbdinfo"), require("qemu-img"))
    else {
        return;
    };
    // PSK alone, and beside certificates (a client then picks either).
    let both = TlsCredentials {
        x509_dir: Some(pki.server.clone()),
        ..pki.psk()
    };
    let f = server(TlsMode::Required, Some(both));
    let addr = f.server.local_addr();
    let output = run(Command::new("qemu-img").arg("info").args(qemu_args(
        addr,
        "vol",
        Some(psk_object(&pki.psk_client)),
    )));
    assert_success("qemu-img info (PSK) beside x509", &output);
    let output = nbdinfo(&x509_uri(addr, "vol", &pki.client));
    assert_success("nbdinfo (x509) beside PSK", &output);
    drop(f);

    let f = server(TlsMode::Required, Some(pki.psk()));
    let addr = f.server.local_addr();

    let output = nbdinfo(&psk_uri(addr, "vol", &pki.psk_client));
    assert_success("nbdinfo over TLS (PSK)", &output);
    assert!(text(&output).contains("with TLS"), "{}", text(&output));

    let output = run(Command::new("qemu-img").arg("info").args(qemu_args(
        addr,
        "vol",
        Some(psk_object(&pki.psk_client)),
    )));
    assert_success("qemu-img info over TLS (PSK)", &output);

    let output = run(Command::new("qemu-io")
        .args(qemu_args(addr, "vol", Some(psk_object(&pki.psk_client))))
        .args(["-c", "write -P 0x5c 4k 4k"])
        .args(["-c", "read -P 0x5c 4k 4k"]));
    assert_success("qemu-io over TLS (PSK)", &output);
    assert!(
        !text(&output).contains("Pattern verification failed"),
        "{}",
        text(&output)
    );
}

#[test]
fn required_refuses_clients_without_credentials() {
    let (Some(pki), Some(()), Some(())) =
        (Pki::generate(), require("nbdinfo"), require("qemu-img"))
    else {
        return;
    };
    let f = server(TlsMode::Required, Some(pki.x509()));
    let addr = f.server.local_addr();

    let output = nbdinfo(&format!("nbd://{addr}/vol"));
    assert!(!output.status.success(), "{}", text(&output));
    let output = run(Command::new("qemu-img")
        .arg("info")
        .args(qemu_args(addr, "vol", None)));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("TLS"), "{}", text(&output));

    // FORCEDTLS: every option but STARTTLS and ABORT is refused...
    let mut c = Client::negotiated(addr);
    for option in [option_codes::LIST, option_codes::STRUCTURED_REPLY] {
        c.send_option(option, b"");
        let (header, _) = c.read_option_reply();
        assert_eq!(header.reply_type, ERR_TLS_REQD, "option {option}");
    }
    assert_eq!(c.go("vol").unwrap_err(), ERR_TLS_REQD);
    // ... and EXPORT_NAME, which cannot fail, closes the connection.
    c.send_option(option_codes::EXPORT_NAME, b"vol");
    assert!(c.is_closed());
    assert_eq!(f.server.stats().snapshot().reads, 0);
}

#[test]
fn optional_lets_plain_clients_in_and_tls_clients_upgrade() {
    let (Some(pki), Some(())) = (Pki::generate(), require("nbdinfo")) else {
        return;
    };
    let f = server(TlsMode::Optional, Some(pki.x509()));
    let addr = f.server.local_addr();

    let output = nbdinfo(&format!("nbd://{addr}/vol"));
    assert_success("plain nbdinfo on an optional listener", &output);
    assert!(!text(&output).contains("with TLS"), "{}", text(&output));
    let output = nbdinfo(&x509_uri(addr, "vol", &pki.client));
    assert_success("nbdinfo over TLS on an optional listener", &output);
    assert!(text(&output).contains("with TLS"), "{}", text(&output));

    // An export that requires TLS: refused to plain clients (and not
    // listed to them), served to TLS clients.
    let mut c = Client::negotiated(addr);
    assert_eq!(c.go("secret").unwrap_err(), ERR_TLS_REQD);
    assert!(!list(&mut c).contains(&"secret".to_string()));
    assert!(c.go("vol").is_ok());
    let output = nbdinfo(&x509_uri(addr, "secret", &pki.client));
    assert_success("nbdinfo over TLS on a TLS-only export", &output);
    // One that has TLS off: refused over TLS.
    let output = nbdinfo(&x509_uri(addr, "plain", &pki.client));
    assert!(!output.status.success(), "{}", text(&output));
    let output = nbdinfo(&format!("nbd://{addr}/plain"));
    assert_success("plain nbdinfo on an export with TLS off", &output);
}

#[test]
fn off_refuses_starttls_as_the_spec_says() {
    let f = server(TlsMode::Off, None);
    let addr = f.server.local_addr();
    let mut c = Client::negotiated(addr);
    c.send_option(option_codes::STARTTLS, b"");
    let (header, _) = c.read_option_reply();
    // NOTLS: ERR_POLICY, never TLS_REQD; the session goes on in plain.
    assert_eq!(header.reply_type, ERR_POLICY);
    // An export that requires TLS cannot be reached here: ERR_POLICY too.
    assert_eq!(c.go("secret").unwrap_err(), ERR_POLICY);
    assert!(c.go("vol").is_ok());
    assert_eq!(c.command(NbdCommand::Flush, 0, 0, 0), 0);

    let Some(pki) = Pki::generate() else {
        return;
    };
    if require("nbdinfo").is_some() {
        let output = nbdinfo(&x509_uri(addr, "vol", &pki.client));
        assert!(!output.status.success(), "{}", text(&output));
    }
}

#[test]
fn a_wrong_psk_or_an_untrusted_certificate_is_refused() {
    let (Some(pki), Some(()), Some(())) =
        (Pki::generate(), require("nbdinfo"), require("qemu-img"))
    else {
        return;
    };
    let f = server(TlsMode::Required, Some(pki.x509()));
    let addr = f.server.local_addr();
    let output = run(Command::new("qemu-img").arg("info").args(qemu_args(
        addr,
        "vol",
        Some(x509_object(&pki.rogue)),
    )));
    assert!(!output.status.success(), "{}", text(&output));
    let output = nbdinfo(&x509_uri(addr, "vol", &pki.rogue));
    assert!(!output.status.success(), "{}", text(&output));
    // No certificate at all (a CA to check the server, nothing else).
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        pki.client.join("ca-cert.pem"),
        bare.path().join("ca-cert.pem"),
    )
    .unwrap();
    let output = nbdinfo(&x509_uri(addr, "vol", bare.path()));
    assert!(!output.status.success(), "{}", text(&output));
    drop(f);

    let f = server(TlsMode::Required, Some(pki.psk()));
    let addr = f.server.local_addr();
    let output = nbdinfo(&psk_uri(addr, "vol", &pki.psk_wrong));
    assert!(!output.status.success(), "{}", text(&output));
    let output = run(Command::new("qemu-img").arg("info").args(qemu_args(
        addr,
        "vol",
        Some(psk_object(&pki.psk_wrong)),
    )));
    assert!(!output.status.success(), "{}", text(&output));
    // The server is unharmed by the refusals.
    let output = nbdinfo(&psk_uri(addr, "vol", &pki.psk_client));
    assert_success("nbdinfo with the right key after refusals", &output);
}

#[test]
fn haggling_restarts_inside_tls_with_nothing_negotiated() {
    let Some(pki) = Pki::generate() else {
        return;
    };
    let f = server(TlsMode::Optional, Some(pki.x509()));
    let mut c = Client::negotiated(f.server.local_addr());
    c.send_option(option_codes::STRUCTURED_REPLY, b"");
    assert_eq!(c.read_option_reply().0.reply_type, reply_types::ACK);
    let mut tls = start_tls(c, &pki.client);

    // Structured replies were negotiated in plain: forgotten (CVE-2021-3716).
    let request = codec::encode_meta_context_request("vol", &["base:allocation"]);
    option(&mut tls, option_codes::SET_META_CONTEXT, &request);
    assert_eq!(reply(&mut tls).0.reply_type, ERR_INVALID);
    // A second STARTTLS is the client's error.
    option(&mut tls, option_codes::STARTTLS, b"");
    assert_eq!(reply(&mut tls).0.reply_type, ERR_INVALID);
    // An export with TLS off is refused; one that requires it is served.
    let go = |name: &str| codec::encode_info_request(name, &[]);
    option(&mut tls, option_codes::GO, &go("plain"));
    assert_eq!(reply(&mut tls).0.reply_type, ERR_POLICY);
    option(&mut tls, option_codes::GO, &go("secret"));
    loop {
        let (header, _) = reply(&mut tls);
        if header.reply_type == reply_types::ACK {
            break;
        }
        assert_eq!(header.reply_type, reply_types::INFO);
    }
    // Transmission inside TLS: a write, then reading it back.
    let mut request = codec::Request {
        flags: 0,
        command: NbdCommand::Write,
        handle: 7,
        offset: 512,
        length: 4,
    }
    .encode()
    .to_vec();
    request.extend_from_slice(b"tls!");
    tls.write_all(&request).unwrap();
    let mut raw = [0u8; codec::SIMPLE_REPLY_HEADER_LEN];
    tls.read_exact(&mut raw).unwrap();
    let written = codec::decode_simple_reply(&raw).unwrap();
    assert_eq!((written.error, written.handle), (0, 7));
    let read = codec::Request {
        flags: 0,
        command: NbdCommand::Read,
        handle: 8,
        offset: 512,
        length: 4,
    };
    tls.write_all(&read.encode()).unwrap();
    let mut answer = [0u8; codec::SIMPLE_REPLY_HEADER_LEN + 4];
    tls.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[codec::SIMPLE_REPLY_HEADER_LEN..], b"tls!");
}

/// `NBD_OPT_LIST`'s names.
fn list(c: &mut Client) -> Vec<String> {
    c.send_option(option_codes::LIST, b"");
    let mut names = Vec::new();
    loop {
        let (header, data) = c.read_option_reply();
        match header.reply_type {
            reply_types::ACK => return names,
            reply_types::SERVER => {
                let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                names.push(String::from_utf8(data[4..4 + len].to_vec()).unwrap());
            }
            other => panic!("unexpected reply {other:#x} to LIST"),
        }
    }
}

/// Sends STARTTLS on a negotiated plain client and runs the TLS handshake
/// with the client certificate in `dir`.
fn start_tls(mut c: Client, dir: &Path) -> SslStream<TcpStream> {
    c.send_option(option_codes::STARTTLS, b"");
    assert_eq!(c.read_option_reply().0.reply_type, reply_types::ACK);
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(dir.join("ca-cert.pem")).unwrap();
    builder
        .set_certificate_file(dir.join("client-cert.pem"), SslFiletype::PEM)
        .unwrap();
    builder
        .set_private_key_file(dir.join("client-key.pem"), SslFiletype::PEM)
        .unwrap();
    let stream = c.stream.try_clone().unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    builder
        .build()
        .connect("localhost", stream)
        .expect("TLS handshake")
}

fn option(tls: &mut SslStream<TcpStream>, code: u32, data: &[u8]) {
    let mut out = Vec::new();
    codec::encode_option(&mut out, code, data);
    tls.write_all(&out).unwrap();
}

fn reply(tls: &mut SslStream<TcpStream>) -> (OptionReplyHeader, Vec<u8>) {
    let mut raw = [0u8; codec::OPTION_REPLY_HEADER_LEN];
    tls.read_exact(&mut raw).unwrap();
    let header = codec::decode_option_reply_header(&raw).unwrap();
    let mut data = vec![0; header.length as usize];
    tls.read_exact(&mut data).unwrap();
    (header, data)
}

#[test]
fn credentials_are_checked_at_load() {
    let Some(pki) = Pki::generate() else {
        return;
    };
    let missing = TlsCredentials {
        x509_dir: Some(pki.client.clone()),
        ..TlsCredentials::default()
    };
    let err = TlsAcceptor::new(&missing).unwrap_err().to_string();
    assert!(err.contains("server-cert.pem"), "{err}");
    let bad = pki.psk.with_file_name("bad.psk");
    std::fs::write(&bad, "alice:xyz\n").unwrap();
    let err = TlsAcceptor::new(&TlsCredentials {
        psk_file: Some(bad),
        ..TlsCredentials::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad.psk:1"), "{err}");
}

#[test]
fn a_client_silent_after_starttls_is_let_go_at_the_handshake_deadline() {
    let Some(pki) = Pki::generate() else {
        return;
    };
    let acceptor = TlsAcceptor::new(&pki.x509()).unwrap();
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let policy = TlsPolicy::new(TlsMode::Required, Some(acceptor)).unwrap();
    let f = start_server_with_tls(config, policy);
    let mut c = Client::negotiated(f.server.local_addr());
    c.send_option(option_codes::STARTTLS, b"");
    assert_eq!(c.read_option_reply().0.reply_type, reply_types::ACK);
    // No ClientHello: the server closes instead of holding the slot.
    assert!(c.is_closed());
}
