//! Putting a finished staging tree into DEST, atomically enough that a model
//! server never reads half a model, and knowing when DEST is already done.
//!
//! DEST may be a volume root (KServe's `/mnt/models`), which cannot be renamed,
//! so staging lives inside it at `DEST/.ocimodel/staging-*` (same filesystem:
//! every move is a `rename`). The swap is journaled:
//!
//! 1. the old marker `DEST/.ocimodel.json` is removed (DEST is "incomplete");
//! 2. `DEST/.ocimodel/journal.json` lists every top-level entry being touched;
//! 3. old entries go, staged entries are renamed in;
//! 4. the new marker is written (tmp + rename), then the journal removed.
//!
//! A run killed anywhere in between leaves no marker; the next run finds the
//! journal, removes what it lists, clears stale staging, and starts over.
//! An advisory lock on `DEST/.ocimodel/lock` keeps two runs from interleaving.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::dirfd::Dir;
use crate::unpack::{group_zero, shared_mode, RESERVED_NAMES};

pub const MARKER: &str = ".ocimodel.json";
pub const BOOKKEEPING: &str = ".ocimodel";
pub const MARKER_VERSION: u32 = 1;

mod marker;
pub use marker::{check_tree, installed, now_rfc3339, DiskUse, Marker};

#[derive(Serialize, Deserialize, Default)]
struct Journal {
    entries: Vec<String>,
}

/// Caps on bookkeeping files read back from DEST (a co-tenant may plant
/// anything there: `/dev/zero`, a FIFO, a huge file).
pub const MARKER_CAP: u64 = 64 << 20;
const JOURNAL_CAP: u64 = 4 << 20;

/// An opened, locked destination directory. Every change to DEST goes
/// through the descriptors held here (see [`crate::dirfd`]), so a symlink or
/// rename planted by anyone else who can write DEST never redirects a write.
pub struct Dest {
    path: PathBuf,
    dir: Dir,
    book: Dir,
    _lock: fs::File,
}

