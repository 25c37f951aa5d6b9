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
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::unpack::{normalise_mode, remove_existing, Contents, RESERVED_NAMES};

pub const MARKER: &str = ".ocimodel.json";
pub const BOOKKEEPING: &str = ".ocimodel";
const MARKER_VERSION: u32 = 1;

/// The completion marker, `DEST/.ocimodel.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub version: u32,
    /// The URI as given.
    pub source: String,
    /// The source pinned to the digest.
    pub reference: String,
    /// The digest the reference resolved to (an index's, if it was one).
    pub digest: Digest,
    /// The platform manifest chosen from an index, when different.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    pub format: String,
    /// The subtree taken from a container image, e.g. `/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// The settings that shaped the tree (subpath, file filter, ...); a rerun
    /// with other settings installs again.
    #[serde(default)]
    pub selection: String,
    pub installed_at: String,
    /// The signatures that verified before install (empty when unchecked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<crate::verify::Signature>,
    /// Top-level names in DEST that this install owns.
    pub entries: Vec<String>,
    #[serde(flatten)]
    pub contents: Contents,
}

impl Marker {
    /// What must match for an existing install to count as this one.
    pub fn same_install(&self, digest: &Digest, selection: &str) -> bool {
        self.version == MARKER_VERSION && &self.digest == digest && self.selection == selection
    }

    pub fn new(
        source: String,
        reference: String,
        digest: Digest,
        manifest_digest: Option<Digest>,
        format: String,
        subpath: Option<String>,
        contents: Contents,
    ) -> Marker {
        Marker {
            version: MARKER_VERSION,
            source,
            reference,
            digest,
            manifest_digest,
            format,
            subpath,
            selection: String::new(),
            installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            signatures: Vec::new(),
            entries: Vec::new(),
            contents,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Journal {
    entries: Vec<String>,
}

/// An opened, locked destination directory.
pub struct Dest {
    path: PathBuf,
    book: PathBuf,
    _lock: fs::File,
}

impl Dest {
    /// Creates DEST (`mkdir -p`) and its bookkeeping directory, takes the
    /// lock (waiting for another run to finish), and recovers from a run that
    /// died mid-install.
    pub async fn open(path: &Path) -> Result<Dest> {
        create_dirs(path)
            .with_context(|| format!("cannot create destination {}", path.display()))?;
        if !fs::metadata(path)?.is_dir() {
            bail!("destination {} is not a directory", path.display());
        }
        let book = path.join(BOOKKEEPING);
        match fs::create_dir(&book) {
            Ok(()) => set_mode(&book, true)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot write to destination {} (read-only or not permitted?)",
                        path.display()
                    )
                })
            }
        }
        let lock_path = book.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
        let mut waited = false;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
            if !waited {
                tracing::info!(dest = %path.display(), "another ocimodel is installing into this destination; waiting for it");
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let dest = Dest {
            path: path.to_path_buf(),
            book,
            _lock: lock,
        };
        dest.recover()?;
        Ok(dest)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes what a killed run left: entries listed in the journal, and
    /// every staging directory.
    fn recover(&self) -> Result<()> {
        let journal_path = self.book.join("journal.json");
        if let Ok(bytes) = fs::read(&journal_path) {
            let journal: Journal = serde_json::from_slice(&bytes).unwrap_or_default();
            tracing::warn!(dest = %self.path.display(), "an earlier install was interrupted; removing its partial entries");
            let _ = fs::remove_file(self.path.join(MARKER));
            for name in &journal.entries {
                if is_plain_name(name) {
                    remove_existing(&self.path.join(name))?;
                }
            }
            fs::remove_file(&journal_path)?;
        }
        for entry in fs::read_dir(&self.book)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("staging-") || name == "marker.tmp" {
                remove_existing(&entry.path())?;
            }
        }
        Ok(())
    }

