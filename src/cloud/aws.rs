//! ECR: AWS credentials from the environment the SDKs read (static keys,
//! then IRSA's web identity, then the EKS Pod Identity agent), then a
//! SigV4-signed `GetAuthorizationToken` whose token is the registry's Basic
//! password for user `AWS`.
//!
//! Endpoints honour the SDKs' overrides: `AWS_ENDPOINT_URL_STS`,
//! `AWS_ENDPOINT_URL_ECR`, then `AWS_ENDPOINT_URL`.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use base64::Engine;

use super::sigv4::{self, AwsCredentials};
use super::{call, excerpt, read_token_file, Ambient, Expiring, Provider};
use crate::auth::{CredentialKind, Credentials};

/// Where AWS credentials came from, for messages.
struct Identity {
    creds: AwsCredentials,
    source: String,
}

pub(super) async fn ecr_credentials(
    ambient: &Ambient,
    provider: &Provider,
) -> Result<Option<Expiring>> {
    let Provider::Ecr {
        account,
        region,
        fips,
        china,
    } = provider
    else {
        unreachable!("called for ECR hosts only");
    };
    let Some(identity) = aws_identity(ambient, region, *china).await? else {
        return Ok(None);
    };
    let endpoint = match (
        &ambient.env.aws_endpoint_url_ecr,
        &ambient.env.aws_endpoint_url,
    ) {
        (Some(e), _) | (None, Some(e)) => e.clone(),
        _ if *fips => format!("https://ecr-fips.{region}.amazonaws.com"),
        _ if *china => format!("https://api.ecr.{region}.amazonaws.com.cn"),
        _ => format!("https://api.ecr.{region}.amazonaws.com"),
    };
    let url = reqwest::Url::parse(&endpoint)
        .with_context(|| format!("the ECR endpoint '{endpoint}' is not a URL"))?;
    let body = format!(r#"{{"registryIds":["{account}"]}}"#);
    let target = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
    let content_type = "application/x-amz-json-1.1";
    let amz_date = sigv4::amz_date(SystemTime::now());
    let headers = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            url: &url,
            headers: &[("content-type", content_type), ("x-amz-target", target)],
            body: body.as_bytes(),
            region,
            service: "ecr",
            amz_date: &amz_date,
        },
        &identity.creds,
    );
    let mut req = ambient
        .http
        .post(url.clone())
        .header("content-type", content_type)
        .header("x-amz-target", target)
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let step = format!(
        "ECR GetAuthorizationToken at {endpoint} (with {})",
        identity.source
    );
    let bytes = call(
        req,
        &step,
        "ECR",
        excerpt,
        &format!("check that the identity may call ecr:GetAuthorizationToken and pull from account {account}"),
    )
    .await?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        authorization_token: String,
        expires_at: Option<f64>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        authorization_data: Vec<Data>,
    }
    let answer: Answer =
        serde_json::from_slice(&bytes).with_context(|| format!("{step}: not the expected JSON"))?;
    let data = answer
        .authorization_data
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{step}: no authorization data"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.authorization_token.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| anyhow!("{step}: the token is not base64 text"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| anyhow!("{step}: the token is not user:password"))?;
    Ok(Some(Expiring {
        credentials: Credentials {
            username: user.to_string(),
            password: password.to_string(),
            source: format!("ECR GetAuthorizationToken with {}", identity.source),
            kind: CredentialKind::Password,
        },
        expires: data
            .expires_at
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t)),
    }))
}