impl Dest {
    /// Creates DEST (`mkdir -p`) and its bookkeeping directory, takes the
    /// lock (waiting at most `lock_wait` for another run to finish), and
    /// recovers from a run that died mid-install.
    pub async fn open(path: &Path, lock_wait: Duration) -> Result<Dest> {
        create_dirs(path)
            .with_context(|| format!("cannot create destination {}", path.display()))?;
        let dir = Dir::open(path)
            .with_context(|| format!("destination {} is not a directory", path.display()))?;
        let book = open_bookkeeping(&dir, path)?;
        let lock = take_lock(&book, path, lock_wait).await?;
        let dest = Dest {
            path: path.to_path_buf(),
            dir,
            book,
            _lock: lock,
        };
        dest.recover()?;
        Ok(dest)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes what a killed run left: entries listed in the journal (those
    /// the journal's writer owns), and every staging directory.
    fn recover(&self) -> Result<()> {
        let journal = match self.book.read_small("journal.json", JOURNAL_CAP) {
            Ok(j) => j,
            Err(e) => {
                // Not ours (a symlink, a FIFO, a huge file): drop the name.
                tracing::warn!(dest = %self.path.display(), "ignoring a bad journal: {e}");
                self.book.remove_tree("journal.json")?;
                None
            }
        };
        if let Some(bytes) = journal {
            let writer = self.book.stat("journal.json")?.map(|st| st.st_uid);
            let journal: Journal = serde_json::from_slice(&bytes).unwrap_or_default();
            tracing::warn!(dest = %self.path.display(), "an earlier install was interrupted; removing its partial entries");
            self.dir.remove_file(MARKER)?;
            for name in &journal.entries {
                if is_plain_name(name) && self.owned_by(name, writer)? {
                    self.dir.remove_tree(name).with_context(|| {
                        format!("cannot remove {}", self.path.join(name).display())
                    })?;
                }
            }
            self.book.remove_file("journal.json")?;
        }
        for name in self.book.names()? {
            if name.starts_with("staging-") || name == "marker.tmp" {
                self.book.remove_tree(&name).with_context(|| {
                    format!("cannot remove {}", self.book.path().join(&name).display())
                })?;
            }
        }
        Ok(())
    }

    /// Whether top-level entry `name` belongs to `writer` (the owner of the
    /// marker or journal that lists it), or is gone. A list written by one
    /// UID never makes ocimodel delete what another UID owns.
    fn owned_by(&self, name: &str, writer: Option<u32>) -> Result<bool> {
        match self.dir.stat(name)? {
            None => Ok(true),
            Some(st) if Some(st.st_uid) == writer => Ok(true),
            Some(_) => {
                tracing::warn!(dest = %self.path.display(), entry = name, "the bookkeeping lists an entry another user owns; leaving it");
                Ok(false)
            }
        }
    }

    /// The marker, if DEST holds a complete install.
    pub fn marker(&self) -> Option<Marker> {
        let bytes = self.dir.read_small(MARKER, MARKER_CAP).ok()??;
        let m: Marker = serde_json::from_slice(&bytes).ok()?;
        m.check_paths().ok()?;
        Some(m)
    }

    /// The marker when DEST already holds exactly this model: same digest and
    /// selection, and every recorded file still present with its size.
    pub fn complete_for(&self, digest: &Digest, selection: &str) -> Option<Marker> {
        installed(&self.path, Some(digest), Some(selection)).ok()
    }

    /// `DEST/.ocimodel/partials`: a private directory (0700) for downloads
    /// that must survive this process, reached through its descriptor.
    /// Whoever can write DEST can make one first, with subdirectories that
    /// are symlinks to anywhere: one this UID does not own is removed (never
    /// followed) and made afresh, or refused.
    pub fn partials_dir(&self) -> Result<Dir> {
        let name = "partials";
        let path = self.book.path().join(name);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let mine = |d: &Dir| d.metadata().is_ok_and(|m| m.uid() == me);
        self.book.mkdir(name, 0o700)?;
        let dir = match self.book.open_dir(name) {
            Ok(d) if mine(&d) => d,
            _ => {
                tracing::warn!(dir = %path.display(), "someone else made this directory (or a symlink or file is there); replacing it");
                self.book
                    .remove_tree(name)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                if !self.book.mkdir(name, 0o700)? {
                    bail!("{} was made again by someone else", path.display());
                }
                self.book
                    .open_dir(name)
                    .with_context(|| format!("{} is not a directory", path.display()))?
            }
        };
        if !mine(&dir) {
            bail!("{} is not this user's", path.display());
        }
        dir.chmod(0o700)?;
        Ok(dir)
    }

    /// A fresh, empty staging directory, private to this process (0700)
    /// until its entries move into DEST, and reached through its descriptor;
    /// removed again when the guard drops (on errors, and when a pull is
    /// cancelled) unless it was installed.
    pub fn new_staging(&self) -> Result<Staging> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("staging-{}-{nanos}", std::process::id());
        let cannot = || {
            format!(
                "cannot create staging directory {}",
                self.book.path().join(&name).display()
            )
        };
        if !self.book.mkdir(&name, 0o700).with_context(cannot)? {
            bail!("{} exists already", self.book.path().join(&name).display());
        }
        let dir = self.book.open_dir(&name).with_context(cannot)?;
        dir.chmod(0o700).with_context(cannot)?;
        let pinned = match dir.pinned_path() {
            Ok(p) => p,
            Err(e) => {
                // No /proc (a bare chroot): the staging directory is still
                // private (0700), but a writer of .ocimodel could swap its
                // name while we work; say so.
                tracing::warn!("{e}; unpacking through the staging directory's path instead");
                self.book.path().join(&name)
            }
        };
        Ok(Staging {
            book: self.book.try_clone()?,
            name,
            dir,
            pinned,
        })
    }

    /// Moves the staged tree into DEST, keeps the model's config (if any) as
    /// `DEST/.ocimodel/config.json`, and writes the marker.
    pub fn install(
        &self,
        staging: &Staging,
        mut marker: Marker,
        config: Option<&[u8]>,
        owner: Option<(u32, u32)>,
    ) -> Result<Marker> {
        let new_entries = staging.dir.names()?;
        let old = self.installed_entries()?;
        self.refuse_clobbering(&new_entries, &old)?;
        self.dir.remove_file(MARKER)?;
        let touched: BTreeSet<String> = old.iter().chain(new_entries.iter()).cloned().collect();
        let journal = Journal {
            entries: touched.into_iter().collect(),
        };
        self.write_bookkeeping("journal.json", &serde_json::to_vec(&journal)?, owner)?;
        for name in &old {
            self.dir
                .remove_tree(name)
                .with_context(|| format!("cannot remove {}", self.path.join(name).display()))?;
        }
        for name in &new_entries {
            staging
                .dir
                .rename(name, &self.dir, name)
                .with_context(|| format!("cannot move {} into {}", name, self.path.display()))?;
        }
        marker.entries = new_entries;
        match config {
            Some(bytes) => self.write_bookkeeping("config.json", bytes, owner)?,
            None => self.book.remove_tree("config.json")?,
        }
        let mut text = serde_json::to_vec_pretty(&marker)?;
        text.push(b'\n');
        self.write_bookkeeping("marker.tmp", &text, owner)?;
        self.book
            .rename("marker.tmp", &self.dir, MARKER)
            .context("cannot write the completion marker")?;
        self.book.remove_file("journal.json")?;
        Ok(marker)
    }

    /// The top-level entries the current install owns (listed by its
    /// marker and owned by the marker's writer).
    fn installed_entries(&self) -> Result<BTreeSet<String>> {
        let writer = self.dir.stat(MARKER)?.map(|st| st.st_uid);
        let mut old = BTreeSet::new();
        for name in self.marker().map(|m| m.entries).unwrap_or_default() {
            if is_plain_name(&name) && self.owned_by(&name, writer)? {
                old.insert(name);
            }
        }
        Ok(old)
    }

    /// Refuses to clobber files this tool did not put there.
    fn refuse_clobbering(&self, names: &[String], old: &BTreeSet<String>) -> Result<()> {
        for name in names {
            if !old.contains(name) && self.dir.stat(name)?.is_some() {
                bail!(
                    "{} already exists and was not installed by ocimodel; remove it or use an empty destination",
                    self.path.join(name).display()
                );
            }
        }
        Ok(())
    }

    /// Before any download: refuses when one of these top-level names (those
    /// a plan is known to write) is a file of the user's in DEST, as the
    /// install would at the end.
    pub fn check_conflicts(&self, names: &[String]) -> Result<()> {
        let old = self.installed_entries()?;
        self.refuse_clobbering(names, &old)
    }

    /// Writes bookkeeping file `name` afresh (never through what is there).
    /// Mode 0644: another UID replaces it by rename (DEST's write bit is
    /// enough), but nobody edits a list that directs deletions in place.
    fn write_bookkeeping(&self, name: &str, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
        let path = self.book.path().join(name);
        let mut f = self
            .book
            .create_new(name, 0o644)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {} to {uid}:{gid}", path.display()))?;
        }
        Ok(())
    }
}

