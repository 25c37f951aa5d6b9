//! Streaming a blob from a source into a consumer, verifying as it flows.
//!
//! The async side only moves bytes: it reads the stream, counts them (for
//! progress, resuming and the declared size) and hands chunks over a bounded
//! channel. The blob's own blocking thread hashes them (and appends new bytes
//! to the node cache) as it takes them, so N blobs fetched at once are hashed
//! on N threads, never all on the runtime thread that polls their streams.
//! A consumer sees end-of-file only once size and digest have been checked:
//! a bad blob makes the consumer fail, never succeed.
//!
//! A consumer that does much work per byte (a tar layer: decompression, tar
//! parsing, per-file hashing, writes) asks for [`Hashing::OwnThread`]: the
//! digest is computed on a thread of its own in front of it, so the layer
//! goes at the rate of the slower of the two, not of their sum.
//!
//! A whole-file layer the node cache holds is cloned into staging where the
//! filesystem shares extents ([`fetch_file`], `clone`), and the clone then
//! streamed through the same verification; elsewhere it is copied.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::cache::{Cache, Entry, Ingest, Lock, StaleEntry};
use crate::cpus::Slot;
use crate::digest::{Digest, Hasher};
use crate::error::IntegrityError;
use crate::manifest::Descriptor;
use crate::progress::Progress;
use crate::registry::ByteStream;
use crate::source::{file_stream, Source};
use crate::unpack::{
    join, prepare_parent, remove_existing, shared_mode, write_file, FileDigest, FileRecord, RelPath,
};

/// Chunks in flight between download and unpack, per blob...
const CHANNEL_DEPTH: usize = 256;
/// ...and bytes in flight across every blob of the process: downloaded, not
/// yet written. It bounds memory whatever the model size, the number of
/// blobs fetched at once or how long the disk stalls (writeback under
/// memory pressure can pause writers for a while); it is also how far
/// the download may run ahead of hashing and writing.
const IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;
const PERMIT_BYTES: usize = 4096;
const PERMITS: usize = IN_FLIGHT_BYTES / PERMIT_BYTES;

fn in_flight_budget() -> Arc<Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(Semaphore::new(PERMITS)))
        .clone()
}

/// A chunk and its share of the in-flight budget, returned when dropped.
type Chunk = (Bytes, OwnedSemaphorePermit);

/// Where a blob's digest is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashing {
    /// On the consumer's thread, as it takes each chunk: for consumers that
    /// mostly write (a whole-file layer, a small blob read into memory).
    SameThread,
    /// On a thread of its own, in front of the consumer: for consumers with
    /// work of their own per byte (tar layers).
    OwnThread,
}

/// Checks one blob's bytes as they pass: its digest and size, and with a
/// node cache, new bytes appended to the cache's partial download, which is
/// committed once the whole blob verified and discarded when it did not.
struct Verifier {
    digest: Digest,
    size: u64,
    hasher: Hasher,
    seen: u64,
    ingest: Option<Ingest>,
    /// Bytes below this came from the cache's partial download; the rest
    /// are new and go into it too.
    replayed: u64,
    cache: Option<Arc<Cache>>,
}

