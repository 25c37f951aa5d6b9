//! The node cache (`OCIMODEL_CACHE_DIR`): a content-addressed store shared by
//! every ocimodel on a node (init containers of many pods, sidecars,
//! LocalModelCache jobs), so each blob is downloaded once per node.
//!
//! Layout, all `g=u` so other UIDs in group 0 share it:
//! - `blobs/sha256/<hex>`: complete blobs, each verified before it was
//!   committed (written to `ingest/`, fsynced, renamed in, directory
//!   fsynced: a hostPath outlives pods and reboots);
//! - `ingest/sha256/<hex>`: a download in progress, appended to as bytes
//!   arrive, so a run killed at 90 % resumes with `Range` from there;
//! - `locks/sha256/<hex>`: `flock` per blob. Exclusive while downloading
//!   (single flight: the others wait, then read the committed blob), shared
//!   while reading, so eviction (`OCIMODEL_CACHE_MAX`, least recently used
//!   first) never removes a blob a running pull holds;
//! - `manifests/sha256/<hex>`: manifests by digest, so a digest reference
//!   installs with the registry unreachable.
//!
//! Nothing here is trusted: every byte read back is hashed again on its way
//! into DEST (the same pass that writes it), and an entry that fails is
//! dropped and fetched again ([`StaleEntry`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::unpack::shared_mode;

/// Manifests kept in the cache are capped like any manifest.
const MAX_SMALL: u64 = 4 << 20;

/// A cached blob failed its digest on the way out: it was dropped, and the
/// install should be tried again (it will download the blob).
#[derive(Debug, thiserror::Error)]
#[error("the cached copy of {0} was corrupted; it was dropped and will be downloaded again")]
pub struct StaleEntry(pub Digest);

#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    max: Option<u64>,
    lock_wait: Duration,
    /// Blobs and bytes this process read from the cache (hits) and
    /// downloaded into it (misses), for logs and metrics.
    counts: [AtomicU64; 4],
    /// Only blobs at least this big go through it (0: all).
    pub min_size: u64,
    /// Partial downloads only (DEST's own, without a node cache): a
    /// verified blob is not kept, just its download while it runs.
    transient: bool,
}