/// Creates (0700, then `g=u` for group 0) or opens `DEST/.ocimodel`,
/// refusing a symlink, a file, or a directory on another filesystem.
fn open_bookkeeping(dir: &Dir, path: &Path) -> Result<Dir> {
    let cannot_write = || {
        format!(
            "cannot write to destination {} (read-only or not permitted?)",
            path.display()
        )
    };
    let created = dir.mkdir(BOOKKEEPING, 0o700).with_context(cannot_write)?;
    let book = dir
        .open_dir(BOOKKEEPING)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => anyhow::anyhow!(
                "{} is not a directory (a symlink or a file was put there); remove it",
                path.join(BOOKKEEPING).display()
            ),
            _ => anyhow::Error::new(e).context(cannot_write()),
        })?;
    if created {
        // Other UIDs in group 0 stage their installs here too.
        book.chmod(shared_mode(0o755, true))
            .with_context(cannot_write)?;
    }
    if book.metadata()?.dev() != dir.metadata()?.dev() {
        bail!(
            "{} is on another filesystem than the destination; remove it",
            book.path().display()
        );
    }
    Ok(book)
}

/// Opens (0660 for group 0) and takes the lock, waiting at most
/// `lock_wait` for another run; a planted symlink or FIFO is replaced.
async fn take_lock(book: &Dir, path: &Path, lock_wait: Duration) -> Result<fs::File> {
    let (lock, lock_created) = match book.open_lock("lock", 0o600) {
        // A symlink or special file planted in place of the lock: drop
        // the name and make a real one.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::Other => {
            tracing::warn!(dest = %path.display(), "replacing a bad lock file: {e}");
            book.remove_tree("lock")?;
            book.open_lock("lock", 0o600)
        }
        other => other,
    }
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => anyhow::anyhow!(
            "{} is a symlink; remove it",
            book.path().join("lock").display()
        ),
        _ => anyhow::Error::new(e).context(format!(
            "cannot open lock file {}",
            book.path().join("lock").display()
        )),
    })?;
    if lock_created && group_zero() {
        // Readable by group 0 only: whoever can open it can hold it.
        lock.set_permissions(fs::Permissions::from_mode(0o660))?;
    }
    let started = std::time::Instant::now();
    let mut waited = false;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err)
                .with_context(|| format!("cannot lock {}", book.path().join("lock").display()));
        }
        if started.elapsed() >= lock_wait {
            bail!(
                "destination {} has been locked by another ocimodel for {}s (OCIMODEL_LOCK_TIMEOUT); if no other pull is running there, find the process holding {}",
                path.display(),
                lock_wait.as_secs(),
                book.path().join("lock").display()
            );
        }
        if !waited {
            tracing::info!(dest = %path.display(), "another ocimodel is installing into this destination; waiting for it");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(lock)
}

