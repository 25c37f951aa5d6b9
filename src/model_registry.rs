//! `model-registry://[HOST/]MODEL[/VERSION][?namespace=NS]`: a model in a
//! Kubeflow Model Registry, resolved through its REST API to the artifact
//! URI it records, exactly as the registry's own storage initializer does
//! (kubeflow/model-registry `cmd/csi`), then pulled like any OCI reference.
//! Its initializer cannot download `oci://` artifacts; this is the point.
//!
//! Resolution:
//! 1. the query is dropped (`?namespace=NS` noted first: the registry is then
//!    `SERVICE.NS.CLUSTER_DOMAIN:PORT`); the rest splits on `/` into at most
//!    3 tokens; a token equal to the configured host is dropped;
//! 2. 3 tokens: HOST/MODEL/VERSION. 2 tokens: the first is tried as a host
//!    (a `GET …/registered_models` probe), else MODEL/VERSION on the
//!    configured registry. 1 token: MODEL, its newest version;
//! 3. `GET /registered_model?name=MODEL`; `GET /model_version?name=VERSION&
//!    parentResourceId=ID` or, with no version, the first of
//!    `GET /registered_models/ID/versions?orderBy=CREATE_TIME&sortOrder=DESC`;
//!    the first of `GET /model_versions/VID/artifacts?orderBy=CREATE_TIME&
//!    sortOrder=DESC` must be a `model-artifact` with a `uri`;
//! 4. that `uri` must be an OCI reference (`oci://`); anything else is refused
//!    with the scheme named.
//!
//! The API base path is `/api/model_registry/v1alpha3` (the spec the
//! initializer was written against), or `/v1` where a newer registry serves
//! only that: the probe decides.
//!
//! Authentication, as the registry's Python client does it (its API declares
//! a Bearer scheme; behind OpenShift's proxy a Kubernetes token is required):
//! `Authorization: Bearer` with the token in the file `KF_PIPELINES_SA_TOKEN_PATH`
//! names (unreadable or empty: an error), else the pod's service-account token
//! when there is one, else none. The file is read at each resolution (the
//! kubelet rotates projected tokens). Over plain http the token goes to the
//! configured registry (`MODEL_REGISTRY_BASE_URL`) only; a host the URI
//! names, or the Service in a namespace `?namespace=` picks, gets it over
//! https only: a URI cannot send it in the clear to a host of its choosing.
//!
//! Answers are read as registry answers are: at most [`MAX_ANSWER_BYTES`],
//! under the stall timeout and the minimum rate; `pull` counts the
//! resolution against `OCIMODEL_TIMEOUT`.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub use crate::reference::MODEL_REGISTRY_SCHEME as SCHEME;

/// What the registry's API is read with: the OCI registry client's HTTP
/// settings and read rules (stall timeout, minimum rate, a size cap). A
/// trait, so that this file need not import `registry/` (which sits above
/// it and implements this).
pub trait ApiReader: Sync {
    /// The HTTP client (proxies, CA bundles, timeouts).
    fn http(&self) -> &reqwest::Client;
    /// A whole answer (`what`, in messages): at most `cap` bytes.
    fn read_body<'a>(
        &'a self,
        resp: reqwest::Response,
        cap: u64,
        what: &'a str,
    ) -> impl std::future::Future<Output = Result<bytes::Bytes>> + Send + 'a;
}

/// The most bytes one answer of the registry's API may have (a list of
/// versions or artifacts is a few KiB; an endless one must not take the
/// pod's memory).
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
const API_VERSIONS: [&str; 2] = ["v1alpha3", "v1"];
/// The token the Python client falls back to.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where the registry is when the URI does not say (names as the
/// registry's initializer reads them).
#[derive(Clone, Debug)]
pub struct Config {
    /// `MODEL_REGISTRY_BASE_URL`: `host:port`.
    pub base_url: String,
    /// `MODEL_REGISTRY_SCHEME`: `http` or `https`.
    pub scheme: String,
    /// `MODEL_REGISTRY_SERVICE_NAME`, for `?namespace=`.
    pub service: String,
    /// `MODEL_REGISTRY_CLUSTER_DOMAIN`, for `?namespace=`.
    pub cluster_domain: String,
    /// `KF_PIPELINES_SA_TOKEN_PATH`: the bearer token's file; `None`: the
    /// service-account token if the pod has one.
    pub token_path: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            base_url: crate::config::DEFAULT_MODEL_REGISTRY_BASE_URL.into(),
            scheme: crate::config::DEFAULT_MODEL_REGISTRY_SCHEME.into(),
            service: crate::config::DEFAULT_MODEL_REGISTRY_SERVICE.into(),
            cluster_domain: crate::config::DEFAULT_MODEL_REGISTRY_CLUSTER_DOMAIN.into(),
            token_path: None,
        }
    }
}

/// What a `model-registry://` URI resolved to.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The OCI reference the artifact's `uri` names (without `oci://`).
    pub reference: String,
    pub model: String,
    pub version: String,
    /// The registry's API root that answered.
    pub api: String,
}

