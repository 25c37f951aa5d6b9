//! Referrers: the API with `Link` pagination (same origin only, capped),
//! else the `sha256-<hex>` tag schema.

use super::*;

/// Referrer listings longer than this many pages are refused.
pub(super) const MAX_REFERRER_PAGES: usize = 100;
/// Referrer descriptors and page bytes kept across all pages: a registry
/// listing endless pages must not grow memory with them.
pub(super) const MAX_REFERRERS: usize = 10_000;
pub(super) const MAX_REFERRER_BYTES: u64 = 16 << 20;

impl RegistryClient {
    /// The manifests that refer to `digest` (signatures, SBOMs, lineage):
    /// the referrers API with `Link` pagination, else the `sha256-<hex>` tag
    /// schema. Filtered by `artifact_type` here when the registry did not.
    pub async fn referrers(
        &self,
        r: &ImageRef,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let base = self.base_url(r);
        let mut url = format!("{base}/referrers/{digest}");
        if let Some(t) = artifact_type {
            url.push_str(&format!("?artifactType={}", urlencode(t)));
        }
        let what = format!("referrers of {digest} in {}/{}", r.registry, r.repository);
        let mut found = Vec::new();
        let mut bytes = 0u64;
        for page in 0.. {
            if page >= MAX_REFERRER_PAGES {
                bail!("{what}: more than {MAX_REFERRER_PAGES} pages; refusing");
            }
            let resp = self
                .send(r, |c| c.get(&url).header(ACCEPT, OCI_INDEX))
                .await?;
            if resp.status() == StatusCode::NOT_FOUND && page == 0 {
                return self.referrers_by_tag(r, digest, artifact_type).await;
            }
            let resp = self.check_status(resp, r, &what, Scope::Pull).await?;
            let filtered = resp
                .headers()
                .get_all("oci-filters-applied")
                .iter()
                .any(|v| {
                    v.to_str()
                        .unwrap_or("")
                        .split(',')
                        .any(|f| f.trim() == "artifactType")
                });
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| resolve_link(&url, &l));
            let body = read_capped(resp, MAX_MANIFEST_BYTES, &what, self.throughput()).await?;
            bytes += body.len() as u64;
            if bytes > MAX_REFERRER_BYTES {
                bail!("{what}: the listing is over {MAX_REFERRER_BYTES} bytes across {} pages; refusing", page + 1);
            }
            let Document::Index(index) = Document::parse(&body, Some(OCI_INDEX))? else {
                bail!("{what}: the registry did not answer with an image index");
            };
            found.extend(index.manifests.into_iter().filter(|d| {
                filtered || artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t))
            }));
            if found.len() > MAX_REFERRERS {
                bail!("{what}: more than {MAX_REFERRERS} referrers; refusing");
            }
            match next {
                Some(n) => {
                    // Pages come from the registry itself, never another host.
                    let same = match (reqwest::Url::parse(&n), reqwest::Url::parse(&url)) {
                        (Ok(a), Ok(b)) => same_origin(&a, &b),
                        _ => false,
                    };
                    if !same {
                        bail!(
                            "{what}: the next page is on another host or scheme ({}); refusing",
                            crate::text::escape_controls(&n)
                        );
                    }
                    url = n
                }
                None => break,
            }
        }
        Ok(found)
    }

    /// The referrers tag schema: an index tagged `<alg>-<hex>` (hex cut to 64).
    async fn referrers_by_tag(
        &self,
        r: &ImageRef,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let hex = digest.hex();
        let tag = format!(
            "{}-{}",
            digest.algorithm().name(),
            &hex[..hex.len().min(64)]
        );
        let url = format!("{}/manifests/{tag}", self.base_url(r));
        let resp = self
            .send(r, |c| c.get(&url).header(ACCEPT, OCI_INDEX))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let what = format!("referrers tag {tag} in {}/{}", r.registry, r.repository);
        let resp = self.check_status(resp, r, &what, Scope::Pull).await?;
        let body = read_capped(resp, MAX_MANIFEST_BYTES, &what, self.throughput()).await?;
        // "If that tag doesn't yield a valid index, assume there are no referrers."
        let Ok(Document::Index(index)) = Document::parse(&body, Some(OCI_INDEX)) else {
            return Ok(Vec::new());
        };
        Ok(index
            .manifests
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)))
            .collect())
    }
}

/// The `rel="next"` target of a `Link` header (RFC 8288).
pub(super) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("rel=\"next\"")
                || p.trim().eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// A `Link` target relative to the URL it came from.
pub(super) fn resolve_link(current: &str, link: &str) -> String {
    match reqwest::Url::parse(current).and_then(|base| base.join(link)) {
        Ok(u) => u.to_string(),
        Err(_) => link.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/m/referrers/sha256:a?n=2&last=x>; rel="next""#).as_deref(),
            Some("/v2/m/referrers/sha256:a?n=2&last=x")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel="next""#).as_deref(),
            Some("https://x/b")
        );
        assert_eq!(next_link(r#"<https://x/a>; rel="prev""#), None);
        assert_eq!(
            resolve_link(
                "http://127.0.0.1:5000/v2/m/referrers/sha256:a",
                "/v2/m/referrers/sha256:a?page=2"
            ),
            "http://127.0.0.1:5000/v2/m/referrers/sha256:a?page=2"
        );
        assert_eq!(
            urlencode("application/vnd.x+json"),
            "application%2Fvnd.x%2Bjson"
        );
    }
}
