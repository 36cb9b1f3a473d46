//! Callout commands and VM waits: `sh -c CMD` run by the engine's
//! [`offsite_engine::hooks::run_shell`] (own process group, timeout, output
//! tail), and the
//! `tcp:HOST:PORT` / `cmd:COMMAND` checks that decide a VM is up.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Output kept per command.
const OUTPUT_LIMIT: usize = 16 * 1024;

/// The last [`OUTPUT_LIMIT`] bytes of `text`, on a character boundary.
fn tail(text: &str) -> &str {
    if text.len() <= OUTPUT_LIMIT {
        return text;
    }
    let mut start = text.len() - OUTPUT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `: OUTPUT` when there is output, for one-line messages.
pub(crate) fn quoted(output: &str) -> String {
    let t = output.trim_end();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", tail(t))
    }
}

/// Why a callout command or a VM's wait failed; the text goes to the
/// run report, with the command's output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// `sh` could not be started.
    #[error("cannot run {cmd:?}: {source}; check that sh exists")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error("{cmd:?} timed out after {ms} ms and was killed{}", quoted(output))]
    TimedOut {
        cmd: String,
        ms: u64,
        output: String,
    },
    /// The command exited non-zero, or was killed by a signal (`code` None).
    #[error(
        "{cmd:?} exited with {} after {ms} ms{}",
        code.map_or("a signal".to_string(), |c| c.to_string()),
        quoted(output)
    )]
    Exited {
        cmd: String,
        code: Option<i32>,
        ms: u64,
        output: String,
    },
    /// A wait spec that is neither `tcp:` nor `cmd:`.
    #[error("unknown wait {0:?}")]
    UnknownWait(String),
    /// A `tcp:` wait's address resolves to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// A `tcp:` wait's address does not resolve.
    #[error("resolving {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A `tcp:` wait's connection attempt failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The wait never succeeded.
    #[error(
        "{spec} did not answer within {secs} s (last: {last}); check the VM or raise --wait-timeout"
    )]
    NeverReady {
        spec: String,
        secs: u64,
        last: Box<CommandError>,
    },
}

/// Runs `sh -c cmd` with `env` added; `Ok(output)` on exit 0 within
/// `timeout`, else `Err` saying what happened, with the output.
pub(crate) fn run(
    cmd: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<String, CommandError> {
    let r = offsite_engine::hooks::run_shell(cmd, env, timeout).map_err(|source| {
        CommandError::Spawn {
            cmd: cmd.to_string(),
            source,
        }
    })?;
    let output = tail(&r.output).to_string();
    let ms = r.duration_ms;
    match r.exit_code {
        Some(0) if !r.timed_out => Ok(output),
        _ if r.timed_out => Err(CommandError::TimedOut {
            cmd: cmd.to_string(),
            ms,
            output,
        }),
        code => Err(CommandError::Exited {
            cmd: cmd.to_string(),
            code,
            ms,
            output,
        }),
    }
}

/// Waits until `spec` (`tcp:HOST:PORT` or `cmd:COMMAND`) succeeds, for at
/// most `timeout`; returns what succeeded, or why it never did.
pub(crate) fn wait_for(
    spec: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<String, CommandError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = if let Some(addr) = spec.strip_prefix("tcp:") {
            match addr.to_socket_addrs() {
                Ok(addrs) => {
                    let mut r = Err(CommandError::NoAddress(addr.to_string()));
                    for a in addrs {
                        r = TcpStream::connect_timeout(
                            &a,
                            remaining
                                .min(Duration::from_secs(2))
                                .max(Duration::from_millis(50)),
                        )
                        .map(drop)
                        .map_err(|source| CommandError::Connect { addr: a, source });
                        if r.is_ok() {
                            break;
                        }
                    }
                    r
                }
                Err(source) => Err(CommandError::Resolve {
                    addr: addr.to_string(),
                    source,
                }),
            }
        } else if let Some(cmd) = spec.strip_prefix("cmd:") {
            run(cmd, env, remaining.max(Duration::from_millis(100))).map(drop)
        } else {
            return Err(CommandError::UnknownWait(spec.to_string()));
        };
        let last = match attempt {
            Ok(()) => {
                return Ok(format!(
                    "{spec} answered after {} ms",
                    started.elapsed().as_millis()
                ));
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(CommandError::NeverReady {
                spec: spec.to_string(),
                secs: timeout.as_secs(),
                last: Box::new(last),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_report_exit_output_and_timeouts() {
        let env = vec![("X".to_string(), "42".to_string())];
        assert_eq!(
            run("echo $X", &env, Duration::from_secs(5)).unwrap().trim(),
            "42"
        );
        let e = run("echo nope; exit 3", &env, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&e, CommandError::Exited { code: Some(3), output, .. } if output.contains("nope")),
            "{e}"
        );
        assert!(e.to_string().contains("exited with 3"), "{e}");
        let t = Instant::now();
        let e = run("sleep 30 & sleep 30", &env, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, CommandError::TimedOut { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn waits_for_tcp_and_commands() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        wait_for(&format!("tcp:{addr}"), &[], Duration::from_secs(5)).unwrap();
        drop(l);
        // Port 1: nothing listens, and it is outside the ephemeral range
        // (a closed ephemeral port can be "answered" by a TCP self-connect).
        let e = wait_for("tcp:127.0.0.1:1", &[], Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, CommandError::NeverReady { .. }), "{e}");
        assert!(e.to_string().contains("did not answer"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("up");
        let f = flag.display().to_string();
        let g = f.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(g, "").unwrap();
        });
        wait_for(&format!("cmd:test -e {f}"), &[], Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }
}
