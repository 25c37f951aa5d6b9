//! Registry credentials from the workload's cloud identity, for the cloud
//! registries that accept them: no SDKs and no helper binaries (a `FROM
//! scratch` image has none), only the documented HTTP flows.
//!
//! | registry host | identity | exchange |
//! |---|---|---|
//! | `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` | static keys in env, IRSA (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` → STS `AssumeRoleWithWebIdentity`), container credentials (ECS `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, EKS Pod Identity `AWS_CONTAINER_CREDENTIALS_FULL_URI`), the node's instance role (IMDSv2) | SigV4-signed ECR `GetAuthorizationToken` → Basic `AWS:<token>` |
//! | `gcr.io`, `*.gcr.io`, `*.pkg.dev` | the metadata server (GKE Workload Identity answers as the pod's service account; `GCE_METADATA_HOST`) | Basic `oauth2accesstoken:<access token>` |
//! | `*.azurecr.io` (and `.cn`, `.de`, `.us`) | Azure Workload Identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`) | Entra token → ACR `/oauth2/exchange` → a refresh token, used as an identity token |
//!
//! Explicit docker-config credentials for a host win; `OCIMODEL_CLOUD_AUTH=off`
//! turns all of this off. What a flow gives goes over TLS only, to the
//! cloud's own hosts: a cloud registry set to plain http gets none
//! (`registry::auth`, `cloud_may_answer`). Projected token files are read again on every
//! exchange (the kubelet rotates them); results are cached until shortly
//! before they expire. No token or secret ever reaches a log line, a
//! marker or an error message.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod sigv4;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::auth::Credentials;

/// Which cloud a registry host belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    Ecr {
        account: String,
        region: String,
        fips: bool,
        china: bool,
    },
    Google,
    Azure,
}

impl Provider {
    /// The provider of `host` (a port never matches: cloud registries have
    /// none), by anchored patterns: `evil.azurecr.io.example.com` is nobody's.
    pub fn of(host: &str) -> Option<Provider> {
        let host = host.to_ascii_lowercase();
        if let Some(p) = ecr(&host) {
            return Some(p);
        }
        if host == "gcr.io" || host.ends_with(".gcr.io") || host.ends_with(".pkg.dev") {
            return label_host(&host).then_some(Provider::Google);
        }
        let azure = ["azurecr.io", "azurecr.cn", "azurecr.de", "azurecr.us"];
        if let Some((name, suffix)) = host.split_once('.') {
            if azure.contains(&suffix)
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Some(Provider::Azure);
            }
        }
        None
    }

    /// The cloud's registry hosts, in words (for messages).
    pub fn hosts(&self) -> &'static str {
        match self {
            Provider::Ecr { .. } => "AWS's ECR hosts (<account>.dkr.ecr.<region>.amazonaws.com)",
            Provider::Google => "Google's registry hosts (gcr.io, *.gcr.io, *.pkg.dev)",
            Provider::Azure => "Azure's registry hosts (<name>.azurecr.io)",
        }
    }
}

/// `^(\d{12})\.dkr\.ecr(-fips)?\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$`
fn ecr(host: &str) -> Option<Provider> {
    let (rest, china) = match host.strip_suffix(".amazonaws.com.cn") {
        Some(r) => (r, true),
        None => (host.strip_suffix(".amazonaws.com")?, false),
    };
    let (account, rest) = rest.split_once(".dkr.")?;
    let (fips, region) = match rest.strip_prefix("ecr-fips.") {
        Some(r) => (true, r),
        None => (false, rest.strip_prefix("ecr.")?),
    };
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && region_ok).then(|| {
        Provider::Ecr {
            account: account.to_string(),
            region: region.to_string(),
            fips,
            china,
        }
    })
}

/// Letters, digits, dots and dashes only.
fn label_host(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Every variable the cloud flows read, under the names the providers'
/// SDKs use, read once per run. (Its `Debug` shows none of them: it holds
/// secrets.)
#[derive(Clone, Default)]
pub struct CloudEnv {
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    pub aws_role_arn: Option<String>,
    pub aws_web_identity_token_file: Option<String>,
    pub aws_role_session_name: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`: where STS is asked.
    pub aws_region: Option<String>,
    pub aws_endpoint_url: Option<String>,
    pub aws_endpoint_url_sts: Option<String>,
    pub aws_endpoint_url_ecr: Option<String>,
    pub aws_container_credentials_full_uri: Option<String>,
    /// ECS: appended to `http://169.254.170.2`; wins over the full URI.
    pub aws_container_credentials_relative_uri: Option<String>,
    pub aws_container_authorization_token_file: Option<String>,
    pub aws_container_authorization_token: Option<String>,
    /// The EC2 instance metadata service's base URL (IMDSv2).
    pub aws_ec2_metadata_service_endpoint: Option<String>,
    /// `true` (any case): the instance metadata service is not asked.
    pub aws_ec2_metadata_disabled: Option<String>,
    /// `host[:port]` of the GCP metadata server.
    pub gce_metadata_host: Option<String>,
    pub azure_client_id: Option<String>,
    pub azure_tenant_id: Option<String>,
    pub azure_federated_token_file: Option<String>,
    pub azure_authority_host: Option<String>,
}

/// Nothing of what it holds: it holds secrets.
impl std::fmt::Debug for CloudEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudEnv { .. }")
    }
}

