//! Registry credentials and authentication challenges.
//!
//! Credentials come from docker-config JSON (`auths` with `auth` or
//! `username`/`password`), looked up in this order, first match per host wins:
//!
//! 1. `$OCIMODEL_DOCKER_CONFIG_JSON`: the JSON itself (a pull secret passed to a
//!    ClusterStorageContainer through `secretKeyRef`);
//! 2. `--auth-file` / `$REGISTRY_AUTH_FILE` (podman, skopeo);
//! 3. `$DOCKER_CONFIG/config.json`;
//! 4. `$KSERVE_OCI_DOCKER_CONFIG`, else `/mnt/oci-fetch-auth/config.json` if
//!    present (what KServe's `oci+fetch` mode mounts);
//! 5. `~/.docker/config.json` and `$XDG_RUNTIME_DIR/containers/auth.json`, for
//!    laptops, if present.
//!
//! Within one file the order is docker's: `credHelpers[host]`, then
//! `credsStore`, then `auths`. A helper is the program
//! `docker-credential-<name>` on `PATH`, run as docker runs it (`get`, the
//! server on stdin, `{"ServerURL","Username","Secret"}` on stdout, a
//! `<token>` user name meaning an identity token), once per host and under a
//! timeout. One that is not on `PATH`, fails or times out is skipped with a
//! note that the "no credentials" error repeats, so a Docker Desktop config
//! on a machine without Docker Desktop says why nothing was found.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use crate::config::DOCKER_HUB;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// The password, or the refresh token of an identity token.
    pub password: String,
    /// Where these came from, for error messages (never the secret itself).
    pub source: String,
    pub kind: CredentialKind,
}

/// What the secret in [`Credentials`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A password: Basic auth, to the registry or its token service.
    Password,
    /// An OAuth2 refresh token (docker config `identitytoken`, what `az acr
    /// login` writes; ACR's exchange): traded at the registry's token realm
    /// with the refresh-token grant, never sent as a password or a Bearer.
    IdentityToken,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.username, self.source)
    }
}

/// All credentials found: per source read, in the order read, its `auths`
/// (keyed by normalised registry, optionally with a repository path, as
/// podman allows) and the credential helpers it names.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    layers: Vec<Layer>,
    /// The sources that were read, for "no credentials found" messages.
    pub searched: Vec<String>,
    /// How long one helper may take to answer.
    helper_timeout: Option<Duration>,
    /// What each helper said, per (helper, server): asked once per run.
    asked: Arc<Mutex<HashMap<(String, String), Asked>>>,
}

#[derive(Clone, Debug, Default)]
struct Layer {
    source: String,
    auths: HashMap<String, Credentials>,
    /// `credHelpers`, keys normalised.
    helpers: HashMap<String, String>,
    /// `credsStore`.
    store: Option<String>,
}

/// A helper's answer.
#[derive(Clone, Debug)]
enum Asked {
    Found(Credentials),
    /// "credentials not found in native keychain": not an error (docker).
    NotFound,
    /// Not run, or no usable answer: why, for the error message.
    Skipped(String),
}

/// How long a credential helper may take by default (a keychain prompt
/// included); `OCIMODEL_CREDENTIAL_HELPER_TIMEOUT` sets it.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What docker-credential-helpers prints when it has nothing for the server.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// A helper's answer larger than this is refused.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where credentials may be read from; built from env and flags.
#[derive(Clone, Debug, Default)]
pub struct CredentialSources {
    pub inline_json: Option<String>,
    pub files: Vec<(PathBuf, bool)>, // (path, required)
    /// How long a credential helper may take (default [`DEFAULT_HELPER_TIMEOUT`]).
    pub helper_timeout: Option<Duration>,
}

