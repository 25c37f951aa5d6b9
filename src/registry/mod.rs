//! A small distribution-spec v1.1 client: manifests and blobs, with anonymous,
//! Basic and Bearer-token authentication.
//!
//! Why not `oci-client`: its client panics without a system CA store (fatal in
//! `FROM scratch`), cannot take our own HTTP client, has no docker-config
//! handling, hashes blobs twice, and leaves retries and resume to the caller.
//! The protocol we need is a handful of GETs; owning it keeps every byte,
//! header and error message under our control.
//!
//! Files: [`transport`] (sending, retries, origin rules, throughput),
//! [`auth`] (challenges and tokens), [`errors`] (status codes in words),
//! [`ranges`] (one blob over several connections), [`referrers`],
//! [`push`]; pulls of manifests and blobs are here.

mod auth;
mod errors;
mod push;
mod ranges;
mod referrers;
mod transport;

use auth::{HostAuth, Token};
pub use ranges::{Limits, WINDOW as RANGE_WINDOW};
use referrers::resolve_link;
pub use transport::backoff;
use transport::{read_capped, same_origin, urlencode, Resolver};

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::auth::{Challenge, CredentialStore, Credentials};
use crate::digest::Digest;
use crate::error::root_cause;
use crate::manifest::{
    Descriptor, Document, ACCEPT as MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX,
};
use crate::mirrors::Endpoint;
use crate::reference::ImageRef;

/// What a request needs on the repository: the token scope it asks for,
/// and the words a refusal is explained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Pull,
    Push,
}

impl Scope {
    /// The `actions` of a `repository:NAME:ACTIONS` token scope.
    fn actions(self) -> &'static str {
        match self {
            Scope::Pull => "pull",
            Scope::Push => "pull,push",
        }
    }

    /// The verb for messages: "pull" or "push".
    fn verb(self) -> &'static str {
        match self {
            Scope::Pull => "pull",
            Scope::Push => "push",
        }
    }
}

/// What an upload sends: a file streamed from disk, or small bytes.
pub enum BlobBody {
    File(PathBuf),
    Bytes(Bytes),
}

/// A stream of blob bytes, not yet verified.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

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
    /// The node's mirror configuration (see [`crate::mirrors`]).
    pub mirrors: crate::mirrors::Mirrors,
    /// How big blobs are split into parallel ranged GETs.
    pub ranges: Limits,
    /// A mirror on the node's loopback (Dragonfly's 127.0.0.1:4001) is
    /// reached at this address from a pod (`OCIMODEL_NODE_IP`).
    pub node_ip: Option<String>,
    /// Credentials from the workload's cloud identity for cloud registries
    /// (`OCIMODEL_CLOUD_AUTH`; see [`crate::cloud`]).
    pub cloud_auth: bool,
}

/// A mirror served bytes that do not match their digest: it is skipped
/// for that blob from now on, and the install is tried again.
#[derive(Debug, thiserror::Error)]
#[error("mirror {host} served content that does not match {digest}; trying the next host")]
pub struct BadMirror {
    pub host: String,
    pub digest: Digest,
}

