//! Sending requests: retries with backoff, credentials only to the
//! registry's own origin, the minimum-throughput rule, our resolver (DNS
//! failures typed), and transport errors in words.

use super::*;

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
pub(super) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    Some(Duration::from_secs(
        v.trim().parse::<u64>().unwrap_or(1).min(60),
    ))
}

/// Redirects as reqwest follows them by default (at most 10), but never
/// from https to plain http: a private model and its redirect URL (often a
/// presigned one) would travel in clear. A registry reached over plain http
/// (listed insecure) may redirect to plain http.
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            // Host and port only: the path and query may be a signature.
            let to = attempt.url().host_str().unwrap_or("?").to_string();
            let to = match attempt.url().port_or_known_default() {
                Some(port) => format!("{to}:{port}"),
                None => to,
            };
            return attempt.error(PlainRedirect { to });
        }
        if attempt.previous().len() > 10 {
            return attempt.error("too many redirects (more than 10)");
        }
        attempt.follow()
    })
}

/// An https answer redirected to plain http.
#[derive(Debug, thiserror::Error)]
#[error("redirected from https to plain http ({to}); refusing, as the content and the redirect URL would travel in clear")]
pub(super) struct PlainRedirect {
    to: String,
}

/// Answers worth asking again: rate limited (429), or a gateway that
/// could not reach the registry (502, 503, 504). (Certificate and handshake
/// failures never are: see `error::is_permanent_transport_failure`.)
pub(super) fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