impl CredentialSources {
    /// The standard sources from the environment, plus an explicit auth file.
    pub fn from_env(auth_file: Option<&Path>) -> CredentialSources {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut files = Vec::new();
        if let Some(p) = auth_file {
            files.push((p.to_path_buf(), true));
        }
        if let Some(p) = env("REGISTRY_AUTH_FILE") {
            files.push((PathBuf::from(p), true));
        }
        if let Some(d) = env("DOCKER_CONFIG") {
            files.push((PathBuf::from(d).join("config.json"), false));
        }
        match env("KSERVE_OCI_DOCKER_CONFIG") {
            Some(p) => files.push((PathBuf::from(p), true)),
            None => files.push((PathBuf::from("/mnt/oci-fetch-auth/config.json"), false)),
        }
        if let Some(h) = env("HOME") {
            files.push((PathBuf::from(h).join(".docker/config.json"), false));
        }
        if let Some(r) = env("XDG_RUNTIME_DIR") {
            files.push((PathBuf::from(r).join("containers/auth.json"), false));
        }
        CredentialSources {
            inline_json: env("OCIMODEL_DOCKER_CONFIG_JSON"),
            files,
            helper_timeout: None,
        }
    }

    pub fn load(&self) -> Result<CredentialStore> {
        let mut store = CredentialStore {
            helper_timeout: self.helper_timeout,
            ..CredentialStore::default()
        };
        if let Some(json) = &self.inline_json {
            store
                .merge_json(json.as_bytes(), "OCIMODEL_DOCKER_CONFIG_JSON")
                .context("OCIMODEL_DOCKER_CONFIG_JSON is not a valid docker config JSON")?;
        }
        for (path, required) in &self.files {
            match std::fs::read(path) {
                Ok(bytes) => store
                    .merge_json(&bytes, &path.display().to_string())
                    .with_context(|| {
                        format!("{} is not a valid docker config JSON", path.display())
                    })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => bail!("cannot read registry auth file {}: {e}", path.display()),
            }
        }
        Ok(store)
    }
}

impl CredentialStore {
    /// Adds one docker config, after those already read (which win).
    pub fn merge_json(&mut self, json: &[u8], source: &str) -> Result<()> {
        let cfg: DockerConfig = serde_json::from_slice(json)?;
        self.searched.push(source.to_string());
        let mut layer = Layer {
            source: source.to_string(),
            helpers: cfg
                .cred_helpers
                .iter()
                .filter(|(_, name)| !name.trim().is_empty())
                .map(|(k, name)| (normalise_key(k), name.trim().to_string()))
                .collect(),
            store: cfg
                .creds_store
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            ..Layer::default()
        };
        for (key, entry) in cfg.auths {
            let identity = entry.identitytoken.as_deref().filter(|t| !t.is_empty());
            let (username, password, kind) = match (&entry.auth, &entry.username, &entry.password) {
                // An identity token wins over the `auth` beside it (docker
                // writes `<token>` there as the user name).
                _ if identity.is_some() => (
                    entry.username.clone().unwrap_or_else(|| "<token>".into()),
                    identity.unwrap_or_default().to_string(),
                    CredentialKind::IdentityToken,
                ),
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .with_context(|| format!("auths.{key}.auth is not base64"))?;
                    let text = String::from_utf8(decoded)
                        .with_context(|| format!("auths.{key}.auth is not UTF-8"))?;
                    let (u, p) = text
                        .split_once(':')
                        .with_context(|| format!("auths.{key}.auth is not user:password"))?;
                    (u.to_string(), p.to_string(), CredentialKind::Password)
                }
                (_, Some(u), Some(p)) => (u.clone(), p.clone(), CredentialKind::Password),
                _ => continue,
            };
            layer
                .auths
                .entry(normalise_key(&key))
                .or_insert(Credentials {
                    username,
                    password,
                    source: source.to_string(),
                    kind,
                });
        }
        self.layers.push(layer);
        Ok(())
    }

    /// Credentials for `repository` on `registry`: source by source, as
    /// docker reads one config, the helper `credHelpers` names for the
    /// host, else `credsStore`, else `auths` (the most specific
    /// `registry/namespace` key first, then the registry itself). A helper
    /// with nothing for the host leaves the source's `auths` to answer.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<Credentials> {
        for layer in &self.layers {
            let helper = layer.helpers.get(registry).map(|n| (n, "credHelpers"));
            if let Some((name, field)) = helper.or(layer.store.as_ref().map(|n| (n, "credsStore")))
            {
                if let Asked::Found(c) = self.ask(name, field, &layer.source, registry) {
                    return Some(c);
                }
            }
            let mut path = format!("{registry}/{repository}");
            loop {
                if let Some(c) = layer.auths.get(&path) {
                    return Some(c.clone());
                }
                match path.rfind('/') {
                    Some(i) => path.truncate(i),
                    None => break,
                }
            }
        }
        None
    }

    /// The sources read and the helpers skipped, for "no credentials" errors.
    pub fn searched_summary(&self) -> String {
        let mut out = if self.searched.is_empty() {
            "none found".to_string()
        } else {
            self.searched.join(", ")
        };
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let mut notes: Vec<&String> = asked
            .values()
            .filter_map(|a| match a {
                Asked::Skipped(why) => Some(why),
                _ => None,
            })
            .collect();
        notes.sort();
        for n in notes {
            out.push_str("; ");
            out.push_str(n);
        }
        out
    }

    /// Asks helper `name` (named by `field` of `source`) for `registry`,
    /// once; later calls get the first answer.
    fn ask(&self, name: &str, field: &str, source: &str, registry: &str) -> Asked {
        let server = if registry == DOCKER_HUB {
            // What docker sends for Docker Hub, and so what helpers store.
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.to_string()
        };
        // Held while the helper runs, so a prompt is never shown twice.
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), server.clone());
        if let Some(a) = asked.get(&key) {
            return a.clone();
        }
        let timeout = self.helper_timeout.unwrap_or(DEFAULT_HELPER_TIMEOUT);
        let label = format!("credential helper docker-credential-{name} ({field} in {source})");
        let answer = blocking(|| run_helper(name, &server, timeout));
        let a = match answer {
            Ok(Some((username, secret))) => {
                let token = username == "<token>";
                Asked::Found(Credentials {
                    username,
                    password: secret,
                    source: label,
                    kind: if token {
                        CredentialKind::IdentityToken
                    } else {
                        CredentialKind::Password
                    },
                })
            }
            Ok(None) => Asked::NotFound,
            Err(why) => {
                let note = format!("{label} skipped: {why}");
                tracing::warn!(registry, "{note}");
                Asked::Skipped(note)
            }
        };
        asked.insert(key, a.clone());
        a
    }
}

