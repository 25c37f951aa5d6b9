//! Which model format a manifest is, and what each layer becomes: the
//! decision table of `docs/formats.md` §7, as code.
//!
//! | format | detected by | layers become |
//! |---|---|---|
//! | signature / attestation | artifactType or layer type (cosign, notation, sigstore, in-toto) | refused: not a model |
//! | CNCF ModelPack (and legacy `cnai`) | artifactType or config type | `.raw` (and unknown suffixes) → file at `org.cncf.model.filepath`; `.tar[+gzip\|+zstd]` → extracted at the root |
//! | KitOps ModelKit | config `application/vnd.kitops.modelkit.config.v1+json` | tar layers extracted as `kit unpack` does; `Kitfile` written |
//! | Docker model | config `application/vnd.docker.ai.model.config.v0.{1,2}+json` | v0.2: file at the filepath annotation; v0.1: named by media type |
//! | Ollama | a layer `application/vnd.ollama.image.*` | `model.gguf`, `mmproj.gguf`, `adapters/<i>.gguf`, `draft.gguf`, `template.gotmpl`, `system.txt`, `params.json`, `messages.json`, `LICENSE`, the config as `ollama-config.json`, `json` layers at their `name`; `tensor` refused |
//! | container image (modelcar) | image config, tar layers, no titles | applied in order with whiteouts; the subpath kept |
//! | ORAS | a layer has `org.opencontainers.image.title` | file at the title; `io.deis.oras.content.unpack` → tar+gzip extracted into `<title>/` |
//! | anything else | | refused, or with `OCIMODEL_UNKNOWN=raw` each layer at `blobs/<alg>/<hex>` |

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::digest::Digest;
use crate::manifest::{
    Compression, Descriptor, ImageManifest, ANNOTATION_TITLE, DOCKER_IMAGE_CONFIG, OCI_EMPTY,
    OCI_IMAGE_CONFIG,
};

pub const MODELPACK_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODELPACK_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
pub const MODELPACK_LEGACY_ARTIFACT: &str = "application/vnd.cnai.model.manifest.v1+json";
pub const MODELPACK_LEGACY_CONFIG: &str = "application/vnd.cnai.model.config.v1+json";
pub const MODELPACK_FILEPATH: &str = "org.cncf.model.filepath";
pub const MODELPACK_LEGACY_FILEPATH: &str = "org.cnai.model.filepath";
pub const KITOPS_CONFIG: &str = "application/vnd.kitops.modelkit.config.v1+json";
pub const DOCKER_MODEL_CONFIG_V01: &str = "application/vnd.docker.ai.model.config.v0.1+json";
pub const DOCKER_MODEL_CONFIG_V02: &str = "application/vnd.docker.ai.model.config.v0.2+json";
pub const ORAS_UNPACK: &str = "io.deis.oras.content.unpack";
pub const OLLAMA_LAYER_PREFIX: &str = "application/vnd.ollama.image.";
pub const ORAS_CONTENT_DIGEST: &str = "io.deis.oras.content.digest";

const SIGNATURE_TYPES: [&str; 5] = [
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.cncf.notary.signature",
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.in-toto+json",
];

/// How the model is laid out in OCI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A container image with the model under a directory (KServe modelcar).
    Image,
    /// An artifact pushed by `oras push` / `regctl artifact put`.
    Oras,
    ModelPack,
    KitOps,
    DockerModel,
    /// Ollama's registry format (Docker schema2, `vnd.ollama.image.*` layers).
    Ollama,
    /// An unknown artifact written blob by blob (`OCIMODEL_UNKNOWN=raw`).
    Raw,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Image => "image",
            Format::Oras => "oras",
            Format::ModelPack => "modelpack",
            Format::KitOps => "kitops",
            Format::DockerModel => "docker-model",
            Format::Ollama => "ollama",
            Format::Raw => "raw",
        })
    }
}

/// What to do with one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply a container-image tar changeset (whiteouts honoured), keeping
    /// the subpath.
    ApplyTar(Compression),
    /// Extract an artifact's tar layer, at the root or `into` a directory.
    /// With `within`, every entry must lie under that directory; with
    /// `content_digest`, the uncompressed tar must hash to it.
    ExtractTar {
        compression: Compression,
        into: Option<String>,
        within: Option<String>,
        content_digest: Option<Digest>,
    },
    /// Write the blob as-is to this relative path.
    WriteFile(String),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub layer: Descriptor,
    pub action: Action,
}

