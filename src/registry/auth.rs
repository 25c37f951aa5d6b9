//! Answering challenges: Basic with the registry's credentials, or the
//! Bearer token flow against the realm it names; tokens cached per scope.

use super::*;
use crate::auth::CredentialKind;

/// Token responses larger than this are refused.
pub(super) const MAX_TOKEN_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Debug)]
pub(super) enum HostAuth {
    Basic,
    Bearer,
}

pub(super) struct Token {
    value: String,
    expires: Instant,
}

impl RegistryClient {
    /// Credentials at hand for `r`, reached as itself: docker config
    /// first, then unexpired ones from the workload's cloud identity (those
    /// only while the registry is reached over TLS: see
    /// [`Self::cloud_may_answer`]).
    pub(super) fn credentials(&self, r: &ImageRef) -> Option<Credentials> {
        self.credentials_over(r, self.is_insecure(&r.registry))
    }

    /// [`Self::credentials`] for a request to `r.registry` over plain http
    /// when `plain` (a host's scheme depends on its role: as a plain-http
    /// mirror it is http, as a registry https).
    fn credentials_over(&self, r: &ImageRef, plain: bool) -> Option<Credentials> {
        self.creds.lookup(&r.registry, &r.repository).or_else(|| {
            if plain {
                return None;
            }
            self.cloud.as_ref()?.cached(&r.registry)
        })
    }

    /// As [`Self::credentials`], for answering `ch`: asks the cloud for
    /// fresh ones when none are at hand (the first challenge, or the cached
    /// ones expired), once [`Self::cloud_may_answer`] allows it.
    async fn credentials_now(
        &self,
        r: &ImageRef,
        ch: &Challenge,
        plain: bool,
    ) -> Result<Option<Credentials>> {
        if let Some(c) = self.creds.lookup(&r.registry, &r.repository) {
            return Ok(Some(c));
        }
        let Some(cloud) = &self.cloud else {
            return Ok(None);
        };
        let Some(provider) = crate::cloud::Provider::of(&r.registry) else {
            return Ok(None);
        };
        self.cloud_may_answer(r, &provider, ch, plain)?;
        if let Some(c) = cloud.cached(&r.registry) {
            return Ok(Some(c));
        }
        cloud.fetch(&r.registry).await
    }

    /// Cloud credentials go over TLS only, to the cloud's own hosts,
    /// whatever the insecure settings say: never to a cloud registry reached
    /// over plain http (whoever answers `http://<cloud host>` would get a
    /// token for the workload's cloud identity), and to a Bearer realm only
    /// over https on a host of the same cloud (Basic goes to the registry's
    /// own origin, see `send_as`). Refused before any flow runs.
    fn cloud_may_answer(
        &self,
        r: &ImageRef,
        provider: &crate::cloud::Provider,
        ch: &Challenge,
        plain: bool,
    ) -> Result<()> {
        if plain {
            let (why, hint) = self.insecure_because(&r.registry);
            bail!(
                "registry {} is set to plain http ({why}); ocimodel sends the workload's cloud credentials only over TLS, so it sent none ({hint})",
                r.registry
            );
        }
        if !ch.is_bearer() {
            return Ok(());
        }
        let Some(realm) = ch.params.get("realm") else {
            return Ok(());
        };
        let same_cloud = reqwest::Url::parse(realm).is_ok_and(|u| {
            u.scheme() == "https"
                && u.port().is_none()
                && u.host_str()
                    .and_then(crate::cloud::Provider::of)
                    .is_some_and(|p| std::mem::discriminant(&p) == std::mem::discriminant(provider))
        });
        if !same_cloud {
            bail!(
                "registry {} names the token realm {}, which is not an https address of {}; ocimodel sends the workload's cloud credentials only over TLS to the cloud's own hosts, so it sent none",
                r.registry,
                crate::text::escape_controls(realm),
                provider.hosts()
            );
        }
        Ok(())
    }

