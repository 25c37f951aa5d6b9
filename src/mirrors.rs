//! Registry mirrors from the node's own configuration, read the way the
//! container runtimes read it, so every engine a cluster already runs
//! (pull-through registries, Dragonfly's dfdaemon, Harbor's proxy cache)
//! serves ocimodel too:
//!
//! - containerd's `hosts.toml` (`OCIMODEL_HOSTS_DIR`; containerd
//!   docs/hosts.md): for registry `host:port` the first existing directory
//!   of `host_port_`, `host:port`, `_default` wins; `[host."URL"]` tables in
//!   file order, then `server` (default: the registry itself);
//!   `capabilities` (omitted: all) say which hosts may resolve tags
//!   (`resolve`) and serve content (`pull`); `override_path`, per-host
//!   `header`s, `skip_verify`, `ca`, `dial_timeout`; `?ns=<registry>` on
//!   requests to a host other than the registry; unknown keys ignored.
//! - containers' `registries.conf` v2 (`OCIMODEL_REGISTRIES_CONF`;
//!   containers-registries.conf(5)): the `[[registry]]` with the longest
//!   matching `prefix` (`*.host` wildcards), its `location` rewrite, its
//!   `[[registry.mirror]]`s in order (`pull-from-mirror`,
//!   `mirror-by-digest-only`), `insecure`, `blocked`.
//!
//! What comes out is an ordered list of [`Endpoint`]s for one repository:
//! mirrors first, the registry (or `server`) last. Every byte from a mirror
//! is verified by digest as from the registry, so a mirror can slow a pull
//! but never plant a byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One place to send a repository's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// The API root path, `/v2` unless `override_path` said otherwise.
    pub api_root: String,
    /// The repository name at this endpoint (registries.conf may rewrite it).
    pub repository: String,
    /// May resolve tags (containerd `resolve`; registries.conf: tags allowed).
    pub resolve: bool,
    /// May serve manifests by digest and blobs.
    pub pull: bool,
    /// Headers sent on every request to it (how dfdaemon learns the upstream).
    pub headers: Vec<(String, String)>,
    /// `?ns=<registry>` is added (containerd, when the host is not the registry).
    pub namespace: Option<String>,
    pub skip_verify: bool,
    /// Extra CA files for it.
    pub ca: Vec<PathBuf>,
    /// Client certificates for it: (certificate, key; `None`: in the same file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub dial_timeout: Option<Duration>,
    /// The registry itself (the last resort), as opposed to a mirror.
    pub upstream: bool,
    /// From registries.conf: as containers/image does, the host that served
    /// an image's manifest serves its blobs too (containerd instead falls
    /// back request by request).
    pub whole_image: bool,
}

impl Endpoint {
    /// Whether requests to it need their own TLS or dial settings.
    pub fn own_transport(&self) -> bool {
        self.skip_verify
            || !self.ca.is_empty()
            || !self.client.is_empty()
            || self.dial_timeout.is_some()
    }

    /// The URL of `kind` (`manifests`, `blobs`, `referrers`) `reference`.
    pub fn url(&self, kind: &str, reference: &str) -> String {
        let mut u = format!(
            "{}://{}{}/{}/{kind}/{reference}",
            self.scheme,
            self.host,
            self.api_root.trim_end_matches('/'),
            self.repository
        );
        if let Some(ns) = &self.namespace {
            // Encoded as containerd encodes it (`:` → `%3A`).
            let enc: String = ns
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            u.push_str(&format!("?ns={enc}"));
        }
        u
    }
}

/// The node's mirror configuration.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    hosts_dir: Option<PathBuf>,
    registries: Vec<RegistryEntry>,
}

