//! One blob over several connections: parallel ranged GETs, reassembled in
//! order.
//!
//! Far registries hand each TCP connection a limited share of the link
//! (object stores and CDNs behind ECR, GAR, ACR, quay, GHCR, Docker Hub), and
//! a modelcar is usually one huge layer, so fetching blobs side by side does
//! not help it. A big blob is cut into ranges of `range_size`; up to
//! `connections` of them download at once, each whole into memory, and are
//! handed on strictly in order, so the caller's single streaming hash and
//! unpack see exactly the bytes one stream would have given. (Whether a
//! blob is split at all is the caller's choice, from its first range's
//! speed: see `RegistryClient::blob_at`.)
//!
//! Memory: a range holds its share of a process-wide window ([`WINDOW`])
//! from before its request until the last of its bytes has been written by
//! the consumer, so ranged bytes in memory never exceed the window, whatever
//! the blob size, the number of blobs or the connection settings. A blob's
//! ranges take window shares in order, so its first unfinished range always
//! holds one: no blob can wait on another's. Buffers are pooled.
//!
//! Connections: every blob request also holds a per-host permit
//! ([`Limits::per_host`], from the client's [`HostPermits`]), so a 30-shard
//! model does not open 240. A range
//! takes its window share before its permit, always, so a request holding
//! a connection never waits for memory.
//!
//! Faults: a range cut mid-way asks again for the rest of that range only
//! (the opener decides where: a cached redirect, or the registry again); a
//! range that still fails fails the stream, and the caller resumes the blob
//! from the bytes it has verified.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::ByteStream;

/// Bytes all ranges of the process may hold ahead of their consumers.
pub const WINDOW: u64 = 32 << 20;
/// Window shares are counted in these units (permits are `u32`).
const UNIT: u64 = 64 << 10;
/// A finished range is handed on in pieces of this size.
const HANDOFF: usize = 256 << 10;

/// How blobs are cut and how many connections they may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Ranges of one blob downloading at once; 1 turns ranges off.
    pub connections: usize,
    /// Bytes per range (at most [`WINDOW`]).
    pub range_size: u64,
    /// Blob requests open at once to one host, across all blobs.
    pub per_host: usize,
    /// A blob is split only when its first range came slower than this
    /// (bytes per second on one connection): faster, one stream keeps up
    /// with hashing and writing, and ranges would only cost the registry a
    /// request each.
    pub split_below: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: crate::config::DEFAULT_RANGE_CONNECTIONS,
            range_size: crate::config::DEFAULT_RANGE_SIZE,
            per_host: crate::config::DEFAULT_HOST_CONNECTIONS,
            split_below: crate::config::DEFAULT_SPLIT_BELOW,
        }
    }
}

impl Limits {
    pub fn range_size(&self) -> u64 {
        self.range_size.clamp(UNIT, WINDOW)
    }

    /// Whether `len` bytes may be worth splitting: at least two ranges.
    pub fn splits(&self, len: u64) -> bool {
        self.connections > 1 && len >= 2 * self.range_size()
    }

    /// The first range of `offset..size`.
    pub fn first(&self, offset: u64, size: u64) -> (u64, u64) {
        (offset, (offset + self.range_size()).min(size))
    }
}

/// Opens bytes `start..end` of the blob; the stream must yield exactly them.
pub type OpenRange = Arc<dyn Fn(u64, u64) -> BoxFuture<'static, Result<ByteStream>> + Send + Sync>;

/// The memory window is the one process-wide limit: memory is the
/// process's, however many clients (or in-process tests) share it.
/// Connection permits are per client ([`HostPermits`]), so each client's
/// `per_host` is the one that holds for it.
fn window() -> Arc<Semaphore> {
    static W: OnceLock<Arc<Semaphore>> = OnceLock::new();
    W.get_or_init(|| Arc::new(Semaphore::new((WINDOW / UNIT) as usize)))
        .clone()
}

/// One client's connection permits per host, `per_host` each, and the
/// hosts whose first range came slowly (see [`HostPermits::slow`]).
pub struct HostPermits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    slow: Mutex<std::collections::HashSet<String>>,
}

impl HostPermits {
    pub fn new(per_host: usize) -> HostPermits {
        HostPermits {
            per_host: per_host.max(1),
            hosts: Mutex::default(),
            slow: Mutex::default(),
        }
    }

