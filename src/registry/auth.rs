//! Answering challenges: Basic with the registry's credentials, or the
//! Bearer token flow against the realm it names; tokens cached per scope.

use super::*;

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
    pub(super) fn credentials(&self, r: &ImageRef) -> Option<&Credentials> {
        self.creds.lookup(&r.registry, &r.repository)
    }

    pub(super) fn cached_authorization(&self, r: &ImageRef, scope: &str) -> Option<HeaderValue> {
        let kind = self.host_auth.lock().unwrap().get(&r.registry).cloned()?;
        match kind {
            HostAuth::Basic => self.credentials(r).map(basic_header),
            HostAuth::Bearer => {
                let tokens = self.tokens.lock().unwrap();
                let t = tokens.get(&(r.registry.clone(), scope.to_string()))?;
                (t.expires > Instant::now()).then(|| bearer_header(&t.value))
            }
        }
    }

    pub(super) async fn answer(
        &self,
        r: &ImageRef,
        scope: &str,
        ch: &Challenge,
    ) -> Result<HeaderValue> {
        let creds = self.credentials(r);
        if ch.is_basic() {
            self.host_auth
                .lock()
                .unwrap()
                .insert(r.registry.clone(), HostAuth::Basic);
            return creds
                .map(basic_header)
                .ok_or_else(|| self.no_credentials(r));
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
        let url = self.token_url(r, &realm, ch.params.get("service"), scope)?;
        let (value, lifetime) = self.fetch_token(r, &realm, url).await?;
        let header = bearer_header(&value);
        self.tokens.lock().unwrap().insert(
            (r.registry.clone(), scope.to_string()),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(header)
    }

    /// The token request URL: the realm (never plain http for an https
    /// registry) with the service and scope.
    fn token_url(
        &self,
        r: &ImageRef,
        realm: &str,
        service: Option<&String>,
        scope: &str,
    ) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            anyhow!(
                "registry {} sent an invalid token realm '{}': {e}",
                r.registry,
                crate::text::escape_controls(realm)
            )
        })?;
        if url.scheme() == "http" && !self.is_insecure(&r.registry) {
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
    ) -> Result<(String, Duration)> {
        let creds = self.credentials(r);
        let mut req = self.http.get(url);
        if let Some(c) = creds {
            req = req.header(AUTHORIZATION, basic_header(c));
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the token service {realm} of registry {}: {}",
                r.registry,
                root_cause(&e)
            )
        })?;
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
        let searched = if self.creds.searched.is_empty() {
            "none found".to_string()
        } else {
            self.creds.searched.join(", ")
        };
        anyhow!(
            "registry {} requires authentication for {} but no credentials for it were found (read: {searched}); provide a docker config through OCIMODEL_DOCKER_CONFIG_JSON, REGISTRY_AUTH_FILE or DOCKER_CONFIG",
            r.registry,
            r.repository
        )
    }
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
