//! libvirt domains through `virsh`.
//!
//! offsite drives libvirt with its command-line client rather than the
//! `virt` crate (the Rust binding of the C library): the binding links
//! `libvirt.so` into the one `offsite` binary, so every site — most of
//! which only replicate and never define a domain — would need libvirt's
//! runtime and its headers to build, and a libvirt upgrade could break the
//! binary's load. `virsh` is part of every libvirt installation, speaks to
//! any URI (`qemu:///system`, `qemu+ssh://...`), and its few commands used
//! here (`dumpxml`, `define`, `undefine`, `start`, `shutdown`, `destroy`,
//! `domstate`, `net-*`) have been stable for a decade. The cost is a
//! process per call and error text to classify, both fine for the handful
//! of calls a failover makes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The libvirt client program.
pub const VIRSH: &str = "virsh";

/// Why a libvirt call failed.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// `virsh` is not installed.
    #[error(
        "virsh not found: {0}; install libvirt-clients (offsite reaches libvirt through virsh)"
    )]
    NoVirsh(std::io::Error),
    /// libvirtd does not answer at the URI.
    #[error(
        "cannot connect to libvirt at {uri}: {message}; start libvirtd, or set libvirt.uri in config.toml"
    )]
    Connect {
        /// The URI.
        uri: String,
        /// What virsh said.
        message: String,
    },
    /// No domain of that name.
    #[error(
        "no libvirt domain named {name:?} at {uri}; `virsh -c {uri} list --all` shows the domains"
    )]
    NoSuchDomain {
        /// The domain name.
        name: String,
        /// The URI.
        uri: String,
    },
    /// Any other refusal; the message is virsh's.
    #[error("virsh {command} failed: {message}")]
    Failed {
        /// The virsh command (`define`, `start`, ...).
        command: String,
        /// What virsh said.
        message: String,
    },
}

/// A domain's state (`virsh domstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running (or blocked on a resource: still running).
    Running,
    /// Paused by the host.
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Shut off (defined, not running).
    ShutOff,
    /// Crashed.
    Crashed,
    /// Suspended by the guest's power management.
    Suspended,
    /// libvirt reports no state.
    NoState,
}

impl DomainState {
    /// Reads `virsh domstate` output.
    pub fn parse(s: &str) -> Option<DomainState> {
        Some(match s.trim() {
            "running" | "blocked" | "idle" => DomainState::Running,
            "paused" => DomainState::Paused,
            "in shutdown" => DomainState::ShuttingDown,
            "shut off" => DomainState::ShutOff,
            "crashed" => DomainState::Crashed,
            "pmsuspended" => DomainState::Suspended,
            "no state" => DomainState::NoState,
            _ => return None,
        })
    }

    /// The word `vm status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting-down",
            DomainState::ShutOff => "shut-off",
            DomainState::Crashed => "crashed",
            DomainState::Suspended => "suspended",
            DomainState::NoState => "no-state",
        }
    }

    /// Whether the guest may still write to its disks.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff | DomainState::Crashed)
    }
}

/// How [`Libvirt::stop`] stopped a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It was not running.
    WasStopped,
    /// The guest shut down after the ACPI request.
    Graceful,
    /// The guest did not shut down in time and was destroyed.
    Forced,
}

/// A connection to libvirt at one URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Libvirt {
    uri: String,
}

impl Libvirt {
    /// libvirt at `uri` (`qemu:///system`, ...).
    pub fn new(uri: &str) -> Libvirt {
        Libvirt {
            uri: uri.to_string(),
        }
    }

