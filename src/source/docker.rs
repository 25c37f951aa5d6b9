//! A Docker archive (`docker save`): it stores no manifest, so one is made
//! from `manifest.json` and the image config (Docker schema2, layers named
//! by their diff IDs, verified as they stream).

use super::*;

/// One image of a Docker archive's `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Opens a Docker archive and synthesises a schema2 manifest for `image`
/// (`REPO:TAG`; optional when the archive holds one image).
pub(super) fn docker_archive(file: &Path, image: Option<&str>) -> Result<Source> {
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
    let chosen = pick_image(&listing, image, &label)?;
    let (bytes, blobs) = synthesise_manifest(&store, chosen, &label)?;
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

/// The image named `REPO:TAG` (or the only one).
fn pick_image<'a>(
    listing: &'a [DockerArchiveImage],
    image: Option<&str>,
    label: &str,
) -> Result<&'a DockerArchiveImage> {
    Ok(match image {
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
        None => match listing {
            [only] => only,
            [] => bail!("{label} holds no images"),
            many => bail!(
                "{label} holds {} images; name one as docker-archive://FILE:REPO:TAG",
                many.len()
            ),
        },
    })
}

/// A Docker schema2 manifest for the image, and where each blob it names
/// lives in the archive. Uncompressed layers are named by their diff IDs
/// (verified as they stream); compressed ones are hashed once here.
fn synthesise_manifest(
    store: &Store,
    chosen: &DockerArchiveImage,
    label: &str,
) -> Result<(Bytes, HashMap<Digest, String>)> {
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
    Ok((Bytes::from(serde_json::to_vec(&manifest)?), blobs))
}