/// What [`Cache::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hit_blobs: u64,
    pub hit_bytes: u64,
    pub miss_blobs: u64,
    pub miss_bytes: u64,
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
    transient: bool,
    cache_root: PathBuf,
    digest: Digest,
    partial: File,
    pub offset: u64,
    _lock: Lock,
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path, max: Option<u64>, lock_wait: Duration) -> Result<Cache> {
        for sub in ["blobs", "ingest", "locks", "manifests"] {
            let dir = root.join(sub).join("sha256");
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
            for d in [root.to_path_buf(), root.join(sub), dir] {
                // Group 0 shares it; other owners' directories stay theirs.
                let _ =
                    fs::set_permissions(&d, fs::Permissions::from_mode(shared_mode(0o755, true)));
            }
        }
        Ok(Cache {
            root: root.to_path_buf(),
            max,
            lock_wait,
            counts: Default::default(),
            min_size: 0,
            transient: false,
        })
    }

    /// DEST's own partial downloads, when there is no node cache: blobs of
    /// at least `min_size` are kept as they download in `root` (a private
    /// directory under `DEST/.ocimodel`, reached through its descriptor), so
    /// a run killed at 90 % resumes; once verified they are not kept.
    pub fn partials(root: &Path, min_size: u64, lock_wait: Duration) -> Result<Cache> {
        for sub in ["blobs", "ingest", "locks", "manifests"] {
            let dir = root.join(sub).join("sha256");
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            max: None,
            lock_wait,
            counts: Default::default(),
            min_size,
            transient: true,
        })
    }

    /// Counts a blob served from the cache (`hit`) or downloaded into it.
    pub fn record(&self, hit: bool, bytes: u64) {
        let i = if hit { 0 } else { 2 };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.counts[i + 1].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Stats {
            hit_blobs: n(0),
            hit_bytes: n(1),
            miss_blobs: n(2),
            miss_bytes: n(3),
        }
    }

    fn path(&self, area: &str, digest: &Digest) -> PathBuf {
        self.root
            .join(area)
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// A manifest by digest, checked; a bad entry is dropped.
    pub fn manifest(&self, digest: &Digest) -> Option<Vec<u8>> {
        if self.transient {
            return None;
        }
        let path = self.path("manifests", digest);
        let bytes = crate::dirfd::read_small_file(&path, MAX_SMALL, false).ok()?;
        if Digest::of(digest.algorithm(), &bytes) != *digest {
            tracing::warn!(digest = %digest, "dropping a corrupted cached manifest");
            let _ = fs::remove_file(&path);
            return None;
        }
        Some(bytes)
    }

    /// Keeps a manifest whose digest the caller verified.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if self.transient {
            return Ok(());
        }
        let path = self.path("manifests", digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        write_durably(&tmp, bytes)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Looks a blob up: a hit, or the right to download it (waiting while
    /// another process downloads it, then reading what it committed).
    pub async fn begin(&self, digest: &Digest) -> Result<Entry> {
        if self.transient {
            // Nothing is kept: straight to the (resumable) download.
            let lock_path = self.path("locks", digest);
            let lock = open_lock(&lock_path)?;
            flock_wait(&lock, libc::LOCK_EX, self.lock_wait, &lock_path).await?;
            return self.ingest(digest, lock);
        }
        let lock_path = self.path("locks", digest);
        let blob = self.path("blobs", digest);
        let lock = open_lock(&lock_path)?;
        flock_wait(&lock, libc::LOCK_SH, self.lock_wait, &lock_path).await?;
        if let Ok(file) = File::open(&blob) {
            touch(&file);
            return Ok(Entry::Hit { file, _lock: lock });
        }
        // Upgrade to exclusive: one downloader per blob on the node.
        flock_wait(&lock, libc::LOCK_EX, self.lock_wait, &lock_path).await?;
        if let Ok(file) = File::open(&blob) {
            // Another process committed it while we waited.
            flock_wait(&lock, libc::LOCK_SH, self.lock_wait, &lock_path).await?;
            touch(&file);
            return Ok(Entry::Hit { file, _lock: lock });
        }
        self.ingest(digest, lock)
    }

    /// Opens (creating) the ingest file of `digest`, under its lock.
    fn ingest(&self, digest: &Digest, lock: Lock) -> Result<Entry> {
        let partial_path = self.path("ingest", digest);
        let partial = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o664)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&partial_path)
            .with_context(|| format!("cannot open {}", partial_path.display()))?;
        let md = partial.metadata()?;
        if !md.is_file() {
            bail!("{} is not a regular file", partial_path.display());
        }
        if !self.transient {
            let _ = partial.set_permissions(fs::Permissions::from_mode(shared_mode(0o644, false)));
        }
        Ok(Entry::Miss(Ingest {
            transient: self.transient,
            cache_root: self.root.clone(),
            digest: digest.clone(),
            partial,
            offset: md.len(),
            _lock: lock,
        }))
    }

    /// Drops a blob that failed its digest on the way out.
    pub fn drop_blob(&self, digest: &Digest) {
        tracing::warn!(blob = %digest, "the cached blob does not match its digest; dropping it");
        let _ = fs::remove_file(self.path("blobs", digest));
    }

    /// Evicts least recently used blobs until the cache fits
    /// `OCIMODEL_CACHE_MAX`, skipping any that a running pull holds.
    pub fn evict(&self) {
        let Some(max) = self.max else { return };
        let dir = self.root.join("blobs").join("sha256");
        let Ok(rd) = fs::read_dir(&dir) else { return };
        let mut blobs: Vec<(SystemTime, u64, String)> = rd
            .flatten()
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                Some((
                    md.modified().ok()?,
                    md.len(),
                    e.file_name().into_string().ok()?,
                ))
            })
            .collect();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort();
        for (_, size, name) in blobs {
            if total <= max {
                break;
            }
            let Ok(lock) = open_lock(&self.root.join("locks").join("sha256").join(&name)) else {
                continue;
            };
            // SAFETY: flock on a descriptor we own.
            let free =
                unsafe { libc::flock(lock.0.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if free && fs::remove_file(dir.join(&name)).is_ok() {
                tracing::info!(blob = %name, size, "evicted from the node cache (OCIMODEL_CACHE_MAX)");
                total -= size;
            }
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
        if self.transient {
            self.discard();
            return Ok(());
        }
        self.partial.sync_all()?;
        let from = self
            .cache_root
            .join("ingest")
            .join(self.digest.algorithm().name())
            .join(self.digest.hex());
        let dir = self
            .cache_root
            .join("blobs")
            .join(self.digest.algorithm().name());
        fs::rename(&from, dir.join(self.digest.hex()))
            .with_context(|| format!("cannot commit {} to the cache", self.digest))?;
        File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Forgets the partial download (its bytes did not verify).
    pub fn discard(self) {
        let path = self
            .cache_root
            .join("ingest")
            .join(self.digest.algorithm().name())
            .join(self.digest.hex());
        let _ = fs::remove_file(path);
    }
}

fn open_lock(path: &Path) -> Result<Lock> {
    let f = OpenOptions::new()
        .read(true)
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o660)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open cache lock {}", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if f.metadata()?.uid() == unsafe { libc::geteuid() } {
        let _ = f.set_permissions(fs::Permissions::from_mode(if crate::unpack::group_zero() {
            0o660
        } else {
            0o600
        }));
    }
    Ok(Lock(f))
}