    /// Whether a blob from `host` was split before: its next blobs split
    /// from their first request, without first timing one range alone
    /// (which leaves the other connections idle for that range's time,
    /// once per blob; a model of 8 shards paid it 8 times).
    pub fn slow(&self, host: &str) -> bool {
        self.slow.lock().unwrap().contains(host)
    }

    /// Records that a blob from `host` came slower than one connection
    /// should bring it (or, `false`, that one connection kept up).
    pub fn set_slow(&self, host: &str, slow: bool) {
        let mut hosts = self.slow.lock().unwrap();
        match slow {
            true => hosts.insert(host.to_string()),
            false => hosts.remove(host),
        };
    }

    /// The connection permits of `host`.
    pub fn of(&self, host: &str) -> Arc<Semaphore> {
        self.hosts
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
    }
}

/// A window share for a range of `len` bytes. Acquired before the range's
/// connection permit, always: every range takes them in that order, so a
/// range holding a connection never waits for memory held by ranges waiting
/// for connections.
pub async fn window_share(len: u64) -> Result<OwnedSemaphorePermit> {
    window()
        .acquire_many_owned(len.div_ceil(UNIT).max(1) as u32)
        .await
        .map_err(|_| anyhow!("the range window was closed"))
}

/// One of `host`'s connection permits (see [`HostPermits`]).
pub async fn connection(host: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit> {
    host.clone()
        .acquire_owned()
        .await
        .map_err(|_| anyhow!("the connection permits were closed"))
}

/// `stream`, keeping `guard` (a permit, a lock) until it is dropped.
pub fn holding<G: Send + 'static>(stream: ByteStream, guard: G) -> ByteStream {
    Box::pin(stream.map(move |chunk| {
        let _ = &guard;
        chunk
    }))
}

/// A blob's first range (`limits.first`): downloaded already (it measured
/// the link), or downloading (the host's link was measured before).
pub type First = BoxFuture<'static, Result<Done>>;

/// A blob's bytes `offset..size` as one ordered stream, fetched in ranges.
pub fn parallel(
    first: First,
    offset: u64,
    size: u64,
    limits: Limits,
    host: Arc<Semaphore>,
    open: OpenRange,
    retries: u32,
) -> ByteStream {
    let step = limits.range_size();
    let ranges: Vec<(u64, u64)> = (offset..size)
        .step_by(step as usize)
        .map(|s| (s, (s + step).min(size)))
        .skip(1)
        .collect();
    // Every piece holds its range's window share, so the window bounds the
    // memory behind this channel, not its length: it is long enough that
    // a consumer that falls behind never keeps the driver from launching.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>((WINDOW as usize / HANDOFF).max(8));
    let driver = Task(tokio::spawn(drive(
        ranges, first, limits, host, open, retries, tx,
    )));
    Box::pin(Ordered {
        rx,
        _driver: driver,
    })
}

/// A finished range as the pieces the consumer reads; its window share and
/// buffer are given back when the last piece has been dropped (written).
pub fn hand_off((buf, share): Done) -> impl Iterator<Item = Bytes> {
    let len = buf.len();
    let filled = Arc::new(Filled { buf, _share: share });
    (0..len).step_by(HANDOFF).map(move |at| {
        let at = at..(at + HANDOFF).min(len);
        Bytes::from_owner(Slice {
            filled: filled.clone(),
            at,
        })
    })
}

/// The reassembled stream; dropping it stops the driver and its ranges.
struct Ordered {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    _driver: Task<()>,
}

impl futures_util::Stream for Ordered {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A spawned task, aborted when dropped (a range nobody will read).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A finished range: its buffer and the window share it counts against.
/// The buffer goes back to the pool when the last slice of it is dropped.
struct Filled {
    buf: Vec<u8>,
    _share: OwnedSemaphorePermit,
}

impl Drop for Filled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// A slice of a finished range, as the consumer sees it.
struct Slice {
    filled: Arc<Filled>,
    at: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.filled.buf[self.at.clone()]
    }
}

/// Range buffers not in use. Buffers are made only when this is empty and
/// every one in use holds a window share, so together they never exceed
/// the window; reusing them spares the allocator (freed on other threads,
/// fresh buffers would grow several heaps) and the page faults.
fn pool() -> &'static Mutex<Vec<Vec<u8>>> {
    static POOL: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

fn take_buffer(capacity: usize) -> Vec<u8> {
    let mut pool = pool().lock().unwrap();
    match pool.iter().position(|b| b.capacity() >= capacity) {
        Some(i) => pool.swap_remove(i),
        None => {
            // A buffer of another size (the settings changed) is dropped.
            pool.pop();
            Vec::with_capacity(capacity)
        }
    }
}