    /// Which setting makes `registry` plain http, and what to do instead.
    fn insecure_because(&self, registry: &str) -> (&'static str, &'static str) {
        if self
            .options
            .insecure_registries
            .iter()
            .any(|h| h.trim() == registry)
        {
            (
                "listed in OCIMODEL_INSECURE_REGISTRIES",
                "cloud registries serve https: take it off that list",
            )
        } else if self.options.insecure_all {
            (
                "KSERVE_OCI_INSECURE_REGISTRY=true",
                "cloud registries serve https: name only the plain-http registries in OCIMODEL_INSECURE_REGISTRIES instead",
            )
        } else {
            (
                "a plain-http mirror entry names it",
                "cloud registries serve https",
            )
        }
    }

    /// What to send up front to `r.registry` (over plain http when
    /// `plain`), from an earlier challenge of that host.
    pub(super) fn cached_authorization(
        &self,
        r: &ImageRef,
        scope: &str,
        plain: bool,
    ) -> Option<HeaderValue> {
        let kind = self.host_auth.lock().unwrap().get(&r.registry).cloned()?;
        match kind {
            HostAuth::Basic => self
                .credentials_over(r, plain)
                .filter(|c| c.kind == CredentialKind::Password)
                .map(|c| basic_header(&c)),
            HostAuth::Bearer => {
                let tokens = self.tokens.lock().unwrap();
                let t = tokens.get(&(token_key(r, plain), scope.to_string()))?;
                (t.expires > Instant::now()).then(|| bearer_header(&t.value))
            }
        }
    }