/// Runs `f`, which blocks, without stalling the async runtime's other
/// tasks where the runtime allows.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// `docker-credential-<name> get` for `server`, as docker's client runs it:
/// `Ok(Some((user, secret)))`, `Ok(None)` when it has nothing for the
/// server, `Err(why)` when it cannot be run or gave no usable answer.
fn run_helper(
    name: &str,
    server: &str,
    timeout: Duration,
) -> std::result::Result<Option<(String, String)>, String> {
    // A name is a suffix, never a path: `credsStore: "../../x"` runs nothing.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || name.starts_with('.')
    {
        return Err(format!(
            "'{}' is not a helper name",
            crate::text::escape_controls(name)
        ));
    }
    let program = format!("docker-credential-{name}");
    let Some(path) = on_path(&program) else {
        return Err(format!("{program} not found on PATH"));
    };
    let mut child = Command::new(&path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    // Docker writes the server address with no newline, then closes stdin.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_HELPER_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not answer within {}s (OCIMODEL_CREDENTIAL_HELPER_TIMEOUT)",
                    timeout.as_secs_f64()
                ));
            }
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    };
    // A helper that left a child holding its pipes must not hang us either.
    let stdout = join_until(out, deadline).unwrap_or_default();
    let stderr = join_until(err, deadline).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&stdout).trim().to_string();
    if !status.success() {
        if stdout == HELPER_NOT_FOUND {
            return Ok(None);
        }
        let said = if stdout.is_empty() {
            String::from_utf8_lossy(&stderr).trim().to_string()
        } else {
            stdout
        };
        let said = said
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        return Err(format!(
            "{program} get failed ({status}): {}",
            crate::text::escape_controls(&said)
        ));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer = serde_json::from_str(&stdout).map_err(|e| {
        format!("{program} get printed no credentials JSON ({{\"ServerURL\",\"Username\",\"Secret\"}}): {e}")
    })?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((a.username, a.secret)))
}

