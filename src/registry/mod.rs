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
//! [`ranges`] (one blob over several connections), [`blob`] (opening a
//! blob at one host, whole or in ranges), [`mirror`] (which host serves
//! what, and who is blamed), [`referrers`], [`push`]; the client, its TLS
//! roots and pulls of manifests are here.

mod auth;
mod blob;
mod errors;
mod mirror;
mod push;
mod ranges;
mod referrers;
mod transport;

use auth::{HostAuth, Token};
pub use mirror::BadMirror;
use mirror::MirrorRoute;
pub use ranges::{Limits, WINDOW as RANGE_WINDOW};
use referrers::resolve_link;
pub use transport::backoff;
use transport::{read_capped, same_origin, urlencode, Resolver};

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
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

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host[:port]` entries served over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Every registry over plain HTTP (`KSERVE_OCI_INSECURE_REGISTRY=true`).
    pub insecure_all: bool,
    /// Extra PEM bundles to trust besides the compiled-in roots.
    pub ca_bundles: Vec<PathBuf>,
    /// How long a TCP (and TLS) connection may take to open.
    pub connect_timeout: Duration,
    /// A read that waits longer than this for bytes fails (a stalled
    /// registry must not hang an init container forever).
    pub stall_timeout: Duration,
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
    /// Credentials from the workload's cloud identity for cloud registries,
    /// from these variables (read where the other settings are read); `None`
    /// with `OCIMODEL_CLOUD_AUTH=off` (see [`crate::cloud`]).
    pub cloud: Option<crate::cloud::CloudEnv>,
}

pub struct RegistryClient {
    http: reqwest::Client,
    creds: CredentialStore,
    options: ClientOptions,
    /// The node's mirrors, and what this process learned about them.
    route: MirrorRoute,
    /// Blob requests open at once per host (`OCIMODEL_HOST_CONNECTIONS`).
    host_permits: ranges::HostPermits,
    /// What each registry asked for, so later requests authenticate up front.
    host_auth: Mutex<HashMap<String, HostAuth>>,
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
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.stall_timeout)
            .user_agent(concat!("ocimodel/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let cloud = options
            .cloud
            .clone()
            .map(|env| crate::cloud::Ambient::new(env, http.clone(), roots.clone()))
            .transpose()?;
        let mut options = options;
        let route = MirrorRoute::new(
            std::mem::take(&mut options.mirrors),
            options.node_ip.clone(),
            mirror::Transport {
                roots,
                connect_timeout: options.connect_timeout,
                stall_timeout: options.stall_timeout,
            },
        );
        let host_permits = ranges::HostPermits::new(options.ranges.per_host);
        Ok(RegistryClient {
            cloud,
            http,
            creds,
            options,
            route,
            host_permits,
            host_auth: Mutex::new(HashMap::new()),
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

    /// The HTTP client for requests through `via` (an endpoint with its own
    /// TLS or dial settings), else the shared one.
    fn client_for(&self, via: Option<&Endpoint>) -> Result<reqwest::Client> {
        Ok(self
            .route
            .client_for(via)?
            .unwrap_or_else(|| self.http.clone()))
    }

    /// Blames the mirror that served `digest`, if one did: it is skipped
    /// for that blob from now on. Returns it.
    pub fn blame_mirror(&self, digest: &Digest) -> Option<BadMirror> {
        self.route.blame(digest)
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
            let insecure = self.is_insecure(&r.registry);
            for (mref, ep) in self.route.endpoints_for(r, by_digest, insecure)? {
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
                        self.route.manifest_from(r, &ep);
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

/// A request with an endpoint's own headers (hosts.toml `header`).
fn with_headers(req: reqwest::RequestBuilder, via: Option<&Endpoint>) -> reqwest::RequestBuilder {
    via.map_or(&[][..], |ep| &ep.headers[..])
        .iter()
        .fold(req, |req, (k, v)| req.header(k.as_str(), v.as_str()))
}