impl Verifier {
    fn new(desc: &Descriptor, ingest: Option<Ingest>, cache: Option<Arc<Cache>>) -> Verifier {
        Verifier {
            digest: desc.digest.clone(),
            size: desc.size,
            hasher: Hasher::new(desc.digest.algorithm()),
            seen: 0,
            replayed: ingest.as_ref().map_or(u64::MAX, |i| i.offset),
            ingest,
            cache,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        if self.seen >= self.replayed {
            if let Some(ingest) = &mut self.ingest {
                if let Err(e) = ingest.append(chunk) {
                    // The cache only saves work: the pull goes on without it.
                    tracing::warn!(blob = %self.digest, "cannot write to the node cache ({e}); this blob will not be cached");
                    self.ingest = None;
                }
            }
        }
        self.seen += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    /// At the end of the bytes: their size and digest against the
    /// descriptor's; settles the cache's copy either way.
    fn finish(&mut self) -> Result<(), IntegrityError> {
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm()));
        let ingest = self.ingest.take();
        let verdict = if self.seen != self.size {
            Err(IntegrityError(format!(
                "blob {}: size mismatch: the manifest declares {} bytes, the source sent {}",
                self.digest, self.size, self.seen
            )))
        } else {
            let actual = hasher.finish();
            if actual == self.digest {
                Ok(())
            } else {
                Err(IntegrityError(format!(
                    "blob {}: digest mismatch: expected {}, got {actual}; the content was corrupted or tampered with",
                    self.digest, self.digest
                )))
            }
        };
        if let Some(ingest) = ingest {
            match &verdict {
                Ok(()) => match ingest.commit() {
                    Ok(()) => {
                        if let Some(cache) = &self.cache {
                            cache.evict();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(blob = %self.digest, "cannot commit to the node cache: {e:#}")
                    }
                },
                Err(_) => ingest.discard(),
            }
        }
        verdict
    }
}

/// The blocking side's view of a blob: `Read`/`BufRead` over the verified
/// stream (`BufRead` lets writers take the chunks without another copy).
pub struct BlobReader {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    current: Bytes,
    /// The current chunk's budget; replacing it gives the last one back.
    permit: Option<OwnedSemaphorePermit>,
    /// Hashes what this reader hands on, unless a stage in front did.
    verifier: Option<Verifier>,
    /// The verifier's answer, once the bytes have ended.
    verdict: Option<Result<(), IntegrityError>>,
    /// A CPU, held while the current chunk is worked on (hashed, unpacked,
    /// written), never while waiting for the next.
    slot: Option<Slot>,
}

impl BlobReader {
    fn new(rx: mpsc::Receiver<io::Result<Chunk>>, verifier: Option<Verifier>) -> BlobReader {
        BlobReader {
            rx,
            current: Bytes::new(),
            permit: None,
            verifier,
            verdict: None,
            slot: None,
        }
    }

    /// The next chunk whole, with its budget (hashed first when this reader
    /// verifies); `None` at a verified end.
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        if !self.current.is_empty() {
            if let Some(permit) = self.permit.take() {
                return Ok(Some((std::mem::take(&mut self.current), permit)));
            }
        }
        self.current = Bytes::new();
        self.permit = None;
        self.slot = None;
        if let Some(verdict) = &self.verdict {
            return match verdict {
                Ok(()) => Ok(None),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.0.clone())),
            };
        }
        match self.rx.blocking_recv() {
            Some(Ok((chunk, permit))) => {
                self.slot = Some(Slot::take());
                if let Some(v) = &mut self.verifier {
                    v.update(&chunk);
                }
                Ok(Some((chunk, permit)))
            }
            Some(Err(e)) => Err(e),
            None => {
                let verdict = match &mut self.verifier {
                    Some(v) => v.finish(),
                    None => Ok(()),
                };
                self.verdict = Some(verdict);
                self.next_chunk()
            }
        }
    }

    /// What the verifier found, if this reader verified to the end.
    fn into_verdict(self) -> Option<Result<(), IntegrityError>> {
        self.verdict.filter(|_| self.verifier.is_some())
    }
}