impl RegistryClient {
    /// Refuses a URL the registry named (`what`) that would move an https
    /// registry's traffic to plain http.
    pub(super) fn no_downgrade(&self, r: &ImageRef, url: &str, what: &str) -> Result<()> {
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
    pub(super) async fn send(
        &self,
        r: &ImageRef,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.send_as(r, Scope::Pull, build).await
    }

    /// Sends a request needing `scope` on the
    /// repository. `build` may be called twice (before and after the
    /// challenge), so it must make a fresh request each time.
    pub(super) async fn send_as(
        &self,
        r: &ImageRef,
        scope_kind: Scope,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.send_via(r, scope_kind, None, build).await
    }

    /// [`Self::send_as`] to `r.registry` reached through `via`, an endpoint
    /// of the configuration (a mirror, or a registry's `server`): its
    /// scheme, TLS and dial settings, and a mirror's no-retry rule, apply to
    /// this request only, never to the host in another role.
    pub(super) async fn send_via(
        &self,
        r: &ImageRef,
        scope_kind: Scope,
        via: Option<&Endpoint>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope = format!("repository:{}:{}", r.repository, scope_kind.actions());
        let mut answered = false;
        let mut attempt = 0;
        let base = match via {
            Some(ep) => format!(
                "{}://{}{}/{}",
                ep.scheme,
                ep.host,
                ep.api_root.trim_end_matches('/'),
                ep.repository
            ),
            None => self.base_url(r),
        };
        let origin = reqwest::Url::parse(&base)
            .map_err(|e| anyhow!("registry {}: bad address: {e}", r.registry))?;
        let plain = origin.scheme() == "http";
        let mut authorization = self.cached_authorization(r, &scope, plain);
        let http = self.client_for(via)?;
        let mirror = via.is_some_and(|ep| !ep.upstream);
        let retries = if mirror { 0 } else { self.options.retries };
        loop {
            let mut req = build(&http)
                .build()
                .map_err(|e| anyhow!("registry {}: cannot build a request: {e}", r.registry))?;
            // Credentials go to the registry's own origin only: a `Link` or
            // upload `Location` naming another host (or plain http) gets none.
            let ours = same_origin(req.url(), &origin);
            if let (Some(a), true) = (&authorization, ours) {
                req.headers_mut().insert(AUTHORIZATION, a.clone());
            }
            let resp = match http.execute(req).await {
                Ok(resp) => resp,
                Err(e) if mirror && (e.is_connect() || e.is_timeout()) => {
                    self.route.down(&r.registry);
                    return Err(self.transport_error(r, &base, e));
                }
                Err(e)
                    if attempt < retries
                        && (e.is_connect() || e.is_timeout() || e.is_request())
                        && !crate::error::is_permanent_transport_failure(&e) =>
                {
                    attempt += 1;
                    let wait = backoff(attempt);
                    tracing::warn!(registry = %r.registry, attempt, "request failed ({}); retrying in {:.1}s", root_cause(&e), wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(self.transport_error(r, &base, e)),
            };
            if is_transient(resp.status()) && attempt < retries {
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
            authorization = Some(self.answer(r, &scope, &challenge, plain).await?);
        }
    }

    pub(super) fn throughput(&self) -> Throughput {
        Throughput::new(self.options.stall_timeout, self.options.min_rate)
    }

    /// `e`, from a request to `base` (the registry's or an endpoint's API
    /// URL for the repository), in words.
    pub(super) fn transport_error(
        &self,
        r: &ImageRef,
        base: &str,
        e: reqwest::Error,
    ) -> anyhow::Error {
        if e.is_redirect() {
            return anyhow!("registry {}: {}", r.registry, root_cause(&e));
        }
        if e.is_timeout() && !e.is_connect() {
            let stall = self.options.stall_timeout;
            return anyhow!(
                "registry {} sent no data for {}s (OCIMODEL_STALL_TIMEOUT); it is overloaded or stuck",
                r.registry,
                stall.as_secs()
            );
        }
        if e.is_connect() && e.is_timeout() {
            let limit = self.options.connect_timeout;
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
        if crate::error::is_plain_http_answer(&e) {
            return anyhow!(
                "cannot reach registry {} ({}): the server answered plain HTTP; use --insecure-registry {} (OCIMODEL_INSECURE_REGISTRIES) if it serves plain HTTP",
                r.registry,
                self.base_url(r),
                r.registry
            );
        }
        let cause = root_cause(&e);
        let hint = if base.starts_with("http:") {
            "check the address and that the registry is running"
        } else {
            "check the address, the CA bundle (OCIMODEL_CA_BUNDLE), or list a plain-HTTP registry in OCIMODEL_INSECURE_REGISTRIES"
        };
        anyhow!(
            "cannot reach registry {} ({base}): {cause}; {hint}",
            r.registry
        )
    }
}

/// Whether name resolution failed (hyper-util reports "dns error").
/// The system resolver (getaddrinfo, as reqwest's default), with failures
/// as [`crate::error::DnsError`] so they are told apart by type.
pub(super) struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let lookup = host.clone();
            let found = tokio::task::spawn_blocking(move || getaddrinfo(&lookup))
                .await
                .unwrap_or_else(|e| Err((false, std::io::Error::other(e))));
            match found {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err((no_such_host, source)) => Err(Box::new(crate::error::DnsError {
                    host,
                    no_such_host,
                    source,
                })
                    as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// The system resolver, as std's `lookup_host` calls it, but keeping
/// what std drops: whether the answer was "no such name" (`EAI_NONAME`,
/// `EAI_NODATA`: permanent) or a failure to ask (`EAI_AGAIN`, ...).
fn getaddrinfo(
    host: &str,
) -> std::result::Result<Vec<std::net::SocketAddr>, (bool, std::io::Error)> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let c_host = std::ffi::CString::new(host)
        .map_err(|_| (true, std::io::Error::other("a NUL byte in the host name")))?;
    // SAFETY: all-zero is a valid addrinfo (null pointers, no flags).
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: a NUL-terminated host, no service, valid hints; `res` is
    // written only on success and freed below.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        if rc == libc::EAI_SYSTEM {
            return Err((false, std::io::Error::last_os_error()));
        }
        // SAFETY: gai_strerror returns a static NUL-terminated string.
        let detail = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(rc)) }
            .to_string_lossy()
            .into_owned();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let no_such_host = rc == libc::EAI_NONAME || rc == libc::EAI_NODATA;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let no_such_host = rc == libc::EAI_NONAME;
        return Err((
            no_such_host,
            std::io::Error::other(format!("failed to lookup address information: {detail}")),
        ));
    }
    let mut addrs = Vec::new();
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getaddrinfo returned; its
        // ai_addr points to a sockaddr of the family it names.
        unsafe {
            let ai = &*cur;
            if !ai.ai_addr.is_null() {
                match ai.ai_family {
                    libc::AF_INET => {
                        let sa = &*(ai.ai_addr as *const libc::sockaddr_in);
                        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
                        addrs.push(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ai.ai_addr as *const libc::sockaddr_in6);
                        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                        addrs.push(SocketAddr::V6(SocketAddrV6::new(
                            ip,
                            0,
                            sa.sin6_flowinfo,
                            sa.sin6_scope_id,
                        )));
                    }
                    _ => {}
                }
            }
            cur = ai.ai_next;
        }
    }
    // SAFETY: `res` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(res) };
    Ok(addrs)
}

/// Reads a whole response body, refusing more than `cap` bytes.
pub(super) async fn read_capped(
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

pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Same scheme, host and port (default ports filled in).
pub(super) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}
