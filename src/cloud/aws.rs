//! ECR: AWS credentials from the environment the SDKs read (static keys,
//! then IRSA's web identity, then container credentials: the ECS agent or
//! the EKS Pod Identity agent), else the node's instance role through
//! IMDSv2, then a
//! SigV4-signed `GetAuthorizationToken` whose token is the registry's Basic
//! password for user `AWS`.
//!
//! Endpoints honour the SDKs' overrides: `AWS_ENDPOINT_URL_STS`,
//! `AWS_ENDPOINT_URL_ECR`, then `AWS_ENDPOINT_URL`.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
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
/// credentials (ECS, EKS Pod Identity), then the instance's role (IMDSv2).
/// `None`: none of them gives an identity.
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
    if let Some(endpoint) = container_endpoint(env)? {
        return container_credentials(ambient, &endpoint).await.map(Some);
    }
    instance_role(ambient).await
}

/// Where the EC2 instance metadata service answers unless
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise (botocore's
/// `METADATA_BASE_URL`).
const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254/";
/// How long one IMDS request may take. Off EC2, or in a pod behind a hop
/// limit of 1 (the answer to the token `PUT` never arrives), nothing
/// answers; the SDKs give up after a second (botocore's
/// `DEFAULT_METADATA_SERVICE_TIMEOUT`), this allows two.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's instance role through IMDSv2, as the SDKs' instance metadata
/// provider (botocore's `InstanceMetadataFetcher`) and the kubelet's ECR
/// credential provider get it: `PUT /latest/api/token` with
/// `X-aws-ec2-metadata-token-ttl-seconds`, then, with the token as
/// `X-aws-ec2-metadata-token`, `GET
/// /latest/meta-data/iam/security-credentials/` for the role's name and that
/// path plus the name for its credentials. `AWS_EC2_METADATA_DISABLED=true`
/// (any case, botocore's test) turns it off. Only IMDSv2: a service that
/// refuses the token `PUT` gives no identity (the SDKs would try IMDSv1).
async fn instance_role(ambient: &Ambient) -> Result<Option<Identity>> {
    let env = &ambient.env;
    if env
        .aws_ec2_metadata_disabled
        .as_deref()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    let configured = env.aws_ec2_metadata_service_endpoint.clone();
    let base = configured
        .clone()
        .unwrap_or_else(|| IMDS_DEFAULT_ENDPOINT.into());
    reqwest::Url::parse(&base).map_err(|e| {
        anyhow!(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT ({}) is not a URL: {e}",
            crate::text::escape_controls(&base)
        )
    })?;
    // botocore's `_construct_url`: the base, a `/` unless it ends with one,
    // the path.
    let url = |path: &str| format!("{}/{path}", base.trim_end_matches('/'));
    let step = format!("the EC2 instance metadata service (IMDSv2) at {base}");
    let check = "check the node's instance profile and its role's ECR permissions (a pod reaches IMDSv2 only with an instance metadata hop limit of 2 or more)";
    let resp = ambient
        .local
        .put(url("latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
        .timeout(IMDS_TIMEOUT)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        // Not on EC2, or the answer is dropped on its way to the pod (hop
        // limit 1): no instance role. An address set on purpose that
        // fails is an error.
        Err(e) if configured.is_none() => {
            tracing::debug!(
                "{step} did not answer ({}); no instance role (in a pod, the instance metadata hop limit must be 2 or more)",
                crate::error::root_cause(&e)
            );
            return Ok(None);
        }
        Err(e) => bail!(
            "{step}: {}; check AWS_EC2_METADATA_SERVICE_ENDPOINT",
            crate::error::root_cause(&e)
        ),
    };
    // botocore `_fetch_metadata_token`: these mean no IMDSv2 here.
    if matches!(resp.status().as_u16(), 403..=405) {
        tracing::debug!(
            "{step} answered {} to the token request; no instance role (IMDSv1 is not used)",
            resp.status()
        );
        return Ok(None);
    }
    let token =
        super::success_body(resp, &format!("{step}, token"), "IMDS", excerpt, check).await?;
    let token = String::from_utf8(token)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("{step}: the session token is not text"))?;
    let get = |path: String| {
        ambient
            .local
            .get(url(&path))
            .header("x-aws-ec2-metadata-token", token.as_str())
            .timeout(IMDS_TIMEOUT)
    };
    const CREDENTIALS: &str = "latest/meta-data/iam/security-credentials/";
    let resp = get(CREDENTIALS.into())
        .send()
        .await
        .map_err(|e| anyhow!("{step}: {}", crate::error::root_cause(&e)))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        tracing::debug!("{step}: the instance has no role (no instance profile)");
        return Ok(None);
    }
    let names =
        super::success_body(resp, &format!("{step}, role name"), "IMDS", excerpt, check).await?;
    let text = String::from_utf8_lossy(&names);
    let Some(role) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    // IAM's role-name characters: the name goes into the next path.
    if !role
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        bail!("{step}: the role name it gave is not an IAM role name");
    }
    let body = call(
        get(format!("{CREDENTIALS}{role}")),
        &format!("{step}, credentials of role {role}"),
        "IMDS",
        excerpt,
        check,
    )
    .await?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        code: Option<String>,
        message: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        token: Option<String>,
    }
    let a: Answer = serde_json::from_slice(&body).with_context(|| {
        format!("{step}: the credentials of role {role} are not the expected JSON")
    })?;
    if let Some(code) = a.code.as_deref().filter(|c| *c != "Success") {
        bail!(
            "{step}: the credentials of role {role} are not available: {} {}; {check}",
            crate::text::escape_controls(code),
            crate::text::escape_controls(a.message.as_deref().unwrap_or_default())
        );
    }
    let (Some(access_key_id), Some(secret_access_key)) = (a.access_key_id, a.secret_access_key)
    else {
        bail!("{step}: the credentials of role {role} lack AccessKeyId or SecretAccessKey");
    };
    Ok(Some(Identity {
        creds: AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: a.token,
        },
        source: format!("the node's instance role {role} (EC2 instance metadata, IMDSv2)"),
    }))
}