impl Mirrors {
    /// Loads `hosts_dir` (containerd) and the registries.conf files given.
    pub fn load(hosts_dir: Option<&Path>, registries_conf: &[PathBuf]) -> Result<Mirrors> {
        let mut registries: Vec<RegistryEntry> = Vec::new();
        for f in registries_conf {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let conf: RegistriesConf = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a registries.conf (v2): {}",
                    f.display(),
                    toml_error(&text, &e)
                )
            })?;
            for r in conf.registry {
                let prefix = r
                    .prefix
                    .clone()
                    .or_else(|| r.location.clone())
                    .unwrap_or_default();
                // A drop-in's entry with the same prefix replaces the earlier one.
                registries.retain(|e| e.prefix() != prefix);
                if r.mirror_by_digest_only && r.mirrors.iter().any(|m| m.pull_from_mirror.is_some())
                {
                    bail!("{}: [[registry]] {prefix} sets mirror-by-digest-only and a mirror's pull-from-mirror; choose one", f.display());
                }
                registries.push(r);
            }
        }
        Ok(Mirrors {
            hosts_dir: hosts_dir.map(Path::to_path_buf),
            registries,
        })
    }

    /// Where to send requests for `registry/repository`, in order: mirrors,
    /// then the registry. `by_digest`: the reference is pinned (some mirrors
    /// serve digests only). `default_scheme`: how the registry itself is
    /// reached (http for insecure ones).
    pub fn endpoints(
        &self,
        registry: &str,
        api_host: &str,
        repository: &str,
        by_digest: bool,
        default_scheme: &str,
    ) -> Result<Vec<Endpoint>> {
        let upstream = Endpoint {
            scheme: default_scheme.to_string(),
            host: api_host.to_string(),
            api_root: "/v2".into(),
            repository: repository.to_string(),
            resolve: true,
            pull: true,
            headers: Vec::new(),
            namespace: None,
            skip_verify: false,
            ca: Vec::new(),
            client: Vec::new(),
            dial_timeout: None,
            upstream: true,
            whole_image: false,
        };
        if let Some(dir) = &self.hosts_dir {
            if let Some(list) = hosts_toml(dir, registry, &upstream)? {
                return Ok(list);
            }
        }
        if let Some(list) = self.registries_conf(registry, repository, by_digest, &upstream)? {
            return Ok(list);
        }
        Ok(vec![upstream])
    }

    fn registries_conf(
        &self,
        registry: &str,
        repository: &str,
        by_digest: bool,
        upstream: &Endpoint,
    ) -> Result<Option<Vec<Endpoint>>> {
        let name = format!("{registry}/{repository}");
        let Some(entry) = self
            .registries
            .iter()
            .filter(|r| r.matches(&name))
            .max_by_key(|r| r.prefix().len())
        else {
            return Ok(None);
        };
        if entry.blocked {
            bail!(
                "{name} is blocked by registries.conf ([[registry]] prefix {})",
                entry.prefix()
            );
        }
        // `location` replaces the prefix part of the name.
        let rewrite = |location: &str| -> (String, String) {
            let rest = if entry.prefix().starts_with("*.") {
                name.clone()
            } else {
                name.strip_prefix(&entry.prefix()).unwrap_or("").to_string()
            };
            let full = if entry.prefix().starts_with("*.") && location.is_empty() {
                name.clone()
            } else {
                format!("{}{rest}", location.trim_end_matches('/'))
            };
            match full.split_once('/') {
                Some((host, repo)) => (host.to_string(), repo.trim_start_matches('/').to_string()),
                None => (full, String::new()),
            }
        };
        let mut out = Vec::new();
        for m in &entry.mirrors {
            let allowed = match m.pull_from_mirror.as_deref().unwrap_or("all") {
                "all" => !entry.mirror_by_digest_only || by_digest,
                "digest-only" => by_digest,
                "tag-only" => !by_digest,
                other => bail!("pull-from-mirror = \"{other}\": use all, digest-only or tag-only"),
            };
            if !allowed {
                continue;
            }
            let (host, repo) = rewrite(&m.location);
            out.push(Endpoint {
                scheme: if m.insecure {
                    "http".into()
                } else {
                    "https".into()
                },
                host,
                repository: repo,
                upstream: false,
                whole_image: true,
                // A mirror resolves tags only when it may serve them.
                resolve: true,
                ..upstream.clone()
            });
        }
        let main = match &entry.location {
            Some(loc) if !loc.is_empty() => {
                let (host, repo) = rewrite(loc);
                Endpoint {
                    scheme: if entry.insecure {
                        "http".into()
                    } else {
                        upstream.scheme.clone()
                    },
                    host,
                    repository: repo,
                    ..upstream.clone()
                }
            }
            _ => Endpoint {
                scheme: if entry.insecure {
                    "http".into()
                } else {
                    upstream.scheme.clone()
                },
                ..upstream.clone()
            },
        };
        out.push(main);
        Ok(Some(out))
    }
}

