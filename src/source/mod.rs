//! Where bytes come from. Every source answers the same three questions —
//! which manifest does the reference mean, what are the bytes of manifest D,
//! and give me blob D as a stream — so the pipeline never cares whether it
//! reads a registry, a directory or an archive.
//!
//! Sources:
//! - a registry (see [`crate::registry`]);
//! - an OCI image layout, as a directory (`oci-layout://`) or inside a tar
//!   (`oci-archive://`, what `skopeo copy … oci-archive:` and `podman save
//!   --format oci-archive` write);
//! - a Docker archive (`docker-archive://`, `docker save` / `podman save`):
//!   it stores no manifest, so one is synthesised from `manifest.json` and
//!   the image config (Docker schema2, layers named by their diff IDs).
//!
//! Archives are read in place: their tar headers are indexed once and each
//! blob is read at its offset; nothing is extracted to a temp directory.
//!
//! Files: [`store`] (a layout's files, in a directory or a tar, read in
//! place), [`docker`] (a `docker save` archive made to look like a layout),
//! [`file`] (a local file as a byte stream, for layouts and the node cache).

mod docker;
mod file;
mod store;

use docker::docker_archive;
pub use file::file_stream;
pub use store::Store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::cache::{Cache, Origin};
use crate::digest::Digest;
use crate::manifest::{
    Descriptor, Document, ANNOTATION_REF_NAME, DOCKER_IMAGE_CONFIG, DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
};
use crate::reference::{ImageRef, Selector, Target};
use crate::registry::{ByteStream, FetchedManifest, RegistryClient};

const MAX_ARCHIVE_LINK_HOPS: usize = 8;

pub enum Source {
    Registry {
        client: Arc<RegistryClient>,
        reference: ImageRef,
        /// The node cache, when `OCIMODEL_CACHE_DIR` is set.
        cache: Option<Arc<Cache>>,
    },
    /// An OCI image layout in a directory or an archive.
    Layout {
        store: Store,
        selector: Selector,
        label: String,
    },
    /// A Docker archive, with its synthesised manifest.
    Docker {
        store: Store,
        manifest: FetchedManifest,
        /// Blob digest → path inside the archive.
        blobs: HashMap<Digest, String>,
        label: String,
    },
}

impl Source {
    /// A source for `target`; `client` is only called for registry targets,
    /// whose manifests and blobs go through `cache` when there is one.
    pub fn new(
        target: &Target,
        client: impl FnOnce() -> Result<Arc<RegistryClient>>,
        cache: Option<Arc<Cache>>,
    ) -> Result<Source> {
        Ok(match target {
            Target::Registry(r) => Source::Registry {
                client: client()?,
                reference: r.clone(),
                cache,
            },
            Target::Layout { dir, selector } => Source::Layout {
                store: Store::Dir(dir.clone()),
                selector: selector.clone(),
                label: format!("layout {}", dir.display()),
            },
            Target::OciArchive { file, selector } => Source::Layout {
                store: Store::open_tar(file)?,
                selector: selector.clone(),
                label: format!("OCI archive {}", file.display()),
            },
            Target::DockerArchive { file, image } => docker_archive(file, image.as_deref())?,
            Target::ModelRegistry(uri) => bail!(
                "{uri} must be resolved through the model registry first; `pull` does that (inspect the oci:// reference it names)"
            ),
        })
    }

    /// Fetches the manifest the reference names. A tag is resolved here, once;
    /// everything after uses the returned digest.
    pub async fn resolve(&self) -> Result<FetchedManifest> {
        match self {
            Source::Registry {
                client, reference, ..
            } => match reference.manifest_reference().parse::<Digest>() {
                // A digest needs no registry when the node cache has it
                // (and this pod may use it: see `may_use_cached`).
                Ok(d) => self.manifest(&d).await,
                Err(_) => {
                    let fetched = client
                        .manifest(reference, &reference.manifest_reference())
                        .await?;
                    // Kept by digest too, so that pods pinned to what the
                    // tag meant install it with the registry unreachable.
                    self.keep_manifest(&fetched);
                    Ok(fetched)
                }
            },
            Source::Layout {
                store,
                selector,
                label,
            } => {
                let desc = layout_select(store, selector, label)?;
                self.manifest(&desc.digest).await
            }
            Source::Docker { manifest, .. } => Ok(manifest.clone()),
        }
    }