/// A `model-registry://` URI taken apart: the registry it names by default
/// (the configured one, or the namespace's) and its 1 to 3 path tokens.
struct Parsed<'a> {
    configured: String,
    tokens: Vec<&'a str>,
}

fn parse<'a>(uri: &'a str, cfg: &Config) -> Result<Parsed<'a>> {
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| anyhow!("not a {SCHEME} URI"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let namespace = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("namespace="));
    if let Some(ns) = namespace {
        if ns.is_empty()
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "namespace '{}' in {uri} is not a namespace name",
                crate::text::escape_controls(ns)
            );
        }
    }
    let configured = match namespace {
        Some(ns) => {
            let port = cfg
                .base_url
                .rsplit_once(':')
                .map(|(_, p)| p)
                .unwrap_or("8080");
            format!("{}.{ns}.{}:{port}", cfg.service, cfg.cluster_domain)
        }
        None => cfg.base_url.clone(),
    };
    let mut tokens: Vec<&str> = path.splitn(3, '/').filter(|t| !t.is_empty()).collect();
    if tokens.len() > 1 && tokens[0] == configured {
        tokens.remove(0);
    }
    if tokens.is_empty() {
        bail!("{uri} names no model; write {SCHEME}[HOST/]MODEL[/VERSION]");
    }
    Ok(Parsed { configured, tokens })
}

/// Resolves `uri` (a `model-registry://` URI) through the registry's API,
/// with `client`'s HTTP settings and read rules (stall timeout, minimum
/// rate).
pub async fn resolve(client: &impl ApiReader, uri: &str, cfg: &Config) -> Result<Resolved> {
    let Parsed { configured, tokens } = parse(uri, cfg)?;
    let scheme = cfg.scheme.trim_end_matches("://");
    let token = bearer_token(cfg)?;
    let reader = client;
    let client = |host: &str| {
        let allowed = host == cfg.base_url || scheme == "https";
        Api {
            reader,
            scheme,
            host: host.to_string(),
            token: token.as_ref().filter(|_| allowed),
            withheld: token.is_some() && !allowed,
        }
    };
    let ((reg, api), model, version) = match tokens.as_slice() {
        [model] => (client(&configured).rooted().await?, *model, None),
        [first, second] => {
            let named = client(first);
            match named.probe().await? {
                Some(api) => ((named, api), *second, None),
                None => (client(&configured).rooted().await?, *first, Some(*second)),
            }
        }
        [host, model, version] => (client(host).rooted().await?, *model, Some(*version)),
        _ => bail!("{uri} names no model; write {SCHEME}[HOST/]MODEL[/VERSION]"),
    };
    let get = |url: String| reg.get(url);
    let found = |what: &str, v: Value| -> Result<String> {
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the model registry at {api} answered {what} without an id"))
    };
    let model_obj = get(format!("{api}/registered_model?name={}", enc(model)))
        .await?
        .ok_or_else(|| anyhow!("model '{model}' is not in the model registry at {api}"))?;
    let model_id = found("the model", model_obj)?;
    let version_obj = match version {
        Some(v) => get(format!(
            "{api}/model_version?name={}&parentResourceId={}",
            enc(v),
            enc(&model_id)
        ))
        .await?
        .ok_or_else(|| {
            anyhow!("model '{model}' has no version '{v}' in the model registry at {api}")
        })?,
        None => first_item(
            get(format!(
                "{api}/registered_models/{}/versions?orderBy=CREATE_TIME&sortOrder=DESC",
                enc(&model_id)
            ))
            .await?,
        )
        .ok_or_else(|| anyhow!("model '{model}' has no versions in the model registry at {api}"))?,
    };
    let version_name = version_obj["name"].as_str().unwrap_or_default().to_string();
    let version_id = found("the version", version_obj)?;
    let artifact = first_item(
        get(format!(
                "{api}/model_versions/{}/artifacts?orderBy=CREATE_TIME&sortOrder=DESC",
                enc(&version_id)
            ),
        )
        .await?,
    )
    .ok_or_else(|| anyhow!("version '{version_name}' of model '{model}' has no artifact in the model registry at {api}"))?;
    let kind = artifact["artifactType"].as_str().unwrap_or_default();
    if kind != "model-artifact" {
        bail!("the newest artifact of model '{model}' version '{version_name}' is a '{kind}', not a model artifact");
    }
    let target = artifact["uri"].as_str().unwrap_or_default().trim();
    if target.is_empty() {
        bail!("the model artifact of model '{model}' version '{version_name}' has no URI");
    }
    let reference = match target.split_once("://") {
        Some(("oci", r)) => r.to_string(),
        Some((other, _)) => bail!(
            "model '{model}' version '{version_name}' is stored at a {other}:// URI; ocimodel pulls oci:// artifacts only"
        ),
        None => bail!(
            "the model artifact URI of model '{model}' version '{version_name}' has no scheme ('{}')",
            crate::text::escape_controls(target)
        ),
    };
    Ok(Resolved {
        reference,
        model: model.to_string(),
        version: version_name,
        api,
    })
}

