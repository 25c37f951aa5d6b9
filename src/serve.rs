//! Sidecar mode: pull every model as the init mode does, then stay alive
//! serving probes and metrics until SIGTERM.
//!
//! Endpoints, on `OCIMODEL_LISTEN` (default `0.0.0.0:8099`; KServe's model
//! server owns 8080/8081 and queue-proxy 8012/9090/9091):
//!
//! | path | answer |
//! |---|---|
//! | `GET /livez` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` when every model is installed and its DEST still matches its marker (marker present, same digest, every recorded file there with its size); otherwise `503` with one line per model saying why (pulling, the last error, a missing file) |
//! | `GET /startupz` | the same as `/readyz`, for a `startupProbe` |
//! | `GET /metrics` | Prometheus text (OpenMetrics), every name prefixed `ocimodel_` |
//! | anything else | `404` |
//!
//! A failed pull is retried with capped exponential backoff (1 s doubling to
//! 60 s) and reported on `/readyz` and in metrics; the process does not exit
//! (no crash loop) unless `OCIMODEL_SIDECAR_EXIT_ON_FAILURE=true`. SIGTERM or
//! SIGINT cancels running pulls (their staging directories are removed) and
//! exits 0. As PID 1 it also reaps any orphaned children.
//!
//! The port needs no authentication, so it is bounded: at most
//! `MAX_CONNECTIONS` at once, headers within `HEADER_TIMEOUT`, each
//! connection closed after one request and within `CONNECTION_TIMEOUT`;
//! accept errors back off; the soft file-descriptor limit is raised to the
//! hard one at start. New connections are always accepted: at the cap, the
//! oldest one still without a request (idle, or sending its headers slowly)
//! is closed to make room, so a client holding many idle connections open
//! cannot keep a kubelet's probe waiting in the kernel's backlog.
//!
//! With `OCIMODEL_S3_LISTEN` (loopback only) it also serves the models over
//! a read-only S3 API while they install (see [`crate::s3`]): each pull
//! reports its files there as their bytes verify; `/readyz` is unchanged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::pull::{pull, ClientFactory, Job, Settings};
use crate::reference::Target;

const BACKOFF_START: Duration = Duration::from_secs(1);
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

type Labels = Vec<(String, String)>;

/// Sidecar options beyond the pull settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub exit_on_failure: bool,
    /// The S3 endpoint's address, when it is on.
    pub s3_listen: Option<SocketAddr>,
    /// How long a request for a file not verified yet is held.
    pub s3_wait: Duration,
}

/// Where one model stands.
#[derive(Clone, Debug)]
enum Status {
    Pulling { attempt: u32 },
    Failed { attempt: u32, reason: String },
    Installed { digest: crate::digest::Digest },
}

/// One model's readiness, as `/readyz` reports it: computed from its status
/// and the disk, with no side effects.
enum Readiness {
    Ready(crate::digest::Digest),
    NotReady(String),
}

impl Readiness {
    fn of(m: &Model) -> Readiness {
        let status = m.status.lock().unwrap().clone();
        match status {
            Status::Pulling { attempt } => {
                Readiness::NotReady(format!("pulling (attempt {attempt})"))
            }
            Status::Failed { attempt, reason } => {
                Readiness::NotReady(format!("failed (attempt {attempt}, retrying): {reason}"))
            }
            Status::Installed { digest } => {
                match crate::install::installed(&m.job.dest, Some(&digest), None) {
                    Ok(_) => Readiness::Ready(digest),
                    Err(why) => Readiness::NotReady(format!("not ready: {why:#}")),
                }
            }
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready(_))
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Ready(d) => write!(f, "ready {d}"),
            Readiness::NotReady(why) => f.write_str(why),
        }
    }
}

struct Model {
    job: Job,
    status: Mutex<Status>,
    /// Its bucket on the S3 endpoint, when it is on.
    publish: Option<crate::s3::Publisher>,
}

