//! Opening a blob at one host (a mirror or the registry): whole, from an
//! offset (a resumed download), or in parallel ranges ([`super::ranges`])
//! when the host honours `Range` and one connection is slow; and the body
//! as a stream whose stalls and trickles are errors in words. Which host is
//! asked, and who is blamed for its bytes, is [`super::mirror`]'s.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{bail, Result};
use futures_util::StreamExt;
use reqwest::header::RANGE;
use reqwest::StatusCode;

use super::transport::same_origin;
use super::{ranges, with_headers, ByteStream, RegistryClient, Scope};
use crate::digest::Digest;
use crate::error::root_cause;
use crate::mirrors::Endpoint;
use crate::reference::ImageRef;

impl RegistryClient {
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
        let insecure = self.is_insecure(&r.registry);
        for (mref, ep) in self.route.endpoints_for(r, true, insecure)? {
            if !self.route.may_serve_blob(r, &ep, digest) {
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
                self.route.served_by_registry(digest, offset);
                return self.blob_at(at, offset).await;
            }
            match self.blob_at(at, offset).await {
                Ok(stream) => {
                    tracing::info!(mirror = %ep.host, blob = %digest, "from a mirror");
                    self.route.served(digest, &ep.host);
                    return Ok(self.left_when_broken(stream, &ep.host, digest));
                }
                Err(e) => {
                    tracing::info!(mirror = %ep.host, blob = %digest, "mirror failed ({e:#}); trying the next host")
                }
            }
        }
        self.route.served_by_registry(digest, offset);
        let at = BlobAt {
            r: r.clone(),
            url: format!("{}/blobs/{digest}", self.base_url(r)),
            via: None,
            digest: digest.clone(),
            size,
        };
        self.blob_at(at, offset).await
    }

    /// Bytes `start..end` of a blob, **unverified**: a hint read ahead of
    /// its download (what a one-file tar layer holds, for a listing). One
    /// request to the first host that may serve the blob, holding one of its
    /// connections; from a host that ignores `Range`, only a head is read.
    pub async fn blob_bytes(
        self: &Arc<Self>,
        r: &ImageRef,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>> {
        let insecure = self.is_insecure(&r.registry);
        let via = self
            .route
            .endpoints_for(r, true, insecure)?
            .into_iter()
            .find(|(_, ep)| self.route.may_serve_blob(r, ep, digest));
        let at = match via {
            Some((mref, ep)) => BlobAt {
                r: mref,
                url: ep.url("blobs", &digest.to_string()),
                via: Some(ep),
                digest: digest.clone(),
                size: end,
            },
            None => BlobAt {
                r: r.clone(),
                url: format!("{}/blobs/{digest}", self.base_url(r)),
                via: None,
                digest: digest.clone(),
                size: end,
            },
        };
        let _conn = ranges::connection(&self.host_permits.of(at.r.api_host())).await?;
        let range = format!("bytes={start}-{}", end.saturating_sub(1));
        let resp = self
            .send_via(&at.r, Scope::Pull, at.via.as_ref(), |c| {
                with_headers(c.get(&at.url), at.via.as_ref()).header(RANGE, &range)
            })
            .await?;
        let mut resp = self
            .check_status(resp, &at.r, &at.what(), Scope::Pull)
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => at.check_range(&resp, start)?,
            // The whole blob: its head is what was asked for.
            _ if start == 0 => {}
            s => bail!(
                "{}: asked for bytes {range}, the registry answered {s}",
                at.what()
            ),
        }
        let want = (end - start) as usize;
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            match resp.chunk().await? {
                Some(c) => out.extend_from_slice(&c),
                None => break,
            }
        }
        out.truncate(want);
        Ok(out)
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
            let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
            client.route.broke_off(&host, &digest, timed_out);
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
        let host = self.host_permits.of(at.r.api_host());
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
            let api_host = at.r.api_host().to_string();
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
            );
            if self.host_permits.slow(&api_host) {
                tracing::debug!(blob = %digest, "split from the start: this host's links were slow before");
                return Ok(ranges::parallel(
                    Box::pin(first),
                    offset,
                    size,
                    limits,
                    host,
                    open,
                    retries,
                ));
            }
            let first = first.await?;
            // (All of it in one read: as fast as can be told.)
            let rate = match first_bytes.get() {
                Some((at, n)) if (*n as u64) < end - start => {
                    (end - start - *n as u64) as f64 / at.elapsed().as_secs_f64().max(1e-6)
                }
                _ => f64::INFINITY,
            };
            let slow = rate < limits.split_below as f64;
            self.host_permits.set_slow(&api_host, slow);
            if slow {
                tracing::debug!(blob = %digest, rate = rate as u64, "the rest in parallel ranges");
                let first: ranges::First = Box::pin(std::future::ready(Ok(first)));
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
        let stall = self.options.stall_timeout;
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