/// The result of classification.
#[derive(Clone, Debug)]
pub struct Plan {
    pub format: Format,
    pub steps: Vec<Step>,
    /// Layers left out, with the reason (logged, shown by `inspect`).
    pub skipped: Vec<(Descriptor, String)>,
    /// Files made from the manifest itself (KitOps' `Kitfile`).
    pub generated: Vec<(String, Vec<u8>)>,
    /// Keep the config blob as `DEST/.ocimodel/config.json`.
    pub keep_config: bool,
    /// A KitOps child kit's parent ModelKit (its Kitfile's `model.path` is a
    /// reference): its model layers are installed first, as `kit unpack` does.
    pub parent: Option<String>,
}

impl Plan {
    fn new(format: Format) -> Plan {
        Plan {
            format,
            steps: Vec::new(),
            skipped: Vec::new(),
            generated: Vec::new(),
            keep_config: false,
            parent: None,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.layer.size).sum()
    }

    fn write(&mut self, layer: &Descriptor, path: impl Into<String>) {
        self.steps.push(Step {
            layer: layer.clone(),
            action: Action::WriteFile(path.into()),
        });
    }

    fn extract(&mut self, layer: &Descriptor, compression: Compression, into: Option<String>) {
        self.steps.push(Step {
            layer: layer.clone(),
            action: Action::ExtractTar {
                compression,
                into,
                within: None,
                content_digest: None,
            },
        });
    }

    fn skip(&mut self, layer: &Descriptor, why: impl Into<String>) {
        self.skipped.push((layer.clone(), why.into()));
    }
}

/// Choices the user makes about classification.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `OCIMODEL_UNKNOWN=raw`: write unknown artifacts blob by blob.
    pub unknown_raw: bool,
    /// `OCIMODEL_KIT_FILTER`: KitOps layer kinds to keep (`model`,
    /// `datasets`, `code`, `docs`, `prompts`); empty keeps all.
    pub kit_filter: Vec<String>,
}

/// The path a layer says its content has: ModelPack's file path, else
/// its title (a hint for a tar layer: what it holds is known once unpacked).
pub fn layer_path(layer: &Descriptor) -> Option<&str> {
    layer
        .annotations
        .get(MODELPACK_FILEPATH)
        .or_else(|| layer.annotations.get(MODELPACK_LEGACY_FILEPATH))
        .map(String::as_str)
        .or_else(|| layer.title())
}

/// The type an artifact declares: `artifactType`, else `config.mediaType`.
pub fn artifact_type(m: &ImageManifest) -> &str {
    m.artifact_type.as_deref().unwrap_or(&m.config.media_type)
}

/// Whether classification needs the config blob (`classify`'s `config`).
pub fn needs_config(m: &ImageManifest) -> bool {
    m.config.media_type == KITOPS_CONFIG
}

/// Whether the config is a model config worth keeping beside the marker.
pub fn keeps_config(m: &ImageManifest) -> bool {
    is_model_config(&m.config.media_type)
}

fn is_model_config(mt: &str) -> bool {
    [
        MODELPACK_CONFIG,
        MODELPACK_LEGACY_CONFIG,
        KITOPS_CONFIG,
        DOCKER_MODEL_CONFIG_V01,
        DOCKER_MODEL_CONFIG_V02,
    ]
    .contains(&mt)
}

