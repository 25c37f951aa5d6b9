//! A small distribution-spec v1.1 client: manifests and blobs, with anonymous,
//! Basic and Bearer-token authentication.
//!
//! Why not `oci-client`: its client panics without a system CA store (fatal in
//! `FROM scratch`), cannot take our own HTTP client, has no docker-config
//! handling, hashes blobs twice, and leaves retries and resume to the caller.
//! The protocol we need is a handful of GETs; owning it keeps every byte,
//! header and error message under our control.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::auth::{Challenge, CredentialStore, Credentials};
use crate::digest::Digest;
use crate::manifest::{
    Descriptor, Document, ACCEPT as MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX,
};
use crate::reference::ImageRef;

/// What an upload sends: a file streamed from disk, or small bytes.
pub enum BlobBody {
    File(PathBuf),
    Bytes(Bytes),
}

/// A stream of blob bytes, not yet verified.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Referrer listings longer than this many pages are refused.
const MAX_REFERRER_PAGES: usize = 100;
/// Referrer descriptors and page bytes kept across all pages: a registry
/// listing endless pages must not grow memory with them.
const MAX_REFERRERS: usize = 10_000;
const MAX_REFERRER_BYTES: u64 = 16 << 20;
/// Token responses larger than this are refused.
const MAX_TOKEN_BYTES: u64 = 1024 * 1024;
/// Error bodies are read up to this size for their message.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// How long a TCP (and TLS) connection may take to open.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `host[:port]` entries served over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Every registry over plain HTTP (`KSERVE_OCI_INSECURE_REGISTRY=true`).
    pub insecure_all: bool,
    /// Extra PEM bundles to trust besides the compiled-in roots.
    pub ca_bundles: Vec<PathBuf>,
    pub connect_timeout: Option<Duration>,
    /// A read that waits longer than this for bytes fails (a stalled
    /// registry must not hang an init container forever).
    pub stall_timeout: Option<Duration>,
    /// Bytes per second a body must average over each stall window
    /// (`OCIMODEL_MIN_RATE`): a trickle of a byte a second never stalls a
    /// read, and must not hold a pull for days.
    pub min_rate: u64,
    /// Attempts after the first for transient failures (connection errors,
    /// 429/502/503/504, a blob cut off mid-stream).
    pub retries: u32,
}

/// Backoff before retry `attempt` (1-based): 0.5 s doubling, capped at 30 s,
/// with ±50 % jitter so a fleet of pods does not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = 0.5_f64 * 2f64.powi(attempt.saturating_sub(1).min(6) as i32);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = 0.5 + (nanos % 1000) as f64 / 1000.0; // 0.5 .. 1.5
    Duration::from_secs_f64((base * jitter).min(30.0))
}

/// `Retry-After` in seconds (the HTTP-date form is treated as "soon").
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    Some(Duration::from_secs(
        v.trim().parse::<u64>().unwrap_or(1).min(60),
    ))
}

/// Certificate and handshake failures will not heal by retrying.
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

#[derive(Clone, Debug)]
enum HostAuth {
    Basic,
    Bearer,
}

struct Token {
    value: String,
    expires: Instant,
}

pub struct RegistryClient {
    http: reqwest::Client,
    creds: CredentialStore,
    options: ClientOptions,
    /// What each registry asked for, so later requests authenticate up front.
    host_auth: Mutex<HashMap<String, HostAuth>>,
    /// Bearer tokens per (registry, scope).
    tokens: Mutex<HashMap<(String, String), Token>>,
}

/// A manifest's bytes, exactly as served, and their digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub digest: Digest,
}

impl RegistryClient {
    /// How many times a transient failure is retried.
    pub fn retries(&self) -> u32 {
        self.options.retries
    }

