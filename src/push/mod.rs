//! `ocimodel push DIR REF`: package a model directory and publish it, with
//! no container engine: a CNCF ModelPack artifact (default), an ORAS
//! artifact (one layer per file, as `oras push` / `regctl artifact put`), or
//! a modelcar image (`FROM scratch`, files under `/models`).
//!
//! Packing writes nothing into DIR. Whole files are uploaded straight from
//! DIR; tar layers are built once in a temporary directory, hashed as they
//! are written. Blobs the registry already has are not uploaded again. With
//! `--subject` the artifact is attached as a referrer; on registries without
//! the referrers API the `sha256-<hex>` fallback index is kept up to date,
//! as the distribution spec asks of clients. A REF of `oci-layout://DIR:TAG`
//! writes an OCI layout instead (air-gapped transfer).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::json;

use crate::digest::hash_file;
use crate::digest::{Algorithm, Digest};
use crate::format::{MODELPACK_ARTIFACT, MODELPACK_CONFIG, MODELPACK_FILEPATH};
use crate::manifest::{
    Compression, Descriptor, Document, Index, Platform, ANNOTATION_REF_NAME, ANNOTATION_TITLE,
    OCI_EMPTY, OCI_IMAGE_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
use crate::reference::{ImageRef, Selector, Target};
use crate::registry::{BlobBody, RegistryClient};

mod files;

use files::{build_tar, walk, File};

/// Files at least this big get a layer of their own in a ModelPack; smaller
/// non-weight files are grouped into one tar layer per kind.
const GROUP_BELOW: u64 = 1024 * 1024;
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    ModelPack,
    Oras,
    Modelcar,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub format: PushFormat,
    pub annotations: BTreeMap<String, String>,
    pub artifact_type: Option<String>,
    /// Layer compression for modelcar images.
    pub compression: Compression,
    pub platform: Platform,
    /// Publish what symlinks point to even outside DIR (`--follow-symlinks`).
    pub follow_symlinks: bool,
}

/// One blob of a packed model and where its bytes are.
struct Blob {
    desc: Descriptor,
    body: BlobBody,
}

/// A packed model, ready to push or write.
pub struct Packed {
    blobs: Vec<Blob>,
    pub manifest: Bytes,
    pub digest: Digest,
    _work: tempfile::TempDir,
}

/// The ModelPack kind of a file, from its name.
fn modelpack_kind_of_file(rel: &str) -> &'static str {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    const WEIGHTS: [&str; 12] = [
        "safetensors",
        "gguf",
        "bin",
        "pt",
        "pth",
        "onnx",
        "h5",
        "ckpt",
        "pb",
        "tflite",
        "msgpack",
        "npz",
    ];
    const CODE: [&str; 9] = ["py", "sh", "ipynb", "js", "ts", "go", "rs", "java", "cpp"];
    if WEIGHTS.contains(&ext) {
        "weight"
    } else if CODE.contains(&ext) {
        "code"
    } else if lower.starts_with("readme")
        || lower.starts_with("license")
        || lower.starts_with("notice")
        || ["md", "rst", "pdf"].contains(&ext)
    {
        "doc"
    } else {
        "weight.config"
    }
}

/// The `config.format` a ModelPack config records, from the weights.
fn weight_format(files: &[&File]) -> &'static str {
    let has = |ext: &str| files.iter().any(|f| f.rel.ends_with(ext));
    if has(".safetensors") {
        "safetensors"
    } else if has(".gguf") {
        "gguf"
    } else if has(".onnx") {
        "onnx"
    } else if has(".pt") || has(".pth") || has(".bin") {
        "pytorch"
    } else {
        "unknown"
    }
}

fn sha256_file(path: &Path) -> Result<Digest> {
    Ok(hash_file(path, Algorithm::Sha256)
        .with_context(|| format!("cannot read {}", path.display()))?
        .1)
}

fn descriptor(
    media_type: &str,
    digest: Digest,
    size: u64,
    annotations: BTreeMap<String, String>,
) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        annotations,
        platform: None,
        artifact_type: None,
        data: None,
        name: None,
    }
}

