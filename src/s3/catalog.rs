//! The verified-file registry behind the S3 endpoint: bucket → key → state
//! (pending, verified, failed).
//!
//! It has one owner: a thread that applies the [`Event`]s pulls send
//! through their [`Publisher`] and publishes every new state on a `watch`
//! channel. The server only reads snapshots and waits for the next one, so
//! no state is shared mutably. A key's bytes can only be served once the
//! pull said they verified, and then through the file descriptor the pull
//! opened at that moment: it survives the rename from staging into DEST,
//! and a later swap of DEST cannot put other bytes behind it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use tokio::sync::{mpsc, watch};

use crate::digest::Digest;
use crate::unpack::FileRecord;

/// A file whose bytes verified, open for reading.
#[derive(Debug)]
pub struct VerifiedFile {
    pub file: File,
    pub size: u64,
    pub etag: String,
}

impl VerifiedFile {
    /// `root/record.path`, opened now (before anything can rename or swap
    /// it); `None`, logged, when it cannot be: then it is served once
    /// installed (from DEST, by [`Publisher::installed`]).
    pub fn open(root: &Path, record: &FileRecord) -> Option<VerifiedFile> {
        match open_regular(&root.join(&record.path)) {
            Ok(file) => Some(VerifiedFile {
                file,
                size: record.size,
                etag: etag(&record.digest),
            }),
            Err(e) => {
                tracing::warn!(key = %record.path, "S3 endpoint: cannot open a verified file: {e}");
                None
            }
        }
    }
}

/// Where one key stands.
#[derive(Clone, Debug)]
pub enum FileState {
    /// Known from the plan; its bytes have not verified yet.
    Pending {
        size: u64,
        etag: String,
    },
    Verified(Arc<VerifiedFile>),
    /// Its bytes did not match their digest: never served.
    Failed(String),
}

impl FileState {
    pub fn size(&self) -> u64 {
        match self {
            FileState::Pending { size, .. } => *size,
            FileState::Verified(v) => v.size,
            FileState::Failed(_) => 0,
        }
    }

    pub fn etag(&self) -> &str {
        match self {
            FileState::Pending { etag, .. } => etag,
            FileState::Verified(v) => &v.etag,
            FileState::Failed(_) => "",
        }
    }
}

/// One model's files.
#[derive(Clone, Debug, Default)]
pub struct Bucket {
    pub keys: BTreeMap<String, FileState>,
    /// Every key of the model is known (the plan had only whole files, or
    /// every layer is unpacked): a key that is not here never will be.
    pub complete: bool,
    /// Every key is named, some only by tar headers read ahead (unverified):
    /// enough to list, not to answer that a key does not exist.
    pub listed: bool,
    /// The model is installed: what the pull names from now on is stale.
    pub installed: bool,
}

/// Every bucket, as of one event.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub buckets: BTreeMap<String, Bucket>,
    /// When the catalog started: every object's `Last-Modified`.
    pub started: Option<SystemTime>,
}

/// What a pull reports about its files.
#[derive(Debug)]
pub enum Event {
    /// Keys the plan names before any download (whole-file layers), with
    /// their sizes and ETags.
    Planned(Vec<(String, u64, String)>),
    /// A file's bytes verified; the descriptor was opened then.
    Verified(String, VerifiedFile),
    Failed(String, String),
    /// Every key is known now.
    Complete,
    /// Every key is named, by tar headers read ahead.
    Listed,
    /// The model is installed in `dest` with these files: any not yet
    /// verified in this process (an install found up to date) is opened there.
    Installed(PathBuf, Vec<FileRecord>),
}

/// The S3 ETag of a file with this digest (S3 clients only compare them).
pub fn etag(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("\"{}\"", &hex[..hex.len().min(32)])
}

/// A pull's handle for reporting into its bucket.
#[derive(Clone)]
pub struct Publisher {
    bucket: String,
    tx: mpsc::UnboundedSender<(String, Event)>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({})", self.bucket)
    }
}

impl Publisher {
    fn send(&self, event: Event) {
        // The owner lives as long as the process; a send cannot fail before.
        let _ = self.tx.send((self.bucket.clone(), event));
    }

    pub fn planned(&self, files: Vec<(String, u64, String)>) {
        self.send(Event::Planned(files));
    }

    /// `root/key` verified: opens it now, before anything can rename it.
    pub fn verified(&self, root: &Path, record: &FileRecord) {
        if let Some(file) = VerifiedFile::open(root, record) {
            self.serve(record.path.clone(), file);
        }
    }

    /// Serves `key` from a file opened when its bytes verified.
    pub fn serve(&self, key: String, file: VerifiedFile) {
        self.send(Event::Verified(key, file));
    }

