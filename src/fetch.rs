//! Streaming a blob from a source into a consumer, verifying as it flows.
//!
//! The async side reads the stream, counts and hashes every byte, and hands
//! chunks over a bounded channel to a blocking thread that decompresses and
//! writes (tar and the decoders are synchronous). So hashing overlaps with
//! decompression and disk writes, memory stays bounded, and the consumer only
//! sees end-of-file once size and digest have been checked: a bad blob makes
//! the consumer fail, never succeed.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::cache::{Entry, Ingest, StaleEntry};
use crate::digest::Hasher;
use crate::error::IntegrityError;
use crate::manifest::Descriptor;
use crate::registry::ByteStream;
use crate::source::Source;

/// Chunks in flight between download and unpack, per blob...
const CHANNEL_DEPTH: usize = 256;
/// ...and bytes in flight across every blob of the process: downloaded, not
/// yet written. It bounds memory whatever the model size, the number of
/// blobs fetched at once or how long the disk stalls (writeback under
/// memory pressure can pause writers for a while); it is also how far
/// hashing may run ahead of writing.
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

/// Byte counters for progress lines and metrics.
#[derive(Debug)]
pub struct Progress {
    pub fetched: AtomicU64,
    pub total: u64,
    pub started: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Arc<Progress> {
        Arc::new(Progress {
            fetched: AtomicU64::new(0),
            total,
            started: Instant::now(),
        })
    }

    /// e.g. `12.0 MiB of 400.0 MiB (3%), 95.1 MiB/s, ETA 4s`
    pub fn line(&self) -> String {
        let done = self.fetched.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let eta = if rate > 0.0 && self.total > done {
            format!("{:.0}s", (self.total - done) as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "{} of {} ({pct}%), {}/s, ETA {eta}",
            mib(done),
            mib(self.total),
            mib(rate as u64)
        )
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The blocking side's view of a blob: `Read`/`BufRead` over the verified
/// stream (`BufRead` lets writers take the chunks without another copy).
pub struct BlobReader {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    current: Bytes,
    /// The current chunk's budget; replacing it gives the last one back.
    permit: Option<OwnedSemaphorePermit>,
}

impl BufRead for BlobReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            self.permit = None;
            match self.rx.blocking_recv() {
                Some(Ok((chunk, permit))) => {
                    self.current = chunk;
                    self.permit = Some(permit);
                }
                Some(Err(e)) => return Err(e),
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
    let bytes = fetch_blob(source, desc, &progress, |r| {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await?;
    Ok(Bytes::from(bytes))
}

/// Where a blob's bytes come from: the descriptor's embedded data, the
/// node cache (a committed blob, or a partial download replayed before the
/// rest is fetched with `Range`), or the source. Returns the stream, the
/// cache ingest to append new bytes to, and whether it is a cache hit.
async fn open_blob(
    source: &Source,
    desc: &Descriptor,
) -> Result<(ByteStream, Option<Ingest>, bool)> {
    if let Some(data) = &desc.data {
        // Small blobs may be embedded in the descriptor itself.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| anyhow!("blob {}: the embedded data is not base64", desc.digest))?;
        let stream: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from(bytes))]));
        return Ok((stream, None, false));
    }
    let Some(cache) = source.cache().filter(|c| desc.size >= c.min_size) else {
        return Ok((source.blob(desc).await?, None, false));
    };
    match cache.begin(&desc.digest).await? {
        Entry::Hit { file, _lock } => {
            cache.record(true, desc.size);
            tracing::info!(blob = %desc.digest, size = desc.size, "from the node cache");
            Ok((file_stream(file, _lock), None, true))
        }
        Entry::Miss(ingest) if ingest.offset == 0 => {
            cache.record(false, desc.size);
            tracing::info!(blob = %desc.digest, size = desc.size, "from the network, into the node cache");
            Ok((source.blob(desc).await?, Some(ingest), false))
        }
        Entry::Miss(ingest) => {
            cache.record(false, desc.size - ingest.offset.min(desc.size));
            tracing::info!(blob = %desc.digest, size = desc.size, resume_at = ingest.offset, "resuming a partial download from the node cache");
            let replay = file_stream(ingest.prefix()?, ());
            let rest = match source.resume(desc, ingest.offset).await {
                Some(r) => r?,
                None => bail!("blob {}: its source cannot resume a download", desc.digest),
            };
            let prefix_len = ingest.offset;
            let replay = replay.scan(0u64, move |seen, chunk| {
                // Exactly the bytes the partial file held when this began.
                let out = chunk.map(|mut b| {
                    let left = prefix_len.saturating_sub(*seen) as usize;
                    b.truncate(left.min(b.len()));
                    *seen += b.len() as u64;
                    b
                });
                futures_util::future::ready(Some(out))
            });
            let replay =
                replay.filter(|c| futures_util::future::ready(!matches!(c, Ok(b) if b.is_empty())));
            Ok((Box::pin(replay.chain(rest)), Some(ingest), false))
        }
    }
}

/// A local file as a byte stream, keeping `guard` (a cache lock) alive
/// until the stream is dropped.
fn file_stream<G: Send + 'static>(file: std::fs::File, guard: G) -> ByteStream {
    let reader =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
    crate::registry::holding(Box::pin(reader), guard)
}

