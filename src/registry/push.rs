//! Uploads: blob existence, monolithic blob uploads, manifest puts.

use super::*;
use futures_util::StreamExt;
use std::sync::Arc;

impl RegistryClient {
    /// Whether the repository already has blob `digest` (so a push can skip it).
    pub async fn has_blob(&self, r: &ImageRef, digest: &Digest) -> Result<bool> {
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let resp = self.send_as(r, Scope::Push, |c| c.head(&url)).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self
                .check_status(resp, r, &format!("blob {digest}"), Scope::Push)
                .await
                .unwrap_err()),
        }
    }

    /// Uploads a blob in one monolithic PUT, streamed from `body` (a file, or
    /// bytes in memory for small blobs); `sent` hears how many bytes of the
    /// current attempt went out so far (for progress).
    pub async fn upload_blob(
        &self,
        r: &ImageRef,
        digest: &Digest,
        size: u64,
        body: &BlobBody,
        sent: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        let what = format!("upload of blob {digest} to {}/{}", r.registry, r.repository);
        let start = format!("{}/blobs/uploads/", self.base_url(r));
        let resp = self
            .send_as(r, Scope::Push, |c| {
                c.post(&start).header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        let resp = self.check_status(resp, r, &what, Scope::Push).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{what}: the registry gave no upload location"))?;
        let location = resolve_link(&start, location);
        self.no_downgrade(r, &location, "upload location")?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", urlencode(&digest.to_string()));
        let resp = self
            .send_as(r, Scope::Push, |c| {
                let req = c
                    .put(&put)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size);
                sent(0);
                match body {
                    BlobBody::Bytes(b) => {
                        sent(b.len() as u64);
                        req.body(b.clone())
                    }
                    BlobBody::File(path) => match std::fs::File::open(path) {
                        Ok(f) => {
                            let (sent, mut so_far) = (sent.clone(), 0u64);
                            req.body(reqwest::Body::wrap_stream(
                                tokio_util::io::ReaderStream::with_capacity(
                                    tokio::fs::File::from_std(f),
                                    256 * 1024,
                                )
                                .inspect(move |chunk| {
                                    if let Ok(c) = chunk {
                                        so_far += c.len() as u64;
                                        sent(so_far);
                                    }
                                }),
                            ))
                        }
                        Err(_) => req, // reported below as a failed upload
                    },
                }
            })
            .await?;
        self.check_status(resp, r, &what, Scope::Push).await?;
        Ok(())
    }

    /// PUTs a manifest; returns whether the registry says it processed the
    /// manifest's `subject` (`OCI-Subject`), i.e. maintains referrers itself.
    pub async fn put_manifest(
        &self,
        r: &ImageRef,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<bool> {
        let url = format!("{}/manifests/{reference}", self.base_url(r));
        let what = format!("manifest {reference} for {}/{}", r.registry, r.repository);
        let resp = self
            .send_as(r, Scope::Push, |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        let subject_processed = resp.headers().contains_key("oci-subject");
        self.check_status(resp, r, &what, Scope::Push).await?;
        Ok(subject_processed)
    }
}