/// A staging directory inside DEST's bookkeeping; removed on drop.
pub struct Staging {
    book: Dir,
    name: String,
    dir: Dir,
    /// `/proc/self/fd/N` of `dir`: unpack writes below it by path, and no
    /// rename of `.ocimodel` or of the staging directory can redirect that.
    pinned: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.pinned
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // An unpack thread may still be writing after a cancellation; retry briefly.
        for _ in 0..5 {
            match self.book.remove_tree(&self.name) {
                Ok(()) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::warn!(staging = %self.book.path().join(&self.name).display(), "cannot remove staging directory");
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !RESERVED_NAMES.contains(&name)
}

/// `mkdir -p`. Only DEST itself, when this call creates it, gets the
/// shared mode; ancestors are left to the umask (never chmodded).
fn create_dirs(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    match fs::create_dir(path) {
        Ok(()) => {
            let d = Dir::open(path)?;
            d.chmod(shared_mode(0o755, true))?;
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run killed mid-install leaves a journal, a half-written marker and
    /// a staging directory; the next open removes what the journal lists
    /// (and only that), the staging and the temp marker.
    #[tokio::test]
    async fn an_interrupted_install_is_recovered_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let book = dest.join(BOOKKEEPING);
        fs::create_dir_all(book.join("staging-1-2/sub")).unwrap();
        fs::create_dir_all(dest.join("half/deep")).unwrap();
        fs::write(dest.join("half/deep/w.bin"), b"partial").unwrap();
        fs::write(dest.join("gone.json"), b"{}").unwrap();
        fs::write(dest.join("unrelated.txt"), b"keep").unwrap();
        fs::write(dest.join(MARKER), b"{}").unwrap();
        fs::write(book.join("marker.tmp"), b"{").unwrap();
        fs::write(
            book.join("journal.json"),
            br#"{"entries":["half","gone.json","never-made","../outside",".ocimodel"]}"#,
        )
        .unwrap();
        fs::write(tmp.path().join("outside"), b"keep").unwrap();

        let d = Dest::open(&dest, Duration::from_secs(5)).await.unwrap();
        assert!(!dest.join("half").exists());
        assert!(!dest.join("gone.json").exists());
        assert!(!dest.join(MARKER).exists(), "no marker after a recovery");
        assert_eq!(fs::read(dest.join("unrelated.txt")).unwrap(), b"keep");
        assert_eq!(fs::read(tmp.path().join("outside")).unwrap(), b"keep");
        let mut left: Vec<String> = fs::read_dir(&book)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["lock"]);
        assert!(d.marker().is_none());
    }

    #[test]
    fn markers_naming_paths_outside_are_not_markers() {
        let mut m: Marker = serde_json::from_value(serde_json::json!({
            "version": 1, "source": "s", "reference": "r",
            "digest": format!("sha256:{}", "a".repeat(64)), "format": "oras",
            "selection": "", "installedAt": "2026-01-01T00:00:00Z",
            "entries": ["m"], "files": [{"path": "m/w.bin", "size": 1,
            "digest": format!("sha256:{}", "b".repeat(64))}]
        }))
        .unwrap();
        m.check_paths().unwrap();
        for bad in ["../etc/passwd", "/etc/passwd", "m/../../x", "m//w", ""] {
            m.contents.files[0].path = bad.into();
            assert!(m.check_paths().is_err(), "{bad:?} accepted");
        }
        m.contents.files[0].path = "m/w.bin".into();
        m.entries = vec!["..".into()];
        assert!(m.check_paths().is_err());
    }
}
