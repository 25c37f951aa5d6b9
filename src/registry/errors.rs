//! A registry's error answers (status and `errors[].code`) in words that
//! say what to check.

use super::*;

/// Error bodies are read up to this size for their message.
pub(super) const MAX_ERROR_BYTES: u64 = 64 * 1024;

impl RegistryClient {
    /// Turns a non-2xx answer into a specific error.
    pub(super) async fn check_status(
        &self,
        resp: reqwest::Response,
        r: &ImageRef,
        what: &str,
        scope: Scope,
    ) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, MAX_ERROR_BYTES, "error body", self.throughput())
            .await
            .unwrap_or_default();
        let codes = error_codes(&body);
        let has = |c: &str| codes.iter().any(|(code, _)| code == c);
        let detail = codes
            .iter()
            .map(|(c, m)| format!("{c}: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        let bearer = matches!(
            self.host_auth.lock().unwrap().get(&r.registry),
            Some(HostAuth::Bearer)
        );
        Err(match status {
            StatusCode::UNAUTHORIZED if bearer => anyhow!(
                "401 Unauthorized: registry {} refused the token issued for 'repository:{}:{}' for {what}{detail}; the account may lack {} access to {}",
                r.registry, r.repository, scope.actions(), scope.verb(), r.repository
            ),
            StatusCode::UNAUTHORIZED => match self.credentials(r) {
                Some(c) => anyhow!(
                    "401 Unauthorized: registry {} rejected the credentials for user '{}' (from {}) for {what}; check the username and password",
                    r.registry, c.username, c.source
                ),
                None => self.no_credentials(r),
            },
            StatusCode::FORBIDDEN => anyhow!(
                "403 Forbidden: registry {} denied access to {what}{detail}; check that the account may {} {}",
                r.registry, scope.verb(), r.repository
            ),
            StatusCode::NOT_FOUND if has("NAME_UNKNOWN") => anyhow!(
                "repository {} not found on registry {}{detail}; check the repository name",
                r.repository, r.registry
            ),
            StatusCode::NOT_FOUND if what.starts_with("manifest") => anyhow!(
                "{what} not found{detail}; check the tag or digest"
            ),
            StatusCode::NOT_FOUND => anyhow!("{what} not found on the registry{detail}"),
            s => anyhow!("registry {} answered {s} for {what}{detail}", r.registry),
        })
    }
}

/// `{"errors":[{"code":"…","message":"…"}]}` → [(code, message)].
pub(super) fn error_codes(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    // Registry text reaches logs and the termination message: no controls.
    let clean = crate::text::escape_controls;
    serde_json::from_slice::<Errors>(body)
        .map(|e| {
            e.errors
                .into_iter()
                .map(|i| (clean(&i.code), clean(&i.message)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_errors() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(
            error_codes(body),
            vec![(
                "MANIFEST_UNKNOWN".to_string(),
                "manifest unknown".to_string()
            )]
        );
        assert!(error_codes(b"<html>").is_empty());
    }
}
