//! VM hooks: the `--start`/`--stop`/`--status` commands of a VM, run by
//! failover and test failover to power VMs at a site, and its
//! `--quiesce`/`--thaw` commands, run around the cut of an
//! application-consistent checkpoint (`OFFSITE_MODE=checkpoint`) with their
//! own, short timeout (`[failover] quiesce_timeout_secs`): the application
//! waits while it is quiesced.
//!
//! A hook runs as `sh -c CMD` in its own process group, with stdin closed
//! and this environment: `OFFSITE_VM`, `OFFSITE_SITE`, `OFFSITE_MODE`
//! (`test`, `planned` or `unplanned`), `OFFSITE_GROUP`, and
//! `OFFSITE_VOLUME_<n>_URL` for every disk (n from 0, in the VM's order),
//! the NBD URL the VM must use at this site now. Its stdout and stderr
//! (the last 64 KiB) go to the group's event log. A hook that exits
//! non-zero or outlives its timeout (the whole process group is then
//! killed) is an error the caller reports; nothing ignores it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EngineError, Site};

/// Output kept per hook run.
const OUTPUT_LIMIT: usize = 64 * 1024;
/// Output quoted in an event or an error.
const QUOTE_LIMIT: usize = 2048;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// `--start`.
    Start,
    /// `--stop`.
    Stop,
    /// `--status`.
    Status,
    /// `--quiesce`: flush and hold the VM's writes before a checkpoint's cut.
    Quiesce,
    /// `--thaw`: let the VM write again after the cut.
    Thaw,
}

impl HookAction {
    /// `start`, `stop`, `status`, `quiesce` or `thaw`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookAction::Start => "start",
            HookAction::Stop => "stop",
            HookAction::Status => "status",
            HookAction::Quiesce => "quiesce",
            HookAction::Thaw => "thaw",
        }
    }

    /// How long the hook may run on `site` before it is killed and
    /// reported as failed: quiesce and thaw have their own, short timeout
    /// (the application is held meanwhile), the others the failover one.
    pub fn timeout(self, site: &Site) -> Duration {
        let f = &site.config().failover;
        Duration::from_secs_f64(match self {
            HookAction::Quiesce | HookAction::Thaw => f.quiesce_timeout_secs,
            HookAction::Start | HookAction::Stop | HookAction::Status => f.hook_timeout_secs,
        })
    }
}

/// What one hook run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// VM name.
    pub vm: String,
    /// The hook.
    pub action: HookAction,
    /// Exit code (None when killed by a signal or the timeout).
    pub exit_code: Option<i32>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Combined stdout and stderr (the last 64 KiB).
    pub output: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

impl HookRun {
    /// Exit 0 within the timeout.
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// What went wrong, for a report, if the hook failed: the hook, how it
    /// ended and the tail of its output, and what to do.
    pub fn failure(&self) -> Option<String> {
        if self.succeeded() {
            return None;
        }
        let quoted = tail(self.output.trim_end(), QUOTE_LIMIT);
        Some(format!(
            "the {} hook of VM {} {} after {} ms{}{}; fix the hook (`offsite events` has its output)",
            self.action.as_str(),
            self.vm,
            self.outcome(),
            self.duration_ms,
            if quoted.is_empty() { "" } else { ": " },
            tail(quoted, 400)
        ))
    }

    fn outcome(&self) -> String {
        if self.timed_out {
            "timed out and was killed".to_string()
        } else {
            match self.exit_code {
                Some(c) => format!("exited with {c}"),
                None => "was killed by a signal".to_string(),
            }
        }
    }
}

