//! The node cache (`OCIMODEL_CACHE_DIR`): a content-addressed store shared by
//! every ocimodel on a node (init containers of many pods, sidecars,
//! LocalModelCache jobs), so each blob is downloaded once per node.
//!
//! Layout, for group 0 only (directories 2770, files 0660) so other UIDs in
//! group 0 share it and nobody else reads it:
//! - `blobs/sha256/<hex>`: complete blobs, each verified before it was
//!   committed (written to `ingest/`, fsynced, renamed in, directory
//!   fsynced: a hostPath outlives pods and reboots);
//! - `ingest/sha256/<hex>`: a download in progress, appended to as bytes
//!   arrive, so a run killed at 90 % resumes with `Range` from there;
//! - `locks/sha256/<hex>`: `flock` per blob. Exclusive while downloading
//!   (single flight: the others wait, then read the committed blob), shared
//!   while reading, so eviction (`OCIMODEL_CACHE_MAX`, least recently used
//!   first, partial downloads included) never removes a blob a running pull
//!   holds;
//! - `manifests/sha256/<hex>`: manifests by digest (tags resolve to them
//!   too), so a digest reference installs with the registry unreachable;
//!   `<hex>.origins` says where each was pulled from and with which
//!   credential ([`Origin`]).
//!
//! Nothing here is trusted. Every pod that mounts the hostPath can write
//! it, so every path is reached through directory descriptors from the root
//! down, never through a name a co-tenant could have made a symlink, and
//! only regular files are read. Every byte read back is hashed again on its
//! way into DEST (the same pass that writes it; a whole file cloned from the
//! entry, where the filesystem shares extents, is hashed from the clone, see
//! `fetch::fetch_file`), and an entry that fails is dropped and fetched
//! again ([`StaleEntry`]). Any trouble with an entry
//! costs a download, never the pull (see `fetch::open_blob`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::digest::{Algorithm, Digest};
use crate::dirfd::Dir;

/// Manifests kept in the cache are capped like any manifest.
const MAX_SMALL: u64 = 4 << 20;

/// A lock holder whose download has not grown for this long (the default
/// stall timeout) is stuck, or is not downloading at all (a co-tenant's
/// `flock`): the blob is then downloaded without the cache.
const HOLDER_IDLE: Duration = Duration::from_secs(60);

/// A cached blob failed its digest on the way out: it was dropped, and the
/// install should be tried again (it will download the blob).
#[derive(Debug, thiserror::Error)]
#[error("the cached copy of {0} was corrupted; it was dropped and will be downloaded again")]
pub struct StaleEntry(pub Digest);

/// The cache: its root directory, and every path below reached through it,
/// one directory descriptor at a time (see [`crate::dirfd`]). Any pod on
/// the node can write here, so a name is never followed: a symlink planted
/// for `blobs/sha256` redirects nothing.
#[derive(Debug)]
pub struct Cache {
    root: Dir,
    max: Option<u64>,
    lock_wait: Duration,
    /// Blobs and bytes this process read from the cache (hits) and
    /// downloaded into it (misses), and of the hits those cloned into DEST
    /// (sharing the cache's blocks), for logs and metrics.
    counts: [AtomicU64; 6],
    /// Only blobs at least this big go through it (0: all).
    pub min_size: u64,
    /// Partial downloads only (DEST's own, without a node cache): a
    /// verified blob is not kept, just its download while it runs.
    transient: bool,
    /// Whole files are cloned from it where DEST's filesystem allows
    /// (`OCIMODEL_CLONE`, on by default).
    pub clone_files: bool,
}

/// What [`Cache::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hit_blobs: u64,
    pub hit_bytes: u64,
    pub miss_blobs: u64,
    pub miss_bytes: u64,
    /// Of the hits, those cloned into DEST rather than written.
    pub cloned_blobs: u64,
    pub cloned_bytes: u64,
}

