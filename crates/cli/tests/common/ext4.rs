//! ext4 on a volume's export, as a VM would have it: nbdfuse exposes the
//! export as a file, losetup turns it into a block device, mkfs.ext4 and
//! mount. Needs root and /dev/fuse (there is no kernel NBD driver here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use offsite_testkit::sh;

use super::{have_tools, wait_until};

/// Whether this environment can run a test that mounts ext4 (`what`
/// names it) with `tools` besides the mounting ones; under CI it must.
pub fn ext4_ready(what: &str, tools: &[&str]) -> bool {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "{what} cannot run under CI: {why}");
        eprintln!("skipping {what}: {why}");
        false
    };
    if !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse is absent");
    }
    if sh("id", &["-u"]).trim() != "0" {
        return skip("losetup and mount need root");
    }
    let mut all = vec![
        "nbdfuse",
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "mount",
        "umount",
    ];
    all.extend_from_slice(tools);
    have_tools(&all)
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ext4 made on an export and mounted; dropping it undoes every step in
/// reverse order, even when the test panics (a frozen file system is
/// thawed first: umount would hang on it).
#[derive(Debug)]
pub struct Ext4 {
    /// The mount point.
    pub mnt: PathBuf,
    /// The loop device over the FUSE file.
    pub dev: String,
    /// The FUSE file holding the export (its size is the volume's).
    pub image: PathBuf,
    mounted: bool,
    loop_attached: bool,
    fuse_dir: Option<PathBuf>,
    nbdfuse: Option<Child>,
}

impl Ext4 {
    /// Makes and mounts ext4 on the export `url`, working in `scratch`.
    pub fn make(url: &str, scratch: &Path) -> Ext4 {
        let mut fs = Ext4::attach(url, scratch);
        sh("mkfs.ext4", &["-q", &fs.dev]);
        fs.mount(&[]);
        fs
    }

    /// The export `url` as a block device (not mounted: see
    /// [`Ext4::mount`]), working in `scratch`.
    pub fn attach(url: &str, scratch: &Path) -> Ext4 {
        let fuse_dir = scratch.join("fuse");
        let mnt = scratch.join("mnt");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let pidfile = scratch.join("nbdfuse.pid");
        let mut fs = Ext4 {
            nbdfuse: Some(
                Command::new("nbdfuse")
                    .arg("-P")
                    .arg(&pidfile)
                    .arg(&fuse_dir)
                    .arg(url)
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn nbdfuse"),
            ),
            fuse_dir: Some(fuse_dir.clone()),
            image: fuse_dir.join("nbd"),
            mnt,
            dev: String::new(),
            mounted: false,
            loop_attached: false,
        };
        // nbdfuse writes the pid file once the mount is ready.
        wait_until(
            "nbdfuse to mount the export",
            Duration::from_secs(30),
            || {
                if let Some(status) = fs.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
                    panic!("nbdfuse exited early: {status}");
                }
                pidfile.exists() && fs.image.exists()
            },
        );
        fs.dev = sh("losetup", &["-f", "--show", fs.image.to_str().unwrap()])
            .trim()
            .to_string();
        assert!(
            fs.dev.starts_with("/dev/loop"),
            "losetup printed {:?}",
            fs.dev
        );
        fs.loop_attached = true;
        fs
    }

    /// Mounts the file system again (`options`: e.g. `["-o", "ro"]`).
    pub fn mount(&mut self, options: &[&str]) {
        let mut args = options.to_vec();
        args.extend([self.dev.as_str(), self.mnt.to_str().unwrap()]);
        sh("mount", &args);
        self.mounted = true;
    }

    /// Unmounts the file system (thawing it first).
    pub fn umount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let m = self.mnt.to_str().unwrap();
            quiet("fsfreeze", &["-u", m]);
            if !quiet("umount", &[m]) {
                quiet("umount", &["-l", m]);
            }
        }
    }

    /// Unmounts, detaches the loop device and unmounts the FUSE file.
    pub fn release(&mut self) {
        self.umount();
        if std::mem::take(&mut self.loop_attached) {
            quiet("losetup", &["-d", &self.dev]);
        }
        if let Some(f) = self.fuse_dir.take() {
            let f = f.to_str().unwrap();
            if !quiet("fusermount3", &["-u", f]) {
                quiet("umount", &["-l", f]);
            }
        }
        if let Some(mut c) = self.nbdfuse.take() {
            // nbdfuse exits once unmounted; kill it if it does not.
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.release();
    }
}