/// (registry, repository, by digest, scheme): what a mirror list depends on.
type EndpointsKey = (String, String, bool, &'static str);

pub struct RegistryClient {
    http: reqwest::Client,
    /// The CA roots `http` trusts, for mirrors' own clients.
    roots: Vec<reqwest::Certificate>,
    /// Clients for endpoints with their own TLS or dial settings (hosts.toml
    /// `ca`, `client`, `skip_verify`, `dial_timeout`), by those settings:
    /// used for requests to the host in that endpoint's role only.
    endpoint_clients: Mutex<HashMap<String, reqwest::Client>>,
    creds: CredentialStore,
    options: ClientOptions,
    /// What each registry asked for, so later requests authenticate up front.
    host_auth: Mutex<HashMap<String, HostAuth>>,
    /// Mirrors that could not be reached: not asked again by this process.
    mirrors_down: Mutex<std::collections::HashSet<String>>,
    /// The configuration's endpoints per (registry, repository, by digest,
    /// scheme), read once: hosts.toml files are not parsed for every blob.
    endpoints: Mutex<HashMap<EndpointsKey, Vec<Endpoint>>>,
    /// Which mirror served each blob (to blame it if the digest fails).
    served_by: Mutex<HashMap<Digest, String>>,
    /// registries.conf: the host that served each repository's manifest,
    /// which then serves its blobs (containers/image's whole-image choice).
    image_host: Mutex<HashMap<String, String>>,
    /// (mirror host, blob) pairs not to ask again.
    bad: Mutex<std::collections::HashSet<(String, Digest)>>,
    /// Bearer tokens per (scheme and host, scope).
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// The cloud identity flows, unless `OCIMODEL_CLOUD_AUTH=off`.
    cloud: Option<crate::cloud::Ambient>,
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
            .redirect(transport::redirect_policy())
            .tls_certs_only(roots.clone())
            .connect_timeout(options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .read_timeout(options.stall_timeout.unwrap_or(Duration::from_secs(60)))
            .user_agent(concat!("ocimodel/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let cloud = options
            .cloud_auth
            .then(|| {
                crate::cloud::Ambient::new(
                    crate::cloud::CloudEnv::from_env(),
                    http.clone(),
                    roots.clone(),
                )
            })
            .transpose()?;
        Ok(RegistryClient {
            cloud,
            http,
            roots,
            endpoint_clients: Mutex::new(HashMap::new()),
            creds,
            options,
            host_auth: Mutex::new(HashMap::new()),
            mirrors_down: Mutex::new(Default::default()),
            endpoints: Mutex::new(HashMap::new()),
            served_by: Mutex::new(HashMap::new()),
            image_host: Mutex::new(HashMap::new()),
            bad: Mutex::new(Default::default()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client (proxies, CA bundles, timeouts): for the few other
    /// services ocimodel talks to, such as a model registry's API.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A whole answer from one of those services (`what`, in messages), as
    /// registry answers are read: at most `cap` bytes, under the stall
    /// timeout and the minimum-rate rule (`OCIMODEL_MIN_RATE`).
    pub async fn read_body(&self, resp: reqwest::Response, cap: u64, what: &str) -> Result<Bytes> {
        read_capped(resp, cap, what, self.throughput()).await
    }

    /// A mirror that could not be reached is skipped from now on.
    fn mirror_down(&self, host: &str) {
        if self.mirrors_down.lock().unwrap().insert(host.to_string()) {
            tracing::warn!(mirror = %host, "mirror unreachable; not asking it again");
        }
    }

    /// Whether `registry`, reached as itself, is plain HTTP. (A host's
    /// settings as some registry's mirror or `server` travel with that
    /// [`Endpoint`], never with the host.)
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
        let fetched = self
            .fetch_manifest(r, reference, Scope::Pull, false)
            .await?;
        Ok(fetched.expect("a missing manifest is an error when not allowed"))
    }

    /// The credentials this process presents to `r`'s registry, if any.
    pub fn presented_credentials(&self, r: &ImageRef) -> Option<Credentials> {
        self.credentials(r)
    }

    /// Whether `r`'s registry asked this process to authenticate: what it
    /// served since then took the credentials, if there were any.
    pub fn challenged(&self, r: &ImageRef) -> bool {
        self.host_auth.lock().unwrap().contains_key(&r.registry)
    }

    /// Asks the registry itself (no mirror can vouch for access) whether
    /// this process may pull manifest `digest` of `r`, with a `HEAD` and its
    /// own credentials: `false` when it says no (401, 403, 404); an error
    /// when it cannot say (unreachable, no credentials for a challenge).
    pub async fn may_pull(&self, r: &ImageRef, digest: &Digest) -> Result<bool> {
        let url = format!("{}/manifests/{digest}", self.base_url(r));
        let resp = self
            .send(r, |c| {
                MANIFEST_ACCEPT
                    .iter()
                    .fold(c.head(&url), |req, t| req.header(ACCEPT, *t))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(false),
            s => bail!("registry {} answered HEAD {url} with {s}", r.registry),
        }
    }

    /// The mirrors to try before the registry, for pulls of `r`: each as
    /// the `ImageRef` its requests authenticate as, and its endpoint.
    fn mirrors_for(&self, r: &ImageRef, by_digest: bool) -> Result<Vec<(ImageRef, Endpoint)>> {
        let scheme = if self.is_insecure(&r.registry) {
            "http"
        } else {
            "https"
        };
        let key = (r.registry.clone(), r.repository.clone(), by_digest, scheme);
        let cached = self.endpoints.lock().unwrap().get(&key).cloned();
        let list = match cached {
            Some(list) => list,
            None => {
                let list = self.options.mirrors.endpoints(
                    &r.registry,
                    r.api_host(),
                    &r.repository,
                    by_digest,
                    scheme,
                )?;
                self.endpoints.lock().unwrap().insert(key, list.clone());
                list
            }
        };
        let mut out = Vec::new();
        for mut ep in list {
            if ep.upstream {
                // The registry itself, unless the configuration moved it
                // (registries.conf `location` or `insecure`, hosts.toml
                // `server`): then the moved one, instead of the original.
                let moved = ep.host != r.api_host()
                    || ep.repository != r.repository
                    || ep.api_root != "/v2"
                    || (ep.scheme == "http") != self.is_insecure(&r.registry);
                if !moved {
                    continue;
                }
            }
            if let Some(ip) = &self.options.node_ip {
                // The node's loopback is not the pod's.
                if let Some(host) = on_node(&ep.host, ip) {
                    ep.host = host;
                }
            }
            if !ep.upstream && self.mirrors_down.lock().unwrap().contains(&ep.host) {
                continue;
            }
            // Built now, so a bad CA or key file fails the pull at once.
            self.client_for(Some(&ep))?;
            let mref = ImageRef {
                registry: ep.host.clone(),
                repository: ep.repository.clone(),
                tag: r.tag.clone(),
                digest: r.digest.clone(),
            };
            out.push((mref, ep));
        }
        Ok(out)
    }

    /// A client with a mirror's own CA files, client certificates,
    /// `skip_verify` and `dial_timeout` (hosts.toml).
    fn endpoint_client(&self, ep: &Endpoint) -> Result<reqwest::Client> {
        let mut roots = self.roots.clone();
        for ca in &ep.ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            roots.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{} is not a PEM bundle", ca.display()))?,
            );
        }
        let mut b = reqwest::Client::builder()
            .dns_resolver(Resolver)
            .redirect(transport::redirect_policy())
            .tls_certs_only(roots)
            .connect_timeout(
                ep.dial_timeout
                    .or(self.options.connect_timeout)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            )
            .read_timeout(
                self.options
                    .stall_timeout
                    .unwrap_or(Duration::from_secs(60)),
            )
            .user_agent(concat!("ocimodel/", env!("CARGO_PKG_VERSION")));
        if ep.skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        for (cert, key) in &ep.client {
            let mut pem =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            if let Some(k) = key {
                pem.extend(
                    std::fs::read(k).with_context(|| format!("cannot read {}", k.display()))?,
                );
            }
            b = b.identity(reqwest::Identity::from_pem(&pem).with_context(|| {
                format!("{} is not a client certificate and key", cert.display())
            })?);
        }
        b.build()
            .context("cannot build an HTTP client for a mirror")
    }

    /// The HTTP client for requests through `via` (an endpoint with its own
    /// TLS or dial settings), else the shared one.
    fn client_for(&self, via: Option<&Endpoint>) -> Result<reqwest::Client> {
        let Some(ep) = via.filter(|ep| ep.own_transport()) else {
            return Ok(self.http.clone());
        };
        let key = format!(
            "{:?}",
            (ep.skip_verify, &ep.ca, &ep.client, ep.dial_timeout)
        );
        if let Some(c) = self.endpoint_clients.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let client = self.endpoint_client(ep)?;
        self.endpoint_clients
            .lock()
            .unwrap()
            .insert(key, client.clone());
        Ok(client)
    }

    /// Blames the mirror that served `digest`, if one did: it is skipped
    /// for that blob from now on. Returns it.
    pub fn blame_mirror(&self, digest: &Digest) -> Option<BadMirror> {
        let host = self.served_by.lock().unwrap().remove(digest)?;
        self.bad
            .lock()
            .unwrap()
            .insert((host.clone(), digest.clone()));
        tracing::warn!(mirror = %host, blob = %digest, "the mirror served content that does not match its digest; not asking it again");
        Some(BadMirror {
            host,
            digest: digest.clone(),
        })
    }

    /// Fetches a manifest with `scope`; with `missing_ok`, a 404 is
    /// `None` instead of an error.
    async fn fetch_manifest(
        &self,
        r: &ImageRef,
        reference: &str,
        scope: Scope,
        missing_ok: bool,
    ) -> Result<Option<FetchedManifest>> {
        if scope == Scope::Pull {
            let by_digest = reference.parse::<Digest>().is_ok();
            for (mref, ep) in self.mirrors_for(r, by_digest)? {
                if !(if by_digest { ep.pull } else { ep.resolve }) {
                    continue;
                }
                let url = ep.url("manifests", reference);
                if ep.upstream {
                    // The moved registry: its answer is the answer.
                    return self
                        .fetch_manifest_at(&mref, &url, Some(&ep), reference, scope, missing_ok)
                        .await;
                }
                match self
                    .fetch_manifest_at(&mref, &url, Some(&ep), reference, scope, true)
                    .await
                {
                    Ok(Some(m)) => {
                        tracing::debug!(mirror = %ep.host, reference, "manifest from a mirror");
                        if ep.whole_image {
                            self.image_host.lock().unwrap().insert(
                                format!("{}/{}", r.registry, r.repository),
                                ep.host.clone(),
                            );
                        }
                        return Ok(Some(m));
                    }
                    Ok(None) => tracing::debug!(mirror = %ep.host, reference, "not on the mirror"),
                    Err(e) => {
                        tracing::info!(mirror = %ep.host, reference, "mirror failed ({e:#}); trying the next host")
                    }
                }
            }
        }
        let url = format!("{}/manifests/{reference}", self.base_url(r));
        self.fetch_manifest_at(r, &url, None, reference, scope, missing_ok)
            .await
    }

    async fn fetch_manifest_at(
        &self,
        r: &ImageRef,
        url: &str,
        via: Option<&Endpoint>,
        reference: &str,
        scope: Scope,
        missing_ok: bool,
    ) -> Result<Option<FetchedManifest>> {
        let what = format!("manifest {reference} of {}/{}", r.registry, r.repository);
        let resp = self
            .send_via(r, scope, via, |c| {
                let req = MANIFEST_ACCEPT
                    .iter()
                    .fold(c.get(url), |req, t| req.header(ACCEPT, *t));
                with_headers(req, via)
            })
            .await?;
        if missing_ok && resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check_status(resp, r, &what, scope).await?;
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

    /// A manifest or index by tag, with a push token (the caller is about
    /// to update it), or `None` when there is none.
    pub async fn manifest_for_push_if_any(
        &self,
        r: &ImageRef,
        reference: &str,
    ) -> Result<Option<FetchedManifest>> {
        self.fetch_manifest(r, reference, Scope::Push, true).await
    }

    /// A manifest by tag with a pull token, or `None` when there is none.
    pub async fn manifest_for_pull_if_any(
        &self,
        r: &ImageRef,
        tag: &str,
    ) -> Result<Option<FetchedManifest>> {
        self.fetch_manifest(r, tag, Scope::Pull, true).await
    }

    /// Opens blob `digest` of `size` bytes from byte `offset` (above 0, a
    /// resumed download) as one stream; the caller verifies size and digest.
    /// A big blob comes over several connections in ranges ([`ranges`]);
    /// a registry that ignores `Range` sends everything, and the bytes
    /// before `offset` are skipped here, so the caller always gets the rest.
    pub async fn blob_from(
        self: &Arc<Self>,
        r: &ImageRef,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> Result<ByteStream> {
        for (mref, ep) in self.mirrors_for(r, true)? {
            if !ep.pull
                || self
                    .bad
                    .lock()
                    .unwrap()
                    .contains(&(ep.host.clone(), digest.clone()))
            {
                continue;
            }
            // registries.conf: blobs from where the manifest came, only.
            let chosen = self
                .image_host
                .lock()
                .unwrap()
                .get(&format!("{}/{}", r.registry, r.repository))
                .cloned();
            if ep.whole_image && !ep.upstream && chosen.as_deref() != Some(ep.host.as_str()) {
                continue;
            }
            let at = BlobAt {
                r: mref,
                url: ep.url("blobs", &digest.to_string()),
                via: Some(ep.clone()),
                digest: digest.clone(),
                size,
            };
            if ep.upstream {
                self.not_served_by_a_mirror(digest, offset);
                return self.blob_at(at, offset).await;
            }
            match self.blob_at(at, offset).await {
                Ok(stream) => {
                    tracing::info!(mirror = %ep.host, blob = %digest, "from a mirror");
                    self.served_by
                        .lock()
                        .unwrap()
                        .insert(digest.clone(), ep.host.clone());
                    return Ok(self.left_when_broken(stream, &ep.host, digest));
                }
                Err(e) => {
                    tracing::info!(mirror = %ep.host, blob = %digest, "mirror failed ({e:#}); trying the next host")
                }
            }
        }
        self.not_served_by_a_mirror(digest, offset);
        let at = BlobAt {
            r: r.clone(),
            url: format!("{}/blobs/{digest}", self.base_url(r)),
            via: None,
            digest: digest.clone(),
            size,
        };
        self.blob_at(at, offset).await
    }

    /// The registry serves `digest` from `offset`: from the start, no
    /// mirror is to blame for its bytes; resumed, the mirror that served
    /// the first part still is (its bytes are in the digest too).
    fn not_served_by_a_mirror(&self, digest: &Digest, offset: u64) {
        if offset == 0 {
            self.served_by.lock().unwrap().remove(digest);
        }
    }

    /// A mirror's blob stream that, when it breaks off mid-body, leaves the
    /// mirror as a dead one is left: skipped for that blob (and, stalled or
    /// trickling, for every request of this process), so the caller's resume
    /// goes to the next host at the bytes it has verified instead of asking
    /// the mirror again until the pull fails.
    fn left_when_broken(
        self: &Arc<Self>,
        stream: ByteStream,
        host: &str,
        digest: &Digest,
    ) -> ByteStream {
        let (client, host, digest) = (self.clone(), host.to_string(), digest.clone());
        Box::pin(stream.inspect(move |item| {
            let Err(e) = item else { return };
            tracing::warn!(mirror = %host, blob = %digest, "the mirror broke off the blob ({e}); resuming from the next host");
            client
                .bad
                .lock()
                .unwrap()
                .insert((host.clone(), digest.clone()));
            if e.kind() == std::io::ErrorKind::TimedOut {
                client.mirror_down(&host);
            }
        }))
    }

    /// Opens the blob at one host. A big one is asked for its first range;
    /// when the host honours `Range` and that range came slowly, the rest
    /// follows in parallel ranges, else as one stream. Every blob request
    /// holds one of the host's connection permits while it is open.
    async fn blob_at(self: &Arc<Self>, at: BlobAt, offset: u64) -> Result<ByteStream> {
        let limits = self.options.ranges;
        let split = limits.splits(at.size.saturating_sub(offset));
        let (start, end) = limits.first(offset, at.size);
        // Memory before a connection, as every range takes them.
        let share = match split {
            true => Some(ranges::window_share(end - start).await?),
            false => None,
        };
        let host = ranges::host_permits(at.r.api_host(), limits.per_host);
        let conn = ranges::connection(&host).await?;
        let range = match (split, offset) {
            (true, _) => Some(format!("bytes={start}-{}", end - 1)),
            (false, 0) => None,
            (false, _) => Some(format!("bytes={offset}-")),
        };
        let resp = self
            .send_via(&at.r, Scope::Pull, at.via.as_ref(), |c| {
                let req = with_headers(c.get(&at.url), at.via.as_ref());
                match &range {
                    Some(range) => req.header(RANGE, range),
                    None => req,
                }
            })
            .await?;
        let resp = self
            .check_status(resp, &at.r, &at.what(), Scope::Pull)
            .await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        if let (Some(share), true) = (share, partial) {
            at.check_range(&resp, offset)?;
            let redirected = !same_origin(resp.url(), &reqwest::Url::parse(&at.url)?);
            let location = Arc::new(Mutex::new(redirected.then(|| resp.url().clone())));
            // The first range's speed, from its first bytes to its last: the
            // time to the first byte is the registry's, not the link's.
            let first_bytes: Arc<OnceLock<(Instant, usize)>> = Arc::default();
            let seen = first_bytes.clone();
            let body = Box::pin(self.body_stream(resp, 0).inspect(move |c| {
                if let Ok(c) = c {
                    seen.get_or_init(|| (Instant::now(), c.len()));
                }
            }));
            // A mirror's range is not asked again: the next host is the retry.
            let retries = if at.mirror() { 0 } else { self.options.retries };
            let (size, digest) = (at.size, at.digest.clone());
            let (client, at) = (self.clone(), Arc::new(at));
            let open: ranges::OpenRange = Arc::new(move |start, end| {
                let (client, at, location) = (client.clone(), at.clone(), location.clone());
                Box::pin(async move { client.open_range(&at, &location, start, end).await })
            });
            let first = ranges::fetch_range(
                start..end,
                limits.range_size(),
                Some((body, conn)),
                host.clone(),
                open.clone(),
                retries,
                share,
            )
            .await?;
            // (All of it in one read: as fast as can be told.)
            let rate = match first_bytes.get() {
                Some((at, n)) if (*n as u64) < end - start => {
                    (end - start - *n as u64) as f64 / at.elapsed().as_secs_f64().max(1e-6)
                }
                _ => f64::INFINITY,
            };
            if rate < limits.split_below as f64 {
                tracing::debug!(blob = %digest, rate = rate as u64, "the rest in parallel ranges");
                return Ok(ranges::parallel(
                    first, offset, size, limits, host, open, retries,
                ));
            }
            tracing::debug!(blob = %digest, rate = rate as u64, "one connection keeps up; the rest as one stream");
            let conn = ranges::connection(&host).await?;
            let rest = open(end, size).await?;
            let first = futures_util::stream::iter(ranges::hand_off(first).map(Ok));
            return Ok(ranges::holding(Box::pin(first.chain(rest)), conn));
        }
        let skip = if offset > 0 && !partial {
            tracing::info!(blob = %at.digest, "the registry ignored Range; skipping the {offset} bytes already received");
            offset
        } else {
            if split {
                tracing::info!(blob = %at.digest, "the registry ignored Range; one stream");
            }
            0
        };
        Ok(ranges::holding(self.body_stream(resp, skip), conn))
    }

    /// Opens bytes `start..end` of a blob being fetched in ranges: at the
    /// URL the registry last redirected to (object storage; presigned, so
    /// no credentials), or when there is none or it refuses (an expired
    /// URL answers 403), at the registry again.
    async fn open_range(
        &self,
        at: &BlobAt,
        location: &Mutex<Option<reqwest::Url>>,
        start: u64,
        end: u64,
    ) -> Result<ByteStream> {
        let range = format!("bytes={start}-{}", end - 1);
        let redirect = location.lock().unwrap().clone();
        if let Some(url) = redirect {
            match self.http.get(url).header(RANGE, &range).send().await {
                Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                    at.check_range(&resp, start)?;
                    return Ok(self.body_stream(resp, 0));
                }
                Ok(resp) => {
                    tracing::info!(blob = %at.digest, status = %resp.status(), "the redirect target refused a range (an expired URL?); asking the registry again")
                }
                Err(e) => {
                    tracing::info!(blob = %at.digest, "the redirect target failed ({}); asking the registry again", root_cause(&e))
                }
            }
            *location.lock().unwrap() = None;
        }
        let resp = self
            .send_via(&at.r, Scope::Pull, at.via.as_ref(), |c| {
                with_headers(c.get(&at.url), at.via.as_ref()).header(RANGE, &range)
            })
            .await?;
        let resp = self
            .check_status(resp, &at.r, &at.what(), Scope::Pull)
            .await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            bail!(
                "{}: asked for bytes {start}-{}, the registry answered {} with the whole blob",
                at.what(),
                end - 1,
                resp.status()
            );
        }
        at.check_range(&resp, start)?;
        if !same_origin(resp.url(), &reqwest::Url::parse(&at.url)?) {
            *location.lock().unwrap() = Some(resp.url().clone());
        }
        Ok(self.body_stream(resp, 0))
    }

    /// A blob response's body as a stream: read stalls and trickles are
    /// errors in words; the first `skip` bytes are dropped.
    fn body_stream(&self, resp: reqwest::Response, mut skip: u64) -> ByteStream {
        let stall = self
            .options
            .stall_timeout
            .unwrap_or(Duration::from_secs(60));
        let mut rate = self.throughput();
        let stream = resp.bytes_stream().filter_map(move |chunk| {
            let out = match chunk {
                // Stalls and trickles are `TimedOut`: a mirror that does
                // either is left for good (see `left_when_broken`).
                Err(e) => {
                    let (kind, cause) = if e.is_timeout() {
                        (
                            std::io::ErrorKind::TimedOut,
                            format!("no data for {}s (OCIMODEL_STALL_TIMEOUT)", stall.as_secs()),
                        )
                    } else {
                        (std::io::ErrorKind::Other, root_cause(&e))
                    };
                    Some(Err(std::io::Error::new(
                        kind,
                        format!("download interrupted: {cause}"),
                    )))
                }
                Ok(mut b) => match rate.observe(b.len()) {
                    Err(e) => Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("download interrupted: {e}"),
                    ))),
                    Ok(()) if skip > 0 => {
                        let n = skip.min(b.len() as u64) as usize;
                        skip -= n as u64;
                        let _ = b.split_to(n);
                        (!b.is_empty()).then_some(Ok(b))
                    }
                    Ok(()) => Some(Ok(b)),
                },
            };
            futures_util::future::ready(out)
        });
        Box::pin(stream)
    }
}

/// A model registry's API is read as registry answers are.
impl crate::model_registry::ApiReader for RegistryClient {
    fn http(&self) -> &reqwest::Client {
        self.http()
    }

    fn read_body<'a>(
        &'a self,
        resp: reqwest::Response,
        cap: u64,
        what: &'a str,
    ) -> impl std::future::Future<Output = Result<Bytes>> + Send + 'a {
        self.read_body(resp, cap, what)
    }
}