    /// Answers challenge `ch` from `r`'s host, reached over plain http when
    /// `plain` (its token realm may then be plain http too).
    pub(super) async fn answer(
        &self,
        r: &ImageRef,
        scope: &str,
        ch: &Challenge,
        plain: bool,
    ) -> Result<HeaderValue> {
        let creds = self.credentials_now(r, ch, plain).await?;
        if ch.is_basic() {
            self.host_auth
                .lock()
                .unwrap()
                .insert(r.registry.clone(), HostAuth::Basic);
            return match creds {
                Some(c) if c.kind == CredentialKind::IdentityToken => bail!(
                    "registry {} asks for Basic authentication, but its credentials (from {}) are an identity token, which only a token service takes",
                    r.registry,
                    c.source
                ),
                Some(c) => Ok(basic_header(&c)),
                None => Err(self.no_credentials(r)),
            };
        }
        if !ch.is_bearer() {
            bail!(
                "registry {} asks for '{}' authentication, which ocimodel does not support (Basic and Bearer are)",
                r.registry,
                ch.scheme
            );
        }
        let realm = ch.params.get("realm").cloned().ok_or_else(|| {
            anyhow!(
                "registry {} sent a Bearer challenge without a realm",
                r.registry
            )
        })?;
        self.host_auth
            .lock()
            .unwrap()
            .insert(r.registry.clone(), HostAuth::Bearer);
        let service = ch.params.get("service");
        let (value, lifetime) = match creds {
            Some(c) if c.kind == CredentialKind::IdentityToken => {
                self.refresh_grant(r, &realm, service, scope, &c, plain)
                    .await?
            }
            creds => {
                let url = self.token_url(r, &realm, service, scope, plain)?;
                self.fetch_token(r, &realm, url, creds.as_ref()).await?
            }
        };
        let header = bearer_header(&value);
        self.tokens.lock().unwrap().insert(
            (token_key(r, plain), scope.to_string()),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(header)
    }

    /// The token request URL: the realm (never plain http for a host
    /// reached over https) with the service and scope.
    fn token_url(
        &self,
        r: &ImageRef,
        realm: &str,
        service: Option<&String>,
        scope: &str,
        plain: bool,
    ) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            anyhow!(
                "registry {} sent an invalid token realm '{}': {e}",
                r.registry,
                crate::text::escape_controls(realm)
            )
        })?;
        if url.scheme() == "http" && !plain {
            bail!(
                "registry {} (https) names a plain-http token realm {url}; refusing to send credentials in clear (list the registry in OCIMODEL_INSECURE_REGISTRIES only if it really is plain http)",
                r.registry
            );
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        Ok(url)
    }

    /// Asks the token service (with the registry's credentials, if any) for
    /// a token; returns it with how long to use it.
    async fn fetch_token(
        &self,
        r: &ImageRef,
        realm: &str,
        url: reqwest::Url,
        creds: Option<&Credentials>,
    ) -> Result<(String, Duration)> {
        let mut req = self.http.get(url);
        if let Some(c) = creds {
            req = req.header(AUTHORIZATION, basic_header(c));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| unreachable_token_service(r, realm, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(match creds {
                Some(c) => anyhow!(
                    "{status}: the token service {realm} of registry {} rejected the credentials for user '{}' (from {}); check the username and password",
                    r.registry, c.username, c.source
                ),
                None => self.no_credentials(r),
            });
        }
        if !status.is_success() {
            bail!(
                "the token service {realm} of registry {} answered {status}",
                r.registry
            );
        }
        self.read_token(resp, realm).await
    }

    /// The OAuth2 refresh-token grant (distribution's token spec, "OAuth2
    /// Token"): an identity token is POSTed to the realm as a form, never
    /// sent as a password or a Bearer.
    async fn refresh_grant(
        &self,
        r: &ImageRef,
        realm: &str,
        service: Option<&String>,
        scope: &str,
        creds: &Credentials,
        plain: bool,
    ) -> Result<(String, Duration)> {
        let url = self.token_url(r, realm, None, scope, plain)?;
        let mut url = url;
        url.set_query(None);
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", creds.password.as_str()),
            ("client_id", "ocimodel"),
            ("scope", scope),
        ];
        if let Some(s) = service {
            form.push(("service", s.as_str()));
        }
        let resp = crate::cloud::post_form(&self.http, url, &form)
            .send()
            .await
            .map_err(|e| unreachable_token_service(r, realm, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status == StatusCode::BAD_REQUEST
        {
            bail!(
                "{status}: the token service {realm} of registry {} refused the identity token (from {}); it may have expired: log in again, or check the workload's cloud identity",
                r.registry,
                creds.source
            );
        }
        if !status.is_success() {
            bail!(
                "the token service {realm} of registry {} answered {status}",
                r.registry
            );
        }
        self.read_token(resp, realm).await
    }

    /// A token service's answer: the token and how long to use it.
    async fn read_token(&self, resp: reqwest::Response, realm: &str) -> Result<(String, Duration)> {
        let body = read_capped(resp, MAX_TOKEN_BYTES, "token response", self.throughput()).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .with_context(|| format!("the token service {realm} sent invalid JSON"))?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("the token service {realm} sent no token"))?;
        // Spec default is 60 s; renew a little early.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(5).max(1));
        Ok((value, lifetime))
    }

    pub(super) fn no_credentials(&self, r: &ImageRef) -> anyhow::Error {
        let searched = self.creds.searched_summary();
        anyhow!(
            "registry {} requires authentication for {} but no credentials for it were found (read: {searched}); log in with docker login or podman login, or provide a docker config through --auth-file, REGISTRY_AUTH_FILE, DOCKER_CONFIG or OCIMODEL_DOCKER_CONFIG_JSON",
            r.registry,
            r.repository
        )
    }
}

fn unreachable_token_service(r: &ImageRef, realm: &str, e: &reqwest::Error) -> anyhow::Error {
    anyhow!(
        "cannot reach the token service {realm} of registry {}: {}",
        r.registry,
        root_cause(e)
    )
}

/// Tokens are kept per host and scheme: one issued while the host was
/// reached over https (as a registry) is never sent over plain http (the
/// same host as a plain-http mirror), nor the other way round.
fn token_key(r: &ImageRef, plain: bool) -> String {
    let scheme = if plain { "http" } else { "https" };
    format!("{scheme}://{}", r.registry)
}

pub(super) fn basic_header(c: &Credentials) -> HeaderValue {
    let raw = format!("{}:{}", c.username, c.password);
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

pub(super) fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    v
}
