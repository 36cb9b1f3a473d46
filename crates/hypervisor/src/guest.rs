//! A throwaway Linux guest that proves a VM's disks survive a failover:
//! the host's cloud kernel (`/boot/vmlinuz-*`) plus an initramfs built here
//! from the static busybox and the kernel's virtio modules. Each boot
//! mounts every virtio disk (formatting it with ext2 on the first boot),
//! adds one marker file (`/offsite-markers/NNN-LABEL`, NNN counting the
//! boots that disk has seen), prints the disk's markers on the serial
//! console and powers off. Used by the VM tests and by `offsite demo`.
//!
//! The guest runs under TCG (`-accel tcg`, `<domain type='qemu'>`): nested
//! KVM was slower than TCG on the machines this was built on, and TCG
//! needs nothing from the host but QEMU. A boot takes about 4 s.
//!
//! The initramfs is written as an uncompressed `newc` cpio by this module
//! (no `cpio` or `gzip` needed); the kernel unpacks it either way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU binary the guest runs on.
pub const QEMU: &str = "qemu-system-x86_64";
/// The static busybox of Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// Modules the guest loads, in dependency order (their paths under
/// `/lib/modules/VERSION/kernel/`).
const MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
];
/// Console line prefixes of the guest's report.
const MARKERS_LINE: &str = "OFFSITE-MARKERS ";
const ERROR_LINE: &str = "OFFSITE-ERROR ";
const DONE_LINE: &str = "OFFSITE-DONE";

/// The guest's `/init`. The label comes from the kernel command line
/// (`offsite.label=`), so a libvirt domain carries it in its XML.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    insmod /lib/modules/$m.ko || echo "OFFSITE-ERROR cannot load module $m"
done
label=$(sed -n 's/.*offsite\.label=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$label" ] || label=guest
# virtio_blk probes asynchronously: wait up to 10 s for the first disk.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
[ -b /dev/vda ] || echo "OFFSITE-ERROR no virtio disk appeared"
for d in /dev/vd?; do
    [ -b "$d" ] || continue
    name=${d#/dev/}
    if ! mount -t ext4 "$d" /mnt 2>/dev/null; then
        mke2fs -q "$d" && mount -t ext4 "$d" /mnt || { echo "OFFSITE-ERROR cannot format or mount $name"; continue; }
    fi
    mkdir -p /mnt/offsite-markers
    n=$(ls /mnt/offsite-markers | wc -l)
    marker=$(printf '%03d-%s' $((n + 1)) "$label")
    echo "$marker" > /mnt/offsite-markers/$marker
    sync
    echo "OFFSITE-MARKERS $name $(ls /mnt/offsite-markers | tr '\n' ' ')"
    umount /mnt || echo "OFFSITE-ERROR cannot unmount $name"
done
sync
echo OFFSITE-DONE
# offsite.stay=1: keep running like a real VM until stopped from outside.
if grep -q 'offsite\.stay=1' /proc/cmdline; then
    while :; do sleep 3600; done
fi
poweroff -f
"#;

/// Why the guest could not be built or booted.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A host package the guest needs is not installed.
    #[error("{what} not found ({detail}); install {package}")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        detail: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// Reading a host file or writing the initramfs failed.
    #[error("cannot {step} {}: {source}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {QEMU}: {0}; check that qemu-system-x86 is installed")]
    Spawn(std::io::Error),
    /// The guest did not power off in time; QEMU was killed.
    #[error("the guest did not power off within {secs} s (QEMU killed); its console log is {}", log.display())]
    Timeout {
        /// The timeout.
        secs: u64,
        /// The console log.
        log: PathBuf,
    },
    /// QEMU exited without the guest finishing its run (a disk it could
    /// not open, a kernel panic, ...).
    #[error("the guest did not finish ({status}): {detail}; its console log is {}", log.display())]
    Failed {
        /// QEMU's exit status.
        status: String,
        /// QEMU's stderr or the guest's own error lines.
        detail: String,
        /// The console log.
        log: PathBuf,
    },
}

impl GuestError {
    fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
        let path = path.to_path_buf();
        move |source| GuestError::Io { step, path, source }
    }
}

/// A guest disk as QEMU opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestDisk {
    /// A raw image file.
    File(PathBuf),
    /// An NBD export, e.g. `nbd://127.0.0.1:10809/web0`.
    Nbd(String),
}

