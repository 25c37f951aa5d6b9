//! Where bytes come from. Every source answers the same three questions —
//! which manifest does the reference mean, what are the bytes of manifest D,
//! and give me blob D as a stream — so the pipeline never cares whether it
//! reads a registry or a directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Document, ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES};
use crate::reference::{ImageRef, Selector, Target};
use crate::registry::{ByteStream, FetchedManifest, RegistryClient};

/// Read size for local blobs: large enough that syscalls don't dominate.
const LOCAL_READ_BUF: usize = 256 * 1024;

pub enum Source {
    Registry {
        client: Arc<RegistryClient>,
        reference: ImageRef,
    },
    Layout {
        dir: PathBuf,
        selector: Selector,
    },
}

impl Source {
    /// A source for `target`; `client` is only used for registry targets.
    pub fn new(
        target: &Target,
        client: impl FnOnce() -> Result<Arc<RegistryClient>>,
    ) -> Result<Source> {
        Ok(match target {
            Target::Registry(r) => Source::Registry {
                client: client()?,
                reference: r.clone(),
            },
            Target::Layout { dir, selector } => Source::Layout {
                dir: dir.clone(),
                selector: selector.clone(),
            },
        })
    }

    /// Fetches the manifest the reference names. A tag is resolved here, once;
    /// everything after uses the returned digest.
    pub async fn resolve(&self) -> Result<FetchedManifest> {
        match self {
            Source::Registry { client, reference } => {
                client
                    .manifest(reference, &reference.manifest_reference())
                    .await
            }
            Source::Layout { dir, selector } => {
                let desc = layout_select(dir, selector)?;
                self.manifest(&desc.digest).await
            }
        }
    }

    /// Fetches manifest `digest` (verified against it).
    pub async fn manifest(&self, digest: &Digest) -> Result<FetchedManifest> {
        match self {
            Source::Registry { client, reference } => {
                client.manifest(reference, &digest.to_string()).await
            }
            Source::Layout { dir, .. } => {
                let path = blob_path(dir, digest);
                let bytes = read_local_capped(&path, MAX_MANIFEST_BYTES)
                    .with_context(|| format!("manifest {digest} in layout {}", dir.display()))?;
                let actual = Digest::of(digest.algorithm(), &bytes);
                if actual != *digest {
                    bail!(
                        "manifest {digest} in layout {}: digest mismatch: expected {digest}, got {actual}",
                        dir.display()
                    );
                }
                Ok(FetchedManifest {
                    bytes: Bytes::from(bytes),
                    content_type: None,
                    digest: digest.clone(),
                })
            }
        }
    }

    /// Opens blob `desc` as an unverified stream (see `fetch` for checks).
    pub async fn blob(&self, desc: &Descriptor) -> Result<ByteStream> {
        match self {
            Source::Registry { client, reference } => client.blob(reference, &desc.digest).await,
            Source::Layout { dir, .. } => {
                let path = blob_path(dir, &desc.digest);
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    anyhow!(
                        "blob {} is missing from layout {}: {e}",
                        desc.digest,
                        dir.display()
                    )
                })?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, LOCAL_READ_BUF);
                Ok(Box::pin(stream.map(|r| r.map_err(std::io::Error::other))))
            }
        }
    }

    /// The same source pinned to `digest`, for logs and the marker.
    pub fn pinned(&self, digest: &Digest) -> String {
        match self {
            Source::Registry { reference, .. } => reference.with_digest(digest.clone()).to_string(),
            Source::Layout { dir, .. } => format!("oci-layout://{}@{digest}", dir.display()),
        }
    }
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().name()).join(d.hex())
}

fn read_local_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > cap {
        bail!(
            "{} is {} bytes, over the {cap}-byte limit",
            path.display(),
            meta.len()
        );
    }
    Ok(std::fs::read(path)?)
}

/// Picks the manifest descriptor in a layout's `index.json`.
fn layout_select(dir: &Path, selector: &Selector) -> Result<Descriptor> {
    let index_path = dir.join("index.json");
    if !dir.join("oci-layout").is_file() {
        bail!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        );
    }
    let bytes = read_local_capped(&index_path, MAX_MANIFEST_BYTES)?;
    let Document::Index(index) = Document::parse(&bytes, None)
        .with_context(|| format!("invalid {}", index_path.display()))?
    else {
        bail!("{} is not an image index", index_path.display());
    };
    let name = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
    match selector {
        Selector::Digest(digest) => Ok(index
            .manifests
            .iter()
            .find(|d| &d.digest == digest)
            .cloned()
            .unwrap_or_else(|| Descriptor {
                // Not listed at the top (e.g. a child of an index): still a blob.
                media_type: String::new(),
                digest: digest.clone(),
                size: 0,
                annotations: Default::default(),
                platform: None,
                artifact_type: None,
                data: None,
            })),
        Selector::Tag(tag) => index
            .manifests
            .iter()
            .find(|d| name(d).as_deref() == Some(tag.as_str()))
            .cloned()
            .ok_or_else(|| {
                let tags: Vec<String> = index.manifests.iter().filter_map(name).collect();
                anyhow!(
                    "tag '{tag}' not found in layout {} (tags: {})",
                    dir.display(),
                    if tags.is_empty() {
                        "none".into()
                    } else {
                        tags.join(", ")
                    }
                )
            }),
        Selector::Only => match index.manifests.as_slice() {
            [only] => Ok(only.clone()),
            [] => bail!("layout {} has no manifests", dir.display()),
            many => {
                let tags: Vec<String> = many.iter().filter_map(name).collect();
                bail!(
                    "layout {} holds {} manifests; name one as oci-layout://DIR:TAG or @DIGEST (tags: {})",
                    dir.display(),
                    many.len(),
                    tags.join(", ")
                )
            }
        },
    }
}
