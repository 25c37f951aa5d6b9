//! Mirror routing: which hosts are tried for a repository before the
//! registry (the node's configuration, [`crate::mirrors`]), and what this
//! process learned about them while pulling.
//!
//! [`MirrorRoute`] is the one owner of "which host serves this blob, and
//! who is blamed". Its reads ([`MirrorRoute::endpoints_for`],
//! [`MirrorRoute::may_serve_blob`], [`MirrorRoute::client_for`]) never record
//! an event; they keep only caches of what the configuration says (the
//! parsed endpoints, the endpoints' HTTP clients), so hosts.toml is not
//! parsed and a mirror's TLS client is not built for every blob. Everything
//! that happened is recorded by name: [`MirrorRoute::served`],
//! [`MirrorRoute::served_by_registry`], [`MirrorRoute::manifest_from`],
//! [`MirrorRoute::blame`], [`MirrorRoute::broke_off`], [`MirrorRoute::down`].

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

use super::transport::{self, Resolver};
use crate::digest::Digest;
use crate::mirrors::{Endpoint, Mirrors};
use crate::reference::ImageRef;

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

/// What a mirror's own HTTP client starts from: the registry client's CA
/// roots and timeouts (hosts.toml adds CA files, client certificates,
/// `skip_verify` and `dial_timeout` per endpoint).
pub(super) struct Transport {
    pub roots: Vec<reqwest::Certificate>,
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,
}

/// The mirrors of one client, and what happened with them.
pub(super) struct MirrorRoute {
    config: Mirrors,
    /// A mirror on the node's loopback (Dragonfly's 127.0.0.1:4001) is
    /// reached at this address from a pod (`OCIMODEL_NODE_IP`).
    node_ip: Option<String>,
    transport: Transport,
    /// Clients for endpoints with their own TLS or dial settings, by those
    /// settings: used for requests to the host in that endpoint's role only.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// The configuration's endpoints per (registry, repository, by digest,
    /// scheme), read once.
    endpoints: Mutex<HashMap<EndpointsKey, Vec<Endpoint>>>,
    /// Mirrors that could not be reached: not asked again by this process.
    down: Mutex<HashSet<String>>,
    /// Which mirror served each blob (to blame it if the digest fails).
    served_by: Mutex<HashMap<Digest, String>>,
    /// registries.conf: the host that served each repository's manifest,
    /// which then serves its blobs (containers/image's whole-image choice).
    image_host: Mutex<HashMap<String, String>>,
    /// (mirror host, blob) pairs not to ask again: the mirror served bad
    /// bytes for that blob, or broke off in the middle of it.
    refused: Mutex<HashSet<(String, Digest)>>,
}