/// containerd's directory lookup, then the file. `None` when no directory
/// applies (no mirrors).
fn hosts_toml(dir: &Path, registry: &str, upstream: &Endpoint) -> Result<Option<Vec<Endpoint>>> {
    let candidates = [
        match registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}_{p}_"),
            _ => String::new(),
        },
        registry.to_string(),
        "_default".to_string(),
    ];
    let Some(found) = candidates
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| dir.join(c))
        .find(|p| p.is_dir())
    else {
        return Ok(None);
    };
    let file = found.join("hosts.toml");
    let Ok(text) = std::fs::read_to_string(&file) else {
        // A directory without hosts.toml holds certificates only.
        return Ok(None);
    };
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{} is not TOML: {}", file.display(), toml_error(&text, &e))
    })?;
    let mut out = Vec::new();
    if let Some(toml::Value::Table(hosts)) = doc.get("host") {
        for (url, cfg) in hosts {
            let toml::Value::Table(cfg) = cfg else {
                bail!("{}: [host.\"{url}\"] is not a table", file.display());
            };
            out.push(host_endpoint(url, cfg, &found, registry, upstream, &file)?);
        }
    }
    let server = doc.get("server").and_then(|v| v.as_str());
    let mut last = match server {
        Some(url) => host_endpoint(url, &doc, &found, registry, upstream, &file)?,
        None => {
            // The registry itself, with the top-level settings.
            let mut e = host_endpoint(
                &format!("{}://{}", upstream.scheme, upstream.host),
                &doc,
                &found,
                registry,
                upstream,
                &file,
            )?;
            e.namespace = None;
            e
        }
    };
    last.upstream = true;
    out.push(last);
    Ok(Some(out))
}