/// After a download: commit a verified blob to the node cache; drop a
/// partial or cached copy whose bytes did not verify; keep a partial that
/// was only cut off, for the next run to resume.
fn settle_cache(
    source: &Source,
    desc: &Descriptor,
    failure: Option<&anyhow::Error>,
    ingest: Option<Ingest>,
    from_cache: bool,
) {
    let Some(cache) = source.cache() else { return };
    let bad = failure.is_some_and(crate::error::is_verification_failure);
    if from_cache && bad {
        cache.drop_blob(&desc.digest);
    }
    let Some(ingest) = ingest else { return };
    match failure {
        None => match ingest.commit() {
            Ok(()) => cache.evict(),
            Err(e) => tracing::warn!(blob = %desc.digest, "cannot commit to the node cache: {e:#}"),
        },
        Some(_) if bad => ingest.discard(),
        Some(_) => {}
    }
}

/// Streams the blob into the channel, resuming a broken transfer from the
/// bytes already hashed, within the in-flight budget; then checks the size
/// and digest of exactly what was handed on.
async fn pump(
    source: &Source,
    desc: &Descriptor,
    mut stream: ByteStream,
    tx: &mpsc::Sender<io::Result<Chunk>>,
    progress: &Arc<Progress>,
    mut ingest: Option<&mut Ingest>,
) -> Result<()> {
    // Bytes below this came from the cache's partial download; the rest
    // are new and go into it too.
    let replayed = ingest.as_ref().map_or(u64::MAX, |i| i.offset);
    let budget = in_flight_budget();
    let mut hasher = Hasher::new(desc.digest.algorithm());
    let mut received: u64 = 0;
    let mut resumes = 0;
    loop {
        let chunk = match stream.next().await {
            None => break,
            Some(Ok(chunk)) => chunk,
            // A broken transfer resumes from the bytes already hashed
            // and handed on; the final digest covers exactly those.
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
        if let Some(ingest) = ingest.as_deref_mut() {
            if received >= replayed {
                ingest
                    .append(&chunk)
                    .with_context(|| format!("cannot write {} to the node cache", desc.digest))?;
            }
        }
        received += chunk.len() as u64;
        if received > desc.size {
            return Err(IntegrityError(format!(
                "blob {}: the source sent more than the {} bytes the manifest declares",
                desc.digest, desc.size
            ))
            .into());
        }
        hasher.update(&chunk);
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
    if received != desc.size {
        return Err(IntegrityError(format!(
            "blob {}: size mismatch: the manifest declares {} bytes, the source sent {received}",
            desc.digest, desc.size
        ))
        .into());
    }
    let actual = hasher.clone().finish();
    if actual != desc.digest {
        return Err(IntegrityError(format!(
            "blob {}: digest mismatch: expected {}, got {actual}; the content was corrupted or tampered with",
            desc.digest, desc.digest
        ))
        .into());
    }
    Ok(())
}

/// Streams blob `desc` from `source` into `consume` on a blocking thread.
/// Whatever `consume` leaves unread is drained, so the whole blob is always
/// hashed. Fails if the size or digest differ from `desc`, naming both.
pub async fn fetch_blob<T, F>(
    source: &Source,
    desc: &Descriptor,
    progress: &Arc<Progress>,
    consume: F,
) -> Result<T>
where
    F: FnOnce(&mut BlobReader) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (stream, mut ingest, from_cache) = open_blob(source, desc).await?;
    // Bytes replayed from the cache count as the cache's, if they are bad.
    let replayed = ingest.as_ref().is_some_and(|i| i.offset > 0);
    let (tx, rx) = mpsc::channel::<io::Result<Chunk>>(CHANNEL_DEPTH);
    let consumer = tokio::task::spawn_blocking(move || {
        let mut reader = BlobReader {
            rx,
            current: Bytes::new(),
            permit: None,
        };
        let out = consume(&mut reader)?;
        io::copy(&mut reader, &mut io::sink())?;
        Ok::<T, anyhow::Error>(out)
    });

    let verdict = pump(source, desc, stream, &tx, progress, ingest.as_mut()).await;
    settle_cache(source, desc, verdict.as_ref().err(), ingest, from_cache);
    if let Err(e) = &verdict {
        // Make sure the consumer fails rather than sees a clean end of file.
        let _ = tx
            .send(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                e.to_string(),
            )))
            .await;
    }
    drop(tx);
    let consumed = consumer
        .await
        .map_err(|e| anyhow!("unpack thread failed: {e}"))?;
    // A verification failure is the root cause of anything the consumer saw.
    match verdict {
        Err(e) if (from_cache || replayed) && crate::error::is_verification_failure(&e) => {
            Err(e.context(StaleEntry(desc.digest.clone())))
        }
        Err(e) if crate::error::is_verification_failure(&e) => {
            match source.blame_mirror(&desc.digest) {
                Some(bad) => Err(e.context(bad)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
        Ok(()) => consumed,
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
        fetch_blob(source, desc, &Progress::new(desc.size), |r| {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)?;
            Ok(buf)
        })
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