/// A blob's lock, held for as long as this lives.
#[derive(Debug)]
pub struct Lock(File);

/// What the cache holds for a blob.
pub enum Entry {
    /// Committed: read it (a shared lock keeps eviction away).
    Hit { file: File, _lock: Lock },
    /// Not there: this process downloads it (exclusively), appending to
    /// the ingest file from `offset` on.
    Miss(Ingest),
}

/// A download in progress into the cache.
pub struct Ingest {
    /// `ingest/<algorithm>`, which holds `name`.
    dir: Dir,
    /// `blobs/<algorithm>`, where a commit moves it (none: transient).
    blobs: Option<Dir>,
    name: String,
    digest: Digest,
    partial: File,
    pub offset: u64,
    _lock: Lock,
}

/// Where a cached manifest was pulled from, and whether that took
/// credentials: an id of the credential (see [`credential_id`]), never the
/// credential. A later pull may use the cached copy when one origin is
/// anonymous or its credential is the one that pull presents (KEP-2535's
/// rule for pre-pulled images); otherwise the registry is asked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub registry: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// At most this many origins are kept per manifest (the newest).
const MAX_ORIGINS: usize = 32;

/// What the cache keeps of a credential used at `registry/repository` for
/// manifest `digest`: PBKDF2-HMAC-SHA256, salted with all three. The cache
/// is readable by every pod in group 0, so the id lets a pod show it holds
/// the same credential without anyone learning the credential from it.
pub fn credential_id(
    registry: &str,
    repository: &str,
    digest: &Digest,
    username: &str,
    secret: &str,
) -> String {
    let salt = format!("ocimodel node cache\0{registry}/{repository}@{digest}");
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(100_000).expect("not zero"),
        salt.as_bytes(),
        format!("{username}\0{secret}").as_bytes(),
        &mut out,
    );
    out.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    /// Opens (creating) the cache at `root`. The path is the operator's
    /// (symlinks along it are theirs); nothing below it is followed.
    pub fn open(root: &Path, max: Option<u64>, lock_wait: Duration) -> Result<Cache> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        let dir = Dir::open(root)
            .with_context(|| format!("cannot open cache directory {}", root.display()))?;
        let cache = Cache {
            root: dir,
            max,
            lock_wait,
            counts: Default::default(),
            min_size: 0,
            transient: false,
            clone_files: true,
        };
        cache.own_dir(&cache.root);
        Ok(cache)
    }

    /// DEST's own partial downloads, when there is no node cache: blobs of
    /// at least `min_size` are kept as they download in `root` (a private
    /// directory under `DEST/.ocimodel`, see `Dest::partials_dir`), so a run
    /// killed at 90 % resumes; once verified they are not kept.
    pub fn partials(root: Dir, min_size: u64, lock_wait: Duration) -> Cache {
        Cache {
            root,
            max: None,
            lock_wait,
            counts: Default::default(),
            min_size,
            transient: true,
            clone_files: false,
        }
    }

    /// Counts a blob served from the cache (`hit`) or downloaded into it.
    pub fn record(&self, hit: bool, bytes: u64) {
        let i = if hit { 0 } else { 2 };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.counts[i + 1].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a hit that was cloned into DEST (see `fetch::fetch_file`).
    pub fn record_clone(&self, bytes: u64) {
        self.counts[4].fetch_add(1, Ordering::Relaxed);
        self.counts[5].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Stats {
            hit_blobs: n(0),
            hit_bytes: n(1),
            miss_blobs: n(2),
            miss_bytes: n(3),
            cloned_blobs: n(4),
            cloned_bytes: n(5),
        }
    }

    /// Directories: group 0 shares the node cache (other pods' UIDs), and
    /// nobody else may read it; DEST's partials are private.
    fn dir_mode(&self) -> u32 {
        if !self.transient && crate::unpack::group_zero() {
            0o2770
        } else {
            0o700
        }
    }

    fn file_mode(&self) -> u32 {
        if !self.transient && crate::unpack::group_zero() {
            0o660
        } else {
            0o600
        }
    }

    /// Sets a directory's mode, if it is ours: other owners' stay theirs.
    fn own_dir(&self, dir: &Dir) {
        if let Ok(md) = dir.metadata() {
            if md.uid() == euid() && md.mode() & 0o7777 != self.dir_mode() {
                let _ = dir.chmod(self.dir_mode());
            }
        }
    }

    fn own_file(&self, f: &File) {
        if let Ok(md) = f.metadata() {
            if md.uid() == euid() && md.mode() & 0o7777 != self.file_mode() {
                let _ = f.set_permissions(std::fs::Permissions::from_mode(self.file_mode()));
            }
        }
    }

    /// `<area>/<algorithm>`, made if missing, each level a real directory
    /// opened through the one above it.
    fn dir(&self, area: &str, algorithm: Algorithm) -> io::Result<Dir> {
        let area = self.subdir(&self.root, area)?;
        self.subdir(&area, algorithm.name())
    }

    /// Child directory `name` of `parent`. Anything else there (a symlink a
    /// co-tenant planted, a file) is unlinked, never followed, and a
    /// directory made in its place.
    fn subdir(&self, parent: &Dir, name: &str) -> io::Result<Dir> {
        parent.mkdir(name, self.dir_mode() & 0o777)?;
        let dir = match parent.open_dir(name) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                tracing::warn!(path = %parent.path().join(name).display(), "not a directory in the node cache (a symlink or a file was put there); replacing it");
                parent.remove_file(name)?;
                parent.mkdir(name, self.dir_mode() & 0o777)?;
                parent.open_dir(name)?
            }
            other => other?,
        };
        self.own_dir(&dir);
        Ok(dir)
    }

    /// Whether manifests are kept (not in DEST's transient partials).
    pub fn keeps_manifests(&self) -> bool {
        !self.transient
    }

    /// A manifest by digest, checked; a bad entry is dropped.
    pub fn manifest(&self, digest: &Digest) -> Option<Vec<u8>> {
        if self.transient {
            return None;
        }
        let dir = self.dir("manifests", digest.algorithm()).ok()?;
        let bytes = dir.read_small(digest.hex(), MAX_SMALL).ok()??;
        if Digest::of(digest.algorithm(), &bytes) != *digest {
            tracing::warn!(digest = %digest, "dropping a corrupted cached manifest");
            let _ = dir.remove_file(digest.hex());
            return None;
        }
        Some(bytes)
    }

    /// Keeps a manifest whose digest the caller verified, pulled from
    /// `origin`.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8], origin: Origin) -> Result<()> {
        if self.transient {
            return Ok(());
        }
        let dir = self.dir("manifests", digest.algorithm())?;
        if dir.stat(digest.hex())?.is_none() {
            self.write_durably(&dir, digest.hex(), bytes)?;
        }
        self.add_origin(digest, origin)
    }

    /// Where manifest `digest` was pulled from (empty when nothing says:
    /// kept by an older ocimodel, or the record is unreadable).
    pub fn origins(&self, digest: &Digest) -> Vec<Origin> {
        let name = format!("{}.origins", digest.hex());
        self.dir("manifests", digest.algorithm())
            .ok()
            .and_then(|d| d.read_small(&name, 1 << 20).ok().flatten())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records one more origin of manifest `digest` (a no-op when known).
    pub fn add_origin(&self, digest: &Digest, origin: Origin) -> Result<()> {
        if self.transient {
            return Ok(());
        }
        let mut all = self.origins(digest);
        if all.contains(&origin) {
            return Ok(());
        }
        all.push(origin);
        let keep = all.len().saturating_sub(MAX_ORIGINS);
        let dir = self.dir("manifests", digest.algorithm())?;
        self.write_durably(
            &dir,
            &format!("{}.origins", digest.hex()),
            &serde_json::to_vec(&all[keep..])?,
        )
    }

    /// Writes `name` in `dir` whole (a temporary file renamed over it).
    fn write_durably(&self, dir: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = format!("{name}.tmp-{}", std::process::id());
        let mut f = dir.create_new(&tmp, self.file_mode())?;
        f.write_all(bytes)?;
        self.own_file(&f);
        f.sync_all()?;
        dir.rename(&tmp, dir, name)?;
        dir.sync()?;
        Ok(())
    }

    /// Whether a committed copy of `digest` is here (unverified, and no
    /// lock: it may be evicted, or be a co-tenant's planted file, before
    /// the pull reads it through [`Cache::begin`]). For choices that only
    /// cost time when wrong.
    pub fn holds(&self, digest: &Digest) -> bool {
        if self.transient {
            return false; // (and no `blobs/` made among DEST's partials)
        }
        let entry = self
            .dir("blobs", digest.algorithm())
            .and_then(|d| d.stat(digest.hex()));
        matches!(entry, Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }

    /// Looks a blob up: a hit, or the right to download it (waiting while
    /// another process downloads it, then reading what it committed). An
    /// error means the cache cannot serve this blob now (trouble in it, or
    /// its lock held without progress): the caller downloads without it.
    pub async fn begin(&self, digest: &Digest) -> Result<Entry> {
        let (alg, name) = (digest.algorithm(), digest.hex());
        let locks = self.dir("locks", alg)?;
        let lock = self.open_lock(&locks, name)?;
        let ingest = self.dir("ingest", alg)?;
        // What the lock's holder has downloaded so far: while it grows, the
        // holder is making progress.
        let progress = || ingest.stat(name).ok().flatten().map(|st| st.st_size);
        if self.transient {
            // Nothing is kept: straight to the (resumable) download.
            self.wait(&lock, libc::LOCK_EX, digest, progress).await?;
            return self.ingest(ingest, None, digest, lock);
        }
        let blobs = self.dir("blobs", alg)?;
        self.wait(&lock, libc::LOCK_SH, digest, progress).await?;
        if let Some(file) = committed(&blobs, name) {
            // Older versions kept blobs world-readable (0664).
            self.own_file(&file);
            touch(&file);
            return Ok(Entry::Hit { file, _lock: lock });
        }
        // Upgrade to exclusive: one downloader per blob on the node.
        self.wait(&lock, libc::LOCK_EX, digest, progress).await?;
        if let Some(file) = committed(&blobs, name) {
            // Another process committed it while we waited.
            self.wait(&lock, libc::LOCK_SH, digest, progress).await?;
            touch(&file);
            return Ok(Entry::Hit { file, _lock: lock });
        }
        self.ingest(ingest, Some(blobs), digest, lock)
    }

    /// Opens (creating) the ingest file of `digest`, under its lock: a
    /// regular file with no other name (a hard link to a file elsewhere
    /// would be appended to); anything else there is dropped first.
    fn ingest(&self, dir: Dir, blobs: Option<Dir>, digest: &Digest, lock: Lock) -> Result<Entry> {
        let name = digest.hex();
        let flags = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT;
        let partial = match dir.open_regular(name, flags, self.file_mode()) {
            Ok(f) if f.metadata()?.nlink() == 1 => f,
            other => {
                let why = match other {
                    Ok(_) => format!("{} has other names", dir.path().join(name).display()),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(blob = %digest, "{why}; starting its download afresh");
                dir.remove_tree(name).with_context(|| {
                    format!("cannot remove {}", dir.path().join(name).display())
                })?;
                dir.open_regular(name, flags | libc::O_EXCL, self.file_mode())
                    .with_context(|| format!("cannot create {}", dir.path().join(name).display()))?
            }
        };
        self.own_file(&partial);
        let offset = partial.metadata()?.len();
        Ok(Entry::Miss(Ingest {
            dir,
            blobs,
            name: name.to_string(),
            digest: digest.clone(),
            partial,
            offset,
            _lock: lock,
        }))
    }

    /// Drops a blob that failed its digest on the way out.
    pub fn drop_blob(&self, digest: &Digest) {
        tracing::warn!(blob = %digest, "the cached blob does not match its digest; dropping it");
        if let Ok(dir) = self.dir("blobs", digest.algorithm()) {
            let _ = dir.remove_file(digest.hex());
        }
    }

    /// Evicts least recently used blobs and partial downloads until the
    /// cache fits `OCIMODEL_CACHE_MAX`, skipping any that a running pull
    /// holds (reading a blob, or writing a partial download). Only regular
    /// files named by a digest count; nothing is followed.
    pub fn evict(&self) {
        let Some(max) = self.max else { return };
        let mut dirs = Vec::new();
        let mut found: Vec<(SystemTime, u64, usize, String)> = Vec::new();
        for area in ["blobs", "ingest"] {
            let Ok(a) = self.root.open_dir(area) else {
                continue;
            };
            for alg in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Blake3] {
                let Ok(d) = a.open_dir(alg.name()) else {
                    continue;
                };
                for name in d.names().unwrap_or_default() {
                    if name.len() != alg.hex_len() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                        continue;
                    }
                    let Ok(Some(st)) = d.stat(&name) else {
                        continue;
                    };
                    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                        continue;
                    }
                    let mtime = SystemTime::UNIX_EPOCH
                        + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
                    found.push((mtime, st.st_size as u64, dirs.len(), name));
                }
                dirs.push((alg, d));
            }
        }
        let mut total: u64 = found.iter().map(|f| f.1).sum();
        found.sort();
        for (_, size, i, name) in found {
            if total <= max {
                break;
            }
            let (alg, dir) = &dirs[i];
            let Ok(lock) = self
                .dir("locks", *alg)
                .map_err(anyhow::Error::from)
                .and_then(|l| self.open_lock(&l, &name))
            else {
                continue;
            };
            // SAFETY: flock on a descriptor we own.
            let free =
                unsafe { libc::flock(lock.0.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if free && dir.remove_file(&name).is_ok() {
                tracing::info!(entry = %dir.path().join(&name).display(), size, "evicted from the node cache (OCIMODEL_CACHE_MAX)");
                total -= size;
            }
        }
    }

    /// Opens (creating) a blob's lock file: a regular file, never through
    /// a symlink, never blocking on a FIFO.
    fn open_lock(&self, dir: &Dir, name: &str) -> Result<Lock> {
        let (f, _) = dir.open_lock(name, self.file_mode()).with_context(|| {
            format!("cannot open cache lock {}", dir.path().join(name).display())
        })?;
        self.own_file(&f);
        Ok(Lock(f))
    }

    /// Takes `op` (shared or exclusive) on the lock, waiting while its
    /// holder's download makes `progress`, at most `OCIMODEL_LOCK_TIMEOUT`.
    /// A holder that makes none (stuck, or a co-tenant's bare `flock`) is
    /// not waited for long: the caller then downloads without the cache.
    async fn wait(
        &self,
        lock: &Lock,
        op: libc::c_int,
        digest: &Digest,
        progress: impl Fn() -> Option<i64>,
    ) -> Result<()> {
        let started = Instant::now();
        let idle = self.lock_wait.min(HOLDER_IDLE);
        let (mut seen, mut moved) = (progress(), Instant::now());
        let mut said = false;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(lock.0.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("cannot lock the cache entry of {digest}"));
            }
            let now = progress();
            if now != seen {
                (seen, moved) = (now, Instant::now());
            }
            if moved.elapsed() >= idle || started.elapsed() >= self.lock_wait {
                bail!(
                    "the node cache's lock on {digest} has been held for {}s, its download not progressing for {}s (OCIMODEL_LOCK_TIMEOUT)",
                    started.elapsed().as_secs(),
                    moved.elapsed().as_secs()
                );
            }
            if !said && op == libc::LOCK_EX {
                tracing::info!(blob = %digest, "another ocimodel on this node is downloading this blob; waiting for it");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Ingest {
    /// The bytes already downloaded by an earlier run, to replay.
    pub fn prefix(&self) -> io::Result<File> {
        let f = self.partial.try_clone()?;
        Ok(f)
    }

    /// Appends bytes just received (and verified so far by the hasher).
    pub fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.partial.write_all(chunk)
    }

    /// Commits the verified blob: flushed, renamed into `blobs/`, the
    /// directory flushed, so an entry counts as complete only when it is.
    /// (A transient cache just forgets it: it was delivered.)
    pub fn commit(self) -> Result<()> {
        let Some(blobs) = &self.blobs else {
            self.discard();
            return Ok(());
        };
        self.partial.sync_all()?;
        self.dir
            .rename(&self.name, blobs, &self.name)
            .with_context(|| format!("cannot commit {} to the cache", self.digest))?;
        // Group 0 can rename in `ingest/`: what moved must be the file this
        // process wrote and verified, or it is not kept.
        let ours = self.partial.metadata()?;
        match blobs.stat(&self.name)? {
            Some(st) if (st.st_dev, st.st_ino) == (ours.dev(), ours.ino()) => {}
            _ => {
                let _ = blobs.remove_file(&self.name);
                bail!(
                    "the download of {} was replaced in the cache while it was written; not keeping it",
                    self.digest
                );
            }
        }
        blobs.sync()?;
        Ok(())
    }

    /// Forgets the partial download (its bytes did not verify).
    pub fn discard(self) {
        let _ = self.dir.remove_file(&self.name);
    }
}

/// A committed blob: a regular file opened without following a symlink or
/// blocking on a FIFO. Anything else at its name (a co-tenant's FIFO, a
/// symlink to a device, a directory) is never a blob: it is dropped, and
/// the blob downloaded.
fn committed(blobs: &Dir, name: &str) -> Option<File> {
    match blobs.open_regular(name, libc::O_RDONLY, 0) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("{e}; dropping it from the node cache");
            if let Err(e) = blobs.remove_tree(name) {
                tracing::warn!("cannot remove {}: {e}", blobs.path().join(name).display());
            }
            None
        }
    }
}