fn host_endpoint(
    url: &str,
    cfg: &toml::Table,
    dir: &Path,
    registry: &str,
    upstream: &Endpoint,
    file: &Path,
) -> Result<Endpoint> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let (scheme, rest) = with_scheme.split_once("://").expect("has a scheme");
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h.to_string(), format!("/{p}")),
        None => (rest.to_string(), String::new()),
    };
    let override_path = cfg
        .get("override_path")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let api_root = if override_path || path.trim_end_matches('/').ends_with("/v2") {
        path.trim_end_matches('/').to_string()
    } else {
        format!("{}/v2", path.trim_end_matches('/'))
    };
    let caps: Option<Vec<String>> = match cfg.get("capabilities") {
        None => None,
        Some(toml::Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .with_context(|| format!("{}: capabilities must be strings", file.display()))?,
        ),
        Some(_) => bail!("{}: capabilities must be an array", file.display()),
    };
    if let Some(c) = &caps {
        if let Some(bad) = c
            .iter()
            .find(|c| !["pull", "resolve", "push", "referrers"].contains(&c.as_str()))
        {
            bail!(
                "{}: unknown capability \"{bad}\" (pull, resolve, push, referrers)",
                file.display()
            );
        }
    }
    let has = |c: &str| caps.as_ref().is_none_or(|l| l.iter().any(|x| x == c));
    let mut headers = Vec::new();
    if let Some(toml::Value::Table(h)) = cfg.get("header") {
        for (k, v) in h {
            match v {
                toml::Value::String(s) => headers.push((k.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for s in a.iter().filter_map(|x| x.as_str()) {
                        headers.push((k.clone(), s.to_string()));
                    }
                }
                _ => bail!(
                    "{}: header {k} must be a string or an array of strings",
                    file.display()
                ),
            }
        }
    }
    let ca = match cfg.get("ca") {
        Some(toml::Value::String(s)) => vec![dir.join(s)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(|s| dir.join(s))
            .collect(),
        _ => Vec::new(),
    };
    // `client`: a path, an array of paths, or an array of [cert, key] pairs.
    let mut client = Vec::new();
    match cfg.get("client") {
        Some(toml::Value::String(c)) => client.push((dir.join(c), None)),
        Some(toml::Value::Array(a)) => {
            for item in a {
                match item {
                    toml::Value::String(c) => client.push((dir.join(c), None)),
                    toml::Value::Array(pair) => {
                        let c = pair.first().and_then(|v| v.as_str()).unwrap_or_default();
                        let k = pair.get(1).and_then(|v| v.as_str()).unwrap_or_default();
                        client.push((dir.join(c), (!k.is_empty()).then(|| dir.join(k))));
                    }
                    _ => bail!(
                        "{}: client entries are paths or [cert, key] pairs",
                        file.display()
                    ),
                }
            }
        }
        Some(_) => bail!("{}: client is a path or an array", file.display()),
        None => {}
    }
    let dial_timeout = match cfg.get("dial_timeout").and_then(|v| v.as_str()) {
        Some(d) => Some(
            parse_go_duration(d).with_context(|| format!("{}: dial_timeout", file.display()))?,
        ),
        None => None,
    };
    let is_registry =
        host == upstream.host || (registry == "docker.io" && host == "registry-1.docker.io");
    Ok(Endpoint {
        scheme: scheme.to_string(),
        host,
        api_root,
        repository: upstream.repository.clone(),
        resolve: has("pull") && has("resolve"),
        pull: has("pull"),
        headers,
        namespace: (!is_registry).then(|| registry.to_string()),
        skip_verify: cfg
            .get("skip_verify")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        ca,
        client,
        dial_timeout,
        upstream: false,
        whole_image: false,
    })
}

/// Go's `time.ParseDuration` for what hosts.toml uses: `200ms`, `30s`, `1m30s`.
fn parse_go_duration(s: &str) -> Result<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let n: f64 = num
            .parse()
            .with_context(|| format!("'{s}' is not a duration"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("'{s}' is not a duration (units ns, us, ms, s, m, h)"),
        };
        total += n * scale;
        rest = next;
    }
    Ok(Duration::from_secs_f64(total))
}

#[derive(serde::Deserialize, Default)]
struct RegistriesConf {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

#[derive(serde::Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "kebab-case")]
struct RegistryEntry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default, rename = "mirror")]
    mirrors: Vec<MirrorEntry>,
}

#[derive(serde::Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "kebab-case")]
struct MirrorEntry {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

impl RegistryEntry {
    fn prefix(&self) -> String {
        self.prefix
            .clone()
            .or_else(|| self.location.clone())
            .unwrap_or_default()
    }