impl GuestDisk {
    fn drive(&self) -> String {
        let file = match self {
            GuestDisk::File(p) => p.display().to_string(),
            GuestDisk::Nbd(url) => url.clone(),
        };
        // QEMU's -drive splits on commas; a comma in a name is doubled.
        format!(
            "file={},format=raw,if=virtio,cache=none",
            file.replace(',', ",,")
        )
    }
}

/// What one boot reported: per disk (`vda`, `vdb`, ...), the marker files
/// found after this boot added its own, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReport {
    /// Disk name to its markers.
    pub markers: BTreeMap<String, Vec<String>>,
}

impl BootReport {
    /// Reads the report the guest printed on its console; the guest's
    /// error lines are an error. `None` when the guest had not finished.
    pub fn parse(console: &str) -> Result<Option<BootReport>, String> {
        let mut report = BootReport::default();
        let mut errors = Vec::new();
        let mut done = false;
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix(MARKERS_LINE) {
                let mut words = rest.split_whitespace();
                if let Some(disk) = words.next() {
                    report
                        .markers
                        .insert(disk.to_string(), words.map(str::to_string).collect());
                }
            } else if let Some(e) = line.strip_prefix(ERROR_LINE) {
                errors.push(e.to_string());
            } else if line == DONE_LINE {
                done = true;
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(done.then_some(report))
    }

    /// The markers of `disk`, oldest first (empty if the guest did not
    /// report that disk).
    pub fn disk(&self, disk: &str) -> &[String] {
        self.markers.get(disk).map_or(&[], Vec::as_slice)
    }
}

/// The kernel and initramfs of the guest, built for this host.
#[derive(Debug, Clone)]
pub struct GuestKit {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// The newest `/boot/vmlinuz-VERSION` whose modules include virtio_blk.
fn find_kernel() -> Result<(PathBuf, PathBuf), GuestError> {
    let mut found = Vec::new();
    let boot = Path::new("/boot");
    if let Ok(entries) = std::fs::read_dir(boot) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            let modules = Path::new("/lib/modules").join(version).join("kernel");
            if modules.join(MODULES[MODULES.len() - 1]).is_file() {
                found.push((e.path(), modules));
            }
        }
    }
    found.sort();
    found.pop().ok_or(GuestError::Missing {
        what: "a kernel with virtio modules",
        detail: "/boot/vmlinuz-* with /lib/modules/VERSION/kernel/drivers/block/virtio_blk.ko"
            .into(),
        package: "linux-image-cloud-amd64",
    })
}

/// Whether `bytes` is an ELF executable without a program interpreter
/// (statically linked), so it runs in an initramfs without libraries.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    // 64-bit little-endian ELF only: the guest is x86_64.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// Writes a `newc` cpio archive entry by entry.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // The name (after the 110-byte header) and the data are each
        // padded to 4 bytes.
        let pad = |n: usize| (4 - n % 4) % 4;
        self.out.write_all(&[0; 3][..pad(110 + name.len() + 1)])?;
        self.out.write_all(data)?;
        self.out.write_all(&[0; 3][..pad(data.len())])
    }

    fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100000 | mode, (0, 0), data)
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

impl GuestKit {
    /// Checks that this host can build and boot the guest: QEMU, a kernel
    /// with virtio modules and the static busybox. The error names the
    /// package to install.
    pub fn available() -> Result<(), GuestError> {
        which(QEMU).ok_or(GuestError::Missing {
            what: QEMU,
            detail: "not on PATH".into(),
            package: "qemu-system-x86",
        })?;
        find_kernel()?;
        let busybox = std::fs::read(BUSYBOX).unwrap_or_default();
        if !is_static_elf(&busybox) {
            return Err(GuestError::Missing {
                what: "a static busybox",
                detail: format!("{BUSYBOX} is missing or dynamically linked"),
                package: "busybox-static",
            });
        }
        Ok(())
    }