    pub fn new(creds: CredentialStore, options: ClientOptions) -> Result<RegistryClient> {
        // One process-wide crypto provider; ring keeps the static build small.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots: Vec<reqwest::Certificate> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c.as_ref()).ok())
            .collect();
        // The system store, when the image has one; absent in FROM scratch.
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        if let Ok(pem) = std::fs::read(&system) {
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
                roots.extend(certs);
            }
        }
        for bundle in &options.ca_bundles {
            let pem = std::fs::read(bundle)
                .with_context(|| format!("cannot read CA bundle {}", bundle.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("CA bundle {} is not valid PEM", bundle.display()))?;
            if certs.is_empty() {
                bail!("CA bundle {} holds no certificates", bundle.display());
            }
            roots.extend(certs);
        }
        let http = reqwest::Client::builder()
            .dns_resolver(Resolver)
            .tls_certs_only(roots)
            .connect_timeout(options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .read_timeout(options.stall_timeout.unwrap_or(Duration::from_secs(60)))
            .user_agent(concat!("ocimodel/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(RegistryClient {
            http,
            creds,
            options,
            host_auth: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.options.insecure_all
            || self
                .options
                .insecure_registries
                .iter()
                .any(|h| h.trim() == registry)
    }

    fn base_url(&self, r: &ImageRef) -> String {
        let scheme = if self.is_insecure(&r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    /// Fetches a manifest by tag or digest. When `reference` is a digest the
    /// bytes are checked against it; a tag's digest is computed from the bytes
    /// (and must agree with `Docker-Content-Digest` when the server sends one).
    pub async fn manifest(&self, r: &ImageRef, reference: &str) -> Result<FetchedManifest> {
        let fetched = self.fetch_manifest(r, reference, "pull", false).await?;
        Ok(fetched.expect("a missing manifest is an error when not allowed"))
    }

    /// Fetches a manifest with `actions` scope; with `missing_ok`, a 404 is
    /// `None` instead of an error.
    async fn fetch_manifest(
        &self,
        r: &ImageRef,
        reference: &str,
        actions: &str,
        missing_ok: bool,
    ) -> Result<Option<FetchedManifest>> {
        let url = format!("{}/manifests/{reference}", self.base_url(r));
        let what = format!("manifest {reference} of {}/{}", r.registry, r.repository);
        let resp = self
            .send_as(r, actions, |c| {
                MANIFEST_ACCEPT
                    .iter()
                    .fold(c.get(&url), |req, t| req.header(ACCEPT, *t))
            })
            .await?;
        if missing_ok && resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check_status(resp, r, &what).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_capped(resp, MAX_MANIFEST_BYTES, &what, self.throughput()).await?;
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if actual != expected {
                    return Err(crate::error::IntegrityError(format!("{what}: digest mismatch: expected {expected}, got {actual}; the registry served different content")).into());
                }
                expected
            }
            Err(_) => {
                let alg = header_digest
                    .as_deref()
                    .and_then(|h| h.parse::<Digest>().ok())
                    .map(|d| d.algorithm())
                    .unwrap_or(crate::digest::Algorithm::Sha256);
                let actual = Digest::of(alg, &bytes);
                if let Some(h) = &header_digest {
                    if h.parse::<Digest>().ok().as_ref() != Some(&actual) {
                        bail!("{what}: the registry's Docker-Content-Digest {h} does not match the manifest it served ({actual})");
                    }
                }
                actual
            }
        };
        Ok(Some(FetchedManifest {
            bytes,
            content_type,
            digest,
        }))
    }

    /// The manifests that refer to `digest` (signatures, SBOMs, lineage):
    /// the referrers API with `Link` pagination, else the `sha256-<hex>` tag
    /// schema. Filtered by `artifact_type` here when the registry did not.
    pub async fn referrers(
        &self,
        r: &ImageRef,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let base = self.base_url(r);
        let mut url = format!("{base}/referrers/{digest}");
        if let Some(t) = artifact_type {
            url.push_str(&format!("?artifactType={}", urlencode(t)));
        }
        let what = format!("referrers of {digest} in {}/{}", r.registry, r.repository);
        let mut found = Vec::new();
        let mut bytes = 0u64;
        for page in 0.. {
            if page >= MAX_REFERRER_PAGES {
                bail!("{what}: more than {MAX_REFERRER_PAGES} pages; refusing");
            }
            let resp = self
                .send(r, |c| c.get(&url).header(ACCEPT, OCI_INDEX))
                .await?;
            if resp.status() == StatusCode::NOT_FOUND && page == 0 {
                return self.referrers_by_tag(r, digest, artifact_type).await;
            }
            let resp = self.check_status(resp, r, &what).await?;
            let filtered = resp
                .headers()
                .get_all("oci-filters-applied")
                .iter()
                .any(|v| {
                    v.to_str()
                        .unwrap_or("")
                        .split(',')
                        .any(|f| f.trim() == "artifactType")
                });
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| resolve_link(&url, &l));
            let body = read_capped(resp, MAX_MANIFEST_BYTES, &what, self.throughput()).await?;
            bytes += body.len() as u64;
            if bytes > MAX_REFERRER_BYTES {
                bail!("{what}: the listing is over {MAX_REFERRER_BYTES} bytes across {} pages; refusing", page + 1);
            }
            let Document::Index(index) = Document::parse(&body, Some(OCI_INDEX))? else {
                bail!("{what}: the registry did not answer with an image index");
            };
            found.extend(index.manifests.into_iter().filter(|d| {
                filtered || artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t))
            }));
            if found.len() > MAX_REFERRERS {
                bail!("{what}: more than {MAX_REFERRERS} referrers; refusing");
            }
            match next {
                Some(n) => {
                    // Pages come from the registry itself, never another host.
                    let same = match (reqwest::Url::parse(&n), reqwest::Url::parse(&url)) {
                        (Ok(a), Ok(b)) => same_origin(&a, &b),
                        _ => false,
                    };
                    if !same {
                        bail!(
                            "{what}: the next page is on another host or scheme ({}); refusing",
                            crate::text::escape_controls(&n)
                        );
                    }
                    url = n
                }
                None => break,
            }
        }
        Ok(found)
    }