/// The host the SDKs append `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` to.
const ECS_CREDENTIALS_HOST: &str = "169.254.170.2";

/// A container credentials endpoint, and what named it (for messages).
#[derive(Debug, PartialEq)]
struct ContainerEndpoint {
    url: reqwest::Url,
    setting: &'static str,
    /// Who answers there: the ECS agent or the EKS Pod Identity agent.
    source: &'static str,
}

/// The container credentials endpoint the AWS SDKs would ask (botocore's
/// `ContainerProvider`): `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS)
/// wins, appended as written to `http://169.254.170.2`; else
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (EKS Pod Identity and others).
/// Either is then checked by botocore's rule (`ContainerMetadataFetcher.
/// _validate_allowed_url`): https to any host; plain http only to a
/// loopback address, `localhost`, 169.254.170.2 (ECS), 169.254.170.23 or
/// fd00:ec2::23 (the EKS Pod Identity agent), since the authorization token
/// goes with the request.
fn container_endpoint(env: &super::CloudEnv) -> Result<Option<ContainerEndpoint>> {
    let (raw, setting, source) = match (
        &env.aws_container_credentials_relative_uri,
        &env.aws_container_credentials_full_uri,
    ) {
        (Some(relative), _) => (
            format!("http://{ECS_CREDENTIALS_HOST}{}", relative.trim()),
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "ECS container credentials",
        ),
        (None, Some(full)) => (
            full.trim().to_string(),
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "EKS Pod Identity",
        ),
        (None, None) => return Ok(None),
    };
    let shown = crate::text::escape_controls(&raw);
    let url =
        reqwest::Url::parse(&raw).map_err(|e| anyhow!("{setting} ({shown}) is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if plain_http_allowed(&url) => {}
        "http" => bail!(
            "{setting} ({shown}) is plain http to a host other than loopback, localhost, 169.254.170.2, 169.254.170.23 or fd00:ec2::23; the AWS SDKs refuse it (the authorization token would go in clear), and so does ocimodel: use https, or the credentials agent's own address"
        ),
        other => bail!("{setting} ({shown}) is {other}, not http or https"),
    }
    Ok(Some(ContainerEndpoint {
        url,
        setting,
        source,
    }))
}

/// Whether botocore's container credentials rule lets plain http go to
/// `url`'s host (see [`container_endpoint`]).
fn plain_http_allowed(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip == std::net::Ipv4Addr::new(169, 254, 170, 2)
                || ip == std::net::Ipv4Addr::new(169, 254, 170, 23)
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
        }
        Err(_) => host == "localhost",
    }
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

