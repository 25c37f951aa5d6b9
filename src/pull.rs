//! The pipeline for one model: resolve → (verify) → fetch → unpack → install.
//!
//! Data flows one way. The reference is resolved to a digest once; an index
//! is narrowed to one platform manifest; the manifest is classified into a
//! [`Plan`]; each layer is streamed, verified and unpacked into staging; the
//! finished tree is installed into DEST with its marker. Signature checks
//! will sit between resolve and fetch, before anything is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::fetch::{fetch_blob, mib, Progress};
use crate::install::{Dest, Marker};
use crate::manifest::{
    classify, select_platform, Action, Document, Format, ImageManifest, Plan, Platform,
    MAX_INDEX_DEPTH,
};
use crate::reference::Target;
use crate::registry::{FetchedManifest, RegistryClient};
use crate::source::Source;
use crate::unpack::{clean_path, join, write_file, Subtree, Tree};

/// Settings shared by every model of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub subtree: Subtree,
    pub platform: Platform,
    pub require_digest: bool,
    pub concurrency: usize,
    pub owner: Option<(u32, u32)>,
    /// How often a long pull logs bytes, rate and ETA.
    pub progress_every: Duration,
}

/// One `URI DEST` pair.
#[derive(Clone, Debug)]
pub struct Job {
    pub uri: String,
    pub target: Target,
    pub dest: PathBuf,
}

/// What a successful pull did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub marker: Marker,
    /// True when DEST already held this model and nothing was fetched.
    pub up_to_date: bool,
}

/// Registry clients are built lazily, once, and shared by all jobs.
pub type ClientFactory = Arc<dyn Fn() -> Result<Arc<RegistryClient>> + Send + Sync>;

pub async fn pull(job: &Job, settings: &Settings, clients: &ClientFactory) -> Result<Outcome> {
    if settings.require_digest && job.target.pinned_digest().is_none() {
        bail!("the reference has no digest and OCIMODEL_REQUIRE_DIGEST is set; pin it as REF@sha256:...");
    }
    let dest = Dest::open(&job.dest).await?;

    // A digest reference can be checked against DEST without any network.
    if let Some(d) = job.target.pinned_digest() {
        if let Some(marker) = complete(&dest, d, &job.target, settings) {
            return Ok(Outcome {
                marker,
                up_to_date: true,
            });
        }
    }

    let source = Source::new(&job.target, || clients())?;
    let top = source.resolve().await?;
    if job.target.pinned_digest().is_none() {
        tracing::info!(uri = %job.uri, digest = %top.digest, "resolved reference to digest");
        if let Some(marker) = complete(&dest, &top.digest, &job.target, settings) {
            return Ok(Outcome {
                marker,
                up_to_date: true,
            });
        }
    }
    let (manifest, manifest_digest) = descend(&source, top.clone(), &settings.platform).await?;
    let plan = classify(&manifest)?;
    for (layer, why) in &plan.skipped {
        tracing::info!(uri = %job.uri, layer = %layer.describe(), "skipping layer: {why}");
    }
    if plan.steps.is_empty() {
        bail!("the manifest has no layers to install");
    }
    check_paths(&plan)?;

    // (Signature verification of top.digest will run here, before any write.)

    let staging = dest.new_staging()?;
    let result = unpack_plan(&source, &plan, &staging, settings, &job.uri).await;
    let contents = match result {
        Ok(c) => c,
        Err(e) => {
            dest.discard(&staging);
            return Err(e);
        }
    };
    let subpath = (plan.format == Format::Image).then(|| settings.subtree.display());
    let marker = Marker::new(
        job.uri.clone(),
        source.pinned(&top.digest),
        top.digest.clone(),
        (manifest_digest != top.digest).then_some(manifest_digest),
        plan.format.to_string(),
        subpath,
        contents,
    );
    match dest.install(&staging, marker) {
        Ok(marker) => Ok(Outcome {
            marker,
            up_to_date: false,
        }),
        Err(e) => {
            dest.discard(&staging);
            Err(e)
        }
    }
}

/// DEST's marker if it already holds `digest` with the same settings.
fn complete(dest: &Dest, digest: &Digest, target: &Target, settings: &Settings) -> Option<Marker> {
    // Only images use the subpath; an artifact marker has none. Try both.
    let image_subpath = settings.subtree.display();
    let m = dest
        .complete_for(digest, Some(&image_subpath))
        .or_else(|| dest.complete_for(digest, None))?;
    tracing::info!(target = %target, dest = %dest.path().display(), digest = %digest, "already installed; nothing to do");
    Some(m)
}

