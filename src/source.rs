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

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::digest::Digest;
use crate::manifest::{
    Descriptor, Document, ANNOTATION_REF_NAME, DOCKER_IMAGE_CONFIG, DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
};
use crate::reference::{ImageRef, Selector, Target};
use crate::registry::{ByteStream, FetchedManifest, RegistryClient};

/// Read size for local blobs: large enough that syscalls don't dominate.
const LOCAL_READ_BUF: usize = 256 * 1024;
const MAX_ARCHIVE_LINK_HOPS: usize = 8;

pub enum Source {
    Registry {
        client: Arc<RegistryClient>,
        reference: ImageRef,
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
    /// A source for `target`; `client` is only called for registry targets.
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
            Source::Registry { client, reference } => {
                client.manifest(reference, &digest.to_string()).await
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

    /// The manifest tagged `tag` (e.g. a cosign `sha256-<hex>.sig`), or
    /// `None` when nothing has that tag.
    pub async fn tagged(&self, tag: &str) -> Result<Option<FetchedManifest>> {
        match self {
            Source::Registry { client, reference } => client.tagged_manifest(reference, tag).await,
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
            Source::Registry { client, reference } => client.blob(reference, &desc.digest).await,
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
            Source::Registry { client, reference } => {
                Some(client.blob_from(reference, &desc.digest, offset).await)
            }
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
            Source::Registry { client, reference } => {
                client.referrers(reference, digest, artifact_type).await
            }
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

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// Files of a layout or archive: a directory, or a tar read in place.
pub enum Store {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        /// Cleaned entry name → where its data is.
        entries: HashMap<String, TarEntry>,
    },
}

#[derive(Clone, Debug)]
pub enum TarEntry {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink inside the archive (skopeo's docker archives use them).
    Link(String),
}

fn clean_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl Store {
    /// Indexes an archive's tar headers (data is skipped by seeking).
    pub fn open_tar(file: &Path) -> Result<Store> {
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot open archive {}", file.display()))?;
        let mut archive = tar::Archive::new(f);
        let mut entries = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .with_context(|| format!("{} is not a tar archive", file.display()))?
        {
            let entry = match entry {
                Ok(e) => e,
                // The tar crate's message quotes raw header bytes; say what it means.
                Err(_) if entries.is_empty() => bail!("{} is not a tar archive", file.display()),
                Err(_) => bail!(
                    "{} is corrupt after {} entries",
                    file.display(),
                    entries.len()
                ),
            };
            let name = clean_name(&entry.path()?.to_string_lossy());
            let kind = entry.header().entry_type();
            if kind.is_file() {
                entries.insert(
                    name,
                    TarEntry::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name()? {
                    let target = target.to_string_lossy().into_owned();
                    let resolved = if kind.is_symlink() {
                        let dir = Path::new(&name)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        clean_name(&format!("{dir}/{target}"))
                    } else {
                        clean_name(&target)
                    };
                    entries.insert(name, TarEntry::Link(resolved));
                }
            }
        }
        Ok(Store::Tar {
            file: file.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Store::Dir(d) => d,
            Store::Tar { file, .. } => file,
        }
    }

    /// Where the data of `name` is in the archive, following links.
    fn locate(&self, name: &str) -> Result<(u64, u64)> {
        let Store::Tar { entries, file } = self else {
            bail!("internal: not an archive")
        };
        let mut name = clean_name(name);
        for _ in 0..MAX_ARCHIVE_LINK_HOPS {
            match entries.get(&name) {
                Some(TarEntry::File { offset, size }) => return Ok((*offset, *size)),
                Some(TarEntry::Link(target)) => name = target.clone(),
                None => bail!("{name} is not in archive {}", file.display()),
            }
        }
        bail!("{name} in archive {} is a link loop", file.display())
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => d.join(name).is_file(),
            Store::Tar { .. } => self.locate(name).is_ok(),
        }
    }

    /// Reads a small file whole, refusing more than `cap` bytes.
    pub fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        match self {
            Store::Dir(d) => {
                // Regular files only, capped while reading: a device or a
                // FIFO (whose length says 0) must not hang or flood us.
                let path = d.join(name);
                crate::dirfd::read_small_file(&path, cap, true)
                    .with_context(|| format!("cannot read {}", path.display()))
            }
            Store::Tar { file, .. } => {
                let (offset, size) = self.locate(name)?;
                if size > cap {
                    bail!(
                        "{name} in {} is {size} bytes, over the {cap}-byte limit",
                        file.display()
                    );
                }
                let mut f = std::fs::File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::with_capacity(size as usize);
                f.take(size).read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Streams a file.
    pub async fn open(&self, name: &str) -> Result<ByteStream> {
        let (path, range) = match self {
            Store::Dir(d) => (d.join(name), None),
            Store::Tar { file, .. } => (file.clone(), Some(self.locate(name)?)),
        };
        let mut f = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let stream = match range {
            None => tokio_util::io::ReaderStream::with_capacity(
                Box::new(f) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                LOCAL_READ_BUF,
            ),
            Some((offset, size)) => {
                f.seek(SeekFrom::Start(offset)).await?;
                tokio_util::io::ReaderStream::with_capacity(
                    Box::new(f.take(size)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    LOCAL_READ_BUF,
                )
            }
        };
        Ok(Box::pin(stream.map(|r| r.map_err(std::io::Error::other))))
    }
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

/// One image of a Docker archive's `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Opens a Docker archive and synthesises a schema2 manifest for `image`
/// (`REPO:TAG`; optional when the archive holds one image).
fn docker_archive(file: &Path, image: Option<&str>) -> Result<Source> {
    let store = Store::open_tar(file)?;
    let label = format!("Docker archive {}", file.display());
    let listing: Vec<DockerArchiveImage> = serde_json::from_slice(
        &store
            .read("manifest.json", MAX_MANIFEST_BYTES)
            .with_context(|| {
                format!("{label} has no manifest.json; is it a docker save / podman save archive?")
            })?,
    )
    .with_context(|| format!("invalid manifest.json in {label}"))?;
    let chosen = match image {
        Some(want) => listing
            .iter()
            .find(|i| {
                i.repo_tags
                    .iter()
                    .any(|t| t == want || t.ends_with(&format!("/{want}")))
            })
            .ok_or_else(|| {
                let all: Vec<&str> = listing
                    .iter()
                    .flat_map(|i| i.repo_tags.iter().map(String::as_str))
                    .collect();
                anyhow!("{want} not found in {label} (images: {})", all.join(", "))
            })?,
        None => match listing.as_slice() {
            [only] => only,
            [] => bail!("{label} holds no images"),
            many => bail!(
                "{label} holds {} images; name one as docker-archive://FILE:REPO:TAG",
                many.len()
            ),
        },
    };
    let config = store.read(&chosen.config, MAX_MANIFEST_BYTES)?;
    let config_digest = Digest::sha256_of(&config);
    #[derive(serde::Deserialize, Default)]
    struct Rootfs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    #[derive(serde::Deserialize)]
    struct ImageConfig {
        #[serde(default)]
        rootfs: Rootfs,
    }
    let image_config: ImageConfig = serde_json::from_slice(&config)
        .with_context(|| format!("invalid image config in {label}"))?;
    let mut blobs = HashMap::from([(config_digest.clone(), chosen.config.clone())]);
    let mut layers = Vec::new();
    for (i, path) in chosen.layers.iter().enumerate() {
        let (_, size) = store.locate(path)?;
        let head = store.read_head(path, 512)?;
        let (media_type, digest) = if head.len() >= 262 && &head[257..262] == b"ustar" {
            // An uncompressed layer: its digest is its diff ID (verified as it streams).
            let d = image_config
                .rootfs
                .diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "{label}: the image config lists no diff ID for layer {}",
                        i + 1
                    )
                })?;
            ("application/vnd.docker.image.rootfs.diff.tar", d)
        } else {
            let media_type = if head.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            } else {
                bail!("{label}: layer {path} is neither a tar nor gzip/zstd-compressed");
            };
            (media_type, store.digest_of(path)?)
        };
        blobs.insert(digest.clone(), path.clone());
        layers.push(serde_json::json!({"mediaType": media_type, "size": size, "digest": digest.to_string()}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_IMAGE_CONFIG, "size": config.len(), "digest": config_digest.to_string()},
        "layers": layers,
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest)?);
    let digest = Digest::sha256_of(&bytes);
    Ok(Source::Docker {
        store,
        manifest: FetchedManifest {
            bytes,
            content_type: Some(DOCKER_MANIFEST.to_string()),
            digest,
        },
        blobs,
        label,
    })
}

impl Store {
    /// The first `n` bytes of a file (or fewer).
    fn read_head(&self, name: &str, n: u64) -> Result<Vec<u8>> {
        match self {
            Store::Dir(d) => {
                let mut buf = Vec::new();
                std::fs::File::open(d.join(name))?
                    .take(n)
                    .read_to_end(&mut buf)?;
                Ok(buf)
            }
            Store::Tar { file, .. } => {
                let (offset, size) = self.locate(name)?;
                let mut f = std::fs::File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.take(n.min(size)).read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// sha256 of a file in the store (for compressed docker-archive layers,
    /// whose digest the archive does not record).
    fn digest_of(&self, name: &str) -> Result<Digest> {
        let Store::Tar { file, .. } = self else {
            bail!("internal: not an archive")
        };
        let (offset, size) = self.locate(name)?;
        let mut f = std::fs::File::open(file)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut h = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
        let mut r = f.take(size);
        let mut buf = vec![0u8; LOCAL_READ_BUF];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    }
}