/// The bearer token for the registry, read now: (token, where from).
fn bearer_token(cfg: &Config) -> Result<Option<Token>> {
    let (path, setting) = match &cfg.token_path {
        Some(p) => (p.clone(), "KF_PIPELINES_SA_TOKEN_PATH"),
        None if std::path::Path::new(SERVICE_ACCOUNT_TOKEN).is_file() => (
            PathBuf::from(SERVICE_ACCOUNT_TOKEN),
            "the service-account token",
        ),
        None => return Ok(None),
    };
    let path = path.to_string_lossy().into_owned();
    let value = crate::cloud::read_token_file(&path, setting)?;
    Ok(Some(Token { value, from: path }))
}

struct Token {
    value: String,
    /// The file it was read from, for error messages (never the token).
    from: String,
}

/// The registry at `host`, and the token it gets, if any.
struct Api<'a, R> {
    reader: &'a R,
    scheme: &'a str,
    host: String,
    token: Option<&'a Token>,
    /// A token exists but this host may not have it (plain http, not
    /// `MODEL_REGISTRY_BASE_URL`).
    withheld: bool,
}

impl<R: ApiReader> Api<'_, R> {
    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self
            .reader
            .http()
            .get(url)
            .header("accept", "application/json");
        match self.token {
            Some(t) => req.bearer_auth(&t.value),
            None => req,
        }
    }

    /// This registry with its API root (v1alpha3, else v1).
    async fn rooted(self) -> Result<(Self, String)> {
        match self.probe().await? {
            Some(api) => Ok((self, api)),
            None => bail!("no model registry answers at {}://{} (GET /api/model_registry/{{v1alpha3,v1}}/registered_models); check MODEL_REGISTRY_BASE_URL or the host in the URI", self.scheme, self.host),
        }
    }

    /// `Some(api root)` when the host answers the registry's list call; an
    /// error when it answers that the token is missing or refused.
    async fn probe(&self) -> Result<Option<String>> {
        for v in API_VERSIONS {
            let api = format!("{}://{}/api/model_registry/{v}", self.scheme, self.host);
            let Ok(resp) = self
                .request(&format!("{api}/registered_models?pageSize=1"))
                .send()
                .await
            else {
                continue;
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(Some(api));
            }
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                bail!("{}", self.refused(&api, status));
            }
        }
        Ok(None)
    }

    /// What to say when the registry refuses the call.
    fn refused(&self, api: &str, status: reqwest::StatusCode) -> String {
        match self.token {
            Some(t) => format!("the model registry at {api} answered {status} to the token from {}; check that the token's account may read the registry", t.from),
            None if self.withheld => format!("the model registry at {api} answered {status}: the token is sent over plain http only to the configured registry (MODEL_REGISTRY_BASE_URL), not to a host the URI names or the Service its ?namespace= picks; use https for {} (MODEL_REGISTRY_SCHEME), or make it MODEL_REGISTRY_BASE_URL", self.host),
            None => format!("the model registry at {api} answered {status} and no token was sent; set KF_PIPELINES_SA_TOKEN_PATH to a token file it accepts"),
        }
    }

    /// A JSON object, `None` on 404.
    async fn get(&self, url: String) -> Result<Option<Value>> {
        let resp = self.request(&url).send().await.map_err(|e| {
            anyhow!(
                "model registry call {url}: {}",
                crate::error::root_cause(&e)
            )
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            bail!("{}", self.refused(&url, status));
        }
        let body = self
            .reader
            .read_body(
                resp,
                MAX_ANSWER_BYTES,
                &format!("model registry call {url}"),
            )
            .await?;
        if !status.is_success() {
            bail!(
                "model registry call {url} answered {status}: {}",
                crate::text::escape_controls(&String::from_utf8_lossy(
                    &body[..body.len().min(300)]
                ))
            );
        }
        serde_json::from_slice(&body)
            .map(Some)
            .with_context(|| format!("model registry call {url}: not JSON"))
    }
}

fn first_item(list: Option<Value>) -> Option<Value> {
    list?["items"].as_array()?.first().cloned()
}

fn enc(s: &str) -> String {
    crate::cloud::sigv4::encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_taken_apart_as_the_registry_s_initializer_does() {
        let cfg = Config::default();
        let p = parse("model-registry://mnist/v1", &cfg).unwrap();
        assert_eq!(
            (p.configured.as_str(), p.tokens),
            ("localhost:8080", vec!["mnist", "v1"])
        );
        let p = parse("model-registry://localhost:8080/mnist/v1", &cfg).unwrap();
        assert_eq!(
            p.tokens,
            vec!["mnist", "v1"],
            "the configured host is dropped"
        );
        let p = parse("model-registry://mnist?namespace=team-a", &cfg).unwrap();
        assert_eq!(
            p.configured,
            "model-registry-service.team-a.svc.cluster.local:8080"
        );
        assert_eq!(
            parse("model-registry://h:1/m/v/extra", &cfg)
                .unwrap()
                .tokens,
            vec!["h:1", "m", "v/extra"]
        );
        let err = |u: &str| format!("{:#}", parse(u, &cfg).err().unwrap());
        assert!(err("model-registry://?namespace=a").contains("names no model"));
        assert!(err("model-registry://m?namespace=a.b").contains("is not a namespace name"));
    }
}