    /// The referrers tag schema: an index tagged `<alg>-<hex>` (hex cut to 64).
    async fn referrers_by_tag(
        &self,
        r: &ImageRef,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let hex = digest.hex();
        let tag = format!(
            "{}-{}",
            digest.algorithm().name(),
            &hex[..hex.len().min(64)]
        );
        let url = format!("{}/manifests/{tag}", self.base_url(r));
        let resp = self
            .send(r, |c| c.get(&url).header(ACCEPT, OCI_INDEX))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let what = format!("referrers tag {tag} in {}/{}", r.registry, r.repository);
        let resp = self.check_status(resp, r, &what).await?;
        let body = read_capped(resp, MAX_MANIFEST_BYTES, &what, self.throughput()).await?;
        // "If that tag doesn't yield a valid index, assume there are no referrers."
        let Ok(Document::Index(index)) = Document::parse(&body, Some(OCI_INDEX)) else {
            return Ok(Vec::new());
        };
        Ok(index
            .manifests
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)))
            .collect())
    }

    /// Whether the repository already has blob `digest` (so a push can skip it).
    pub async fn has_blob(&self, r: &ImageRef, digest: &Digest) -> Result<bool> {
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let resp = self.send_as(r, "pull,push", |c| c.head(&url)).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .check_status(resp, r, &format!("blob {digest}"))
                .await
                .unwrap_err()),
        }
    }

    /// Uploads a blob in one monolithic PUT, streamed from `body` (a file, or
    /// bytes in memory for small blobs).
    pub async fn upload_blob(
        &self,
        r: &ImageRef,
        digest: &Digest,
        size: u64,
        body: &BlobBody,
    ) -> Result<()> {
        let what = format!("upload of blob {digest} to {}/{}", r.registry, r.repository);
        let start = format!("{}/blobs/uploads/", self.base_url(r));
        let resp = self
            .send_as(r, "pull,push", |c| {
                c.post(&start).header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        let resp = self.check_status(resp, r, &what).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{what}: the registry gave no upload location"))?;
        let location = resolve_link(&start, location);
        self.no_downgrade(r, &location, "upload location")?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", urlencode(&digest.to_string()));
        let resp = self
            .send_as(r, "pull,push", |c| {
                let req = c
                    .put(&put)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size);
                match body {
                    BlobBody::Bytes(b) => req.body(b.clone()),
                    BlobBody::File(path) => match std::fs::File::open(path) {
                        Ok(f) => req.body(reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::with_capacity(
                                tokio::fs::File::from_std(f),
                                256 * 1024,
                            ),
                        )),
                        Err(_) => req, // reported below as a failed upload
                    },
                }
            })
            .await?;
        self.check_status(resp, r, &what).await?;
        Ok(())
    }

    /// PUTs a manifest; returns whether the registry says it processed the
    /// manifest's `subject` (`OCI-Subject`), i.e. maintains referrers itself.
    pub async fn put_manifest(
        &self,
        r: &ImageRef,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<bool> {
        let url = format!("{}/manifests/{reference}", self.base_url(r));
        let what = format!("manifest {reference} for {}/{}", r.registry, r.repository);
        let resp = self
            .send_as(r, "pull,push", |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        let subject_processed = resp.headers().contains_key("oci-subject");
        self.check_status(resp, r, &what).await?;
        Ok(subject_processed)
    }

    /// Fetches a manifest or index by tag, or `None` when there is none.
    pub async fn manifest_if_any(
        &self,
        r: &ImageRef,
        reference: &str,
    ) -> Result<Option<FetchedManifest>> {
        self.fetch_manifest(r, reference, "pull,push", true).await
    }

    /// Fetches a manifest by tag for reading, or `None` when there is none.
    pub async fn tagged_manifest(
        &self,
        r: &ImageRef,
        tag: &str,
    ) -> Result<Option<FetchedManifest>> {
        self.fetch_manifest(r, tag, "pull", true).await
    }

    /// Opens a blob for streaming. The caller verifies size and digest.
    pub async fn blob(&self, r: &ImageRef, digest: &Digest) -> Result<ByteStream> {
        self.blob_from(r, digest, 0).await
    }

    /// Opens a blob from byte `offset` (a resumed download): asks for a
    /// `Range`; when the registry ignores it and sends everything, the bytes
    /// before `offset` are skipped here, so the caller always gets the rest.
    pub async fn blob_from(
        &self,
        r: &ImageRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<ByteStream> {
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let what = format!("blob {digest} of {}/{}", r.registry, r.repository);
        let resp = self
            .send(r, |c| {
                let req = c.get(&url);
                if offset > 0 {
                    req.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                } else {
                    req
                }
            })
            .await?;
        let resp = self.check_status(resp, r, &what).await?;
        let mut to_skip = if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            tracing::info!(blob = %digest, "the registry ignored Range; skipping the {offset} bytes already received");
            offset
        } else {
            0
        };
        let stall = self
            .options
            .stall_timeout
            .unwrap_or(Duration::from_secs(60));
        let mut rate = self.throughput();
        let stream = resp.bytes_stream().filter_map(move |chunk| {
            let out = match chunk {
                Err(e) => {
                    let cause = if e.is_timeout() {
                        format!("no data for {}s (OCIMODEL_STALL_TIMEOUT)", stall.as_secs())
                    } else {
                        root_cause(&e)
                    };
                    Some(Err(std::io::Error::other(format!(
                        "download interrupted: {cause}"
                    ))))
                }
                Ok(mut b) => match rate.observe(b.len()) {
                    Err(e) => Some(Err(std::io::Error::other(format!(
                        "download interrupted: {e}"
                    )))),
                    Ok(()) if to_skip > 0 => {
                        let n = to_skip.min(b.len() as u64) as usize;
                        to_skip -= n as u64;
                        let _ = b.split_to(n);
                        (!b.is_empty()).then_some(Ok(b))
                    }
                    Ok(()) => Some(Ok(b)),
                },
            };
            futures_util::future::ready(out)
        });
        Ok(Box::pin(stream))
    }

    /// Refuses a URL the registry named (`what`) that would move an https
    /// registry's traffic to plain http.
    fn no_downgrade(&self, r: &ImageRef, url: &str, what: &str) -> Result<()> {
        let plain = reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http");
        if plain && !self.is_insecure(&r.registry) {
            bail!(
                "registry {} (https) names a plain-http {what} ({}); refusing",
                r.registry,
                crate::text::escape_controls(url)
            );
        }
        Ok(())
    }

    /// Sends a pull request, answering one authentication challenge if needed.
    async fn send(
        &self,
        r: &ImageRef,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.send_as(r, "pull", build).await
    }

    /// Sends a request needing `actions` (`pull` or `pull,push`) on the
    /// repository. `build` may be called twice (before and after the
    /// challenge), so it must make a fresh request each time.
    async fn send_as(
        &self,
        r: &ImageRef,
        actions: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope = format!("repository:{}:{actions}", r.repository);
        let mut authorization = self.cached_authorization(r, &scope);
        let mut answered = false;
        let mut attempt = 0;
        let origin = reqwest::Url::parse(&self.base_url(r))
            .map_err(|e| anyhow!("registry {}: bad address: {e}", r.registry))?;
        loop {
            let mut req = build(&self.http)
                .build()
                .map_err(|e| anyhow!("registry {}: cannot build a request: {e}", r.registry))?;
            // Credentials go to the registry's own origin only: a `Link` or
            // upload `Location` naming another host (or plain http) gets none.
            let ours = same_origin(req.url(), &origin);
            if let (Some(a), true) = (&authorization, ours) {
                req.headers_mut().insert(AUTHORIZATION, a.clone());
            }
            let resp = match self.http.execute(req).await {
                Ok(resp) => resp,
                Err(e)
                    if attempt < self.options.retries
                        && (e.is_connect() || e.is_timeout() || e.is_request())
                        && !crate::error::is_tls_failure(&e) =>
                {
                    attempt += 1;
                    let wait = backoff(attempt);
                    tracing::warn!(registry = %r.registry, attempt, "request failed ({}); retrying in {:.1}s", root_cause(&e), wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(self.transport_error(r, e)),
            };
            if is_transient(resp.status()) && attempt < self.options.retries {
                attempt += 1;
                let wait = retry_after(&resp).unwrap_or_else(|| backoff(attempt));
                tracing::warn!(registry = %r.registry, status = %resp.status(), attempt, "registry busy; retrying in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                continue;
            }
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            if !ours || !same_origin(resp.url(), &origin) {
                // A redirect target (object storage, a CDN) or a host a
                // registry named asks for credentials: never answer with the
                // registry's (its realm would get them).
                let host = resp.url().host_str().unwrap_or("?").to_string();
                bail!(
                    "{host}, where registry {} sent this request, asks for authentication; ocimodel sends the registry's credentials only to the registry itself",
                    r.registry
                );
            }
            answered = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            let Some(challenge) = challenge else {
                return Ok(resp);
            };
            authorization = Some(self.answer(r, &scope, &challenge).await?);
        }
    }

    fn credentials(&self, r: &ImageRef) -> Option<&Credentials> {
        self.creds.lookup(&r.registry, &r.repository)
    }

    fn cached_authorization(&self, r: &ImageRef, scope: &str) -> Option<HeaderValue> {
        let kind = self.host_auth.lock().unwrap().get(&r.registry).cloned()?;
        match kind {
            HostAuth::Basic => self.credentials(r).map(basic_header),
            HostAuth::Bearer => {
                let tokens = self.tokens.lock().unwrap();
                let t = tokens.get(&(r.registry.clone(), scope.to_string()))?;
                (t.expires > Instant::now()).then(|| bearer_header(&t.value))
            }
        }
    }

    async fn answer(&self, r: &ImageRef, scope: &str, ch: &Challenge) -> Result<HeaderValue> {
        let creds = self.credentials(r);
        if ch.is_basic() {
            self.host_auth
                .lock()
                .unwrap()
                .insert(r.registry.clone(), HostAuth::Basic);
            return creds
                .map(basic_header)
                .ok_or_else(|| self.no_credentials(r));
        }
        if !ch.is_bearer() {
            bail!(
                "registry {} asks for '{}' authentication, which ocimodel does not support (Basic and Bearer are)",
                r.registry,
                ch.scheme
            );
        }
        let realm = ch.params.get("realm").cloned().ok_or_else(|| {
            anyhow!(
                "registry {} sent a Bearer challenge without a realm",
                r.registry
            )
        })?;
        let service = ch.params.get("service").cloned();
        self.host_auth
            .lock()
            .unwrap()
            .insert(r.registry.clone(), HostAuth::Bearer);
        let mut url = reqwest::Url::parse(&realm).map_err(|e| {
            anyhow!(
                "registry {} sent an invalid token realm '{}': {e}",
                r.registry,
                crate::text::escape_controls(&realm)
            )
        })?;
        if url.scheme() == "http" && !self.is_insecure(&r.registry) {
            bail!(
                "registry {} (https) names a plain-http token realm {url}; refusing to send credentials in clear (list the registry in OCIMODEL_INSECURE_REGISTRIES only if it really is plain http)",
                r.registry
            );
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = creds {
            req = req.header(AUTHORIZATION, basic_header(c));
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the token service {realm} of registry {}: {}",
                r.registry,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(match creds {
                Some(c) => anyhow!(
                    "{status}: the token service {realm} of registry {} rejected the credentials for user '{}' (from {}); check the username and password",
                    r.registry, c.username, c.source
                ),
                None => self.no_credentials(r),
            });
        }
        if !status.is_success() {
            bail!(
                "the token service {realm} of registry {} answered {status}",
                r.registry
            );
        }
        let body = read_capped(resp, MAX_TOKEN_BYTES, "token response", self.throughput()).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .with_context(|| format!("the token service {realm} sent invalid JSON"))?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("the token service {realm} sent no token"))?;
        // Spec default is 60 s; renew a little early.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(5).max(1));
        let header = bearer_header(&value);
        self.tokens.lock().unwrap().insert(
            (r.registry.clone(), scope.to_string()),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(header)
    }

    fn no_credentials(&self, r: &ImageRef) -> anyhow::Error {
        let searched = if self.creds.searched.is_empty() {
            "none found".to_string()
        } else {
            self.creds.searched.join(", ")
        };
        anyhow!(
            "registry {} requires authentication for {} but no credentials for it were found (read: {searched}); provide a docker config through OCIMODEL_DOCKER_CONFIG_JSON, REGISTRY_AUTH_FILE or DOCKER_CONFIG",
            r.registry,
            r.repository
        )
    }

    /// Turns a non-2xx answer into a specific error.
    async fn check_status(
        &self,
        resp: reqwest::Response,
        r: &ImageRef,
        what: &str,
    ) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, MAX_ERROR_BYTES, "error body", self.throughput())
            .await
            .unwrap_or_default();
        let codes = error_codes(&body);
        let has = |c: &str| codes.iter().any(|(code, _)| code == c);
        let detail = codes
            .iter()
            .map(|(c, m)| format!("{c}: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        let bearer = matches!(
            self.host_auth.lock().unwrap().get(&r.registry),
            Some(HostAuth::Bearer)
        );
        Err(match status {
            StatusCode::UNAUTHORIZED if bearer => anyhow!(
                "401 Unauthorized: registry {} refused the token issued for 'repository:{}:pull' when fetching {what}{detail}; the account may lack pull access to {}",
                r.registry, r.repository, r.repository
            ),
            StatusCode::UNAUTHORIZED => match self.credentials(r) {
                Some(c) => anyhow!(
                    "401 Unauthorized: registry {} rejected the credentials for user '{}' (from {}) when fetching {what}; check the username and password",
                    r.registry, c.username, c.source
                ),
                None => self.no_credentials(r),
            },
            StatusCode::FORBIDDEN => anyhow!(
                "403 Forbidden: registry {} denied access to {what}{detail}; check that the account may pull {}",
                r.registry, r.repository
            ),
            StatusCode::NOT_FOUND if has("NAME_UNKNOWN") => anyhow!(
                "repository {} not found on registry {}{detail}; check the repository name",
                r.repository, r.registry
            ),
            StatusCode::NOT_FOUND if what.starts_with("manifest") => anyhow!(
                "{what} not found{detail}; check the tag or digest"
            ),
            StatusCode::NOT_FOUND => anyhow!("{what} not found on the registry{detail}"),
            s => anyhow!("registry {} answered {s} for {what}{detail}", r.registry),
        })
    }

    fn throughput(&self) -> Throughput {
        Throughput::new(
            self.options
                .stall_timeout
                .unwrap_or(Duration::from_secs(60)),
            self.options.min_rate,
        )
    }

    fn transport_error(&self, r: &ImageRef, e: reqwest::Error) -> anyhow::Error {
        if e.is_timeout() && !e.is_connect() {
            let stall = self
                .options
                .stall_timeout
                .unwrap_or(Duration::from_secs(60));
            return anyhow!(
                "registry {} sent no data for {}s (OCIMODEL_STALL_TIMEOUT); it is overloaded or stuck",
                r.registry,
                stall.as_secs()
            );
        }
        if e.is_connect() && e.is_timeout() {
            let limit = self
                .options
                .connect_timeout
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            return anyhow!(
                "cannot connect to registry {} within {}s (OCIMODEL_CONNECT_TIMEOUT); check the address, network policies and firewalls",
                r.registry,
                limit.as_secs()
            );
        }
        if let Some(dns) = crate::error::dns_failure(&e) {
            return anyhow!(
                "cannot resolve registry host {}: {}; check the name and the cluster's DNS",
                r.api_host(),
                dns.source
            );
        }
        let cause = root_cause(&e);
        let hint = if self.is_insecure(&r.registry) {
            "check the address and that the registry is running"
        } else {
            "check the address, the CA bundle (OCIMODEL_CA_BUNDLE), or list a plain-HTTP registry in OCIMODEL_INSECURE_REGISTRIES"
        };
        anyhow!(
            "cannot reach registry {} ({}): {cause}; {hint}",
            r.registry,
            self.base_url(r)
        )
    }
}

fn basic_header(c: &Credentials) -> HeaderValue {
    let raw = format!("{}:{}", c.username, c.password);
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    v
}

/// Whether name resolution failed (hyper-util reports "dns error").
/// The system resolver (getaddrinfo, as reqwest's default), with failures
/// as [`crate::error::DnsError`] so they are told apart by type.
struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.collect::<Vec<_>>());
            match found {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(source) => Err(Box::new(crate::error::DnsError { host, source })
                    as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// The innermost error message: what actually went wrong on the wire.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    let mut msg = cur.to_string();
    while let Some(next) = cur.source() {
        let m = next.to_string();
        if !m.is_empty() {
            msg = m;
        }
        cur = next;
    }
    msg
}

/// Reads a whole response body, refusing more than `cap` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: u64,
    what: &str,
    mut rate: Throughput,
) -> Result<Bytes> {
    if let Some(len) = resp.content_length() {
        if len > cap {
            bail!("{what} is {len} bytes, over the {cap}-byte limit");
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow!("reading {what}: {}", root_cause(&e)))?
    {
        if buf.len() as u64 + chunk.len() as u64 > cap {
            bail!("{what} exceeds the {cap}-byte limit");
        }
        rate.observe(chunk.len())
            .map_err(|e| anyhow!("reading {what}: {e}"))?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The minimum-throughput rule: over every window of the stall timeout, at
/// least `min_rate` bytes per second on average.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    window: Duration,
    min_rate: u64,
    started: Instant,
    bytes: u64,
}

impl Throughput {
    pub fn new(window: Duration, min_rate: u64) -> Throughput {
        Throughput {
            window,
            min_rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes just received; an error when the window that just
    /// closed fell below the rate.
    pub fn observe(&mut self, n: usize) -> std::result::Result<(), String> {
        self.bytes += n as u64;
        let elapsed = self.started.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        let floor = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.bytes < floor {
            return Err(format!(
                "only {} bytes arrived in {:.0}s, under OCIMODEL_MIN_RATE ({} bytes/s); the registry is trickling",
                self.bytes,
                elapsed.as_secs_f64(),
                self.min_rate
            ));
        }
        self.started = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

/// The `rel="next"` target of a `Link` header (RFC 8288).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("rel=\"next\"")
                || p.trim().eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// A `Link` target relative to the URL it came from.
fn resolve_link(current: &str, link: &str) -> String {
    match reqwest::Url::parse(current).and_then(|base| base.join(link)) {
        Ok(u) => u.to_string(),
        Err(_) => link.to_string(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `{"errors":[{"code":"…","message":"…"}]}` → [(code, message)].
fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    // Registry text reaches logs and the termination message: no controls.
    let clean = crate::text::escape_controls;
    serde_json::from_slice::<Errors>(body)
        .map(|e| {
            e.errors
                .into_iter()
                .map(|i| (clean(&i.code), clean(&i.message)))
                .collect()
        })
        .unwrap_or_default()
}

/// Same scheme, host and port (default ports filled in).
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/m/referrers/sha256:a?n=2&last=x>; rel="next""#).as_deref(),
            Some("/v2/m/referrers/sha256:a?n=2&last=x")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel="next""#).as_deref(),
            Some("https://x/b")
        );
        assert_eq!(next_link(r#"<https://x/a>; rel="prev""#), None);
        assert_eq!(
            resolve_link(
                "http://127.0.0.1:5000/v2/m/referrers/sha256:a",
                "/v2/m/referrers/sha256:a?page=2"
            ),
            "http://127.0.0.1:5000/v2/m/referrers/sha256:a?page=2"
        );
        assert_eq!(
            urlencode("application/vnd.x+json"),
            "application%2Fvnd.x%2Bjson"
        );
    }

    #[test]
    fn parses_registry_errors() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(
            error_codes(body),
            vec![(
                "MANIFEST_UNKNOWN".to_string(),
                "manifest unknown".to_string()
            )]
        );
        assert!(error_codes(b"<html>").is_empty());
    }
}