/// Decides the format of `m` and what each layer becomes. `config` is the
/// config blob when [`needs_config`] asked for it.
pub fn classify(m: &ImageManifest, config: Option<&[u8]>, opts: &Options) -> Result<Plan> {
    let t = artifact_type(m);
    let config_mt = m.config.media_type.as_str();
    if let Some(sig) = SIGNATURE_TYPES
        .iter()
        .find(|s| t == **s || m.layers.iter().any(|l| l.media_type == **s))
    {
        bail!("this manifest is a signature or attestation ({sig}), not a model; point ocimodel at the model it signs");
    }
    let mut plan = if t == MODELPACK_ARTIFACT
        || t == MODELPACK_LEGACY_ARTIFACT
        || config_mt == MODELPACK_CONFIG
        || config_mt == MODELPACK_LEGACY_CONFIG
    {
        modelpack(m)?
    } else if config_mt == KITOPS_CONFIG {
        kitops(m, config, opts)?
    } else if config_mt == DOCKER_MODEL_CONFIG_V01 || config_mt == DOCKER_MODEL_CONFIG_V02 {
        docker_model(m)
    } else if m
        .layers
        .iter()
        .any(|l| l.media_type.starts_with(OLLAMA_LAYER_PREFIX))
    {
        ollama(m)?
    } else if (config_mt == OCI_IMAGE_CONFIG || config_mt == DOCKER_IMAGE_CONFIG)
        && m.artifact_type.is_none()
        && !m.layers.iter().any(|l| l.title().is_some())
    {
        image(m)?
    } else if m.layers.iter().any(|l| l.title().is_some()) {
        oras(m)?
    } else if opts.unknown_raw {
        let mut plan = Plan::new(Format::Raw);
        for l in non_empty(m, &mut plan) {
            plan.write(
                &l,
                format!("blobs/{}/{}", l.digest.algorithm().name(), l.digest.hex()),
            );
        }
        plan
    } else {
        let layers: Vec<String> = m
            .layers
            .iter()
            .map(|l| format!("{} {}", l.media_type, l.digest))
            .collect();
        bail!(
            "unsupported artifact type '{t}' (config {config_mt}, layers: [{}]): not a container image, ORAS, ModelPack, KitOps or Docker model artifact; set OCIMODEL_UNKNOWN=raw to write each layer as blobs/<alg>/<hex>",
            layers.join(", ")
        )
    };
    plan.keep_config = is_model_config(config_mt);
    Ok(plan)
}

/// Layers other than empty descriptors (which are noted as skipped).
fn non_empty(m: &ImageManifest, plan: &mut Plan) -> Vec<Descriptor> {
    let mut out = Vec::new();
    for l in &m.layers {
        if l.media_type == OCI_EMPTY {
            plan.skip(l, "empty descriptor");
        } else {
            out.push(l.clone());
        }
    }
    out
}

fn image(m: &ImageManifest) -> Result<Plan> {
    let mut plan = Plan::new(Format::Image);
    for layer in &m.layers {
        let mt = layer.media_type.as_str();
        if !(mt.starts_with("application/vnd.oci.image.layer.")
            || mt.starts_with("application/vnd.docker.image.rootfs."))
        {
            bail!(
                "container image layer {} has media type {mt}, which is not a tar layer",
                layer.digest
            );
        }
        plan.steps.push(Step {
            layer: layer.clone(),
            action: Action::ApplyTar(Compression::of_media_type(mt)),
        });
    }
    Ok(plan)
}

fn oras(m: &ImageManifest) -> Result<Plan> {
    let mut plan = Plan::new(Format::Oras);
    for layer in non_empty(m, &mut plan) {
        let Some(title) = layer.title().map(str::to_string) else {
            plan.skip(&layer, format!("no {ANNOTATION_TITLE} annotation"));
            continue;
        };
        if layer
            .annotations
            .get(ORAS_UNPACK)
            .is_some_and(|v| v == "true")
        {
            let content_digest =
                match layer.annotations.get(ORAS_CONTENT_DIGEST) {
                    Some(d) => Some(d.parse::<Digest>().map_err(|e| {
                        anyhow::anyhow!("layer '{title}': {ORAS_CONTENT_DIGEST}: {e}")
                    })?),
                    None => None,
                };
            let compression = match Compression::of_media_type(&layer.media_type) {
                // oras writes tar+gzip; a plain tar type still means gzip there.
                Compression::None => Compression::Gzip,
                c => c,
            };
            plan.steps.push(Step {
                layer: layer.clone(),
                action: Action::ExtractTar {
                    compression,
                    into: None,
                    within: Some(title),
                    content_digest,
                },
            });
        } else {
            plan.write(&layer, title);
        }
    }
    Ok(plan)
}

/// `application/vnd.cncf.model.weight.v1.tar+gzip` → ("weight", "tar+gzip").
fn modelpack_kind(mt: &str) -> Option<(&str, &str)> {
    let rest = mt
        .strip_prefix("application/vnd.cncf.model.")
        .or_else(|| mt.strip_prefix("application/vnd.cnai.model."))?;
    let (kind, fmt) = rest.rsplit_once(".v1.")?;
    Some((kind, fmt))
}