/// The SDKs' order: static keys, web identity (IRSA), container
/// credentials (EKS Pod Identity). `None`: the environment names none.
async fn aws_identity(ambient: &Ambient, region: &str, china: bool) -> Result<Option<Identity>> {
    let env = &ambient.env;
    if let (Some(id), Some(secret)) = (&env.aws_access_key_id, &env.aws_secret_access_key) {
        return Ok(Some(Identity {
            creds: AwsCredentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: env.aws_session_token.clone(),
            },
            source: "AWS_ACCESS_KEY_ID".into(),
        }));
    }
    if let (Some(role), Some(file)) = (&env.aws_role_arn, &env.aws_web_identity_token_file) {
        return web_identity(ambient, role, file, region, china)
            .await
            .map(Some);
    }
    if let Some(uri) = &env.aws_container_credentials_full_uri {
        return pod_identity(ambient, uri).await.map(Some);
    }
    Ok(None)
}

/// STS `AssumeRoleWithWebIdentity` (unsigned: the token is the proof).
async fn web_identity(
    ambient: &Ambient,
    role: &str,
    token_file: &str,
    registry_region: &str,
    china: bool,
) -> Result<Identity> {
    let env = &ambient.env;
    let token = read_token_file(token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")?;
    let region = env.aws_region.as_deref().unwrap_or(registry_region);
    let endpoint = match (&env.aws_endpoint_url_sts, &env.aws_endpoint_url) {
        (Some(e), _) | (None, Some(e)) => e.clone(),
        _ if china => format!("https://sts.{region}.amazonaws.com.cn"),
        _ => format!("https://sts.{region}.amazonaws.com"),
    };
    let session = env
        .aws_role_session_name
        .clone()
        .unwrap_or_else(|| "ocimodel".into());
    let step = format!("STS AssumeRoleWithWebIdentity at {endpoint} for role {role}");
    let req = super::post_form(
        &ambient.http,
        &endpoint,
        &[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", token.as_str()),
        ],
    );
    let body = call(
        req,
        &step,
        "STS",
        sts_error,
        "check AWS_ROLE_ARN and that the role's trust policy allows this service account's token (AWS_WEB_IDENTITY_TOKEN_FILE)",
    )
    .await?;
    let text = String::from_utf8_lossy(&body);
    let field = |name: &str| {
        xml_field(&text, name).ok_or_else(|| anyhow!("{step}: the answer has no {name}"))
    };
    Ok(Identity {
        creds: AwsCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        source: format!("role {role} (IRSA)"),
    })
}

/// The EKS Pod Identity agent (or any container credential endpoint):
/// `GET` with the token file's contents as `Authorization`.
async fn pod_identity(ambient: &Ambient, uri: &str) -> Result<Identity> {
    let env = &ambient.env;
    let token = match (
        &env.aws_container_authorization_token_file,
        &env.aws_container_authorization_token,
    ) {
        (Some(f), _) => Some(read_token_file(
            f,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        )?),
        (None, Some(t)) => Some(t.clone()),
        _ => None,
    };
    let step = format!("the container credentials endpoint {uri} (EKS Pod Identity)");
    let mut req = ambient.local.get(uri);
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let body = call(
        req,
        &step,
        "container credentials",
        excerpt,
        "check the pod's Pod Identity association and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    )
    .await?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
    }
    let a: Answer =
        serde_json::from_slice(&body).with_context(|| format!("{step}: not the expected JSON"))?;
    Ok(Identity {
        creds: AwsCredentials {
            access_key_id: a.access_key_id,
            secret_access_key: a.secret_access_key,
            session_token: a.token,
        },
        source: "EKS Pod Identity".into(),
    })
}

/// STS's error, `Code Message`, from its XML answer.
fn sts_error(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    format!(
        "{} {}",
        xml_field(&text, "Code").unwrap_or_default(),
        xml_field(&text, "Message")
            .map(|m| crate::text::escape_controls(&m))
            .unwrap_or_default()
    )
}

/// The text of the first `<name>…</name>` (STS answers are flat enough).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_errors_and_answers_are_read() {
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>";
        assert_eq!(xml_field(err, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_field(err, "Missing"), None);
        assert_eq!(
            xml_field(
                "<SecretAccessKey>a&amp;b</SecretAccessKey>",
                "SecretAccessKey"
            )
            .as_deref(),
            Some("a&b")
        );
    }
}