/// Follows indexes down to one image manifest for the wanted platform.
async fn descend(
    source: &Source,
    mut fetched: FetchedManifest,
    platform: &Platform,
) -> Result<(ImageManifest, Digest)> {
    for _ in 0..=MAX_INDEX_DEPTH {
        match Document::parse(&fetched.bytes, fetched.content_type.as_deref())
            .with_context(|| format!("manifest {}", fetched.digest))?
        {
            Document::Manifest(m) => return Ok((*m, fetched.digest)),
            Document::Index(index) => {
                let child = select_platform(&index, platform)?;
                tracing::info!(index = %fetched.digest, manifest = %child.digest, platform = %child.platform.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "unspecified".into()), "selected manifest from index");
                fetched = source.manifest(&child.digest).await?;
            }
        }
    }
    bail!("indexes nest deeper than {MAX_INDEX_DEPTH} levels; refusing (possible cycle)")
}

/// Artifact file names must be safe, distinct, and not nest inside each other.
fn check_paths(plan: &Plan) -> Result<()> {
    let mut seen = BTreeSet::new();
    for step in &plan.steps {
        if let Action::WriteFile(title) = &step.action {
            let rel = clean_path(Path::new(title))
                .with_context(|| format!("layer {} has an unsafe file name", step.layer.digest))?;
            if rel.is_empty() {
                bail!("layer {} has an empty file name", step.layer.digest);
            }
            if !seen.insert(join(&rel)) {
                bail!("two layers claim the same file '{}'", join(&rel));
            }
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

async fn unpack_plan(
    source: &Source,
    plan: &Plan,
    staging: &Path,
    settings: &Settings,
    uri: &str,
) -> Result<crate::unpack::Contents> {
    let progress = Progress::new(plan.total_bytes());
    tracing::info!(uri, format = %plan.format, layers = plan.steps.len(), size = %mib(plan.total_bytes()), "pulling");
    let reporter = {
        let progress = progress.clone();
        let uri = uri.to_string();
        let every = settings.progress_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!(uri = %uri, "progress: {}", progress.line());
            }
        })
    };
    let result = async {
        let mut tree = Tree::new(staging.to_path_buf());
        match plan.format {
            Format::Image => {
                let total = plan.steps.len();
                for (i, step) in plan.steps.iter().enumerate() {
                    let Action::ApplyTar(compression) = step.action.clone() else {
                        bail!("internal: image layer without a tar action");
                    };
                    let subtree = settings.subtree.clone();
                    tree = fetch_blob(source, &step.layer, &progress, move |r| {
                        tree.apply_tar(r, compression, &subtree)?;
                        Ok(tree)
                    })
                    .await
                    .with_context(|| format!("layer {} of {total} ({})", i + 1, step.layer.digest))?;
                }
                if !tree.saw_subtree {
                    bail!(
                        "the image has nothing under {}; put the model files there or set OCIMODEL_SUBPATH",
                        settings.subtree.display()
                    );
                }
            }
            Format::Oras => {
                let root = Arc::new(staging.to_path_buf());
                let records: Vec<_> = futures_util::stream::iter(plan.steps.iter().map(|step| {
                    let root = root.clone();
                    let progress = progress.clone();
                    async move {
                        let Action::WriteFile(title) = &step.action else {
                            return Err(anyhow!("internal: artifact layer without a file action"));
                        };
                        let rel = clean_path(Path::new(title))?;
                        let digest = step.layer.digest.clone();
                        fetch_blob(source, &step.layer, &progress, move |r| {
                            write_file(&root, &rel, r, 0o644, None, Some(&digest))
                        })
                        .await
                        .with_context(|| format!("file '{title}'"))
                    }
                }))
                .buffer_unordered(settings.concurrency.max(1))
                .try_collect()
                .await?;
                for r in records {
                    tree.add_record(r);
                }
            }
        }
        tree.finish(settings.owner)
    }
    .await;
    reporter.abort();
    if result.is_ok() {
        tracing::info!(uri, "fetched {}", progress.line());
    }
    result
}