    pub fn failed(&self, key: &str, reason: &str) {
        self.send(Event::Failed(key.to_string(), reason.to_string()));
    }

    pub fn complete(&self) {
        self.send(Event::Complete);
    }

    pub fn listed(&self) {
        self.send(Event::Listed);
    }

    pub fn installed(&self, dest: &Path, files: Vec<FileRecord>) {
        self.send(Event::Installed(dest.to_path_buf(), files));
    }
}

/// Opens a regular file for reading, never through a symlink.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The readers' side: snapshots, and waiting for the next one.
#[derive(Clone)]
pub struct Catalog {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Catalog {
    /// Starts the owner for these buckets (name → DEST); one publisher per
    /// bucket, in the same order.
    pub fn start(buckets: &[(String, PathBuf)]) -> (Catalog, Vec<Publisher>) {
        let snapshot = Snapshot {
            buckets: buckets
                .iter()
                .map(|(name, _)| (name.clone(), Bucket::default()))
                .collect(),
            started: Some(SystemTime::now()),
        };
        let (state_tx, rx) = watch::channel(Arc::new(snapshot));
        let (tx, mut events) = mpsc::unbounded_channel::<(String, Event)>();
        std::thread::Builder::new()
            .name("s3-catalog".into())
            .spawn(move || {
                while let Some((bucket, event)) = events.blocking_recv() {
                    state_tx.send_modify(|s| {
                        if let Some(b) = Arc::make_mut(s).buckets.get_mut(&bucket) {
                            apply(b, event);
                        }
                    });
                }
            })
            .expect("a thread can be spawned");
        let publishers = buckets
            .iter()
            .map(|(name, _)| Publisher {
                bucket: name.clone(),
                tx: tx.clone(),
            })
            .collect();
        (Catalog { rx }, publishers)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits until `decide` answers for a snapshot, for at most `limit`;
    /// `None` when it did not in time.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        mut decide: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut rx = self.rx.clone();
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if let Some(t) = decide(&snapshot) {
                return Some(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the owner is gone (nothing will change).
                _ => return None,
            }
        }
    }
}

/// One event into one bucket.
fn apply(b: &mut Bucket, event: Event) {
    match event {
        // (A read-ahead that answers after the install knows no better.)
        Event::Planned(_) if b.installed => {}
        Event::Planned(files) => {
            for (key, size, etag) in files {
                // A retried pull plans again: verified keys stay served.
                b.keys
                    .entry(key)
                    .or_insert(FileState::Pending { size, etag });
            }
        }
        // A retry's copy replaces the last one (same bytes; the older
        // inode, unlinked with its staging, is released).
        Event::Verified(key, file) => {
            if let Some(FileState::Pending { size, .. }) = b.keys.get(&key) {
                if *size != file.size {
                    // Only a tar header read ahead can name another size:
                    // the registry answered that range with other bytes.
                    tracing::warn!(key = %crate::text::escape_controls(&key), "S3 endpoint: listed with {size} bytes ahead of its layer, which holds {}; the registry's ranges disagree with its blob", file.size);
                }
            }
            b.keys.insert(key, FileState::Verified(Arc::new(file)));
        }
        // The first reason stays: it is the most specific (a file refused
        // alone, then with its whole tree).
        Event::Failed(key, reason) => {
            if matches!(b.keys.get(&key), None | Some(FileState::Pending { .. })) {
                b.keys.insert(key, FileState::Failed(reason));
            }
        }
        Event::Complete => b.complete = true,
        Event::Listed => b.listed = true,
        Event::Installed(dest, files) => {
            for f in files {
                if matches!(b.keys.get(&f.path), Some(FileState::Verified(_))) {
                    continue;
                }
                match open_regular(&dest.join(&f.path)) {
                    Ok(file) => {
                        let v = VerifiedFile {
                            file,
                            size: f.size,
                            etag: etag(&f.digest),
                        };
                        b.keys.insert(f.path, FileState::Verified(Arc::new(v)));
                    }
                    Err(e) => {
                        tracing::warn!(key = %f.path, dest = %dest.display(), "S3 endpoint: cannot open an installed file: {e}")
                    }
                }
            }
            // A key named ahead (a tar layer's first header) that the
            // installed model lacks: never there, so not waited for.
            b.keys
                .retain(|_, state| !matches!(state, FileState::Pending { .. }));
            b.complete = true;
            b.installed = true;
        }
    }
}

/// The bucket for one DEST: its last path component made an S3 bucket name
/// (lowercase letters, digits, `-` and `.`; anything else becomes `-`;
/// 3 to 63 characters, starting and ending with a letter or digit).
pub fn bucket_name(dest: &Path) -> Result<String> {
    let last = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = last
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", ".");
    }
    let name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.len() < 3 {
        bail!(
            "cannot name an S3 bucket after DEST {}: its last path component '{last}' gives '{name}', and bucket names need 3 to 63 letters, digits, '-' or '.'; rename DEST's last directory",
            dest.display()
        );
    }
    Ok(name)
}