    /// Builds the initramfs in `dir` (created if needed).
    pub fn build(dir: &Path) -> Result<GuestKit, GuestError> {
        GuestKit::available()?;
        let (kernel, modules) = find_kernel()?;
        std::fs::create_dir_all(dir).map_err(GuestError::io("create", dir))?;
        let initramfs = dir.join("offsite-guest.cpio");
        let busybox = std::fs::read(BUSYBOX).map_err(GuestError::io("read", Path::new(BUSYBOX)))?;
        let file =
            std::fs::File::create(&initramfs).map_err(GuestError::io("create", &initramfs))?;
        let write = || -> std::io::Result<()> {
            let mut cpio = Cpio {
                out: std::io::BufWriter::new(file),
                ino: 0,
            };
            for d in ["bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules"] {
                cpio.dir(d)?;
            }
            // The kernel opens /dev/console for init's stdio before
            // devtmpfs is mounted: the node must be in the archive.
            cpio.entry("dev/console", 0o020600, (5, 1), &[])?;
            cpio.file("bin/busybox", 0o755, &busybox)?;
            cpio.file("init", 0o755, INIT.as_bytes())?;
            for m in MODULES {
                let path = modules.join(m);
                let data = std::fs::read(&path)?;
                let name = Path::new(m)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy();
                cpio.file(&format!("lib/modules/{name}"), 0o644, &data)?;
            }
            cpio.finish()?.flush()
        };
        write().map_err(GuestError::io("write the initramfs", &initramfs))?;
        Ok(GuestKit { kernel, initramfs })
    }

    /// The kernel image.
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The initramfs.
    pub fn initramfs(&self) -> &Path {
        &self.initramfs
    }

    /// The kernel command line: serial console, reboot on panic (QEMU
    /// runs with `-no-reboot`, so a panic ends it), and the marker label.
    pub fn cmdline(label: &str) -> String {
        format!("console=ttyS0 panic=-1 quiet offsite.label={label}")
    }

    /// Boots the guest directly under QEMU (no libvirt) with `disks` as
    /// vda, vdb, ...; waits until it powers off (at most `timeout`) and
    /// returns the markers it reported. `console` receives the serial log.
    pub fn boot(
        &self,
        disks: &[GuestDisk],
        label: &str,
        console: &Path,
        timeout: Duration,
    ) -> Result<BootReport, GuestError> {
        let _ = std::fs::remove_file(console);
        let mut cmd = Command::new(QEMU);
        cmd.args(QEMU_FLAGS)
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(GuestKit::cmdline(label));
        for d in disks {
            cmd.arg("-drive").arg(d.drive());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GuestError::Spawn)?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(GuestError::Timeout {
                        secs: timeout.as_secs(),
                        log: console.to_path_buf(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(GuestError::Spawn(e)),
            }
        };
        let mut stderr = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut s, &mut stderr);
        }
        let log = std::fs::read_to_string(console).unwrap_or_default();
        let failed = |detail: String| GuestError::Failed {
            status: status.to_string(),
            detail,
            log: console.to_path_buf(),
        };
        match BootReport::parse(&log) {
            Ok(Some(report)) if status.success() => Ok(report),
            Ok(_) => Err(failed(if stderr.trim().is_empty() {
                "no report on the console".to_string()
            } else {
                stderr.trim().to_string()
            })),
            Err(guest) => Err(failed(guest)),
        }
    }
}

/// How the guest behaves after writing its markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterMarkers {
    /// Power off (a boot is a check).
    PowerOff,
    /// Keep running until stopped from outside, like a real VM.
    Stay,
}