fn empty_config() -> Blob {
    Blob {
        desc: Descriptor {
            data: Some("e30=".into()),
            ..descriptor(
                OCI_EMPTY,
                EMPTY_DIGEST.parse().expect("valid digest"),
                2,
                BTreeMap::new(),
            )
        },
        body: BlobBody::Bytes(Bytes::from_static(b"{}")),
    }
}

fn json_blob(media_type: &str, value: &serde_json::Value) -> Result<Blob> {
    let bytes = Bytes::from(serde_json::to_vec(value)?);
    Ok(Blob {
        desc: descriptor(
            media_type,
            Digest::sha256_of(&bytes),
            bytes.len() as u64,
            BTreeMap::new(),
        ),
        body: BlobBody::Bytes(bytes),
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Packs `dir` as `opts` says, with `subject` (already resolved) if given.
pub fn pack(dir: &Path, opts: &Options, subject: Option<Descriptor>) -> Result<Packed> {
    let files = walk(dir, opts.follow_symlinks)?;
    let work = tempfile::tempdir().context("cannot create a temporary directory for tar layers")?;
    let mut annotations = opts.annotations.clone();
    annotations
        .entry("org.opencontainers.image.created".into())
        .or_insert_with(now_rfc3339);
    let (layers, config, artifact_type) = match opts.format {
        PushFormat::Oras => pack_oras(&files, opts)?,
        PushFormat::ModelPack => pack_modelpack(dir, &files, &annotations, work.path())?,
        PushFormat::Modelcar => pack_modelcar(&files, opts, work.path())?,
    };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.desc,
        "layers": layers.iter().map(|l| &l.desc).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = json!(t);
    }
    if let Some(s) = subject {
        manifest["subject"] = serde_json::to_value(s)?;
    }
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
    let mut blobs = layers;
    blobs.push(config);
    Ok(Packed {
        digest: Digest::sha256_of(&manifest),
        manifest,
        blobs,
        _work: work,
    })
}

/// A format's layers, config blob and artifact type.
type Packing = (Vec<Blob>, Blob, Option<String>);

/// ORAS: one layer per file, titled with its path; the empty config.
fn pack_oras(files: &[File], opts: &Options) -> Result<Packing> {
    let mut layers = Vec::new();
    for f in files {
        let ann = BTreeMap::from([(ANNOTATION_TITLE.to_string(), f.rel.clone())]);
        layers.push(Blob {
            desc: descriptor(
                "application/octet-stream",
                sha256_file(&f.path)?,
                f.size,
                ann,
            ),
            body: BlobBody::File(f.path.clone()),
        });
    }
    let t = opts
        .artifact_type
        .clone()
        .unwrap_or_else(|| "application/vnd.unknown.artifact.v1".into());
    Ok((layers, empty_config(), Some(t)))
}

/// ModelPack: weights (and big files) as `.raw` layers, small files
/// grouped into one `.tar` per kind; a config filled from what is known.
fn pack_modelpack(
    dir: &Path,
    files: &[File],
    annotations: &BTreeMap<String, String>,
    work: &Path,
) -> Result<Packing> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&File>> = BTreeMap::new();
    for f in files {
        let kind = modelpack_kind_of_file(&f.rel);
        if kind == "weight" || f.size >= GROUP_BELOW {
            let digest = sha256_file(&f.path)?;
            let meta = json!({"name": f.rel.rsplit('/').next(), "mode": f.mode & 0o777, "uid": 0, "gid": 0,
                              "size": f.size, "mtime": "1970-01-01T00:00:00Z", "typeflag": 0});
            let ann = BTreeMap::from([
                (MODELPACK_FILEPATH.to_string(), f.rel.clone()),
                (ANNOTATION_TITLE.to_string(), f.rel.clone()),
                (
                    "org.cncf.model.file.metadata+json".to_string(),
                    meta.to_string(),
                ),
            ]);
            diff_ids.push(digest.to_string());
            layers.push(Blob {
                desc: descriptor(
                    &format!("application/vnd.cncf.model.{kind}.v1.raw"),
                    digest,
                    f.size,
                    ann,
                ),
                body: BlobBody::File(f.path.clone()),
            });
        } else {
            groups.entry(kind).or_default().push(f);
        }
    }
    for (kind, group) in groups {
        let out = work.join(format!("{kind}.tar"));
        let (digest, size, diff_id) = build_tar(&group, "", false, Compression::None, &out)?;
        diff_ids.push(diff_id.to_string());
        layers.push(Blob {
            desc: descriptor(
                &format!("application/vnd.cncf.model.{kind}.v1.tar"),
                digest,
                size,
                BTreeMap::new(),
            ),
            body: BlobBody::File(out),
        });
    }
    let weights: Vec<&File> = files
        .iter()
        .filter(|f| modelpack_kind_of_file(&f.rel) == "weight")
        .collect();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let config = json!({
        "descriptor": {"name": annotations.get("org.opencontainers.image.title").cloned().unwrap_or(name),
                       "createdAt": annotations["org.opencontainers.image.created"]},
        "config": {"format": weight_format(&weights)},
        "modelfs": {"type": "layers", "diffIds": diff_ids},
    });
    Ok((
        layers,
        json_blob(MODELPACK_CONFIG, &config)?,
        Some(MODELPACK_ARTIFACT.to_string()),
    ))
}

/// Modelcar: one layer with the files under `/models`, an image config.
fn pack_modelcar(files: &[File], opts: &Options, work: &Path) -> Result<Packing> {
    let refs: Vec<&File> = files.iter().collect();
    let out = work.join("layer.tar");
    let (digest, size, diff_id) = build_tar(&refs, "models/", true, opts.compression, &out)?;
    let media_type = match opts.compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let layer = Blob {
        desc: descriptor(media_type, digest, size, BTreeMap::new()),
        body: BlobBody::File(out),
    };
    let mut config = json!({
        "architecture": opts.platform.architecture, "os": opts.platform.os,
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created_by": "ocimodel push --format modelcar", "comment": "model files under /models"}],
    });
    if let Some(v) = &opts.platform.variant {
        config["variant"] = json!(v);
    }
    Ok((
        vec![layer],
        json_blob(OCI_IMAGE_CONFIG, &config)?,
        opts.artifact_type.clone(),
    ))
}

/// The descriptor of the manifest `source` names (for `--subject`).
pub async fn subject_of(source: &crate::source::Source) -> Result<Descriptor> {
    let m = source.resolve().await?;
    let media_type = match Document::parse(&m.bytes, m.content_type.as_deref())? {
        Document::Index(i) => i.media_type.unwrap_or_else(|| OCI_INDEX.into()),
        Document::Manifest(x) => x.media_type.unwrap_or_else(|| OCI_MANIFEST.into()),
    };
    Ok(descriptor(
        &media_type,
        m.digest,
        m.bytes.len() as u64,
        BTreeMap::new(),
    ))
}

/// Pushes a packed model; returns how many blobs were uploaded (the rest the
/// registry had).
pub async fn push(client: &RegistryClient, r: &ImageRef, packed: &Packed) -> Result<usize> {
    let mut missing = Vec::new();
    for b in &packed.blobs {
        if client.has_blob(r, &b.desc.digest).await? {
            tracing::info!(blob = %b.desc.digest, "already in the registry; not uploading");
        } else {
            missing.push(b);
        }
    }
    let total = missing.iter().map(|b| b.desc.size).sum();
    // Bars on a terminal, else a log line every interval.
    let progress = crate::progress::Board::start(
        &r.to_string(),
        "pushing",
        total,
        std::time::Duration::from_secs(crate::config::DEFAULT_PROGRESS_INTERVAL),
    );
    for b in &missing {
        tracing::info!(blob = %b.desc.digest, size = b.desc.size, bytes_total = b.desc.size, "uploading");
        let label = match b.desc.annotations.get(ANNOTATION_TITLE) {
            Some(title) => title.clone(),
            None => b.desc.digest.to_string(),
        };
        let blob = progress.blob(b.desc.size, &label);
        let counter = blob.counter().clone();
        let sent = std::sync::Arc::new(move |n: u64| {
            counter
                .fetched
                .store(n, std::sync::atomic::Ordering::Relaxed)
        });
        client
            .upload_blob(r, &b.desc.digest, b.desc.size, &b.body, sent)
            .await?;
    }
    let uploaded = missing.len();
    if uploaded > 0 {
        tracing::info!(reference = %r, bytes_done = progress.done(), bytes_total = total, "uploaded {}", progress.line());
    }
    drop(progress);
    let reference = r.tag.clone().unwrap_or_else(|| packed.digest.to_string());
    let processed = client
        .put_manifest(r, &reference, OCI_MANIFEST, &packed.manifest)
        .await?;
    let m: serde_json::Value = serde_json::from_slice(&packed.manifest)?;
    if let Some(subject) = m.get("subject") {
        if !processed {
            let subject: Descriptor = serde_json::from_value(subject.clone())?;
            update_referrers_tag(client, r, &subject.digest, packed, &m).await?;
        }
    }
    Ok(uploaded)
}

/// The client side of the referrers tag schema: add this manifest to the
/// index tagged `sha256-<hex>` of its subject.
async fn update_referrers_tag(
    client: &RegistryClient,
    r: &ImageRef,
    subject: &Digest,
    packed: &Packed,
    m: &serde_json::Value,
) -> Result<()> {
    let tag = format!(
        "{}-{}",
        subject.algorithm().name(),
        &subject.hex()[..subject.hex().len().min(64)]
    );
    let mut index = match client.manifest_for_push_if_any(r, &tag).await? {
        Some(existing) => {
            match Document::parse(&existing.bytes, existing.content_type.as_deref()) {
                Ok(Document::Index(i)) => i,
                _ => bail!("tag {tag} exists and is not a referrers index; not overwriting it"),
            }
        }
        None => Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    index.manifests.retain(|d| d.digest != packed.digest);
    let artifact_type = m
        .get("artifactType")
        .or_else(|| m.pointer("/config/mediaType"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(m.get("annotations").cloned().unwrap_or(json!({})))?;
    index.manifests.push(Descriptor {
        artifact_type,
        ..descriptor(
            OCI_MANIFEST,
            packed.digest.clone(),
            packed.manifest.len() as u64,
            annotations,
        )
    });
    let bytes = Bytes::from(serde_json::to_vec(&index)?);
    client.put_manifest(r, &tag, OCI_INDEX, &bytes).await?;
    tracing::info!(tag, "updated the referrers fallback index");
    Ok(())
}

/// Writes a packed model into an OCI layout directory, tagged `tag`.
pub fn write_layout(dir: &Path, tag: Option<&str>, packed: &Packed) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let put = |digest: &Digest, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let path = blobs.join(digest.hex());
        if !path.exists() {
            let tmp = blobs.join(format!(".{}.tmp", digest.hex()));
            write(&tmp)?;
            fs::rename(&tmp, &path)?;
        }
        Ok(())
    };
    for b in &packed.blobs {
        put(&b.desc.digest, &|p| {
            match &b.body {
                BlobBody::Bytes(bytes) => fs::write(p, bytes)?,
                BlobBody::File(src) => {
                    fs::copy(src, p)?;
                }
            }
            Ok(())
        })?;
    }
    put(&packed.digest, &|p| Ok(fs::write(p, &packed.manifest)?))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = dir.join("index.json");
    let mut index: Index = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("invalid {}", index_path.display()))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    if let Some(t) = tag {
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(t));
    }
    index
        .manifests
        .retain(|d| d.digest != packed.digest || tag.is_some());
    let annotations = tag
        .map(|t| BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), t.to_string())]))
        .unwrap_or_default();
    index.manifests.push(descriptor(
        OCI_MANIFEST,
        packed.digest.clone(),
        packed.manifest.len() as u64,
        annotations,
    ));
    fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

/// Where a push goes: a registry reference or an OCI layout.
pub enum Destination {
    Registry(ImageRef),
    Layout { dir: PathBuf, tag: Option<String> },
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination> {
        Ok(match Target::parse(s)? {
            Target::Registry(r) => {
                if r.digest.is_some() {
                    bail!("push to a tag (REPO:TAG) or a repository, not a digest");
                }
                Destination::Registry(r)
            }
            Target::Layout { dir, selector } => Destination::Layout {
                dir,
                tag: match selector {
                    Selector::Tag(t) => Some(t),
                    Selector::Only => None,
                    Selector::Digest(_) => {
                        bail!("push to an OCI layout by tag (oci-layout://DIR:TAG), not by digest")
                    }
                },
            },
            _ => bail!(
                "push writes to a registry (REPO[:TAG]) or an OCI layout (oci-layout://DIR[:TAG])"
            ),
        })
    }
}