/// The last `limit` bytes of `text`, on a character boundary.
fn tail(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Site {
    /// Runs one hook of `vm` (for `group`) with `env` added to the
    /// environment described in the module doc; records the run in the
    /// event log; a non-zero exit or a timeout is an error quoting the
    /// output.
    pub fn run_hook(
        &self,
        group: &str,
        vm: &str,
        action: HookAction,
        cmd: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<HookRun, EngineError> {
        let run = self.run_hook_reported(group, vm, action, cmd, env, timeout)?;
        match run.failure() {
            None => Ok(run),
            Some(why) => Err(EngineError::Invalid(why)),
        }
    }

    /// [`Site::run_hook`] for a caller that goes on whatever the hook did
    /// (a checkpoint's quiesce and thaw): the run, failed or not (see
    /// [`HookRun::failure`]); an error only when `sh` cannot be started.
    pub fn run_hook_reported(
        &self,
        group: &str,
        vm: &str,
        action: HookAction,
        cmd: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<HookRun, EngineError> {
        let mut full_env = vec![
            ("OFFSITE_VM".to_string(), vm.to_string()),
            ("OFFSITE_GROUP".to_string(), group.to_string()),
            ("OFFSITE_SITE".to_string(), self.config().name.clone()),
        ];
        full_env.extend(env.iter().cloned());
        let shell = run_shell(cmd, &full_env, timeout).map_err(|e| {
            EngineError::Invalid(format!(
                "cannot run the {} hook of VM {vm}: {e}; check that sh exists",
                action.as_str()
            ))
        })?;
        let run = HookRun {
            vm: vm.to_string(),
            action,
            exit_code: shell.exit_code,
            timed_out: shell.timed_out,
            output: shell.output,
            duration_ms: shell.duration_ms,
        };
        let mode = env
            .iter()
            .find(|(k, _)| k == "OFFSITE_MODE")
            .map_or("", |(_, v)| v.as_str());
        let quoted = tail(run.output.trim_end(), QUOTE_LIMIT);
        self.event(
            if run.succeeded() {
                "vm.hook"
            } else {
                "vm.hook.failed"
            },
            Some(group),
            &format!(
                "VM {vm} {} hook ({mode}) {} after {} ms{}{}",
                action.as_str(),
                run.outcome(),
                run.duration_ms,
                if quoted.is_empty() { "" } else { ": " },
                quoted
            ),
        );
        Ok(run)
    }
}

/// How a shell command ended ([`run_shell`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellRun {
    /// Exit code; `None` if killed by a signal (or by the timeout).
    pub exit_code: Option<i32>,
    /// The timeout expired and the command's process group was killed.
    pub timed_out: bool,
    /// The last 64 KiB of its stdout and stderr, interleaved.
    pub output: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Runs `sh -c cmd` with `env` added, in its own process group, for at
/// most `timeout` (then the whole group is killed), collecting the tail of
/// its output. What runs operator commands: VM hooks and plan callouts.
/// Fails only when the command cannot be started.
pub fn run_shell(
    cmd: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<ShellRun> {
    let started = Instant::now();
    let (mut reader, writer) = std::io::pipe()?;
    let writer2 = writer.try_clone()?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn()?;
    // The command holds the pipe's write ends; dropping ours lets the
    // reader see EOF when the command (and its children) exit.
    drop(command);
    let collector = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 2 * OUTPUT_LIMIT {
                        out.drain(..out.len() - OUTPUT_LIMIT);
                    }
                }
            }
        }
        out
    });
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // Either kill fails only when the process (group) is
                // already gone, which is what we want.
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    // A command that left a background child holding the pipe must not
    // hang us: kill what remains of its process group.
    // Fails (ESRCH) when nothing remains, the usual case.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let raw = collector.join().unwrap_or_default();
    Ok(ShellRun {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        output: String::from_utf8_lossy(tail_bytes(&raw, OUTPUT_LIMIT)).into_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn tail_bytes(b: &[u8], limit: usize) -> &[u8] {
    &b[b.len().saturating_sub(limit)..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (tempfile::TempDir, std::sync::Arc<Site>) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        crate::init::init_site(
            &d,
            &crate::init::InitOptions {
                name: "hooksite".into(),
                listen: "127.0.0.1:0".into(),
                api: "127.0.0.1:0".into(),
                nbd: "127.0.0.1:0".into(),
                api_tls: Default::default(),
            },
        )
        .unwrap();
        let site = Site::open(&d).unwrap();
        (dir, site)
    }

    #[test]
    fn hook_gets_its_environment_and_output_is_kept() {
        let (_d, site) = site();
        let env = vec![
            ("OFFSITE_MODE".to_string(), "test".to_string()),
            ("OFFSITE_VOLUME_0_URL".to_string(), "nbd://x/y".to_string()),
        ];
        let r = site
            .run_hook(
                "g",
                "vm1",
                HookAction::Start,
                "echo $OFFSITE_VM $OFFSITE_SITE $OFFSITE_MODE $OFFSITE_GROUP $OFFSITE_VOLUME_0_URL; echo err >&2",
                &env,
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(r.succeeded());
        assert!(r.output.contains("vm1 hooksite test g nbd://x/y"), "{r:?}");
        assert!(r.output.contains("err"), "{r:?}");
        let ev = site.events(10).unwrap();
        assert!(
            ev.iter()
                .any(|e| e.kind == "vm.hook" && e.message.contains("nbd://x/y")),
            "{ev:?}"
        );
    }

    #[test]
    fn failing_and_hanging_hooks_are_errors() {
        let (_d, site) = site();
        let e = site
            .run_hook(
                "g",
                "vm1",
                HookAction::Stop,
                "echo broken; exit 3",
                &[],
                Duration::from_secs(10),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("exited with 3") && e.contains("broken"), "{e}");
        let t = Instant::now();
        let e = site
            .run_hook(
                "g",
                "vm1",
                HookAction::Start,
                "sleep 30 & sleep 30",
                &[],
                Duration::from_millis(300),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the process group was killed"
        );
        let ev = site.events(10).unwrap();
        assert_eq!(ev.iter().filter(|e| e.kind == "vm.hook.failed").count(), 2);
    }
}