impl MirrorRoute {
    pub fn new(config: Mirrors, node_ip: Option<String>, transport: Transport) -> MirrorRoute {
        MirrorRoute {
            config,
            node_ip,
            transport,
            clients: Mutex::default(),
            endpoints: Mutex::default(),
            down: Mutex::default(),
            served_by: Mutex::default(),
            image_host: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    // Reads.

    /// The hosts to try before the registry, for pulls of `r` (reached as
    /// itself over plain HTTP when `insecure`): each as the `ImageRef` its
    /// requests authenticate as, and its endpoint. Mirrors that are down
    /// are left out; the registry itself is in the list only where the
    /// configuration moved it (then it is the last one, and its answer is
    /// the answer).
    pub fn endpoints_for(
        &self,
        r: &ImageRef,
        by_digest: bool,
        insecure: bool,
    ) -> Result<Vec<(ImageRef, Endpoint)>> {
        let scheme = if insecure { "http" } else { "https" };
        let key = (r.registry.clone(), r.repository.clone(), by_digest, scheme);
        let cached = self.endpoints.lock().unwrap().get(&key).cloned();
        let list = match cached {
            Some(list) => list,
            None => {
                let list = self.config.endpoints(
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
                    || (ep.scheme == "http") != insecure;
                if !moved {
                    continue;
                }
            }
            if let Some(ip) = &self.node_ip {
                // The node's loopback is not the pod's.
                if let Some(host) = on_node(&ep.host, ip) {
                    ep.host = host;
                }
            }
            if !ep.upstream && self.down.lock().unwrap().contains(&ep.host) {
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

    /// Whether `ep` (one of [`Self::endpoints_for`]) may be asked for blob
    /// `digest` of `r`: it pulls, it has not failed that blob, and under
    /// registries.conf it is the host the manifest came from.
    pub fn may_serve_blob(&self, r: &ImageRef, ep: &Endpoint, digest: &Digest) -> bool {
        if !ep.pull
            || self
                .refused
                .lock()
                .unwrap()
                .contains(&(ep.host.clone(), digest.clone()))
        {
            return false;
        }
        let chosen = self.image_host.lock().unwrap().get(&image_key(r)).cloned();
        !(ep.whole_image && !ep.upstream && chosen.as_deref() != Some(ep.host.as_str()))
    }

    /// The HTTP client for requests through `via` (an endpoint with its own
    /// TLS or dial settings); `None` when the client's shared one serves it.
    pub fn client_for(&self, via: Option<&Endpoint>) -> Result<Option<reqwest::Client>> {
        let Some(ep) = via.filter(|ep| ep.own_transport()) else {
            return Ok(None);
        };
        let key = format!(
            "{:?}",
            (ep.skip_verify, &ep.ca, &ep.client, ep.dial_timeout)
        );
        if let Some(c) = self.clients.lock().unwrap().get(&key) {
            return Ok(Some(c.clone()));
        }
        let client = self.endpoint_client(ep)?;
        self.clients.lock().unwrap().insert(key, client.clone());
        Ok(Some(client))
    }

    /// A client with a mirror's own CA files, client certificates,
    /// `skip_verify` and `dial_timeout` (hosts.toml).
    fn endpoint_client(&self, ep: &Endpoint) -> Result<reqwest::Client> {
        let mut roots = self.transport.roots.clone();
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
            .connect_timeout(ep.dial_timeout.unwrap_or(self.transport.connect_timeout))
            .read_timeout(self.transport.stall_timeout)
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

    // Records.

    /// `ep` served `r`'s manifest: under registries.conf, its blobs come
    /// from there too.
    pub fn manifest_from(&self, r: &ImageRef, ep: &Endpoint) {
        if ep.whole_image {
            self.image_host
                .lock()
                .unwrap()
                .insert(image_key(r), ep.host.clone());
        }
    }

    /// Mirror `host` is serving blob `digest`: it is blamed if the digest
    /// fails.
    pub fn served(&self, digest: &Digest, host: &str) {
        self.served_by
            .lock()
            .unwrap()
            .insert(digest.clone(), host.to_string());
    }

    /// The registry serves `digest` from `offset`: from the start, no
    /// mirror is to blame for its bytes; resumed, the mirror that served
    /// the first part still is (its bytes are in the digest too).
    pub fn served_by_registry(&self, digest: &Digest, offset: u64) {
        if offset == 0 {
            self.served_by.lock().unwrap().remove(digest);
        }
    }

    /// Blames the mirror that served `digest`, if one did: it is skipped
    /// for that blob from now on. Returns it.
    pub fn blame(&self, digest: &Digest) -> Option<BadMirror> {
        let host = self.served_by.lock().unwrap().remove(digest)?;
        self.refused
            .lock()
            .unwrap()
            .insert((host.clone(), digest.clone()));
        tracing::warn!(mirror = %host, blob = %digest, "the mirror served content that does not match its digest; not asking it again");
        Some(BadMirror {
            host,
            digest: digest.clone(),
        })
    }

    /// Mirror `host` broke off blob `digest` mid-body: skipped for that
    /// blob, and for every request when it stalled or trickled
    /// (`timed_out`), so the caller's resume goes to the next host.
    pub fn broke_off(&self, host: &str, digest: &Digest, timed_out: bool) {
        self.refused
            .lock()
            .unwrap()
            .insert((host.to_string(), digest.clone()));
        if timed_out {
            self.down(host);
        }
    }

    /// A mirror that could not be reached is skipped from now on.
    pub fn down(&self, host: &str) {
        if self.down.lock().unwrap().insert(host.to_string()) {
            tracing::warn!(mirror = %host, "mirror unreachable; not asking it again");
        }
    }
}

/// `REGISTRY/REPOSITORY`: what registries.conf chooses one host for.
fn image_key(r: &ImageRef) -> String {
    format!("{}/{}", r.registry, r.repository)
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
