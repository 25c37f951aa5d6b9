//! OCI / Docker manifests and indexes, platform choice, and classification of
//! a manifest into an unpack [`Plan`].
//!
//! The plan is the boundary between "what is in the registry" and "what gets
//! written": each format (container image, ORAS artifact, and later ModelPack,
//! KitOps, Docker model) only decides which layers become which files.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a registry is asked for, in order of preference. Sent as one
/// `Accept` header per type: distribution 2.8 reads each header as a single
/// media type, and without the index types it silently rewrites an index to
/// its linux/amd64 child.
pub const ACCEPT: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Manifests, indexes and configs larger than this are refused (the limit
/// registries and containers/image use).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// How deep nested indexes may go before we call it a loop.
pub const MAX_INDEX_DEPTH: usize = 4;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Ollama's own layer field: a `json` layer's path, a `tensor`'s name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Descriptor {
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(ANNOTATION_TITLE).map(String::as_str)
    }

    /// A short human description used in logs and errors.
    pub fn describe(&self) -> String {
        match self.title() {
            Some(t) => format!("'{t}' ({})", self.digest),
            None => format!("{} ({})", self.digest, self.media_type),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => bail!("invalid platform '{s}': expected os/arch[/variant], e.g. linux/amd64"),
        }
    }

    /// `linux/<GOARCH of this machine>`.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest document as fetched.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<ImageManifest>),
    Index(Index),
}

impl Document {
    /// Parses manifest bytes. `content_type` is what the server said (if
    /// anything); the document's own `mediaType` field wins when present.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document> {
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).context("manifest is not valid JSON")?;
        let declared = probe
            .get("mediaType")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()));
        let is_index = match declared.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
            Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
            Some(other)
                if other.contains("prettyjws")
                    || other.contains("manifest.v1+json") && other.contains("docker") =>
            {
                bail!("Docker schema 1 manifests ({other}) are deprecated and not supported; re-push the image with a current tool")
            }
            Some("application/vnd.oci.artifact.manifest.v1+json") => {
                bail!("the pre-release OCI artifact manifest type is not supported; re-push with an image manifest (oras push --image-spec v1.1)")
            }
            _ => probe.get("manifests").is_some(),
        };
        if is_index {
            let index: Index = serde_json::from_value(probe).context("invalid image index")?;
            if index.schema_version != 2 {
                bail!("unsupported index schemaVersion {}", index.schema_version);
            }
            Ok(Document::Index(index))
        } else {
            let m: ImageManifest =
                serde_json::from_value(probe).context("invalid image manifest")?;
            if m.schema_version != 2 {
                bail!("unsupported manifest schemaVersion {}", m.schema_version);
            }
            Ok(Document::Manifest(Box::new(m)))
        }
    }
}

/// Picks the child of an index for `want`: exact platform match first (variant
/// only compared when both sides have one), else the only real entry.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .filter(|d| {
            matches!(
                d.media_type.as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST
            )
        })
        .collect();
    let exact = candidates.iter().find(|d| match &d.platform {
        Some(p) => {
            p.os == want.os
                && p.architecture == want.architecture
                && match (&p.variant, &want.variant) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        }
        None => false,
    });
    if let Some(d) = exact {
        return Ok(d);
    }
    if candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let available: Vec<String> = candidates
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unspecified".into())
        })
        .collect();
    bail!(
        "the index has no manifest for platform {want} (available: {}); set OCIMODEL_PLATFORM to one of them",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// Layer compression, from the media type suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of_media_type(mt: &str) -> Compression {
        if mt.ends_with("+gzip") || mt.ends_with(".gzip") || mt.ends_with("tar.gzip") {
            Compression::Gzip
        } else if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, platform: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: mt.into(),
            digest: Digest::sha256_of(mt.as_bytes()),
            size: 1,
            annotations: Default::default(),
            platform: platform.map(|p| Platform::parse(p).unwrap()),
            artifact_type: None,
            data: None,
            name: None,
        }
    }

    #[test]
    fn platform_choice() {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                desc(OCI_MANIFEST, Some("linux/arm64/v8")),
                desc(OCI_MANIFEST, Some("linux/amd64")),
                desc(OCI_MANIFEST, Some("unknown/unknown")),
            ],
            annotations: Default::default(),
        };
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(
            select_platform(&index, &amd).unwrap().platform,
            index.manifests[1].platform
        );
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            select_platform(&index, &arm).unwrap().platform,
            index.manifests[0].platform
        );
        let s390 = Platform::parse("linux/s390x").unwrap();
        let err = select_platform(&index, &s390).unwrap_err().to_string();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");

        // A single entry without a platform is taken whatever we ask for.
        let single = Index {
            manifests: vec![desc(OCI_MANIFEST, None)],
            ..index
        };
        assert!(select_platform(&single, &s390).is_ok());
    }

    #[test]
    fn schema1_is_refused() {
        let doc = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        let err = Document::parse(doc, None).unwrap_err().to_string();
        assert!(err.contains("schema 1"), "{err}");
    }
}
