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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// All credentials found, keyed by normalised registry (optionally with a
/// repository path, as podman allows).
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    entries: HashMap<String, Credentials>,
    /// The sources that were read, for "no credentials found" messages.
    pub searched: Vec<String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
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
        }
    }

    pub fn load(&self) -> Result<CredentialStore> {
        let mut store = CredentialStore::default();
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
    /// Adds the `auths` of one docker config; entries already present win.
    pub fn merge_json(&mut self, json: &[u8], source: &str) -> Result<()> {
        let cfg: DockerConfig = serde_json::from_slice(json)?;
        self.searched.push(source.to_string());
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
            self.entries
                .entry(normalise_key(&key))
                .or_insert(Credentials {
                    username,
                    password,
                    source: source.to_string(),
                    kind,
                });
        }
        Ok(())
    }

    /// Credentials for `repository` on `registry`: the most specific
    /// `registry/namespace` key first, then the registry itself.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        let mut path = format!("{registry}/{repository}");
        loop {
            if let Some(c) = self.entries.get(&path) {
                return Some(c);
            }
            match path.rfind('/') {
                Some(i) => path.truncate(i),
                None => return None,
            }
        }
    }
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

    #[test]
    fn bad_auth_is_an_error() {
        let mut store = CredentialStore::default();
        assert!(store
            .merge_json(br#"{"auths":{"x.io":{"auth":"!!!"}}}"#, "s")
            .is_err());
        assert!(store.merge_json(b"not json", "s").is_err());
    }
}
