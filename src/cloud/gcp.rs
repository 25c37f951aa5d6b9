//! Artifact Registry and GCR: an access token from the metadata server
//! (on GKE with Workload Identity it answers as the pod's Google service
//! account), used as the Basic password of user `oauth2accesstoken`.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use super::{excerpt, success_body, Ambient, Expiring};
use crate::auth::{CredentialKind, Credentials};

const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

pub(super) async fn credentials(ambient: &Ambient, _host: &str) -> Result<Option<Expiring>> {
    let configured = ambient.env.gce_metadata_host.clone();
    let host = configured
        .clone()
        .unwrap_or_else(|| DEFAULT_METADATA_HOST.into());
    let url = format!("http://{host}{TOKEN_PATH}");
    let step = format!("the GCP metadata server ({url})");
    let resp = match ambient
        .local
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
    {
        Ok(r) => r,
        // Off GCP the default name does not resolve: no identity, so the
        // registry is asked anonymously (public repositories work). An
        // address set on purpose that fails is an error.
        Err(e) if configured.is_none() => {
            tracing::debug!(
                "{step} is not reachable ({}); no GCP identity",
                crate::error::root_cause(&e)
            );
            return Ok(None);
        }
        Err(e) => bail!(
            "{step}: {}; check GCE_METADATA_HOST",
            crate::error::root_cause(&e)
        ),
    };
    let body = success_body(
        resp,
        &step,
        "metadata server",
        excerpt,
        "check the Kubernetes service account's iam.gke.io/gcp-service-account annotation and its roles/iam.workloadIdentityUser binding",
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: Option<u64>,
    }
    let a: Answer =
        serde_json::from_slice(&body).with_context(|| format!("{step}: not the expected JSON"))?;
    if a.access_token.is_empty() {
        return Err(anyhow!("{step}: an empty access token"));
    }
    Ok(Some(Expiring {
        credentials: Credentials {
            username: "oauth2accesstoken".into(),
            password: a.access_token,
            source: "the GCP metadata server (Workload Identity)".into(),
            kind: CredentialKind::Password,
        },
        expires: a
            .expires_in
            .map(|s| SystemTime::now() + Duration::from_secs(s)),
    }))
}
