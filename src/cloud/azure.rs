//! ACR with Azure Workload Identity: the projected service-account token
//! is traded for an Entra access token (client-credentials grant with a
//! JWT assertion), that for an ACR refresh token at the registry's
//! `/oauth2/exchange`, which then serves as an identity token (the
//! refresh-token grant at the registry's token realm).

use anyhow::{bail, Context, Result};

use super::{call, excerpt, read_token_file, Ambient, Expiring};
use crate::auth::{CredentialKind, Credentials};

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
/// The user name ACR expects with a refresh token.
const TOKEN_USER: &str = "00000000-0000-0000-0000-000000000000";

pub(super) async fn credentials(ambient: &Ambient, host: &str) -> Result<Option<Expiring>> {
    let env = &ambient.env;
    let (Some(client), Some(tenant), Some(file)) = (
        &env.azure_client_id,
        &env.azure_tenant_id,
        &env.azure_federated_token_file,
    ) else {
        return Ok(None);
    };
    let assertion = read_token_file(file, "AZURE_FEDERATED_TOKEN_FILE")?;
    let authority = authority(env.azure_authority_host.as_deref())?;
    let token_url = format!("{authority}/{tenant}/oauth2/v2.0/token");
    let step = format!("Entra ID token at {token_url} for client {client}");
    let req = super::post_form(
        &ambient.http,
        &token_url,
        &[
            ("client_id", client.as_str()),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", ACR_SCOPE),
        ],
    );
    let body = call(
        req,
        &step,
        "Entra ID",
        oauth_error,
        &format!(
            "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the federated credential of the managed identity: its issuer and subject must be those of the service-account token in AZURE_FEDERATED_TOKEN_FILE ({})",
            crate::text::escape_controls(file)
        ),
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
    }
    let aad: Token =
        serde_json::from_slice(&body).with_context(|| format!("{step}: not the expected JSON"))?;

    let exchange = format!("https://{host}/oauth2/exchange");
    let step = format!("ACR token exchange at {exchange}");
    let body = call(
        super::post_form(
            &ambient.http,
            &exchange,
            &[
                ("grant_type", "access_token"),
                ("service", host),
                ("tenant", tenant.as_str()),
                ("access_token", aad.access_token.as_str()),
            ],
        ),
        &step,
        "ACR exchange",
        oauth_error,
        &format!("check that the identity has the AcrPull role on {host}"),
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct Refresh {
        refresh_token: String,
    }
    let r: Refresh =
        serde_json::from_slice(&body).with_context(|| format!("{step}: not the expected JSON"))?;
    Ok(Some(Expiring {
        credentials: Credentials {
            username: TOKEN_USER.into(),
            password: r.refresh_token,
            source: format!("Azure Workload Identity (client {client})"),
            kind: CredentialKind::IdentityToken,
        },
        // ACR refresh tokens last about three hours; not stated in the
        // answer, so the default applies.
        expires: None,
    }))
}

/// `AZURE_AUTHORITY_HOST` (default: the public cloud's) as azure-identity
/// normalizes it (Python's `normalize_authority`, which reads the scheme as
/// `urllib.parse.urlsplit` does): without a scheme, `https://` is added; any
/// scheme but https is refused, since the projected service-account token
/// goes to it as the client assertion; trailing spaces and `/` are dropped.
fn authority(configured: Option<&str>) -> Result<String> {
    let raw = configured.unwrap_or(DEFAULT_AUTHORITY);
    // urlsplit: a scheme is what precedes the first ':', when it starts with
    // a letter and holds only letters, digits, '+', '-' and '.'.
    let scheme = raw.split_once(':').map(|(s, _)| s).filter(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    let trimmed = raw.trim_end_matches([' ', '/']);
    match scheme {
        None => Ok(format!("https://{trimmed}")),
        Some(s) if s.eq_ignore_ascii_case("https") => Ok(trimmed.to_string()),
        Some(_) => bail!(
            "AZURE_AUTHORITY_HOST ({}) is not https: azure-identity refuses it (the projected service-account token would go in clear), and so does ocimodel; give https://<host> or the bare host name",
            crate::text::escape_controls(raw)
        ),
    }
}

/// `error: error_description` of an OAuth2 error answer, else an excerpt.
fn oauth_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        error: Option<String>,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(E {
            error: Some(e),
            error_description: d,
        }) => crate::text::escape_controls(&format!(
            "{e}{}",
            d.map(|d| format!(": {}", d.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        )),
        _ => excerpt(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// azure-identity's `normalize_authority`, case by case.
    #[test]
    fn authorities_are_normalized_as_azure_identity_does() {
        for (given, want) in [
            (None, "https://login.microsoftonline.com"),
            (
                Some("https://login.microsoftonline.us/"),
                "https://login.microsoftonline.us",
            ),
            (
                Some("login.chinacloudapi.cn"),
                "https://login.chinacloudapi.cn",
            ),
            (Some("127.0.0.1:8443/ "), "https://127.0.0.1:8443"),
            (
                Some("HTTPS://login.example.com"),
                "HTTPS://login.example.com",
            ),
        ] {
            assert_eq!(authority(given).unwrap(), want, "{given:?}");
        }
        // http, and what urlsplit reads as another scheme, are refused.
        for refused in [
            "http://127.0.0.1:8080/",
            "login.example.com:8443",
            "ftp://x",
        ] {
            let err = authority(Some(refused)).unwrap_err().to_string();
            assert!(err.contains("is not https"), "{refused}: {err}");
        }
    }
}