    /// The marker, if DEST holds a complete install.
    pub fn marker(&self) -> Option<Marker> {
        let bytes = fs::read(self.path.join(MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The marker when DEST already holds exactly this model: same digest and
    /// selection, and every recorded file still present with its size.
    pub fn complete_for(&self, digest: &Digest, selection: &str) -> Option<Marker> {
        installed(&self.path, Some(digest), Some(selection)).ok()
    }

    /// A fresh, empty staging directory, removed again when the guard drops
    /// (on errors, and when a pull is cancelled) unless it was installed.
    pub fn new_staging(&self) -> Result<Staging> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = self
            .book
            .join(format!("staging-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir)
            .with_context(|| format!("cannot create staging directory {}", dir.display()))?;
        Ok(Staging { path: dir })
    }

    /// Moves the staged tree into DEST, keeps the model's config (if any) as
    /// `DEST/.ocimodel/config.json`, and writes the marker.
    pub fn install(
        &self,
        staging: &Staging,
        mut marker: Marker,
        config: Option<&[u8]>,
    ) -> Result<Marker> {
        let staging = staging.path();
        let mut new_entries: Vec<String> = Vec::new();
        for entry in fs::read_dir(staging)? {
            new_entries.push(entry?.file_name().to_string_lossy().into_owned());
        }
        new_entries.sort();
        let old: BTreeSet<String> = self
            .marker()
            .map(|m| m.entries.into_iter().collect())
            .unwrap_or_default();
        // Refuse to clobber files this tool did not put there.
        for name in &new_entries {
            if !old.contains(name) && fs::symlink_metadata(self.path.join(name)).is_ok() {
                bail!(
                    "{} already exists and was not installed by ocimodel; remove it or use an empty destination",
                    self.path.join(name).display()
                );
            }
        }
        let _ = fs::remove_file(self.path.join(MARKER));
        let touched: BTreeSet<String> = old.iter().chain(new_entries.iter()).cloned().collect();
        let journal = Journal {
            entries: touched.into_iter().collect(),
        };
        let journal_path = self.book.join("journal.json");
        fs::write(&journal_path, serde_json::to_vec(&journal)?)?;
        for name in &old {
            if is_plain_name(name) {
                remove_existing(&self.path.join(name))?;
            }
        }
        for name in &new_entries {
            fs::rename(staging.join(name), self.path.join(name))
                .with_context(|| format!("cannot move {} into {}", name, self.path.display()))?;
        }
        marker.entries = new_entries;
        let config_path = self.book.join("config.json");
        match config {
            Some(bytes) => {
                fs::write(&config_path, bytes)?;
                set_mode(&config_path, false)?;
            }
            None => remove_existing(&config_path)?,
        }
        let tmp = self.book.join("marker.tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&marker)?)?;
            f.write_all(b"\n")?;
        }
        set_mode(&tmp, false)?;
        fs::rename(&tmp, self.path.join(MARKER))?;
        fs::remove_file(&journal_path)?;
        Ok(marker)
    }
}

/// Checks, without locking or writing, that `dest` holds a complete install
/// (of `digest` and `selection` when given): the marker is there and every
/// file it records exists with its size. The error says what is wrong.
pub fn installed(
    dest: &Path,
    digest: Option<&Digest>,
    selection: Option<&str>,
) -> std::result::Result<Marker, String> {
    let m = read_marker(dest)?;
    if m.version != MARKER_VERSION {
        return Err(format!(
            "marker version {} is not {MARKER_VERSION}",
            m.version
        ));
    }
    if let Some(d) = digest {
        if &m.digest != d {
            return Err(format!("{} holds {}, not {d}", dest.display(), m.digest));
        }
    }
    if let Some(s) = selection {
        if m.selection != s {
            return Err(format!(
                "{} was installed with other settings ({})",
                dest.display(),
                m.selection
            ));
        }
    }
    for f in &m.contents.files {
        match fs::symlink_metadata(dest.join(&f.path)) {
            Ok(md) if md.is_file() && md.len() == f.size => {}
            Ok(_) => return Err(format!("{} changed (size or type)", f.path)),
            Err(_) => return Err(format!("{} is missing", f.path)),
        }
    }
    Ok(m)
}

/// The marker of `dest`, or what is wrong with it.
fn read_marker(dest: &Path) -> std::result::Result<Marker, String> {
    let bytes = fs::read(dest.join(MARKER))
        .map_err(|_| format!("{} has no completion marker", dest.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a valid marker: {e}", dest.join(MARKER).display()))
}

/// Re-hashes every file the marker records and checks every symlink; lists
/// each difference (missing, changed, or extra files under the model's
/// entries). Empty means the tree is exactly what was installed.
pub fn check_tree(dest: &Path) -> std::result::Result<(Marker, Vec<String>), String> {
    // Not `installed`: its size checks stop at the first problem, and this
    // reports every one.
    let m = read_marker(dest)?;
    let mut problems = Vec::new();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for f in &m.contents.files {
        expected.insert(f.path.clone());
        let path = dest.join(&f.path);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => match crate::unpack::hash_file(&path, f.digest.algorithm()) {
                Ok((size, d)) if size == f.size && d == f.digest => {}
                Ok((size, d)) => problems.push(format!(
                    "{}: expected {} bytes {}, found {size} bytes {d}",
                    f.path, f.size, f.digest
                )),
                Err(e) => problems.push(format!("{}: cannot read: {e}", f.path)),
            },
            Ok(_) => problems.push(format!("{}: not a regular file any more", f.path)),
            Err(_) => problems.push(format!("{}: missing", f.path)),
        }
    }
    for (link, target) in &m.contents.links {
        expected.insert(link.clone());
        match fs::read_link(dest.join(link)) {
            Ok(t) if t.to_string_lossy() == target.as_str() => {}
            Ok(t) => problems.push(format!(
                "{link}: symlink now points to {}, not {target}",
                t.display()
            )),
            Err(_) => problems.push(format!("{link}: symlink missing")),
        }
    }
    // Anything else under the model's own entries was not installed.
    let mut stack: Vec<String> = m.entries.clone();
    while let Some(rel) = stack.pop() {
        let path = dest.join(&rel);
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(&path) {
                for e in rd.flatten() {
                    stack.push(format!("{rel}/{}", e.file_name().to_string_lossy()));
                }
            }
        } else if !expected.contains(&rel) {
            problems.push(format!("{rel}: not part of the installed model"));
        }
    }
    problems.sort();
    Ok((m, problems))
}

/// A staging directory inside DEST's bookkeeping; removed on drop.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // An unpack thread may still be writing after a cancellation; retry briefly.
        for _ in 0..5 {
            match remove_existing(&self.path) {
                Ok(()) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::warn!(staging = %self.path.display(), "cannot remove staging directory");
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !RESERVED_NAMES.contains(&name)
}

fn set_mode(path: &Path, dir: bool) -> Result<()> {
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(normalise_mode(if dir { 0o755 } else { 0o644 }, dir)),
    )
    .with_context(|| format!("cannot set mode on {}", path.display()))
}

/// `mkdir -p`, giving directories we create group-0 friendly modes.
fn create_dirs(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            create_dirs(parent)?;
        }
    }
    match fs::create_dir(path) {
        Ok(()) => set_mode(path, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}