    /// Fetches manifest `digest` (verified against it).
    pub async fn manifest(&self, digest: &Digest) -> Result<FetchedManifest> {
        match self {
            Source::Registry {
                client,
                reference,
                cache,
            } => {
                if let Some(c) = cache {
                    if let Some(bytes) = c.manifest(digest) {
                        if may_use_cached(c, client, reference, digest).await? {
                            tracing::debug!(digest = %digest, "manifest from the node cache");
                            return Ok(FetchedManifest {
                                bytes: Bytes::from(bytes),
                                content_type: None,
                                digest: digest.clone(),
                            });
                        }
                    }
                }
                let fetched = client.manifest(reference, &digest.to_string()).await?;
                self.keep_manifest(&fetched);
                Ok(fetched)
            }
            Source::Layout { store, label, .. } => {
                let bytes = store
                    .read(&blob_path(digest), MAX_MANIFEST_BYTES)
                    .with_context(|| format!("manifest {digest} in {label}"))?;
                let actual = Digest::of(digest.algorithm(), &bytes);
                if actual != *digest {
                    return Err(crate::error::IntegrityError(format!("manifest {digest} in {label}: digest mismatch: expected {digest}, got {actual}")).into());
                }
                Ok(FetchedManifest {
                    bytes: Bytes::from(bytes),
                    content_type: None,
                    digest: digest.clone(),
                })
            }
            Source::Docker {
                manifest, label, ..
            } => {
                if manifest.digest == *digest {
                    Ok(manifest.clone())
                } else {
                    bail!("{label} has no manifest {digest}")
                }
            }
        }
    }

    /// Keeps a manifest just pulled from the registry in the node cache,
    /// with where it came from and the credential it took (if any).
    fn keep_manifest(&self, fetched: &FetchedManifest) {
        let Source::Registry {
            client,
            reference,
            cache: Some(c),
        } = self
        else {
            return;
        };
        if !c.keeps_manifests() {
            return;
        }
        let origin = origin_now(client, reference, &fetched.digest);
        if let Err(e) = c.put_manifest(&fetched.digest, &fetched.bytes, origin) {
            tracing::warn!(digest = %fetched.digest, "cannot keep the manifest in the node cache: {e:#}");
        }
    }