    /// The URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `virsh -c URI ARGS` with `stdin`; its stdout, or the error its
    /// stderr describes. `domain` names the domain the command is about,
    /// so that "not found" becomes [`LibvirtError::NoSuchDomain`].
    fn virsh(
        &self,
        args: &[&str],
        domain: Option<&str>,
        stdin: Option<&str>,
    ) -> Result<String, LibvirtError> {
        let mut child = Command::new(VIRSH)
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(LibvirtError::NoVirsh)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows up as virsh's own error below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(LibvirtError::NoVirsh)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let message = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| l.trim().trim_start_matches("error: ").trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if message.contains("failed to connect to the hypervisor") {
            return Err(LibvirtError::Connect {
                uri: self.uri.clone(),
                message,
            });
        }
        if let Some(name) = domain
            && (message.contains("failed to get domain") || message.contains("Domain not found"))
        {
            return Err(LibvirtError::NoSuchDomain {
                name: name.to_string(),
                uri: self.uri.clone(),
            });
        }
        Err(LibvirtError::Failed {
            command: args.first().copied().unwrap_or("").to_string(),
            message,
        })
    }

    /// Whether libvirt answers at the URI.
    pub fn check(&self) -> Result<(), LibvirtError> {
        self.virsh(&["version"], None, None).map(drop)
    }

    /// The persistent definition of domain `name` (`dumpxml --inactive`:
    /// what `define` wrote, without the live state of a running guest).
    pub fn dump_xml(&self, name: &str) -> Result<String, LibvirtError> {
        self.virsh(&["dumpxml", "--inactive", name], Some(name), None)
    }

    /// Whether domain `name` is defined.
    pub fn exists(&self, name: &str) -> Result<bool, LibvirtError> {
        match self.state(name) {
            Ok(_) => Ok(true),
            Err(LibvirtError::NoSuchDomain { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Defines (or redefines) a domain from its XML.
    pub fn define(&self, xml: &str) -> Result<(), LibvirtError> {
        self.virsh(&["define", "/dev/stdin"], None, Some(xml))
            .map(drop)
    }

    /// Removes domain `name`'s definition (it must be stopped). An
    /// undefined domain is not an error: undefining is how cleanup ends.
    pub fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
        match self.virsh(&["undefine", name], Some(name), None) {
            Ok(_) | Err(LibvirtError::NoSuchDomain { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts domain `name`; a running domain is left running.
    pub fn start(&self, name: &str) -> Result<(), LibvirtError> {
        if self.state(name)?.is_active() {
            return Ok(());
        }
        self.virsh(&["start", name], Some(name), None).map(drop)
    }

    /// Domain `name`'s state.
    pub fn state(&self, name: &str) -> Result<DomainState, LibvirtError> {
        let out = self.virsh(&["domstate", name], Some(name), None)?;
        DomainState::parse(&out).ok_or_else(|| LibvirtError::Failed {
            command: "domstate".into(),
            message: format!("unknown state {:?}", out.trim()),
        })
    }

    /// Stops domain `name`: asks the guest to shut down (ACPI), waits up
    /// to `grace` for it, then destroys it (a power cut: the disks hold
    /// what a crash would leave, which is what replication protects).
    pub fn stop(&self, name: &str, grace: Duration) -> Result<StopOutcome, LibvirtError> {
        if !self.state(name)?.is_active() {
            return Ok(StopOutcome::WasStopped);
        }
        // A guest that powered off meanwhile makes shutdown fail with
        // "domain is not running": the state below decides.
        let _ = self.virsh(&["shutdown", name], Some(name), None);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.state(name)?.is_active() {
                return Ok(StopOutcome::Graceful);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match self.virsh(&["destroy", name], Some(name), None) {
            Ok(_) => Ok(StopOutcome::Forced),
            Err(e) if !self.state(name)?.is_active() => {
                drop(e);
                Ok(StopOutcome::Graceful)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for domain `name` to stop by itself; whether
    /// it did.
    pub fn wait_stopped(&self, name: &str, timeout: Duration) -> Result<bool, LibvirtError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.state(name)?.is_active() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Makes sure network `name` exists and is active; a missing one is
    /// created isolated (no `<forward>`: guests on it reach each other and
    /// nothing else), which is what a test failover's network must be.
    pub fn ensure_isolated_network(&self, name: &str) -> Result<(), LibvirtError> {
        let active = self.virsh(&["net-list", "--name"], None, None)?;
        if active.lines().any(|l| l.trim() == name) {
            return Ok(());
        }
        let all = self.virsh(&["net-list", "--all", "--name"], None, None)?;
        if !all.lines().any(|l| l.trim() == name) {
            let xml = format!(
                "<network>\n  <name>{}</name>\n</network>\n",
                name.replace('&', "&amp;").replace('<', "&lt;")
            );
            self.virsh(&["net-define", "/dev/stdin"], None, Some(&xml))?;
        }
        self.virsh(&["net-start", name], None, None).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_read() {
        assert_eq!(DomainState::parse("running\n"), Some(DomainState::Running));
        assert_eq!(DomainState::parse("shut off"), Some(DomainState::ShutOff));
        assert_eq!(
            DomainState::parse("in shutdown"),
            Some(DomainState::ShuttingDown)
        );
        assert_eq!(DomainState::parse("bogus"), None);
        assert!(DomainState::Paused.is_active());
        assert!(!DomainState::ShutOff.is_active());
    }

    #[test]
    fn an_unreachable_uri_is_a_connect_error() {
        if std::process::Command::new(VIRSH)
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: virsh is not installed");
            return;
        }
        let lv = Libvirt::new("qemu+unix:///system?socket=/nonexistent/offsite.sock");
        let e = lv.check().unwrap_err();
        assert!(matches!(e, LibvirtError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("start libvirtd"), "{e}");
    }
}