fn modelpack(m: &ImageManifest) -> Result<Plan> {
    let mut plan = Plan::new(Format::ModelPack);
    for layer in non_empty(m, &mut plan) {
        let Some((_kind, fmt)) = modelpack_kind(&layer.media_type) else {
            bail!(
                "ModelPack layer {} has media type {}, which is not a ModelPack layer type",
                layer.digest,
                layer.media_type
            );
        };
        match fmt {
            "tar" => plan.extract(&layer, Compression::None, None),
            "tar+gzip" => plan.extract(&layer, Compression::Gzip, None),
            "tar+zstd" => plan.extract(&layer, Compression::Zstd, None),
            // raw, and extensions seen in the wild (gguf, safetensors): the file itself.
            _ => {
                let path = layer
                    .annotations
                    .get(MODELPACK_FILEPATH)
                    .or_else(|| layer.annotations.get(MODELPACK_LEGACY_FILEPATH))
                    .cloned();
                match path {
                    Some(p) => plan.write(&layer, p),
                    None => bail!(
                        "ModelPack layer {} ({}) has no {MODELPACK_FILEPATH} annotation, so its file name is unknown",
                        layer.digest,
                        layer.media_type
                    ),
                }
            }
        }
    }
    Ok(plan)
}

/// The parts of a Kitfile that decide where layers go.
#[derive(serde::Deserialize, Default)]
struct Kitfile {
    #[serde(default)]
    model: Option<KitEntry>,
    #[serde(default)]
    code: Vec<KitEntry>,
    #[serde(default)]
    datasets: Vec<KitEntry>,
    #[serde(default)]
    docs: Vec<KitEntry>,
    #[serde(default)]
    prompts: Vec<KitEntry>,
}

#[derive(serde::Deserialize, Default, Clone)]
struct KitEntry {
    #[serde(default)]
    path: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    parts: Vec<KitEntry>,
}

/// `application/vnd.kitops.modelkit.model.v1.tar+gzip` → ("model", gzip).
fn kitops_kind(mt: &str) -> Option<(&str, Compression)> {
    let rest = mt.strip_prefix("application/vnd.kitops.modelkit.")?;
    let (kind, fmt) = rest.split_once(".v1.")?;
    let compression = match fmt {
        "tar" => Compression::None,
        "tar+gzip" => Compression::Gzip,
        "tar+zstd" => Compression::Zstd,
        _ => return None,
    };
    Some((kind, compression))
}

/// `OCIMODEL_KIT_FILTER` names (as `kit unpack --filter`) for a layer kind.
fn kit_filter_name(kind: &str) -> &str {
    match kind {
        "model" | "modelpart" => "model",
        "dataset" => "datasets",
        "code" => "code",
        "docs" => "docs",
        "prompt" => "prompts",
        other => other,
    }
}