    /// The manifest tagged `tag` (e.g. a cosign `sha256-<hex>.sig`), or
    /// `None` when nothing has that tag.
    pub async fn tagged(&self, tag: &str) -> Result<Option<FetchedManifest>> {
        match self {
            Source::Registry {
                client, reference, ..
            } => client.manifest_for_pull_if_any(reference, tag).await,
            Source::Layout { store, label, .. } => {
                let index = layout_index(store, label)?;
                match index.manifests.iter().find(|d| {
                    d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag)
                }) {
                    Some(d) => self.manifest(&d.digest).await.map(Some),
                    None => Ok(None),
                }
            }
            Source::Docker { .. } => Ok(None),
        }
    }

    /// Opens blob `desc` as an unverified stream (see `fetch` for checks).
    pub async fn blob(&self, desc: &Descriptor) -> Result<ByteStream> {
        match self {
            Source::Registry {
                client, reference, ..
            } => {
                client
                    .blob_from(reference, &desc.digest, desc.size, 0)
                    .await
            }
            Source::Layout { store, label, .. } => store
                .open(&blob_path(&desc.digest))
                .await
                .with_context(|| format!("blob {} is missing from {label}", desc.digest)),
            Source::Docker {
                store,
                blobs,
                label,
                ..
            } => {
                let path = blobs
                    .get(&desc.digest)
                    .ok_or_else(|| anyhow!("{label} has no blob {}", desc.digest))?;
                store.open(path).await
            }
        }
    }

    /// Reopens blob `desc` from byte `offset` after a broken transfer, or
    /// `None` when this source cannot (local files do not break mid-read).
    pub async fn resume(&self, desc: &Descriptor, offset: u64) -> Option<Result<ByteStream>> {
        match self {
            Source::Registry {
                client, reference, ..
            } => Some(
                client
                    .blob_from(reference, &desc.digest, desc.size, offset)
                    .await,
            ),
            _ => None,
        }
    }

    /// Sends registry blobs through `c` from now on (DEST's own partial
    /// downloads, when there is no node cache).
    pub fn set_cache(&mut self, c: Arc<Cache>) {
        if let Source::Registry { cache, .. } = self {
            *cache = Some(c);
        }
    }

    /// Blames the mirror that served `digest` (its bytes did not verify).
    pub fn blame_mirror(&self, digest: &Digest) -> Option<crate::registry::BadMirror> {
        match self {
            Source::Registry { client, .. } => client.blame_mirror(digest),
            _ => None,
        }
    }

    /// The node cache registry blobs go through, if any.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        match self {
            Source::Registry { cache, .. } => cache.as_ref(),
            _ => None,
        }
    }

    /// How many times a broken transfer may be resumed.
    pub fn retries(&self) -> u32 {
        match self {
            Source::Registry { client, .. } => client.retries(),
            _ => 0,
        }
    }

    /// Manifests whose `subject` is `digest`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        match self {
            Source::Registry {
                client, reference, ..
            } => client.referrers(reference, digest, artifact_type).await,
            Source::Layout { store, label, .. } => {
                let index = layout_index(store, label)?;
                let mut found = Vec::new();
                for d in index.manifests {
                    let Ok(m) = self.manifest(&d.digest).await else {
                        continue;
                    };
                    if let Ok(Document::Manifest(m)) = Document::parse(&m.bytes, None) {
                        if m.subject.as_ref().is_some_and(|s| &s.digest == digest) {
                            let t = m
                                .artifact_type
                                .clone()
                                .unwrap_or_else(|| m.config.media_type.clone());
                            if artifact_type.is_none_or(|want| want == t) {
                                found.push(Descriptor {
                                    artifact_type: Some(t),
                                    annotations: m.annotations.clone(),
                                    ..d
                                });
                            }
                        }
                    }
                }
                Ok(found)
            }
            Source::Docker { .. } => Ok(Vec::new()),
        }
    }

    /// The source pinned to `digest`, for logs and the marker.
    pub fn pinned(&self, digest: &Digest) -> String {
        match self {
            Source::Registry { reference, .. } => reference.with_digest(digest.clone()).to_string(),
            Source::Layout { store, .. } => match store {
                Store::Dir(d) => format!("oci-layout://{}@{digest}", d.display()),
                Store::Tar { file, .. } => format!("oci-archive://{}@{digest}", file.display()),
            },
            Source::Docker { store, .. } => {
                format!("docker-archive://{}@{digest}", store.path().display())
            }
        }
    }
}

/// How long the registry may take to say whether this pod may pull a
/// manifest the node cache holds, before the cache's own record decides.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(10);

/// This process's origin for manifest `digest` of `r`: the credential its
/// requests carried, if the registry asked for one.
fn origin_now(client: &RegistryClient, r: &ImageRef, digest: &Digest) -> Origin {
    let credential = if client.challenged(r) {
        client.presented_credentials(r).map(|c| {
            crate::cache::credential_id(
                &r.registry,
                &r.repository,
                digest,
                &c.username,
                &c.password,
            )
        })
    } else {
        None
    };
    Origin {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        credential,
    }
}