/// A blob at one host (a mirror or the registry): where and what to ask.
struct BlobAt {
    /// The repository the requests authenticate as.
    r: ImageRef,
    url: String,
    /// The endpoint it is reached through (a mirror, or the registry's
    /// configured `server`), with its scheme, transport and headers; `None`:
    /// the registry as itself.
    via: Option<Endpoint>,
    digest: Digest,
    size: u64,
}

/// `host` (`HOST[:PORT]`) at the node's address `ip` when HOST is the
/// node's loopback (`127.0.0.1`, `localhost`, `[::1]`), the whole of it:
/// `127.0.0.10:4001` and `localhost.example` are other hosts.
fn on_node(host: &str, ip: &str) -> Option<String> {
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => {
            let (name, rest) = v6.split_once(']')?;
            (format!("[{name}]"), rest)
        }
        None => {
            let name = host.split(':').next().unwrap_or(host);
            (name.to_string(), &host[name.len()..])
        }
    };
    if !["127.0.0.1", "localhost", "[::1]"].contains(&name.as_str()) {
        return None;
    }
    if !(port.is_empty() || port.starts_with(':')) {
        return None;
    }
    let ip = ip.trim();
    Some(if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]{port}")
    } else {
        format!("{ip}{port}")
    })
}

/// A request with an endpoint's own headers (hosts.toml `header`).
fn with_headers(req: reqwest::RequestBuilder, via: Option<&Endpoint>) -> reqwest::RequestBuilder {
    via.map_or(&[][..], |ep| &ep.headers[..])
        .iter()
        .fold(req, |req, (k, v)| req.header(k.as_str(), v.as_str()))
}