fn give_back(mut buf: Vec<u8>) {
    buf.clear();
    pool().lock().unwrap().push(buf);
}

/// One range's bytes, whole, with the window share they hold.
pub type Done = (Vec<u8>, OwnedSemaphorePermit);

/// Starts the ranges in order as window shares allow, at most
/// `limits.connections` at once (counting the finished `first`), and
/// forwards each finished head range.
async fn drive(
    ranges: Vec<(u64, u64)>,
    first: First,
    limits: Limits,
    host: Arc<Semaphore>,
    open: OpenRange,
    retries: u32,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut running: FuturesOrdered<BoxFuture<'static, Result<Done>>> = FuturesOrdered::new();
    running.push_back(spawned(first));
    // Connections of this blob downloading now: a range that finished
    // ahead of a slower one before it waits in `running` for its turn, but
    // no longer counts, so one slow range does not idle the others'
    // connections (the window still bounds the bytes waiting).
    let downloading = Arc::new(Semaphore::new(limits.connections.max(1)));
    let mut next = 0;
    loop {
        let launch = next < ranges.len();
        let (start, end) = ranges.get(next).copied().unwrap_or_default();
        let slot = async {
            let slot = downloading
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| anyhow!("closed"))?;
            Ok::<_, anyhow::Error>((slot, window_share(end - start).await?))
        };
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                let done = match done {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("{e:#}")))).await;
                        return;
                    }
                };
                for piece in hand_off(done) {
                    if tx.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
            slot = slot, if launch => {
                let Ok((slot, share)) = slot else { return };
                let fetch = fetch_range(start..end, limits.range_size(), None, host.clone(), open.clone(), retries, share);
                running.push_back(spawned(Box::pin(async move {
                    let done = fetch.await;
                    drop(slot);
                    done
                })));
                next += 1;
            }
            else => return,
        }
    }
}

/// A range download on a task of its own (ranges download side by side
/// while the driver hands them on in order), aborted if dropped.
fn spawned(range: First) -> BoxFuture<'static, Result<Done>> {
    let task = Task(tokio::spawn(range));
    Box::pin(async move {
        task.await
            .map_err(|e| anyhow!("a range download failed: {e}"))?
    })
}