/// Takes `op` (shared or exclusive) on the lock, waiting at most `wait`.
async fn flock_wait(lock: &Lock, op: libc::c_int, wait: Duration, path: &Path) -> Result<()> {
    let started = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.0.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        if started.elapsed() >= wait {
            bail!(
                "{} has been locked for {}s (OCIMODEL_LOCK_TIMEOUT): another ocimodel on this node is downloading that blob",
                path.display(),
                wait.as_secs()
            );
        }
        if !said && op == libc::LOCK_EX {
            tracing::info!(lock = %path.display(), "another ocimodel on this node is downloading this blob; waiting for it");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Marks a blob as recently used (eviction goes by modification time).
fn touch(f: &File) {
    let _ = f.set_modified(SystemTime::now());
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o664)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    let _ = f.set_permissions(fs::Permissions::from_mode(shared_mode(0o644, false)));
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_downloaded_once_then_read_and_evicted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Some(10), Duration::from_secs(2)).unwrap();
        let a = Digest::sha256_of(b"aaaaaa");
        let Entry::Miss(mut ingest) = cache.begin(&a).await.unwrap() else {
            panic!("an empty cache has nothing")
        };
        assert_eq!(ingest.offset, 0);
        ingest.append(b"aaa").unwrap();
        drop(ingest); // killed mid-blob: the partial stays
        let Entry::Miss(mut ingest) = cache.begin(&a).await.unwrap() else {
            panic!("not committed yet")
        };
        assert_eq!(ingest.offset, 3, "resumes after the bytes it has");
        ingest.append(b"aaa").unwrap();
        ingest.commit().unwrap();
        assert!(matches!(cache.begin(&a).await.unwrap(), Entry::Hit { .. }));

        // Over the cap: the least recently used goes, unless it is held.
        let commit = |d: &Digest, bytes: &'static [u8]| {
            let cache = &cache;
            let d = d.clone();
            async move {
                let Entry::Miss(mut ingest) = cache.begin(&d).await.unwrap() else {
                    panic!("{d} is cached already")
                };
                ingest.append(bytes).unwrap();
                ingest.commit().unwrap();
            }
        };
        let age = |d: &Digest| {
            File::open(cache.path("blobs", d))
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
                .unwrap()
        };
        let b = Digest::sha256_of(b"bbbbbb");
        commit(&b, b"bbbbbb").await;
        let held = cache.begin(&a).await.unwrap();
        age(&a); // the oldest, but a running pull reads it
        cache.evict();
        assert!(cache.path("blobs", &a).exists(), "a held blob was evicted");
        assert!(!cache.path("blobs", &b).exists());
        drop(held);
        let c = Digest::sha256_of(b"cccccc");
        commit(&c, b"cccccc").await;
        age(&a);
        cache.evict();
        assert!(!cache.path("blobs", &a).exists());
        assert!(cache.path("blobs", &c).exists());
    }

    #[test]
    fn manifests_are_checked_on_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), None, Duration::from_secs(1)).unwrap();
        let d = Digest::sha256_of(b"{}");
        cache.put_manifest(&d, b"{}").unwrap();
        assert_eq!(cache.manifest(&d).unwrap(), b"{}");
        fs::write(cache.path("manifests", &d), b"{ }").unwrap();
        assert!(cache.manifest(&d).is_none());
        assert!(
            !cache.path("manifests", &d).exists(),
            "a bad entry is dropped"
        );
    }
}