impl GuestKit {
    /// A libvirt domain of this guest: TCG (`type='qemu'`), direct kernel
    /// boot, `disks` as vda, vdb, ... on NBD exports, one interface on
    /// `network` if given, serial console to the file `console` if given
    /// (a pty otherwise: libvirt refuses two domains one console file, so
    /// a domain defined at two sites of one host needs none).
    pub fn domain_xml(
        &self,
        name: &str,
        label: &str,
        disks: &[crate::NbdSource],
        network: Option<&str>,
        console: Option<&Path>,
        after: AfterMarkers,
    ) -> String {
        let mut cmdline = GuestKit::cmdline(label);
        if after == AfterMarkers::Stay {
            cmdline.push_str(" offsite.stay=1");
        }
        let mut devices = String::new();
        for (i, d) in disks.iter().enumerate() {
            let dev = format!("vd{}", (b'a' + i as u8) as char);
            devices.push_str(&format!(
                "    <disk type='network' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source protocol='nbd' name='{}'>\n        <host name='{}' port='{}'/>\n      </source>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n",
                d.export, d.host, d.port
            ));
        }
        if let Some(net) = network {
            devices.push_str(&format!(
                "    <interface type='network'>\n      <source network='{net}'/>\n      <model type='virtio'/>\n    </interface>\n"
            ));
        }
        match console {
            Some(c) => devices.push_str(&format!(
                "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>\n",
                c.display()
            )),
            None => devices.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n"),
        }
        format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{cmdline}</cmdline>\n  </os>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n    <emulator>{}</emulator>\n{devices}  </devices>\n</domain>\n",
            self.kernel.display(),
            self.initramfs.display(),
            which(QEMU)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
                .display(),
        )
    }

    /// The markers on a guest disk, read from outside the guest (the
    /// disk copied with `nbdcopy`, the directory listed with `debugfs`),
    /// oldest first (an error on a disk without a file system). For
    /// disks of guests whose console another copy of the guest shares.
    pub fn read_markers(disk: &GuestDisk, scratch: &Path) -> Result<Vec<String>, GuestError> {
        std::fs::create_dir_all(scratch).map_err(GuestError::io("create", scratch))?;
        let copy = scratch.join("markers-read.img");
        let _ = std::fs::remove_file(&copy);
        let source = match disk {
            GuestDisk::File(p) => p.display().to_string(),
            GuestDisk::Nbd(url) => url.clone(),
        };
        let run = |program: &'static str, args: &[&str]| -> Result<String, GuestError> {
            let out = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| GuestError::Missing {
                    what: program,
                    detail: e.to_string(),
                    package: if program == "nbdcopy" {
                        "libnbd-bin"
                    } else {
                        "e2fsprogs"
                    },
                })?;
            if !out.status.success() {
                return Err(GuestError::Failed {
                    status: out.status.to_string(),
                    detail: format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                    log: copy.clone(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let copy_s = copy.display().to_string();
        let result = (|| {
            match disk {
                GuestDisk::File(p) => {
                    std::fs::copy(p, &copy).map_err(GuestError::io("copy", p))?;
                }
                GuestDisk::Nbd(_) => {
                    run("nbdcopy", &[&source, &copy_s])?;
                }
            }
            // `ls -p`: one `/inode/mode/uid/gid/name/size/` line per entry.
            let listing = run("debugfs", &["-R", "ls -p /offsite-markers", &copy_s])?;
            let mut markers: Vec<String> = listing
                .lines()
                .filter_map(|l| l.split('/').nth(5))
                .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                .map(str::to_string)
                .collect();
            markers.sort();
            Ok(markers)
        })();
        let _ = std::fs::remove_file(&copy);
        result
    }
}

/// QEMU's flags for the guest, before the console, kernel and disks.
const QEMU_FLAGS: [&str; 9] = [
    "-accel",
    "tcg",
    "-m",
    "256",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
];

/// `text` single-quoted for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl GuestKit {
    /// The boot of [`GuestKit::boot`] as one `sh` command, for a VM hook:
    /// disk n is the NBD URL in `$OFFSITE_VOLUME_<n>_URL` (what failover
    /// hands a start hook), the marker label is `$OFFSITE_SITE`, and the
    /// console goes to `console_dir/boot-$OFFSITE_SITE-$OFFSITE_MODE.log`.
    /// The command returns once the guest powered off.
    pub fn hook_command(&self, disks: usize, console_dir: &Path) -> String {
        let mut words: Vec<String> = vec![sh_quote(QEMU)];
        words.extend(QEMU_FLAGS.iter().map(|f| sh_quote(f)));
        words.push("-serial".into());
        words.push(format!(
            "\"file:{}/boot-$OFFSITE_SITE-$OFFSITE_MODE.log\"",
            console_dir.display()
        ));
        words.push("-kernel".into());
        words.push(sh_quote(&self.kernel.display().to_string()));
        words.push("-initrd".into());
        words.push(sh_quote(&self.initramfs.display().to_string()));
        words.push("-append".into());
        words.push(format!("\"{}\"", GuestKit::cmdline("$OFFSITE_SITE")));
        for n in 0..disks {
            words.push("-drive".into());
            words.push(format!(
                "\"file=$OFFSITE_VOLUME_{n}_URL,format=raw,if=virtio,cache=none\""
            ));
        }
        words.join(" ")
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_parsed_from_the_console() {
        let console = "[    0.1] booting\r\nOFFSITE-MARKERS vda 001-web 002-web \r\nOFFSITE-MARKERS vdb 001-web\nOFFSITE-DONE\n";
        let r = BootReport::parse(console).unwrap().unwrap();
        assert_eq!(r.disk("vda"), ["001-web", "002-web"]);
        assert_eq!(r.disk("vdb"), ["001-web"]);
        assert!(r.disk("vdc").is_empty());
        assert_eq!(
            BootReport::parse("OFFSITE-MARKERS vda 001-x\n").unwrap(),
            None
        );
        let e =
            BootReport::parse("OFFSITE-ERROR no virtio disk appeared\nOFFSITE-DONE\n").unwrap_err();
        assert_eq!(e, "no virtio disk appeared");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut cpio = Cpio {
            out: Vec::new(),
            ino: 0,
        };
        cpio.file("init", 0o755, b"12345").unwrap();
        let out = cpio.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // header 110 + "init\0" 5 = 115, padded to 116; data 5 padded to 8.
        assert_eq!(&out[116..121], b"12345");
        assert_eq!(&out[124..130], b"070701");
    }

    #[test]
    fn the_hook_command_boots_on_the_hook_environment() {
        let kit = GuestKit {
            kernel: "/boot/vmlinuz-x".into(),
            initramfs: "/tmp/it's/offsite-guest.cpio".into(),
        };
        let cmd = kit.hook_command(2, Path::new("/tmp/boots"));
        assert!(
            cmd.starts_with("'qemu-system-x86_64' '-accel' 'tcg'"),
            "{cmd}"
        );
        assert!(
            cmd.contains("\"file:/tmp/boots/boot-$OFFSITE_SITE-$OFFSITE_MODE.log\""),
            "{cmd}"
        );
        assert!(cmd.contains("'/tmp/it'\\''s/offsite-guest.cpio'"), "{cmd}");
        assert!(
            cmd.contains("\"file=$OFFSITE_VOLUME_1_URL,format=raw,if=virtio,cache=none\""),
            "{cmd}"
        );
        assert!(cmd.contains("offsite.label=$OFFSITE_SITE\""), "{cmd}");
        // sh reads it back as the words QEMU expects.
        let out = Command::new("sh")
            .args(["-c", &format!("OFFSITE_SITE=a OFFSITE_MODE=test OFFSITE_VOLUME_0_URL=nbd://h/x OFFSITE_VOLUME_1_URL=nbd://h/y; set -- {cmd}; printf '%s\\n' \"$@\"")])
            .output()
            .unwrap();
        let words = String::from_utf8(out.stdout).unwrap();
        assert!(
            words.lines().any(|l| l == "/tmp/it's/offsite-guest.cpio"),
            "{words}"
        );
        assert!(
            words
                .lines()
                .any(|l| l == "file=nbd://h/y,format=raw,if=virtio,cache=none"),
            "{words}"
        );
        assert!(
            words
                .lines()
                .any(|l| l == "file:/tmp/boots/boot-a-test.log"),
            "{words}"
        );
    }

    #[test]
    fn static_elf_is_told_from_a_dynamic_one() {
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }

    /// Two boots from two raw files: the first formats both disks, the
    /// second finds the first's markers. Skipped (with the reason printed)
    /// when the host lacks QEMU, the kernel or busybox; under CI that is a
    /// failure.
    #[test]
    fn boots_from_files_and_keeps_every_marker() {
        if let Err(e) = GuestKit::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the guest must boot under CI (.ci/run installs its packages): {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kit = GuestKit::build(dir.path()).unwrap();
        let disks: Vec<GuestDisk> = ["a.img", "b.img"]
            .iter()
            .map(|n| {
                let p = dir.path().join(n);
                std::fs::File::create(&p)
                    .unwrap()
                    .set_len(16 << 20)
                    .unwrap();
                GuestDisk::File(p)
            })
            .collect();
        let console = dir.path().join("console.log");
        let first = kit
            .boot(&disks, "one", &console, Duration::from_secs(120))
            .unwrap();
        assert_eq!(first.disk("vda"), ["001-one"]);
        assert_eq!(first.disk("vdb"), ["001-one"]);
        let second = kit
            .boot(&disks, "two", &console, Duration::from_secs(120))
            .unwrap();
        assert_eq!(second.disk("vda"), ["001-one", "002-two"]);
        assert_eq!(second.disk("vdb"), ["001-one", "002-two"]);
    }
}