/// Downloads `range` whole into a pooled buffer of `capacity` bytes under a
/// host permit (`conn` when the caller holds one already, else one of
/// `host`'s), reading `opened` first when the request was already sent, and
/// asking again for the rest when the transfer is cut, up to `retries` times.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_range(
    range: std::ops::Range<u64>,
    capacity: u64,
    opened: Option<(ByteStream, OwnedSemaphorePermit)>,
    host: Arc<Semaphore>,
    open: OpenRange,
    retries: u32,
    share: OwnedSemaphorePermit,
) -> Result<Done> {
    let (mut stream, _conn) = match opened {
        Some((s, conn)) => (Some(s), conn),
        None => (None, connection(&host).await?),
    };
    // One buffer per range, filled by copying: holding the network's own
    // chunks would pin the connections' larger read buffers behind them.
    let std::ops::Range { start, end } = range;
    let want = end - start;
    let mut bytes = take_buffer(capacity as usize);
    let mut attempts = 0;
    loop {
        let have = bytes.len() as u64;
        let mut s = match stream.take() {
            Some(s) => s,
            None => open(start + have, end).await?,
        };
        let cut = loop {
            match s.next().await {
                Some(Ok(chunk)) => {
                    if bytes.len() + chunk.len() > want as usize {
                        bail!(
                            "bytes {start}-{}: the server sent more than asked for",
                            end - 1
                        );
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Some(Err(e)) => break e.to_string(),
                None if bytes.len() as u64 == want => return Ok((bytes, share)),
                None => break format!("the range ended after {} of {want} bytes", bytes.len()),
            }
        };
        if attempts >= retries {
            bail!("bytes {start}-{}: {cut}", end - 1);
        }
        attempts += 1;
        let wait = super::backoff(attempts);
        tracing::warn!(
            range_start = start,
            received = bytes.len(),
            attempt = attempts,
            "{cut}; asking for the rest of the range in {:.1}s",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>())
    }

    /// An opener serving `data` in small chunks; ranges listed in `cut`
    /// (by start) break after half their bytes, once each.
    fn opener(data: Bytes, cut: Vec<u64>, opened: Arc<Mutex<Vec<(u64, u64)>>>) -> OpenRange {
        let cut = Arc::new(Mutex::new(cut));
        Arc::new(move |s, e| {
            opened.lock().unwrap().push((s, e));
            let body = data.slice(s as usize..e as usize);
            let break_now = {
                let mut c = cut.lock().unwrap();
                let hit = c.iter().position(|&x| x == s);
                hit.map(|i| c.remove(i)).is_some()
            };
            Box::pin(async move { Ok(chunked(body, break_now)) })
        })
    }

    fn chunked(body: Bytes, break_half: bool) -> ByteStream {
        let n = body.len();
        let keep = if break_half { n / 2 } else { n };
        let mut items: Vec<std::io::Result<Bytes>> = (0..keep)
            .step_by(1000)
            .map(|i| Ok(body.slice(i..(i + 1000).min(keep))))
            .collect();
        if break_half {
            items.push(Err(std::io::Error::other("connection reset")));
        }
        Box::pin(futures_util::stream::iter(items))
    }

    async fn run(
        limits: Limits,
        size: usize,
        offset: u64,
        cut: Vec<u64>,
    ) -> (Result<Vec<u8>>, Vec<(u64, u64)>) {
        let data = blob(size);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let open = opener(data.clone(), cut, opened.clone());
        let (s, e) = limits.first(offset, size as u64);
        let host = Arc::new(Semaphore::new(limits.per_host));
        let share = window_share(e - s).await.unwrap();
        let conn = host.clone().acquire_owned().await.unwrap();
        let body = open(s, e).await.unwrap();
        let first = fetch_range(
            s..e,
            limits.range_size(),
            Some((body, conn)),
            host.clone(),
            open.clone(),
            2,
            share,
        );
        // Still downloading, as a host already known slow hands it over.
        let mut stream = parallel(Box::pin(first), offset, size as u64, limits, host, open, 2);
        let mut out = Vec::new();
        let mut err = None;
        while let Some(c) = stream.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => {
                    err = Some(anyhow!(e));
                    break;
                }
            }
        }
        let mut seen = opened.lock().unwrap().clone();
        seen.sort();
        (err.map_or(Ok(out), Err), seen)
    }

    fn limits(connections: usize, range_size: u64) -> Limits {
        Limits {
            connections,
            range_size,
            per_host: 3,
            split_below: u64::MAX,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranges_reassemble_in_order_from_any_offset() {
        let size = 1_000_000;
        for (offset, range) in [(0u64, UNIT), (12_345, UNIT), (0, 300_000), (999_000, UNIT)] {
            let (out, seen) = run(limits(4, range), size, offset, vec![]).await;
            assert_eq!(
                out.unwrap(),
                blob(size)[offset as usize..],
                "offset {offset}"
            );
            // Each range asked for once, back to back, covering the rest.
            let mut at = offset;
            for (s, e) in &seen {
                assert_eq!(*s, at);
                assert!(e - s <= range.max(UNIT));
                at = *e;
            }
            assert_eq!(at, size as u64);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_range_asks_again_for_its_rest_only() {
        let size = 10 * UNIT as usize;
        let (out, seen) = run(limits(3, 2 * UNIT), size, 0, vec![2 * UNIT, 6 * UNIT]).await;
        assert_eq!(out.unwrap(), blob(size));
        assert!(seen.contains(&(3 * UNIT, 4 * UNIT)), "{seen:?}");
        assert!(seen.contains(&(7 * UNIT, 8 * UNIT)), "{seen:?}");
        assert_eq!(seen.len(), 5 + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_that_keeps_breaking_fails_the_stream() {
        let size = 4 * UNIT as usize;
        let cut = vec![2 * UNIT, 3 * UNIT, 3 * UNIT + UNIT / 2];
        let (out, _) = run(limits(2, 2 * UNIT), size, 0, cut).await;
        let e = out.unwrap_err().to_string();
        assert!(e.contains("connection reset"), "{e}");
    }

    #[test]
    fn small_blobs_are_not_split() {
        let l = limits(8, 4 << 20);
        assert!(!l.splits((8 << 20) - 1));
        assert!(l.splits(8 << 20));
        assert!(!limits(1, 4 << 20).splits(1 << 30));
        // A range never exceeds the window, or it could never start.
        assert_eq!(limits(8, 1 << 40).first(0, 1 << 40), (0, WINDOW));
    }
}
