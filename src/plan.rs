//! Planning one model: follow indexes down to one platform manifest, fetch
//! the config when the format needs it, classify (see [`crate::format`])
//! and narrow by the file filter. Shared by `pull` and `inspect`; writes
//! nothing.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::fetch::fetch_small;
use crate::format::{self, Action, Plan};
use crate::manifest::{
    select_platform, Document, ImageManifest, Platform, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES,
};
use crate::registry::FetchedManifest;
use crate::select::Filter;
use crate::settings::Settings;
use crate::source::Source;
use crate::unpack::{clean_path, join};

/// More layers than this is not a model, it is an attack on the client.
const MAX_LAYERS: usize = 10_000;

/// A resolved model: the manifest to install and how.
pub struct Planned {
    pub top: FetchedManifest,
    pub manifest: ImageManifest,
    pub manifest_digest: Digest,
    /// The platform chosen from an index, if there was one.
    pub platform: Option<String>,
    pub config: Option<bytes::Bytes>,
    pub plan: Plan,
}

/// Descends to one manifest, fetches the config when needed,
/// classifies and filters. Shared by `pull` and `inspect`.
pub async fn plan(source: &Source, top: FetchedManifest, settings: &Settings) -> Result<Planned> {
    let (manifest, manifest_digest, platform) =
        descend(source, top.clone(), &settings.platform).await?;
    if manifest.layers.len() > MAX_LAYERS {
        bail!(
            "the manifest has {} layers; ocimodel refuses more than {MAX_LAYERS}",
            manifest.layers.len()
        );
    }
    let wants_config = format::needs_config(&manifest) || format::keeps_config(&manifest);
    let config = if wants_config && manifest.config.size > 0 {
        Some(
            fetch_small(source, &manifest.config, MAX_MANIFEST_BYTES)
                .await
                .context("the manifest's config")?,
        )
    } else {
        None
    };
    let mut plan = format::classify(&manifest, config.as_deref(), &settings.format)?;
    narrow(&mut plan, &settings.filter);
    Ok(Planned {
        top,
        manifest,
        manifest_digest,
        platform,
        config,
        plan,
    })
}

/// Drops whole-file layers the filter excludes, so they are never fetched.
fn narrow(plan: &mut Plan, filter: &Filter) {
    if filter.is_empty() {
        return;
    }
    let mut kept = Vec::new();
    for step in plan.steps.drain(..) {
        let rejected = match &step.action {
            Action::WriteFile(path) => filter.rejected_by(path).map(|by| (path.clone(), by)),
            _ => None,
        };
        match rejected {
            Some((path, by)) => plan
                .skipped
                .push((step.layer, format!("'{path}' excluded by {by}"))),
            None => kept.push(step),
        }
    }
    plan.steps = kept;
    plan.generated.retain(|(path, _)| filter.allows(path));
}

/// Follows indexes down to one image manifest for the wanted platform.
async fn descend(
    source: &Source,
    mut fetched: FetchedManifest,
    platform: &Platform,
) -> Result<(ImageManifest, Digest, Option<String>)> {
    let mut chosen = None;
    for _ in 0..=MAX_INDEX_DEPTH {
        match Document::parse(&fetched.bytes, fetched.content_type.as_deref())
            .with_context(|| format!("manifest {}", fetched.digest))?
        {
            Document::Manifest(m) => return Ok((*m, fetched.digest, chosen)),
            Document::Index(index) => {
                let child = select_platform(&index, platform)?;
                chosen = Some(
                    child
                        .platform
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "unspecified".into()),
                );
                tracing::info!(index = %fetched.digest, manifest = %child.digest, platform = %child.platform.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "unspecified".into()), "selected manifest from index");
                fetched = source.manifest(&child.digest).await?;
            }
        }
    }
    bail!("indexes nest deeper than {MAX_INDEX_DEPTH} levels; refusing (possible cycle)")
}

/// Whole-file names must be safe, distinct, and not nest inside each other.
pub fn check_paths(plan: &Plan) -> Result<()> {
    let mut seen = BTreeSet::new();
    let files = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::WriteFile(p) => Some((p.as_str(), s.layer.digest.to_string())),
            _ => None,
        })
        .chain(
            plan.generated
                .iter()
                .map(|(p, _)| (p.as_str(), "the manifest".to_string())),
        );
    for (title, from) in files {
        let rel = clean_path(Path::new(title))
            .with_context(|| format!("layer {from} has an unsafe file name"))?;
        if rel.is_empty() {
            bail!("layer {from} has an empty file name");
        }
        if !seen.insert(join(&rel)) {
            bail!("two layers claim the same file '{}'", join(&rel));
        }
    }
    let all: Vec<&String> = seen.iter().collect();
    for pair in all.windows(2) {
        if pair[1].starts_with(&format!("{}/", pair[0])) {
            bail!(
                "layer file '{}' would have to be both a file and the directory of '{}'",
                pair[0],
                pair[1]
            );
        }
    }
    Ok(())
}