    /// containers-registries.conf(5): `host[:port][/ns…][/repo]` matches at
    /// a path boundary; `*.host` matches any subdomain of `host`.
    fn matches(&self, name: &str) -> bool {
        let p = self.prefix();
        if let Some(domain) = p.strip_prefix("*.") {
            let host = name.split('/').next().unwrap_or("");
            return host.ends_with(&format!(".{domain}"));
        }
        name == p || name.starts_with(&format!("{p}/"))
    }
}

/// Where the node's configuration is, when not given: containerd's and
/// k3s's hosts directories, containers' registries.conf and its drop-ins.
pub fn default_paths() -> (Option<PathBuf>, Vec<PathBuf>) {
    let hosts = [
        "/etc/containerd/certs.d",
        "/var/lib/rancher/k3s/agent/etc/containerd/certs.d",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir());
    let mut conf = Vec::new();
    let main = PathBuf::from("/etc/containers/registries.conf");
    if main.is_file() {
        conf.push(main);
    }
    conf.extend(drop_ins(Path::new("/etc/containers/registries.conf.d")));
    (hosts, conf)
}

/// `NAME.conf` files of a drop-in directory, in alphanumeric order.
pub fn drop_ins(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A TOML error on one line: `line L, column C: message` (the parser's own
/// rendering spans several lines, which a termination message cannot).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (sub, text) in files {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("hosts.toml"), text).unwrap();
        }
        dir
    }

    fn urls(list: &[Endpoint], kind: &str, r: &str) -> Vec<String> {
        list.iter().map(|e| e.url(kind, r)).collect()
    }

    /// containerd docs/hosts.md's own example, and the directory order.
    #[test]
    fn hosts_toml_mirrors_then_the_registry_with_ns() {
        let dir = hosts(&[
            ("myregistry.io_5000_", "[host.\"https://mymirror.io\"]\n"),
            (
                "myregistry.io:5000",
                "[host.\"https://shadowed.example\"]\n",
            ),
            ("_default", "[host.\"https://everything.example\"]\n"),
        ]);
        let m = Mirrors::load(Some(dir.path()), &[]).unwrap();
        let e = m
            .endpoints(
                "myregistry.io:5000",
                "myregistry.io:5000",
                "image_name",
                false,
                "https",
            )
            .unwrap();
        assert_eq!(
            urls(&e, "manifests", "tag_name"),
            [
                "https://mymirror.io/v2/image_name/manifests/tag_name?ns=myregistry.io%3A5000",
                "https://myregistry.io:5000/v2/image_name/manifests/tag_name",
            ]
        );
        assert!(e[1].upstream && !e[0].upstream);
        // Without a port: host:port names nothing; _default applies.
        let e = m
            .endpoints("other.io", "other.io", "m", false, "https")
            .unwrap();
        assert_eq!(e[0].host, "everything.example");
    }