/// Buckets for every DEST, refusing two that come out the same.
pub fn bucket_names(dests: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for dest in dests {
        let name = bucket_name(dest)?;
        if let Some((_, other)) = out.iter().find(|(n, _)| *n == name) {
            bail!(
                "DESTs {} and {} would both be S3 bucket '{name}' (a bucket is DEST's last path component); give them different last directories",
                other.display(),
                dest.display()
            );
        }
        out.push((name, dest.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_s3_rules_and_collisions_are_refused() {
        let name = |p: &str| bucket_name(Path::new(p));
        assert_eq!(name("/mnt/models").unwrap(), "models");
        assert_eq!(name("/data/Llama_3.1-8B").unwrap(), "llama-3.1-8b");
        assert_eq!(name("/x/..weird..name--").unwrap(), "weird.name");
        assert_eq!(name(&format!("/x/{}", "a".repeat(80))).unwrap().len(), 63);
        let e = name("/x/m").unwrap_err().to_string();
        assert!(e.contains("3 to 63"), "{e}");
        let e = bucket_names(&["/a/models".into(), "/b/Models".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("both be S3 bucket 'models'"), "{e}");
    }

    /// Bucket `models` over a directory holding `a.bin` ("abc").
    fn one_file_bucket() -> (tempfile::TempDir, Catalog, Vec<Publisher>, FileRecord) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        let (catalog, publishers) = Catalog::start(&[("models".into(), dir.path().into())]);
        let record = FileRecord {
            path: "a.bin".into(),
            size: 3,
            digest: Digest::sha256_of(b"abc"),
        };
        (dir, catalog, publishers, record)
    }

    #[tokio::test]
    async fn keys_wait_until_verified_and_failures_stick() {
        let (dir, catalog, publishers, record) = one_file_bucket();
        let p = &publishers[0];
        p.planned(vec![("a.bin".into(), 3, etag(&record.digest))]);
        let state = |c: &Catalog| {
            let c = c.clone();
            async move {
                c.wait_for(Duration::from_millis(200), |s| {
                    match s.buckets["models"].keys.get("a.bin") {
                        Some(FileState::Pending { .. }) | None => None,
                        Some(other) => Some(other.clone()),
                    }
                })
                .await
            }
        };
        assert!(state(&catalog).await.is_none(), "pending until verified");
        p.verified(dir.path(), &record);
        assert!(matches!(
            state(&catalog).await,
            Some(FileState::Verified(_))
        ));
        // A failure after a verified copy does not take it back...
        p.failed("a.bin", "digest mismatch");
        p.failed("b.bin", "digest mismatch");
        let failed = catalog
            .wait_for(Duration::from_secs(2), |s| {
                s.buckets["models"].keys.get("b.bin").cloned()
            })
            .await;
        assert!(matches!(failed, Some(FileState::Failed(_))));
        assert!(matches!(
            state(&catalog).await,
            Some(FileState::Verified(_))
        ));
    }

    #[tokio::test]
    async fn keys_named_ahead_that_the_install_lacks_are_dropped() {
        let (dir, catalog, publishers, record) = one_file_bucket();
        let p = &publishers[0];
        // Read ahead from tar headers: one key the layers turn out to lack.
        p.planned(vec![
            ("a.bin".into(), 3, etag(&record.digest)),
            ("ghost.bin".into(), 9, etag(&record.digest)),
        ]);
        p.listed();
        // Listed, but unverified names cannot say a key is missing.
        let listed = catalog
            .wait_for(Duration::from_secs(2), |s| {
                let b = &s.buckets["models"];
                b.listed.then_some(b.complete)
            })
            .await;
        assert_eq!(listed, Some(false));
        p.installed(dir.path(), vec![record.clone()]);
        // A read-ahead answering late names nothing any more.
        p.planned(vec![("late.bin".into(), 1, etag(&record.digest))]);
        let keys = catalog
            .wait_for(Duration::from_secs(2), |s| {
                let b = &s.buckets["models"];
                (b.installed && !b.keys.contains_key("ghost.bin"))
                    .then(|| b.keys.keys().cloned().collect::<Vec<_>>())
            })
            .await;
        // (Events apply in order: `late.bin` would be there by now.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(keys.as_deref(), Some(&["a.bin".to_string()][..]));
        let now = catalog
            .wait_for(Duration::from_millis(10), |s| {
                Some(s.buckets["models"].keys.keys().cloned().collect::<Vec<_>>())
            })
            .await;
        assert_eq!(now, keys);
    }
}