impl BufRead for BlobReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.next_chunk()? {
                Some((chunk, permit)) => {
                    self.current = chunk;
                    self.permit = Some(permit);
                }
                None => return Ok(&[]),
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.fill_buf()?;
        let n = buf.len().min(chunk.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Fetches a small blob (a config) whole, refusing more than `cap` bytes,
/// verified like any other.
pub async fn fetch_small(source: &Source, desc: &Descriptor, cap: u64) -> Result<Bytes> {
    if desc.size > cap {
        bail!(
            "blob {} is {} bytes, over the {cap}-byte limit",
            desc.digest,
            desc.size
        );
    }
    let progress = Progress::new(desc.size);
    let bytes = fetch_blob(source, desc, &progress, Hashing::SameThread, |r| {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await?;
    Ok(Bytes::from(bytes))
}

/// What [`open_blob`] found for a blob.
enum Opened {
    /// A committed node-cache blob: opened through the cache's directory
    /// descriptors and checked to be a regular file, its shared lock held.
    /// It is read (or cloned) from this descriptor, never by its name again.
    Hit(File, Lock),
    /// Bytes to stream, and the cache ingest to append new ones to.
    Stream(ByteStream, Option<Ingest>),
}

/// Where a blob's bytes come from: the descriptor's embedded data, the
/// node cache (a committed blob, or a partial download replayed before the
/// rest is fetched with `Range`), or the source.
async fn open_blob(source: &Source, desc: &Descriptor) -> Result<Opened> {
    if let Some(data) = &desc.data {
        // Small blobs may be embedded in the descriptor itself.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| anyhow!("blob {}: the embedded data is not base64", desc.digest))?;
        let stream: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from(bytes))]));
        return Ok(Opened::Stream(stream, None));
    }
    let Some(cache) = source.cache().filter(|c| desc.size >= c.min_size) else {
        return Ok(Opened::Stream(source.blob(desc).await?, None));
    };
    // The cache only saves work: trouble with it (a co-tenant's plant, a
    // lock held without progress) costs this blob a download, not the pull.
    let entry = match cache.begin(&desc.digest).await {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(blob = %desc.digest, "node cache: {e:#}; downloading this blob without it");
            return Ok(Opened::Stream(source.blob(desc).await?, None));
        }
    };
    match entry {
        Entry::Hit { file, _lock } => {
            cache.record(true, desc.size);
            Ok(Opened::Hit(file, _lock))
        }
        Entry::Miss(ingest) if ingest.offset == 0 => {
            cache.record(false, desc.size);
            tracing::info!(blob = %desc.digest, size = desc.size, "from the network, into the node cache");
            Ok(Opened::Stream(source.blob(desc).await?, Some(ingest)))
        }
        Entry::Miss(ingest) => {
            cache.record(false, desc.size - ingest.offset.min(desc.size));
            tracing::info!(blob = %desc.digest, size = desc.size, resume_at = ingest.offset, "resuming a partial download from the node cache");
            // Exactly the bytes the partial file held when this began.
            let replay = file_stream(ingest.prefix()?, 0, Some(ingest.offset), ());
            let rest = match source.resume(desc, ingest.offset).await {
                Some(r) => r?,
                None => bail!("blob {}: its source cannot resume a download", desc.digest),
            };
            Ok(Opened::Stream(Box::pin(replay.chain(rest)), Some(ingest)))
        }
    }
}

/// Streams the blob into the channel, resuming a broken transfer from the
/// bytes already handed on, within the in-flight budget. It counts, and
/// refuses more bytes than the descriptor declares; the digest is checked
/// on the blocking side.
async fn pump(
    source: &Source,
    desc: &Descriptor,
    mut stream: ByteStream,
    tx: &mpsc::Sender<io::Result<Chunk>>,
    progress: &Arc<Progress>,
) -> Result<()> {
    let budget = in_flight_budget();
    let mut received: u64 = 0;
    let mut resumes = 0;
    loop {
        let chunk = match stream.next().await {
            None => break,
            Some(Ok(chunk)) => chunk,
            // A broken transfer resumes from the bytes already handed on;
            // the final digest covers exactly those.
            Some(Err(e)) if resumes < source.retries() && desc.data.is_none() => {
                resumes += 1;
                let wait = crate::registry::backoff(resumes);
                tracing::warn!(blob = %desc.digest, received, attempt = resumes, "{e}; resuming in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                match source.resume(desc, received).await {
                    Some(Ok(s)) => {
                        stream = s;
                        continue;
                    }
                    Some(Err(e2)) => bail!("blob {}: {e}; resuming failed: {e2:#}", desc.digest),
                    None => bail!("blob {}: {e}", desc.digest),
                }
            }
            Some(Err(e)) => bail!(
                "blob {}: {e} (after {resumes} resumed attempts)",
                desc.digest
            ),
        };
        received += chunk.len() as u64;
        if received > desc.size {
            return Err(IntegrityError(format!(
                "blob {}: the source sent more than the {} bytes the manifest declares",
                desc.digest, desc.size
            ))
            .into());
        }
        progress
            .fetched
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let permits = chunk.len().div_ceil(PERMIT_BYTES).clamp(1, PERMITS) as u32;
        let permit = budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| anyhow!("the in-flight budget was closed"))?;
        if tx.send(Ok((chunk, permit))).await.is_err() {
            // The consumer stopped early; its error explains why.
            return Ok(());
        }
    }
    Ok(())
}