/// A container credentials endpoint (the EKS Pod Identity agent, the ECS
/// agent): `GET` with the token file's contents as `Authorization`.
async fn container_credentials(
    ambient: &Ambient,
    endpoint: &ContainerEndpoint,
) -> Result<Identity> {
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
    let step = format!(
        "the container credentials endpoint {} ({}, {})",
        endpoint.url, endpoint.source, endpoint.setting
    );
    let mut req = ambient.local.get(endpoint.url.clone());
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let check = if endpoint.setting == "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" {
        "check the task role and AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)"
    } else {
        "check the pod's Pod Identity association and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
    };
    let body = call(req, &step, "container credentials", excerpt, check).await?;
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
        source: endpoint.source.into(),
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

    fn endpoint(relative: Option<&str>, full: Option<&str>) -> Result<Option<ContainerEndpoint>> {
        container_endpoint(&super::super::CloudEnv {
            aws_container_credentials_relative_uri: relative.map(Into::into),
            aws_container_credentials_full_uri: full.map(Into::into),
            ..Default::default()
        })
    }

    /// ECS: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is appended to
    /// `http://169.254.170.2` and wins over the full URI (botocore's
    /// `ContainerProvider`); then botocore's host rule applies to it too.
    #[test]
    fn relative_uri_is_the_ecs_agent_and_wins() {
        let e = endpoint(
            Some("/v2/credentials/3f5a-task"),
            Some("http://169.254.170.23/v1/credentials"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            e.url.as_str(),
            "http://169.254.170.2/v2/credentials/3f5a-task"
        );
        assert_eq!(e.setting, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        assert_eq!(e.source, "ECS container credentials");
        // Appended as written: what is not a path moves the host, and
        // the rule refuses it.
        for bad in ["@evil.example/creds", ".evil.example/creds"] {
            let err = endpoint(Some(bad), None).unwrap_err().to_string();
            assert!(
                err.contains("is plain http to a host other than"),
                "{bad}: {err}"
            );
        }
        assert_eq!(endpoint(None, None).unwrap(), None);
    }

    /// botocore's `ContainerMetadataFetcher._validate_allowed_url`: https
    /// anywhere; http only to loopback, `localhost`, 169.254.170.2,
    /// 169.254.170.23 and fd00:ec2::23.
    #[test]
    fn full_uri_over_http_only_to_the_sdks_hosts() {
        for ok in [
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://169.254.170.2/v2/credentials/x",
            "http://127.0.0.1:8080/creds",
            "http://127.4.5.6/creds",
            "http://[::1]:9000/creds",
            "http://localhost:9000/creds",
            "https://credentials.example.com/creds",
            "https://10.0.0.5/creds",
        ] {
            let e = endpoint(None, Some(ok)).unwrap().unwrap();
            assert_eq!(e.setting, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "{ok}");
            assert_eq!(e.source, "EKS Pod Identity");
        }
        for refused in [
            "http://credentials.example.com/creds",
            "http://10.0.0.5/creds",
            "http://0.0.0.0:8080/creds",
            "http://169.254.170.3/creds",
            "http://[fd00:ec2::24]/creds",
            "http://localhost.example.com/creds",
        ] {
            let err = endpoint(None, Some(refused)).unwrap_err().to_string();
            assert!(
                err.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    && err.contains("the AWS SDKs refuse it"),
                "{refused}: {err}"
            );
        }
        let err = endpoint(None, Some("ftp://127.0.0.1/creds"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not http or https"), "{err}");
        assert!(endpoint(None, Some("169.254.170.23/v1")).is_err());
    }

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