/// Marks a blob as recently used (eviction goes by modification time):
/// "now", which needs only write access, not ownership, so every UID in
/// group 0 can mark another's blob.
fn touch(f: &File) {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: futimens on a descriptor we own, with a valid array of two.
    unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at(root: &Path, area: &str, d: &Digest) -> PathBuf {
        root.join(area).join("sha256").join(d.hex())
    }

    async fn miss(cache: &Cache, d: &Digest) -> Ingest {
        match cache.begin(d).await.unwrap() {
            Entry::Miss(ingest) => ingest,
            Entry::Hit { .. } => panic!("{d} is cached already"),
        }
    }

    fn age(path: &Path) {
        File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap()
    }

    #[tokio::test]
    async fn blobs_are_downloaded_once_then_read_and_evicted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cache = Cache::open(root, Some(10), Duration::from_secs(2)).unwrap();
        let a = Digest::sha256_of(b"aaaaaa");
        let mut ingest = miss(&cache, &a).await;
        assert_eq!(ingest.offset, 0);
        ingest.append(b"aaa").unwrap();
        drop(ingest); // killed mid-blob: the partial stays
        let mut ingest = miss(&cache, &a).await;
        assert_eq!(ingest.offset, 3, "resumes after the bytes it has");
        ingest.append(b"aaa").unwrap();
        ingest.commit().unwrap();
        assert!(matches!(cache.begin(&a).await.unwrap(), Entry::Hit { .. }));

        // Over the cap: the least recently used goes, unless it is held.
        let commit = |d: &Digest, bytes: &'static [u8]| {
            let cache = &cache;
            let d = d.clone();
            async move {
                let mut ingest = miss(cache, &d).await;
                ingest.append(bytes).unwrap();
                ingest.commit().unwrap();
            }
        };
        let b = Digest::sha256_of(b"bbbbbb");
        commit(&b, b"bbbbbb").await;
        let held = cache.begin(&a).await.unwrap();
        age(&at(root, "blobs", &a)); // the oldest, but a running pull reads it
        cache.evict();
        assert!(at(root, "blobs", &a).exists(), "a held blob was evicted");
        assert!(!at(root, "blobs", &b).exists());
        drop(held);
        let c = Digest::sha256_of(b"cccccc");
        commit(&c, b"cccccc").await;
        age(&at(root, "blobs", &a));
        cache.evict();
        assert!(!at(root, "blobs", &a).exists());
        assert!(at(root, "blobs", &c).exists());
    }

    /// Partial downloads count toward the cap and go oldest first, except
    /// one being written.
    #[tokio::test]
    async fn partial_downloads_count_and_are_evicted_unless_written() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cache = Cache::open(root, Some(10), Duration::from_secs(2)).unwrap();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let mut writing = miss(&cache, &a).await;
        writing.append(&[0; 8]).unwrap();
        let mut abandoned = miss(&cache, &b).await;
        abandoned.append(&[0; 8]).unwrap();
        drop(abandoned);
        age(&at(root, "ingest", &a));
        age(&at(root, "ingest", &b));
        cache.evict();
        assert!(
            at(root, "ingest", &a).exists(),
            "a partial being written was evicted"
        );
        assert!(!at(root, "ingest", &b).exists());
    }

    #[test]
    fn manifests_are_checked_on_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), None, Duration::from_secs(1)).unwrap();
        let d = Digest::sha256_of(b"{}");
        let origin = Origin {
            registry: "r".into(),
            repository: "m".into(),
            credential: None,
        };
        cache.put_manifest(&d, b"{}", origin.clone()).unwrap();
        assert_eq!(cache.manifest(&d).unwrap(), b"{}");
        assert_eq!(cache.origins(&d), [origin]);
        std::fs::write(at(dir.path(), "manifests", &d), b"{ }").unwrap();
        assert!(cache.manifest(&d).is_none());
        assert!(
            !at(dir.path(), "manifests", &d).exists(),
            "a bad entry is dropped"
        );
    }

    /// Planted symlinks are replaced, never followed; a FIFO at a blob's
    /// name is dropped without blocking.
    #[tokio::test]
    async fn planted_names_are_not_followed_or_blocked_on() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        symlink(elsewhere.path(), root.join("blobs/sha256")).unwrap();
        symlink(elsewhere.path(), root.join("ingest")).unwrap();
        let cache = Cache::open(&root, Some(1), Duration::from_secs(1)).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut ingest = miss(&cache, &d).await;
        ingest.append(b"x").unwrap();
        ingest.commit().unwrap();
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        assert!(at(&root, "blobs", &d).is_file());

        let path = at(&root, "blobs", &d);
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(cache.begin(&d).await.unwrap(), Entry::Miss(_)));
        assert!(!path.exists(), "the FIFO was not dropped");
    }

    #[test]
    fn credential_ids_tell_credentials_apart_and_hide_them() {
        let d = Digest::sha256_of(b"m");
        let id = credential_id("r", "m", &d, "alice", "pw");
        assert_eq!(id, credential_id("r", "m", &d, "alice", "pw"));
        assert_ne!(id, credential_id("r", "m", &d, "alice", "pw2"));
        assert_ne!(id, credential_id("r", "other", &d, "alice", "pw"));
        assert!(!id.contains("alice") && id.len() == 64);
    }
}