/// Hands on what `reader` verifies, chunk by chunk, to the next stage; a
/// failure goes on too, so the next stage never sees a clean end of a bad
/// blob.
fn forward(mut reader: BlobReader, tx: mpsc::Sender<io::Result<Chunk>>) -> BlobReader {
    loop {
        let next = reader.next_chunk();
        // The next stage needs a CPU too; none is held while waiting for it.
        reader.slot = None;
        match next {
            Ok(Some(chunk)) => {
                if tx.blocking_send(Ok(chunk)).is_err() {
                    break; // the consumer stopped; its error explains why
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    }
    reader
}

/// Streams blob `desc` from `source` into `consume` on a blocking thread,
/// hashing it where `hashing` says. Whatever `consume` leaves unread is
/// drained, so the whole blob is always hashed. Fails if the size or digest
/// differ from `desc`, naming both.
pub async fn fetch_blob<T, F>(
    source: &Source,
    desc: &Descriptor,
    progress: &Arc<Progress>,
    hashing: Hashing,
    consume: F,
) -> Result<T>
where
    F: FnOnce(&mut BlobReader) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match open_blob(source, desc).await? {
        Opened::Hit(file, lock) => {
            tracing::info!(blob = %desc.digest, size = desc.size, way = "copied", "from the node cache, copied (only whole-file layers are cloned; a tar layer is unpacked)");
            let stream = file_stream(file, 0, None, lock);
            stream_blob(source, desc, progress, hashing, stream, None, true, consume).await
        }
        Opened::Stream(stream, ingest) => {
            stream_blob(
                source, desc, progress, hashing, stream, ingest, false, consume,
            )
            .await
        }
    }
}

/// A whole-file layer into `root/rel` (a staging tree), verified.
///
/// From a node-cache hit, where DEST's filesystem shares extents with the
/// cache's, the blob is cloned from the descriptor the cache opened and
/// checked (never its name again), and then the clone, the staged file
/// itself, is hashed: what is verified is what is installed, whatever a
/// co-tenant writes to the cache entry afterwards. A clone that fails its
/// digest drops the entry ([`StaleEntry`]: the blob is downloaded again).
/// Anywhere else (another filesystem, ext4, tmpfs, `OCIMODEL_CLONE=off`) the
/// blob is copied and verified as it is written, as any other blob.
pub async fn fetch_file(
    source: &Source,
    desc: Descriptor,
    progress: Arc<Progress>,
    root: Arc<PathBuf>,
    rel: RelPath,
) -> Result<FileRecord> {
    let digest = desc.digest.clone();
    let (root2, rel2) = (root.clone(), rel.clone());
    let write = move |r: &mut BlobReader| {
        write_file(&root2, &rel2, r, 0o644, None, FileDigest::Known(&digest))
    };
    let (file, lock) = match open_blob(source, &desc).await? {
        Opened::Stream(stream, ingest) => {
            return stream_blob(
                source,
                &desc,
                &progress,
                Hashing::SameThread,
                stream,
                ingest,
                false,
                write,
            )
            .await
        }
        Opened::Hit(file, lock) => (file, lock),
    };
    // Clone where the cache allows it; otherwise (or when the filesystem
    // cannot) the verified copy, with the reason in the log.
    let cloned = if source.cache().is_some_and(|c| c.clone_files) {
        let (at, staged) = (root.clone(), rel.clone());
        tokio::task::spawn_blocking(move || {
            let dst = create_staged(&at, &staged)?;
            anyhow::Ok(match crate::clone::clone_into(&file, &dst) {
                Ok(()) => Ok(dst),
                Err(e) => Err((file, crate::clone::why_not(&e))),
            })
        })
        .await
        .map_err(|e| anyhow!("clone thread failed: {e}"))??
    } else {
        Err((file, "cloning is off (OCIMODEL_CLONE=off)".to_string()))
    };
    let dst = match cloned {
        Ok(dst) => dst,
        Err((file, why)) => {
            tracing::info!(blob = %desc.digest, size = desc.size, way = "copied", "from the node cache, copied: {why}");
            let stream = file_stream(file, 0, None, lock);
            return stream_blob(
                source,
                &desc,
                &progress,
                Hashing::SameThread,
                stream,
                None,
                true,
                write,
            )
            .await;
        }
    };
    // The clone is verified by reading it back through the same pipeline
    // as any blob (hashed on this blob's own thread, a CPU slot per chunk),
    // so a cache whose entry was rewritten is caught here, from the clone.
    let stream = file_stream(dst.try_clone()?, 0, None, lock);
    let verified = stream_blob(
        source,
        &desc,
        &progress,
        Hashing::SameThread,
        stream,
        None,
        true,
        |_| Ok(()),
    )
    .await;
    let path = root.join(join(&rel));
    if let Err(e) = verified {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    dst.set_permissions(std::fs::Permissions::from_mode(shared_mode(0o644, false)))
        .with_context(|| format!("cannot set mode on {}", path.display()))?;
    progress.cloned.fetch_add(desc.size, Ordering::Relaxed);
    if let Some(cache) = source.cache() {
        cache.record_clone(desc.size);
    }
    tracing::info!(blob = %desc.digest, size = desc.size, way = "cloned", "from the node cache, cloned (it shares the cache's disk blocks) and the clone verified");
    Ok(FileRecord {
        path: join(&rel),
        size: desc.size,
        digest: desc.digest,
    })
}

/// Creates the empty staged file `rel` under `root` for a clone, with
/// [`write_file`]'s rules: a clean, unreserved name, real parent
/// directories, the old entry removed, created `O_EXCL | O_NOFOLLOW`,
/// private (0600) until verified.
fn create_staged(root: &Path, rel: &[String]) -> Result<File> {
    match rel.first() {
        None => bail!("refusing to write a file with an empty name"),
        Some(first) if crate::unpack::RESERVED_NAMES.contains(&first.as_str()) => bail!(
            "refusing to write '{}': the name is reserved for ocimodel's bookkeeping",
            join(rel)
        ),
        Some(_) => {}
    }
    let path = prepare_parent(root, rel)?;
    remove_existing(&path)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Streams `stream`, the bytes [`open_blob`] found, into `consume`: see
/// [`fetch_blob`]. `from_cache`: they are a committed node-cache blob's (or
/// its clone's), which is dropped if they fail.
#[allow(clippy::too_many_arguments)]
async fn stream_blob<T, F>(
    source: &Source,
    desc: &Descriptor,
    progress: &Arc<Progress>,
    hashing: Hashing,
    stream: ByteStream,
    ingest: Option<Ingest>,
    from_cache: bool,
    consume: F,
) -> Result<T>
where
    F: FnOnce(&mut BlobReader) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    // Bytes replayed from the cache count as the cache's, if they are bad.
    let replayed = ingest.as_ref().is_some_and(|i| i.offset > 0);
    let verifier = Verifier::new(desc, ingest, source.cache().cloned());
    let (tx, rx) = mpsc::channel::<io::Result<Chunk>>(CHANNEL_DEPTH);
    let (consumer_rx, stage) = match hashing {
        Hashing::SameThread => (BlobReader::new(rx, Some(verifier)), None),
        Hashing::OwnThread => {
            let (stage_tx, stage_rx) = mpsc::channel::<io::Result<Chunk>>(CHANNEL_DEPTH);
            let verifying = BlobReader::new(rx, Some(verifier));
            let stage = tokio::task::spawn_blocking(move || forward(verifying, stage_tx));
            (BlobReader::new(stage_rx, None), Some(stage))
        }
    };
    let consumer = tokio::task::spawn_blocking(move || {
        let mut reader = consumer_rx;
        let out = consume(&mut reader).and_then(|out| {
            io::copy(&mut reader, &mut io::sink())?;
            Ok(out)
        });
        (out, reader.into_verdict())
    });

    let pumped = pump(source, desc, stream, &tx, progress).await;
    if let Err(e) = &pumped {
        // Make sure the consumer fails rather than sees a clean end of file.
        let _ = tx
            .send(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                e.to_string(),
            )))
            .await;
    }
    drop(tx);
    let (consumed, mut verdict) = consumer
        .await
        .map_err(|e| anyhow!("unpack thread failed: {e}"))?;
    if let Some(stage) = stage {
        let reader = stage
            .await
            .map_err(|e| anyhow!("hashing thread failed: {e}"))?;
        verdict = reader.into_verdict();
    }
    // A verification failure is the root cause of anything the consumer saw.
    let failure = match (pumped, verdict) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(Err(bad))) => Some(anyhow::Error::from(bad)),
        (Ok(()), _) => None,
    };
    match failure {
        Some(e) if crate::error::is_verification_failure(&e) => {
            if from_cache {
                if let Some(cache) = source.cache() {
                    cache.drop_blob(&desc.digest);
                }
            }
            if from_cache || replayed {
                Err(e.context(StaleEntry(desc.digest.clone())))
            } else {
                match source.blame_mirror(&desc.digest) {
                    Some(bad) => Err(e.context(bad)),
                    None => Err(e),
                }
            }
        }
        Some(e) => Err(e),
        None => consumed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::reference::Target;

    /// A layout holding `bytes` as a blob, and a descriptor claiming
    /// `declared` (digest and size) for it.
    fn layout_with(bytes: &[u8], declared: &[u8]) -> (tempfile::TempDir, Source, Descriptor) {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(declared);
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        let target = Target::parse(&format!("oci-layout://{}", dir.path().display())).unwrap();
        let source = Source::new(&target, || unreachable!("no registry"), None).unwrap();
        let desc: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "application/octet-stream",
            "digest": digest.to_string(),
            "size": declared.len(),
        }))
        .unwrap();
        (dir, source, desc)
    }

    async fn fetch(source: &Source, desc: &Descriptor) -> Result<Vec<u8>> {
        fetch_blob(
            source,
            desc,
            &Progress::new(desc.size),
            Hashing::SameThread,
            |r| {
                let mut buf = Vec::new();
                r.read_to_end(&mut buf)?;
                Ok(buf)
            },
        )
        .await
    }

    #[tokio::test]
    async fn size_and_digest_failures_are_integrity_errors() {
        let (_d, source, desc) = layout_with(b"weights", b"weights");
        assert_eq!(fetch(&source, &desc).await.unwrap(), b"weights");

        for (served, why) in [
            (&b"weightz"[..], "digest mismatch"),
            (&b"weight"[..], "size mismatch"),
            (&b"weights!"[..], "more than the 7 bytes"),
        ] {
            let (_d, source, desc) = layout_with(served, b"weights");
            let e = fetch(&source, &desc).await.unwrap_err();
            assert!(format!("{e:#}").contains(why), "{why}: {e:#}");
            assert!(crate::error::is_verification_failure(&e), "{why}: {e:#}");
        }
    }
}