/// The metrics, registered once.
struct Metrics {
    registry: Registry,
    bytes: Family<Labels, Counter>,
    blobs: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    verification_failures: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    ready: Family<Labels, Gauge>,
    cache_blobs: Family<Labels, Gauge>,
    cache_bytes: Family<Labels, Gauge>,
    cache_hit_bytes: Family<Labels, Gauge>,
    s3_bytes_served: crate::s3::server::Served,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ocimodel");
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        registry.register("build_info", "Build information", build);
        let bytes = Family::default();
        registry.register(
            "bytes_fetched",
            "Layer bytes downloaded, by source",
            bytes.clone(),
        );
        let blobs = Family::default();
        registry.register(
            "blobs_fetched",
            "Layer blobs downloaded, by source",
            blobs.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "pull_attempts",
            "Pull attempts, by model and result",
            attempts.clone(),
        );
        let verification_failures = Family::default();
        registry.register(
            "verification_failures",
            "Pulls refused because content did not match its digest or size",
            verification_failures.clone(),
        );
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 14))
        });
        registry.register(
            "pull_duration_seconds",
            "Duration of pull attempts, by result",
            duration.clone(),
        );
        let ready = Family::default();
        registry.register(
            "model_ready",
            "1 when the model is installed and its DEST matches its marker",
            ready.clone(),
        );
        let cache_blobs = Family::default();
        registry.register(
            "cache_blobs",
            "Blobs this process read from the node cache (result=hit) or downloaded into it (result=miss)",
            cache_blobs.clone(),
        );
        let cache_bytes = Family::default();
        registry.register(
            "cache_bytes",
            "Bytes this process read from the node cache (result=hit) or downloaded into it (result=miss)",
            cache_bytes.clone(),
        );
        let cache_hit_bytes = Family::default();
        registry.register(
            "cache_hit_bytes",
            "Bytes of node-cache hits cloned into DEST, sharing the cache's disk blocks (how=cloned), or written there (how=written)",
            cache_hit_bytes.clone(),
        );
        let s3_bytes_served = Family::default();
        registry.register(
            "s3_bytes_served",
            "Bytes of verified files sent by the S3 endpoint, by bucket",
            s3_bytes_served.clone(),
        );
        Metrics {
            s3_bytes_served,
            registry,
            bytes,
            blobs,
            attempts,
            verification_failures,
            duration,
            ready,
            cache_blobs,
            cache_bytes,
            cache_hit_bytes,
        }
    }
}

struct State {
    models: Vec<Model>,
    metrics: Metrics,
    cache: Option<Arc<crate::cache::Cache>>,
}

impl State {
    /// Every model's readiness, re-checked against the disk on every call.
    fn readiness(&self) -> Vec<Readiness> {
        self.models.iter().map(Readiness::of).collect()
    }

    /// `/readyz`'s answer: all ready, and one line per model.
    fn readiness_report(&self) -> (bool, String) {
        let all = self.readiness();
        let mut body = String::new();
        for (m, r) in self.models.iter().zip(&all) {
            let _ = writeln!(body, "{} -> {}: {r}", m.job.uri, m.job.dest.display());
        }
        (all.iter().all(Readiness::is_ready), body)
    }