    #[test]
    fn hosts_toml_capabilities_paths_headers_and_server() {
        let dir = hosts(&[(
            "docker.io",
            r#"
server = "https://registry-1.docker.io"
future_key = "ignored"

[host."http://127.0.0.1:4001"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"
[host."http://127.0.0.1:4001".header]
X-Dragonfly-Registry = "https://index.docker.io"

[host."https://mirror.example/custom/api"]
capabilities = ["pull"]
override_path = true
skip_verify = true
ca = ["ca.crt"]
[host."https://mirror.example/custom/api".header]
X-A = ["1", "2"]
"#,
        )]);
        let m = Mirrors::load(Some(dir.path()), &[]).unwrap();
        let e = m
            .endpoints(
                "docker.io",
                "registry-1.docker.io",
                "library/x",
                true,
                "https",
            )
            .unwrap();
        assert_eq!(
            urls(&e, "blobs", "sha256:ab"),
            [
                "http://127.0.0.1:4001/v2/library/x/blobs/sha256:ab?ns=docker.io",
                "https://mirror.example/custom/api/library/x/blobs/sha256:ab?ns=docker.io",
                "https://registry-1.docker.io/v2/library/x/blobs/sha256:ab",
            ]
        );
        assert_eq!(
            e[0].headers,
            [(
                "X-Dragonfly-Registry".to_string(),
                "https://index.docker.io".to_string()
            )]
        );
        assert_eq!(e[0].dial_timeout, Some(Duration::from_millis(200)));
        assert!(e[0].resolve && e[0].pull);
        assert!(!e[1].resolve && e[1].pull, "pull only: digests, not tags");
        assert!(e[1].skip_verify);
        assert_eq!(e[1].ca, [dir.path().join("docker.io/ca.crt")]);
        assert_eq!(e[1].headers.len(), 2);
        assert!(e[2].upstream && e[2].resolve);

        let bad = hosts(&[(
            "x.io",
            "[host.\"https://m\"]\ncapabilities = [\"teleport\"]\n",
        )]);
        let e = Mirrors::load(Some(bad.path()), &[])
            .unwrap()
            .endpoints("x.io", "x.io", "m", false, "https");
        assert!(format!("{:#}", e.unwrap_err()).contains("unknown capability \"teleport\""));
    }

    #[test]
    fn registries_conf_prefix_location_and_mirrors() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("registries.conf");
        std::fs::write(
            &main,
            r#"
[[registry]]
prefix = "example.com"
location = "example.com"
[[registry.mirror]]
location = "mirror.local:5000"
insecure = true

[[registry]]
prefix = "example.com/team"
location = "internal.example/platform"
mirror-by-digest-only = true
[[registry.mirror]]
location = "fast.local/cache"

[[registry]]
prefix = "*.blocked.example"
blocked = true
"#,
        )
        .unwrap();
        let dropin = dir.path().join("10-dragonfly.conf");
        std::fs::write(
            &dropin,
            "[[registry]]\nprefix = \"example.com\"\nlocation = \"example.com\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:4001\"\ninsecure = true\n",
        )
        .unwrap();
        let m = Mirrors::load(None, &[main, dropin]).unwrap();
        // The drop-in replaced example.com's entry; the longer prefix wins for team/.
        let e = m
            .endpoints("example.com", "example.com", "models/a", false, "https")
            .unwrap();
        assert_eq!(
            urls(&e, "manifests", "v1"),
            [
                "http://127.0.0.1:4001/v2/models/a/manifests/v1",
                "https://example.com/v2/models/a/manifests/v1"
            ]
        );
        let e = m
            .endpoints("example.com", "example.com", "team/llm", true, "https")
            .unwrap();
        assert_eq!(
            urls(&e, "blobs", "sha256:ab"),
            [
                "https://fast.local/v2/cache/llm/blobs/sha256:ab",
                "https://internal.example/v2/platform/llm/blobs/sha256:ab",
            ]
        );
        // mirror-by-digest-only: a tag goes to the (rewritten) registry only.
        let e = m
            .endpoints("example.com", "example.com", "team/llm", false, "https")
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "internal.example");
        // Wildcards and blocking.
        let e = m.endpoints(
            "a.b.blocked.example",
            "a.b.blocked.example",
            "m",
            false,
            "https",
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("is blocked by registries.conf"));
        // Nothing configured for it: the registry alone.
        let e = m
            .endpoints("quay.io", "quay.io", "m", false, "https")
            .unwrap();
        assert_eq!(
            urls(&e, "manifests", "v1"),
            ["https://quay.io/v2/m/manifests/v1"]
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("200ms").unwrap(),
            Duration::from_millis(200)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_go_duration("5 minutes").is_err());
    }

    #[test]
    fn malformed_files_are_named_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("certs.d");
        std::fs::create_dir_all(hosts.join("reg.example")).unwrap();
        std::fs::write(
            hosts.join("reg.example/hosts.toml"),
            "server = \"https://reg.example\"\n[host.\"http://m\"]\ncapabilities = [\n",
        )
        .unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, "[[registry]]\nprefix = \"x\"\nlocation = 3\n").unwrap();
        let m = Mirrors::load(Some(&hosts), &[]).unwrap();
        let e = format!(
            "{:#}",
            m.endpoints("reg.example", "reg.example", "a", true, "https")
                .unwrap_err()
        );
        assert!(e.contains("hosts.toml is not TOML: line 3, column "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = format!("{:#}", Mirrors::load(None, &[conf]).unwrap_err());
        assert!(
            e.contains("registries.conf is not a registries.conf (v2): line 3, column 12: invalid type: integer `3`, expected a string"),
            "{e}"
        );
    }
}