/// Whether this pod may install manifest `digest` of `r` from the node
/// cache without fetching it (KEP-2535's rule for pre-pulled images, per
/// repository): when a pull of `r`'s repository took no credential, or the
/// one this pod presents; else when the registry confirms this pod's
/// access. `false`: fetch it, and let the registry say no. With the registry
/// unreachable only the record counts, and a refusal says so.
async fn may_use_cached(
    cache: &Cache,
    client: &RegistryClient,
    r: &ImageRef,
    digest: &Digest,
) -> Result<bool> {
    let origins = cache.origins(digest);
    let here: Vec<&Origin> = origins
        .iter()
        .filter(|o| o.registry == r.registry && o.repository == r.repository)
        .collect();
    if here.iter().any(|o| o.credential.is_none()) {
        return Ok(true);
    }
    if let (false, Some(c)) = (here.is_empty(), client.presented_credentials(r)) {
        let mine = crate::cache::credential_id(
            &r.registry,
            &r.repository,
            digest,
            &c.username,
            &c.password,
        );
        if here.iter().any(|o| o.credential.as_ref() == Some(&mine)) {
            return Ok(true);
        }
    }
    let refused = |why: String| {
        anyhow!(
            "the node cache holds manifest {digest}, but it was pulled with other credentials (or from elsewhere), and registry {} could not confirm that this pod may pull it: {why}",
            r.registry
        )
    };
    match tokio::time::timeout(CONFIRM_DEADLINE, client.may_pull(r, digest)).await {
        Ok(Ok(true)) => {
            tracing::info!(digest = %digest, "the registry confirmed this pod may pull the manifest the node cache holds");
            let origin = origin_now(client, r, digest);
            if let Err(e) = cache.add_origin(digest, origin) {
                tracing::warn!(digest = %digest, "cannot record the manifest's origin in the node cache: {e:#}");
            }
            Ok(true)
        }
        Ok(Ok(false)) => Ok(false),
        Ok(Err(e)) => Err(refused(format!("{e:#}"))),
        Err(_) => Err(refused(format!(
            "no answer within {}s",
            CONFIRM_DEADLINE.as_secs()
        ))),
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// A layout's `index.json`.
fn layout_index(store: &Store, label: &str) -> Result<crate::manifest::Index> {
    let bytes = store.read("index.json", MAX_MANIFEST_BYTES)?;
    match Document::parse(&bytes, None).with_context(|| format!("invalid index.json in {label}"))? {
        Document::Index(index) => Ok(index),
        Document::Manifest(_) => bail!("index.json in {label} is not an image index"),
    }
}

/// Picks the manifest descriptor in a layout's `index.json`.
fn layout_select(store: &Store, selector: &Selector, label: &str) -> Result<Descriptor> {
    if !store.exists("oci-layout") {
        bail!(
            "{} is not an OCI image layout (no oci-layout file)",
            store.path().display()
        );
    }
    let index = layout_index(store, label)?;
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
                name: None,
            })),
        Selector::Tag(tag) => index
            .manifests
            .iter()
            .find(|d| name(d).as_deref() == Some(tag.as_str()))
            .cloned()
            .ok_or_else(|| {
                let tags: Vec<String> = index.manifests.iter().filter_map(name).collect();
                anyhow!(
                    "tag '{tag}' not found in {label} (tags: {})",
                    if tags.is_empty() {
                        "none".into()
                    } else {
                        tags.join(", ")
                    }
                )
            }),
        Selector::Only => match index.manifests.as_slice() {
            [only] => Ok(only.clone()),
            [] => bail!("{label} has no manifests"),
            many => {
                let tags: Vec<String> = many.iter().filter_map(name).collect();
                bail!(
                    "{label} holds {} manifests; name one with :TAG or @DIGEST (tags: {})",
                    many.len(),
                    tags.join(", ")
                )
            }
        },
    }
}