fn kitops(m: &ImageManifest, config: Option<&[u8]>, opts: &Options) -> Result<Plan> {
    let mut plan = Plan::new(Format::KitOps);
    let config = config
        .ok_or_else(|| anyhow::anyhow!("internal: the KitOps config (Kitfile) was not fetched"))?;
    let kitfile: Kitfile = serde_json::from_slice(config)
        .map_err(|e| anyhow::anyhow!("the ModelKit config is not a valid Kitfile: {e}"))?;
    // Entries per layer kind, in the order `kit pack` writes layers.
    let mut entries: BTreeMap<&str, Vec<KitEntry>> = BTreeMap::new();
    if let Some(model) = &kitfile.model {
        entries.insert("model", vec![model.clone()]);
        entries.insert("modelpart", model.parts.clone());
    }
    entries.insert("code", kitfile.code.clone());
    entries.insert("dataset", kitfile.datasets.clone());
    entries.insert("docs", kitfile.docs.clone());
    entries.insert("prompt", kitfile.prompts.clone());
    if let Some(model) = &kitfile.model {
        plan.parent = kit_parent(&model.path)?;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for layer in non_empty(m, &mut plan) {
        let Some((kind, compression)) = kitops_kind(&layer.media_type) else {
            bail!(
                "ModelKit layer {} has media type {}, which is not a KitOps layer type",
                layer.digest,
                layer.media_type
            );
        };
        let index = seen.entry(kind.to_string()).or_insert(0);
        let entry = entries.get(kind).and_then(|e| e.get(*index)).cloned();
        *index += 1;
        if !opts.kit_filter.is_empty()
            && !opts.kit_filter.iter().any(|f| f == kit_filter_name(kind))
        {
            plan.skip(
                &layer,
                format!("{kind} layer left out by OCIMODEL_KIT_FILTER"),
            );
            continue;
        }
        // Current ModelKits record each layer's digest in the Kitfile and
        // name tar entries from the context root; legacy ones (no digest)
        // name them relative to the entry's parent directory.
        let into = match &entry {
            Some(e) if e.digest.is_none() => std::path::Path::new(&e.path)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .filter(|p| !p.is_empty()),
            Some(KitEntry {
                digest: Some(d), ..
            }) if *d != layer.digest.to_string() => {
                bail!(
                    "ModelKit layer {} does not match the digest {d} its Kitfile records",
                    layer.digest
                )
            }
            _ => None,
        };
        plan.extract(&layer, compression, into);
    }
    // `kit unpack` writes the Kitfile; JSON is valid YAML, which kit reads.
    let mut kitfile_json: serde_json::Value = serde_json::from_slice(config)?;
    if let Some(obj) = kitfile_json.as_object_mut() {
        obj.remove("digest");
    }
    let mut text = serde_json::to_vec_pretty(&kitfile_json)?;
    text.push(b'\n');
    plan.generated.push(("Kitfile".to_string(), text));
    Ok(plan)
}

/// A Kitfile `model.path` that names another ModelKit, as kit decides it
/// (`kitfile.go`: it has `:` or `@` and parses as a reference). References
/// with no registry host (`org/kit:v1`) or `localhost` name kit's local
/// store on someone's machine, which a cluster cannot reach: refused.
fn kit_parent(path: &str) -> Result<Option<String>> {
    if !(path.contains(':') || path.contains('@')) {
        return Ok(None);
    }
    if crate::reference::ImageRef::parse(path).is_err() {
        return Ok(None);
    }
    let host = path.split_once('/').map(|(h, _)| h).unwrap_or("");
    let local = host.is_empty()
        || !(host.contains('.') || host.contains(':'))
        || host == "localhost"
        || host.starts_with("localhost:");
    if local {
        bail!(
            "the ModelKit's model is the parent kit '{}' in kit's local store (a reference without a registry host, or localhost), which ocimodel cannot reach; push the parent to a registry and name it with its registry host",
            crate::text::escape_controls(path)
        );
    }
    Ok(Some(path.to_string()))
}

/// Docker's v0.1 file names, by media type.
fn docker_v01_name(mt: &str) -> Option<&'static str> {
    Some(match mt {
        "application/vnd.docker.ai.gguf.v3" => "model.gguf",
        "application/vnd.docker.ai.safetensors" => "model.safetensors",
        "application/vnd.docker.ai.dduf" => "model.dduf",
        "application/vnd.docker.ai.mmproj" => "model.mmproj",
        "application/vnd.docker.ai.chat.template.jinja" => "template.jinja",
        "application/vnd.docker.ai.license" => "LICENSE",
        _ => return None,
    })
}

fn docker_model(m: &ImageManifest) -> Plan {
    let mut plan = Plan::new(Format::DockerModel);
    let v02 = m.config.media_type == DOCKER_MODEL_CONFIG_V02;
    let layers = non_empty(m, &mut plan);
    let count = |mt: &str| layers.iter().filter(|l| l.media_type == mt).count();
    let mut ordinal: BTreeMap<String, usize> = BTreeMap::new();
    for layer in &layers {
        let mt = layer.media_type.as_str();
        let filepath = layer.annotations.get(MODELPACK_FILEPATH).cloned();
        if v02 {
            match filepath {
                Some(p) => plan.write(layer, p),
                None => plan.skip(
                    layer,
                    format!("no {MODELPACK_FILEPATH} annotation (Docker model v0.2)"),
                ),
            }
            continue;
        }
        if mt == "application/vnd.docker.ai.vllm.config.tar"
            || mt == "application/vnd.docker.ai.dir.tar"
        {
            plan.extract(layer, Compression::None, None);
            continue;
        }
        if let Some(p) = filepath {
            plan.write(layer, p);
            continue;
        }
        let Some(name) = docker_v01_name(mt) else {
            plan.skip(
                layer,
                format!("media type {mt} has no file name in Docker model v0.1"),
            );
            continue;
        };
        let n = ordinal.entry(mt.to_string()).or_insert(0);
        *n += 1;
        let total = count(mt);
        let name = if total == 1 {
            name.to_string()
        } else if let Some((stem, ext)) =
            name.rsplit_once('.').filter(|_| name.starts_with("model."))
        {
            format!("{stem}-{:05}-of-{total:05}.{ext}", *n)
        } else {
            format!("{name}-{}", *n)
        };
        plan.write(layer, name);
    }
    plan
}