impl CloudEnv {
    /// The variables, as this process has them: read once, where the
    /// other settings are read (`cli/prepare.rs`).
    pub fn from_env() -> CloudEnv {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        CloudEnv {
            aws_access_key_id: v("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: v("AWS_SECRET_ACCESS_KEY"),
            aws_session_token: v("AWS_SESSION_TOKEN"),
            aws_role_arn: v("AWS_ROLE_ARN"),
            aws_web_identity_token_file: v("AWS_WEB_IDENTITY_TOKEN_FILE"),
            aws_role_session_name: v("AWS_ROLE_SESSION_NAME"),
            aws_region: v("AWS_REGION").or_else(|| v("AWS_DEFAULT_REGION")),
            aws_endpoint_url: v("AWS_ENDPOINT_URL"),
            aws_endpoint_url_sts: v("AWS_ENDPOINT_URL_STS"),
            aws_endpoint_url_ecr: v("AWS_ENDPOINT_URL_ECR"),
            aws_container_credentials_full_uri: v("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            aws_container_credentials_relative_uri: v("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            aws_container_authorization_token_file: v("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            aws_container_authorization_token: v("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            aws_ec2_metadata_service_endpoint: v("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            aws_ec2_metadata_disabled: v("AWS_EC2_METADATA_DISABLED"),
            gce_metadata_host: v("GCE_METADATA_HOST"),
            azure_client_id: v("AZURE_CLIENT_ID"),
            azure_tenant_id: v("AZURE_TENANT_ID"),
            azure_federated_token_file: v("AZURE_FEDERATED_TOKEN_FILE"),
            azure_authority_host: v("AZURE_AUTHORITY_HOST"),
        }
    }
}

/// Credentials that expire, as a flow hands them back.
pub struct Expiring {
    pub credentials: Credentials,
    /// When the issuer says they stop working (`None`: not said).
    pub expires: Option<SystemTime>,
}

/// Renew this long before the issuer's expiry.
const EARLY: Duration = Duration::from_secs(300);
/// Keep credentials whose expiry is not given this long.
const UNSTATED: Duration = Duration::from_secs(600);
/// How long "this workload has no identity in that cloud" is believed.
const NO_IDENTITY: Duration = Duration::from_secs(60);

/// The cloud flows for one run, with what they produced cached per host.
pub struct Ambient {
    env: CloudEnv,
    /// For the providers' HTTPS APIs (system proxies and CA bundles apply).
    http: reqwest::Client,
    /// For link-local credential endpoints (metadata server, Pod Identity
    /// agent): never through a proxy.
    local: reqwest::Client,
    /// Per host: the credentials its flow gave (`None`: no identity), and
    /// until when they hold.
    cache: Mutex<HashMap<String, (Option<Credentials>, Instant)>>,
    /// Per host: held while its flow runs, so challenges arriving together
    /// (several models from one registry) run it once and share the answer.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ambient {
    /// `roots`: the CA roots `http` trusts (a scratch image has no system
    /// store for a client to fall back on).
    pub fn new(
        env: CloudEnv,
        http: reqwest::Client,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Ambient> {
        let local = reqwest::Client::builder()
            .tls_certs_only(roots)
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("ocimodel/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client for credential endpoints")?;
        Ok(Ambient {
            env,
            http,
            local,
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Unexpired credentials already fetched for `host`.
    pub fn cached(&self, host: &str) -> Option<Credentials> {
        self.known(host).flatten()
    }

    /// What the last flow for `host` gave, while it holds.
    fn known(&self, host: &str) -> Option<Option<Credentials>> {
        let cache = self.cache.lock().unwrap();
        let (c, until) = cache.get(host)?;
        (*until > Instant::now()).then(|| c.clone())
    }

    /// Credentials for `host` from the workload's identity: `None` when the
    /// host is no cloud registry, or its cloud gave this workload no
    /// identity (then the registry is asked anonymously).
    pub async fn fetch(&self, host: &str) -> Result<Option<Credentials>> {
        let Some(provider) = Provider::of(host) else {
            return Ok(None);
        };
        let flight = self
            .flights
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .clone();
        let _turn = flight.lock().await;
        if let Some(known) = self.known(host) {
            return Ok(known);
        }
        let got = match &provider {
            Provider::Ecr { .. } => aws::ecr_credentials(self, &provider).await,
            Provider::Google => gcp::credentials(self, host).await,
            Provider::Azure => azure::credentials(self, host).await,
        };
        let Some(e) = got.with_context(|| format!("cloud credentials for {host}"))? else {
            self.cache
                .lock()
                .unwrap()
                .insert(host.to_string(), (None, Instant::now() + NO_IDENTITY));
            return Ok(None);
        };
        let left = match e.expires {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(EARLY),
            None => UNSTATED,
        };
        tracing::info!(registry = host, source = %e.credentials.source, valid_for = ?left, "credentials from the workload's cloud identity");
        self.cache.lock().unwrap().insert(
            host.to_string(),
            (Some(e.credentials.clone()), Instant::now() + left),
        );
        Ok(Some(e.credentials))
    }
}

/// An `application/x-www-form-urlencoded` body (reqwest's `form` feature
/// would pull in another crate for this).
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::encode(k), sigv4::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request with a form body.
pub fn post_form(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    pairs: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
}

/// A projected token file, read now (the kubelet rotates it).
pub(crate) fn read_token_file(path: &str, setting: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {setting} ({path})"))?;
    let t = text.trim();
    if t.is_empty() {
        bail!("{setting} ({path}) is empty");
    }
    Ok(t.to_string())
}

/// Sends one request of a credential flow: the answer's body when it
/// succeeds, else one line naming the `step`, the status, `detail` of the
/// body, and `check` (what the user should look at).
async fn call(
    req: reqwest::RequestBuilder,
    step: &str,
    what: &str,
    detail: fn(&[u8]) -> String,
    check: &str,
) -> Result<Vec<u8>> {
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{step}: {}", crate::error::root_cause(&e)))?;
    success_body(resp, step, what, detail, check).await
}

/// The body of a credential endpoint's answer, as [`call`] says.
async fn success_body(
    resp: reqwest::Response,
    step: &str,
    what: &str,
    detail: fn(&[u8]) -> String,
    check: &str,
) -> Result<Vec<u8>> {
    let status = resp.status();
    let body = small_body(resp, what).await?;
    if !status.is_success() {
        bail!("{step} answered {status}: {}; {check}", detail(&body));
    }
    Ok(body)
}

/// A response body of at most 1 MiB.
async fn small_body(resp: reqwest::Response, what: &str) -> Result<Vec<u8>> {
    const CAP: usize = 1 << 20;
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading the {what} response"))?
    {
        out.extend_from_slice(&chunk);
        if out.len() > CAP {
            bail!("the {what} response is larger than 1 MiB");
        }
    }
    Ok(out)
}

/// A short, printable piece of an error body (never a success body: those
/// carry tokens).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t: String = text.chars().take(300).collect();
    crate::text::escape_controls(t.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_anchored_patterns() {
        let ecr = |a: &str, r: &str, fips, china| Provider::Ecr {
            account: a.into(),
            region: r.into(),
            fips,
            china,
        };
        let cases = [
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                Some(ecr("123456789012", "us-east-1", false, false)),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                Some(ecr("123456789012", "us-gov-west-1", true, false)),
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                Some(ecr("123456789012", "cn-north-1", false, true)),
            ),
            ("12345.dkr.ecr.us-east-1.amazonaws.com", None),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.io", None),
            ("public.ecr.aws", None),
            ("gcr.io", Some(Provider::Google)),
            ("eu.gcr.io", Some(Provider::Google)),
            ("europe-west4-docker.pkg.dev", Some(Provider::Google)),
            ("pkg.dev.evil.io", None),
            ("models.azurecr.io", Some(Provider::Azure)),
            ("models.azurecr.cn", Some(Provider::Azure)),
            ("models.azurecr.io.evil.io", None),
            ("evil.io/models.azurecr.io", None),
            ("a.b.azurecr.io", None),
            ("registry.example.com", None),
            ("127.0.0.1:5000", None),
        ];
        for (host, want) in cases {
            assert_eq!(Provider::of(host), want, "{host}");
        }
    }
}