/// The reader thread's bytes, if it ends before `deadline`.
fn join_until(h: std::thread::JoinHandle<Vec<u8>>, deadline: Instant) -> Option<Vec<u8>> {
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    h.join().ok()
}

/// `program` in a `PATH` directory, as an executable file.
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/` → `host:5000`.
fn normalise_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    let (host, rest) = match k.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (k, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB,
        h => h,
    };
    match rest {
        Some(r) => format!("{host}/{r}"),
        None => host.to_string(),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    pub fn is_basic(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("basic")
    }

    /// Parses `Scheme k="v", k2=v2`. Quoted values may hold commas and `\"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.find(char::is_whitespace) {
            Some(i) => (&header[..i], header[i..].trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c == ',' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'=') {
                chars.next();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    value.push(n);
                                }
                            }
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c == ',' {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
            params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        Some(Challenge {
            scheme: scheme.to_string(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        )
        .unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:samalba/my-app:pull,push");

        let b = Challenge::parse(r#"Basic realm="a \"quoted\", realm""#).unwrap();
        assert!(b.is_basic());
        assert_eq!(b.params["realm"], r#"a "quoted", realm"#);

        let bare = Challenge::parse("Basic").unwrap();
        assert!(bare.params.is_empty());
        assert!(Challenge::parse("  ").is_none());
    }

    #[test]
    fn docker_config_merge_and_lookup() {
        let mut store = CredentialStore::default();
        // "alice:s3cret" and a repo-scoped entry.
        store
            .merge_json(
                br#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcmV0"},
                    "quay.io/team":{"username":"bob","password":"pw"}}}"#,
                "first",
            )
            .unwrap();
        store
            .merge_json(
                br#"{"auths":{"docker.io":{"username":"other","password":"x"},
                    "quay.io":{"username":"carol","password":"pw2"},
                    "ghcr.io":{"identitytoken":"tok"}}}"#,
                "second",
            )
            .unwrap();
        let hub = store.lookup("docker.io", "library/ubuntu").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(hub.source, "first");
        assert_eq!(
            store.lookup("quay.io", "team/model").unwrap().username,
            "bob"
        );
        assert_eq!(
            store.lookup("quay.io", "other/model").unwrap().username,
            "carol"
        );
        // An identity token is kept as one (traded at the token realm).
        let ghcr = store.lookup("ghcr.io", "x").unwrap();
        assert_eq!(ghcr.kind, CredentialKind::IdentityToken);
        assert_eq!(
            (ghcr.username.as_str(), ghcr.password.as_str()),
            ("<token>", "tok")
        );
        assert!(!format!("{ghcr:?}").contains("tok)"));
        assert_eq!(store.searched, vec!["first", "second"]);
        assert!(!format!("{hub:?}").contains("s3cret"));
    }

    /// Helper names are read per source, Docker Hub's key normalised; a
    /// name that is a path runs nothing and says so.
    #[test]
    fn helpers_are_read_per_source() {
        let mut store = CredentialStore::default();
        store
            .merge_json(
                br#"{"credHelpers":{"https://index.docker.io/v1/":"hub","gcr.io":" "},
                    "credsStore":"../../bin/sh"}"#,
                "cfg",
            )
            .unwrap();
        let layer = &store.layers[0];
        assert_eq!(
            layer.helpers.get("docker.io").map(String::as_str),
            Some("hub")
        );
        assert!(
            !layer.helpers.contains_key("gcr.io"),
            "a blank name is no helper"
        );
        assert!(store.lookup("quay.io", "x").is_none());
        let summary = store.searched_summary();
        assert!(
            summary.contains("docker-credential-../../bin/sh (credsStore in cfg) skipped: '../../bin/sh' is not a helper name"),
            "{summary}"
        );
    }

    #[test]
    fn bad_auth_is_an_error() {
        let mut store = CredentialStore::default();
        assert!(store
            .merge_json(br#"{"auths":{"x.io":{"auth":"!!!"}}}"#, "s")
            .is_err());
        assert!(store.merge_json(b"not json", "s").is_err());
    }
}