/// Ollama's layers as files a llama.cpp-based server can load (no
/// standard layout exists; this one keeps Ollama's roles visible).
fn ollama(m: &ImageManifest) -> Result<Plan> {
    let mut plan = Plan::new(Format::Ollama);
    let layers = non_empty(m, &mut plan);
    let kind = |l: &Descriptor| {
        l.media_type
            .strip_prefix(OLLAMA_LAYER_PREFIX)
            .unwrap_or("")
            .to_string()
    };
    if let Some(t) = layers.iter().find(|l| kind(l) == "tensor") {
        bail!(
            "this Ollama model stores its weights as per-tensor layers (application/vnd.ollama.image.tensor, e.g. '{}'), which are not a loadable checkpoint; ocimodel installs GGUF Ollama models only",
            crate::text::escape_controls(t.name.as_deref().unwrap_or("unnamed"))
        );
    }
    let count = |k: &str| layers.iter().filter(|l| kind(l) == k).count();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for layer in &layers {
        let k = kind(layer);
        let n = {
            let e = seen.entry(k.clone()).or_insert(0);
            *e += 1;
            *e
        };
        // One of a kind keeps the plain name; several are numbered from 1.
        let numbered = |stem: &str, ext: &str| match count(&k) {
            1 => format!("{stem}{ext}"),
            _ => format!("{stem}-{n}{ext}"),
        };
        let path = match k.as_str() {
            "model" => numbered("model", ".gguf"),
            "projector" => numbered("mmproj", ".gguf"),
            "adapter" => format!("adapters/{n}.gguf"),
            "draft" => numbered("draft", ".gguf"),
            "template" | "prompt" => numbered("template", ".gotmpl"),
            "system" => numbered("system", ".txt"),
            "params" => numbered("params", ".json"),
            "messages" => numbered("messages", ".json"),
            "license" => numbered("LICENSE", ""),
            "json" => match &layer.name {
                Some(name) => name.clone(),
                None => bail!(
                    "Ollama json layer {} has no name to install it at",
                    layer.digest
                ),
            },
            "embed" => {
                plan.skip(layer, "deprecated Ollama embed layer");
                continue;
            }
            other => {
                plan.skip(layer, format!("Ollama layer type '{other}' is not known"));
                continue;
            }
        };
        plan.write(layer, path);
    }
    if !m.config.media_type.is_empty() && m.config.size > 0 {
        plan.write(&m.config, "ollama-config.json");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Document;

    const SEED: &str = include_str!(concat!(
        "../examples/mnist/blobs/sha256/",
        "52154286252844566c1028dc579c5a157e7a012e41e683e35ded7a5410fe60aa"
    ));

    fn layer(mt: &str, annotations: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            media_type: mt.into(),
            digest: Digest::sha256_of(format!("{mt}{annotations:?}").as_bytes()),
            size: 10,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
            artifact_type: None,
            data: None,
            name: None,
        }
    }

    fn manifest(
        artifact_type: Option<&str>,
        config_mt: &str,
        layers: Vec<Descriptor>,
    ) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: Some(crate::manifest::OCI_MANIFEST.into()),
            artifact_type: artifact_type.map(String::from),
            config: layer(config_mt, &[]),
            layers,
            subject: None,
            annotations: Default::default(),
        }
    }

    fn actions(p: &Plan) -> Vec<Action> {
        p.steps.iter().map(|s| s.action.clone()).collect()
    }

    #[test]
    fn seed_is_oras() {
        let Document::Manifest(m) = Document::parse(SEED.as_bytes(), None).unwrap() else {
            panic!("manifest expected")
        };
        let plan = classify(&m, None, &Options::default()).unwrap();
        assert_eq!(plan.format, Format::Oras);
        assert_eq!(
            actions(&plan),
            vec![Action::WriteFile("v1.nb20231206162408/mnist.onnx".into())]
        );
        assert_eq!(plan.total_bytes(), 421_403);
        assert!(!plan.keep_config);
    }

    #[test]
    fn modelpack_raw_and_tar_layers_both_generations() {
        for (art, cfg, prefix, key) in [
            (
                MODELPACK_ARTIFACT,
                MODELPACK_CONFIG,
                "application/vnd.cncf.model",
                MODELPACK_FILEPATH,
            ),
            (
                MODELPACK_LEGACY_ARTIFACT,
                MODELPACK_LEGACY_CONFIG,
                "application/vnd.cnai.model",
                MODELPACK_LEGACY_FILEPATH,
            ),
        ] {
            let m = manifest(
                Some(art),
                cfg,
                vec![
                    // modelpack-client also writes a title: ModelPack must win over ORAS.
                    layer(
                        &format!("{prefix}.weight.v1.raw"),
                        &[
                            (key, "w/model.safetensors"),
                            (ANNOTATION_TITLE, "w/model.safetensors"),
                        ],
                    ),
                    layer(&format!("{prefix}.weight.config.v1.tar"), &[]),
                    layer(&format!("{prefix}.doc.v1.tar+gzip"), &[]),
                    layer(&format!("{prefix}.code.v1.tar+zstd"), &[]),
                    layer(&format!("{prefix}.weight.v1.gguf"), &[(key, "m.gguf")]),
                ],
            );
            let plan = classify(&m, None, &Options::default()).unwrap();
            assert_eq!(plan.format, Format::ModelPack);
            assert!(plan.keep_config || cfg == MODELPACK_LEGACY_CONFIG);
            let ex = |c| Action::ExtractTar {
                compression: c,
                into: None,
                within: None,
                content_digest: None,
            };
            assert_eq!(
                actions(&plan),
                vec![
                    Action::WriteFile("w/model.safetensors".into()),
                    ex(Compression::None),
                    ex(Compression::Gzip),
                    ex(Compression::Zstd),
                    Action::WriteFile("m.gguf".into()),
                ]
            );
        }
        let m = manifest(
            Some(MODELPACK_ARTIFACT),
            MODELPACK_CONFIG,
            vec![layer("application/vnd.cncf.model.weight.v1.raw", &[])],
        );
        let err = classify(&m, None, &Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no org.cncf.model.filepath annotation"),
            "{err}"
        );
    }

    #[test]
    fn kitops_current_legacy_and_filter() {
        let model = layer("application/vnd.kitops.modelkit.model.v1.tar+gzip", &[]);
        let docs = layer("application/vnd.kitops.modelkit.docs.v1.tar", &[]);
        let m = manifest(None, KITOPS_CONFIG, vec![model.clone(), docs.clone()]);
        let current = serde_json::json!({
            "manifestVersion": "1.0.0",
            "model": {"path": "models/m.gguf", "digest": model.digest.to_string()},
            "docs": [{"path": "README.md", "digest": docs.digest.to_string()}]
        })
        .to_string();
        let plan = classify(&m, Some(current.as_bytes()), &Options::default()).unwrap();
        assert_eq!(plan.format, Format::KitOps);
        assert!(matches!(
            &actions(&plan)[0],
            Action::ExtractTar {
                compression: Compression::Gzip,
                into: None,
                ..
            }
        ));
        assert_eq!(plan.generated[0].0, "Kitfile");
        assert!(plan.keep_config);

        let legacy = serde_json::json!({"model": {"path": "models/m.gguf"}, "docs": [{"path": "README.md"}]}).to_string();
        let plan = classify(&m, Some(legacy.as_bytes()), &Options::default()).unwrap();
        assert!(
            matches!(&actions(&plan)[0], Action::ExtractTar { into: Some(d), .. } if d == "models")
        );
        assert!(matches!(
            &actions(&plan)[1],
            Action::ExtractTar { into: None, .. }
        ));

        let only_docs = Options {
            kit_filter: vec!["docs".into()],
            ..Default::default()
        };
        let plan = classify(&m, Some(current.as_bytes()), &only_docs).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].layer, docs);
        assert_eq!(plan.skipped.len(), 1);

        let wrong = serde_json::json!({"model": {"path": "m", "digest": docs.digest.to_string()}})
            .to_string();
        let e = classify(&m, Some(wrong.as_bytes()), &Options::default()).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match the digest")
                && format!("{e:#}").contains("its Kitfile records"),
            "{e:#}"
        );
    }

    #[test]
    fn docker_model_v01_names_and_v02_paths() {
        let gguf = "application/vnd.docker.ai.gguf.v3";
        let m = manifest(
            None,
            DOCKER_MODEL_CONFIG_V01,
            vec![
                layer(gguf, &[("n", "1")]),
                layer(gguf, &[("n", "2")]),
                layer("application/vnd.docker.ai.license", &[]),
                layer("application/vnd.docker.ai.chat.template.jinja", &[]),
                layer("application/vnd.docker.ai.unknown-thing", &[]),
            ],
        );
        let plan = classify(&m, None, &Options::default()).unwrap();
        assert_eq!(plan.format, Format::DockerModel);
        assert_eq!(
            actions(&plan),
            vec![
                Action::WriteFile("model-00001-of-00002.gguf".into()),
                Action::WriteFile("model-00002-of-00002.gguf".into()),
                Action::WriteFile("LICENSE".into()),
                Action::WriteFile("template.jinja".into()),
            ]
        );
        assert_eq!(plan.skipped.len(), 1);

        let m = manifest(
            None,
            DOCKER_MODEL_CONFIG_V02,
            vec![
                layer(
                    "application/vnd.docker.ai.safetensors",
                    &[(MODELPACK_FILEPATH, "a/b.safetensors")],
                ),
                layer(gguf, &[]),
            ],
        );
        let plan = classify(&m, None, &Options::default()).unwrap();
        assert_eq!(
            actions(&plan),
            vec![Action::WriteFile("a/b.safetensors".into())]
        );
        assert_eq!(plan.skipped.len(), 1);
    }

    #[test]
    fn oras_directory_layer() {
        let d = Digest::sha256_of(b"tar");
        let m = manifest(
            Some("application/vnd.example"),
            OCI_EMPTY,
            vec![layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &[
                    (ANNOTATION_TITLE, "tokenizer"),
                    (ORAS_UNPACK, "true"),
                    (ORAS_CONTENT_DIGEST, &d.to_string()),
                ],
            )],
        );
        let plan = classify(&m, None, &Options::default()).unwrap();
        assert_eq!(
            actions(&plan),
            vec![Action::ExtractTar {
                compression: Compression::Gzip,
                into: None,
                within: Some("tokenizer".into()),
                content_digest: Some(d)
            }]
        );
    }

    #[test]
    fn signatures_refused_unknown_refused_or_raw() {
        let m = manifest(
            Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
            OCI_EMPTY,
            vec![layer("application/vnd.dev.sigstore.bundle.v0.3+json", &[])],
        );
        let err = classify(&m, None, &Options::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature or attestation"), "{err}");

        let l = layer("application/x-thing", &[]);
        let m = manifest(
            Some("application/vnd.acme.model.v1"),
            OCI_EMPTY,
            vec![l.clone()],
        );
        let err = classify(&m, None, &Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'application/vnd.acme.model.v1'")
                && err.contains("application/x-thing")
                && err.contains("OCIMODEL_UNKNOWN=raw"),
            "{err}"
        );
        let plan = classify(
            &m,
            None,
            &Options {
                unknown_raw: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(plan.format, Format::Raw);
        assert_eq!(
            actions(&plan),
            vec![Action::WriteFile(format!(
                "blobs/sha256/{}",
                l.digest.hex()
            ))]
        );
    }

    #[test]
    fn ollama_layers_become_files() {
        let ol = |kind: &str, name: Option<&str>| {
            let mut l = layer(&format!("{OLLAMA_LAYER_PREFIX}{kind}"), &[]);
            l.digest = Digest::sha256_of(format!("{kind}{name:?}").as_bytes());
            l.name = name.map(str::to_string);
            l
        };
        let m = ImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.docker.distribution.manifest.v2+json".into()),
            artifact_type: None,
            config: layer(DOCKER_IMAGE_CONFIG, &[]),
            layers: vec![
                ol("model", None),
                ol("projector", Some("a")),
                ol("projector", Some("b")),
                ol("adapter", None),
                ol("template", None),
                ol("system", None),
                ol("params", None),
                ol("license", Some("1")),
                ol("license", Some("2")),
                ol("json", Some("tokenizer/tokenizer.json")),
                ol("embed", None),
            ],
            subject: None,
            annotations: Default::default(),
        };
        let plan = classify(&m, None, &Options::default()).unwrap();
        assert_eq!(plan.format, Format::Ollama);
        let paths: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match &s.action {
                Action::WriteFile(p) => p.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "model.gguf",
                "mmproj-1.gguf",
                "mmproj-2.gguf",
                "adapters/1.gguf",
                "template.gotmpl",
                "system.txt",
                "params.json",
                "LICENSE-1",
                "LICENSE-2",
                "tokenizer/tokenizer.json",
                "ollama-config.json",
            ]
        );
        assert_eq!(plan.skipped.len(), 1, "the embed layer");
        let mut tensors = m.clone();
        tensors.layers.push(ol("tensor", Some("model.layers.0")));
        let err = classify(&tensors, None, &Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("per-tensor layers") && err.contains("model.layers.0"),
            "{err}"
        );
    }
}