    fn metrics_text(&self) -> String {
        for (m, r) in self.models.iter().zip(self.readiness()) {
            self.metrics
                .ready
                .get_or_create(&vec![
                    ("model".into(), m.job.uri.clone()),
                    ("dest".into(), m.job.dest.display().to_string()),
                ])
                .set(r.is_ready() as i64);
        }
        if let Some(c) = &self.cache {
            let st = c.stats();
            for (result, blobs, bytes) in [
                ("hit", st.hit_blobs, st.hit_bytes),
                ("miss", st.miss_blobs, st.miss_bytes),
            ] {
                let label = vec![("result".to_string(), result.to_string())];
                self.metrics
                    .cache_blobs
                    .get_or_create(&label)
                    .set(blobs as i64);
                self.metrics
                    .cache_bytes
                    .get_or_create(&label)
                    .set(bytes as i64);
            }
            for (how, bytes) in [
                ("cloned", st.cloned_bytes),
                ("written", st.hit_bytes.saturating_sub(st.cloned_bytes)),
            ] {
                self.metrics
                    .cache_hit_bytes
                    .get_or_create(&vec![("how".to_string(), how.to_string())])
                    .set(bytes as i64);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry);
        out
    }
}

fn source_label(target: &Target) -> String {
    match target {
        Target::Registry(r) => r.registry.clone(),
        Target::Layout { .. } => "oci-layout".into(),
        Target::OciArchive { .. } => "oci-archive".into(),
        Target::DockerArchive { .. } => "docker-archive".into(),
        Target::ModelRegistry(_) => "model-registry".into(),
    }
}

/// Pulls one model until it is installed (or, with `exit_on_failure`,
/// until the first failure, returned as the error line).
async fn keep_pulling(
    state: Arc<State>,
    index: usize,
    settings: Settings,
    clients: ClientFactory,
    exit_on_failure: bool,
) -> Result<(), String> {
    let model = &state.models[index];
    let m = &state.metrics;
    let mut settings = settings;
    settings.publish = model.publish.clone();
    let source = vec![("source".to_string(), source_label(&model.job.target))];
    let mut backoff = BACKOFF_START;
    for attempt in 1.. {
        *model.status.lock().unwrap() = Status::Pulling { attempt };
        let started = Instant::now();
        let result = pull(&model.job, &settings, &clients).await;
        let secs = started.elapsed().as_secs_f64();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        m.duration
            .get_or_create(&vec![("result".into(), outcome.into())])
            .observe(secs);
        m.attempts
            .get_or_create(&vec![
                ("model".into(), model.job.uri.clone()),
                ("result".into(), outcome.into()),
            ])
            .inc();
        match result {
            Ok(o) => {
                m.bytes.get_or_create(&source).inc_by(o.bytes_fetched);
                m.blobs.get_or_create(&source).inc_by(o.blobs_fetched);
                tracing::info!(uri = %model.job.uri, dest = %model.job.dest.display(), digest = %o.marker.digest, "model installed; serving");
                if let Some(p) = &model.publish {
                    // Up to date, or a layout the pull did not publish as it went.
                    p.installed(&model.job.dest, o.marker.contents.files.clone());
                }
                *model.status.lock().unwrap() = Status::Installed {
                    digest: o.marker.digest.clone(),
                };
                return Ok(());
            }
            Err(e) => {
                let reason = crate::text::for_output(&format!("{e:#}"));
                if crate::error::is_verification_failure(&e) {
                    m.verification_failures
                        .get_or_create(&vec![("model".into(), model.job.uri.clone())])
                        .inc();
                }
                tracing::error!(uri = %model.job.uri, attempt, "pull failed: {reason}; retrying in {}s", backoff.as_secs());
                if exit_on_failure {
                    return Err(format!("{}: {reason}", model.job.uri));
                }
                *model.status.lock().unwrap() = Status::Failed { attempt, reason };
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    unreachable!("the loop returns")
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    Ok(match req.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" | "/startupz" => {
            // Off the async workers: it reads the marker and stats every file.
            let st = state.clone();
            let (ready, body) = tokio::task::spawn_blocking(move || st.readiness_report())
                .await
                .unwrap_or_else(|_| (false, "readiness check failed\n".into()));
            if ready {
                text(StatusCode::OK, format!("ready\n{body}"))
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        "/metrics" => {
            // The ready gauges read the disk too: off the async workers.
            let st = state.clone();
            let body = tokio::task::spawn_blocking(move || st.metrics_text())
                .await
                .unwrap_or_default();
            Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(body)))
                .expect("a static response is valid")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

/// Soft `RLIMIT_NOFILE` up to the hard limit (runtimes leave 1024 soft).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid out-pointer; failures are harmless.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The probe port's open connections, oldest first.
#[derive(Default)]
struct Connections {
    next: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    /// Its request has arrived: it is being answered, not to be closed.
    busy: Arc<AtomicBool>,
    /// Dropping it closes the connection.
    _close: tokio::sync::oneshot::Sender<()>,
}

/// A connection the probe server admitted.
struct Admitted {
    id: u64,
    busy: Arc<AtomicBool>,
    /// Resolves when the connection is to be closed to make room.
    closed: tokio::sync::oneshot::Receiver<()>,
}

impl Connections {
    /// Registers one more connection; at the cap the oldest one without a
    /// request is closed first. `None` when every slot is answering one
    /// (then the new connection is closed; answers take milliseconds).
    fn admit(&mut self) -> Option<Admitted> {
        if self.open.len() >= MAX_CONNECTIONS {
            let idle = self
                .open
                .iter()
                .find(|(_, o)| !o.busy.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            self.open.remove(&idle);
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (close, closed) = tokio::sync::oneshot::channel();
        self.open.insert(
            id,
            Open {
                busy: busy.clone(),
                _close: close,
            },
        );
        Some(Admitted { id, busy, closed })
    }
}

/// Accepts probe connections, within the bounds in the module doc.
async fn serve_probes(listener: tokio::net::TcpListener, state: Arc<State>) {
    let conns = Arc::new(Mutex::new(Connections::default()));
    loop {
        // Always accept: past the cap, room is made by closing an idle
        // connection, never by leaving new ones in the kernel's backlog.
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("probe server: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(Admitted { id, busy, closed }) = conns.lock().unwrap().admit() else {
            continue;
        };
        let (state, conns) = (state.clone(), conns.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                busy.store(true, Ordering::Release);
                handle(req, state.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Closed to make room: dropping `conn` closes the socket.
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = closed => {}
            }
            conns.lock().unwrap().open.remove(&id);
        });
    }
}

/// Runs the sidecar until SIGTERM (`Ok`), or until a pull fails with
/// `exit_on_failure` set (that failure).
pub async fn run(
    jobs: Vec<Job>,
    settings: Settings,
    clients: ClientFactory,
    options: Options,
) -> Result<()> {
    let metrics = Metrics::new();
    raise_fd_limit();
    // The S3 endpoint first: a bad address or bucket fails before any pull.
    let (publishers, s3_server) = match options.s3_listen {
        None => (vec![None; jobs.len()], None),
        Some(addr) => {
            let dests: Vec<_> = jobs.iter().map(|j| j.dest.clone()).collect();
            let buckets = crate::s3::bucket_names(&dests)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (OCIMODEL_S3_LISTEN)"))?;
            let (catalog, publishers) = crate::s3::Catalog::start(&buckets);
            for (bucket, dest) in &buckets {
                tracing::info!(listen = %addr, bucket = %bucket, dest = %dest.display(), "S3 endpoint: serving s3://{bucket}/ as its files verify");
            }
            let s3 = crate::s3::server::S3 {
                catalog,
                served: metrics.s3_bytes_served.clone(),
                buffers: Default::default(),
                wait: options.s3_wait,
            };
            let server = tokio::spawn(crate::s3::server::serve(listener, s3));
            (publishers.into_iter().map(Some).collect(), Some(server))
        }
    };
    let state = Arc::new(State {
        models: jobs
            .into_iter()
            .zip(publishers)
            .map(|(job, publish)| Model {
                job,
                status: Mutex::new(Status::Pulling { attempt: 0 }),
                publish,
            })
            .collect(),
        metrics,
        cache: settings.cache.clone(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {} (OCIMODEL_LISTEN)", options.listen))?;
    tracing::info!(listen = %options.listen, "serving /livez /readyz /startupz /metrics");
    let server = tokio::spawn(serve_probes(listener, state.clone()));

    let (failed_tx, mut failed_rx) =
        tokio::sync::mpsc::channel::<String>(state.models.len().max(1));
    let pulls: Vec<_> = (0..state.models.len())
        .map(|i| {
            let (state, settings, clients, failed_tx) = (
                state.clone(),
                settings.clone(),
                clients.clone(),
                failed_tx.clone(),
            );
            tokio::spawn(async move {
                if let Err(line) =
                    keep_pulling(state, i, settings, clients, options.exit_on_failure).await
                {
                    let _ = failed_tx.send(line).await;
                }
            })
        })
        .collect();
    drop(failed_tx);

    let (mut term, mut int, mut chld) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::child()),
    ) {
        (Ok(t), Ok(i), Ok(c)) => (t, i, c),
        _ => anyhow::bail!("cannot install signal handlers"),
    };
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break Ok(()); }
            _ = chld.recv() => reap_children(),
            Some(line) = failed_rx.recv() => break Err(anyhow::anyhow!("{line}")),
        }
    };
    // Cancel running pulls; dropping them removes their staging directories.
    for p in &pulls {
        p.abort();
    }
    for p in pulls {
        let _ = p.await;
    }
    server.abort();
    if let Some(s) = s3_server {
        s.abort();
    }
    outcome
}

/// As PID 1, collect exited children so none stay zombies.
fn reap_children() {
    loop {
        // SAFETY: waitpid with WNOHANG only inspects our own children.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// Parses `OCIMODEL_LISTEN` (`host:port` or `:port`).
pub fn parse_listen(s: &str) -> Result<SocketAddr> {
    let s = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    s.parse()
        .with_context(|| format!("OCIMODEL_LISTEN '{s}' is not host:port"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Target;

    fn model(dest: &std::path::Path, status: Status) -> Model {
        let uri = format!("oci-layout://{}", dest.display());
        Model {
            job: Job {
                target: Target::parse(&uri).unwrap(),
                uri,
                dest: dest.to_path_buf(),
            },
            status: Mutex::new(status),
            publish: None,
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let mut conns = Connections::default();
        let mut admitted: Vec<Admitted> = (0..MAX_CONNECTIONS)
            .map(|_| conns.admit().unwrap())
            .collect();
        // The two oldest are answering requests; the third is idle.
        admitted[0].busy.store(true, Ordering::Release);
        admitted[1].busy.store(true, Ordering::Release);
        let newest = conns.admit().expect("room is made");
        assert_eq!(conns.open.len(), MAX_CONNECTIONS);
        assert!(!conns.open.contains_key(&admitted[2].id), "oldest idle one");
        use tokio::sync::oneshot::error::TryRecvError;
        assert_eq!(admitted[2].closed.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(admitted[0].closed.try_recv(), Err(TryRecvError::Empty));
        // Every slot answering a request: the new one is not admitted.
        for a in &admitted {
            a.busy.store(true, Ordering::Release);
        }
        newest.busy.store(true, Ordering::Release);
        assert!(conns.admit().is_none());
    }

    #[test]
    fn readiness_follows_status_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let digest: crate::digest::Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let pulling = Readiness::of(&model(dir.path(), Status::Pulling { attempt: 2 }));
        assert!(!pulling.is_ready());
        assert_eq!(pulling.to_string(), "pulling (attempt 2)");
        let failed = Readiness::of(&model(
            dir.path(),
            Status::Failed {
                attempt: 1,
                reason: "boom".into(),
            },
        ));
        assert_eq!(failed.to_string(), "failed (attempt 1, retrying): boom");
        // Installed, but the marker is gone from disk: not ready.
        let gone = Readiness::of(&model(dir.path(), Status::Installed { digest }));
        assert!(!gone.is_ready());
        assert!(gone.to_string().starts_with("not ready: "), "{gone}");
        assert!(
            gone.to_string().contains("has no completion marker"),
            "{gone}"
        );
    }
}