impl BlobAt {
    /// A mirror's failures move on to the next host, never retried.
    fn mirror(&self) -> bool {
        self.via.as_ref().is_some_and(|ep| !ep.upstream)
    }

    fn what(&self) -> String {
        format!(
            "blob {} of {}/{}",
            self.digest, self.r.registry, self.r.repository
        )
    }

    /// A 206 answer must start where it was asked to: bytes from anywhere
    /// else would be hashed in the wrong place.
    fn check_range(&self, resp: &reqwest::Response, start: u64) -> Result<()> {
        let header = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let served = header
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('-'))
            .and_then(|(first, _)| first.trim().parse::<u64>().ok());
        if served != Some(start) {
            bail!(
                "{}: asked for bytes from {start}, the server answered Content-Range '{}'",
                self.what(),
                crate::text::escape_controls(header)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::on_node;

    #[test]
    fn the_node_ip_replaces_a_whole_loopback_host_only() {
        let ip = "10.0.0.7";
        for (host, want) in [
            ("127.0.0.1:4001", Some("10.0.0.7:4001")),
            ("127.0.0.1", Some("10.0.0.7")),
            ("localhost:5000", Some("10.0.0.7:5000")),
            ("[::1]:4001", Some("10.0.0.7:4001")),
            ("127.0.0.10:4001", None),
            ("127.0.0.1.example:4001", None),
            ("localhost.example:5000", None),
            ("localhostx", None),
            ("[::1]x", None),
            ("[::10]:4001", None),
            ("mirror.example:4001", None),
        ] {
            assert_eq!(on_node(host, ip).as_deref(), want, "{host}");
        }
        assert_eq!(
            on_node("127.0.0.1:4001", "fd00::7").as_deref(),
            Some("[fd00::7]:4001"),
            "an IPv6 node address is bracketed"
        );
    }
}
