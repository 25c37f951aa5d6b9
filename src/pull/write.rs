//! Fetching a plan into staging: whole-file layers side by side in the
//! order a loader reads them (each verified as it is written, and reported
//! to the S3 endpoint when one streams), then tar layers over them, an
//! artifact's in loader order too when every layer names its path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};

use super::kit::Parent;
use super::stream::Streaming;
use super::Settings;
use crate::digest::{Algorithm, Digest};
use crate::fetch::{fetch_blob, Hashing};
use crate::format::{layer_path, Action, Format, Plan};
use crate::progress::{mib, Board};
use crate::source::Source;
use crate::unpack::{
    clean_dir, clean_path, write_file, Contents, FileDigest, Tree, MARKER_ALGORITHM,
};

/// Streams one whole-file layer into `root/path`.
async fn write_one(
    source: &Source,
    layer: crate::manifest::Descriptor,
    path: String,
    root: Arc<PathBuf>,
    progress: Arc<Board>,
    stream: Option<Streaming>,
) -> Result<crate::unpack::FileRecord> {
    let rel = clean_path(Path::new(&path))?;
    let key = crate::unpack::join(&rel);
    let blob = progress.blob(layer.size, &path);
    let written =
        crate::fetch::fetch_file(source, layer, blob.counter().clone(), root.clone(), rel)
            .await
            .with_context(|| format!("file '{path}'"));
    if let Some(p) = &stream {
        match &written {
            Ok(record) => p.verified(&root, record),
            Err(e) if crate::error::is_verification_failure(e) => p.failed(&key, &format!("{e:#}")),
            Err(_) => {}
        }
    }
    written
}

/// Whole files downloading at once while the S3 endpoint streams them.
const STREAMING_CONCURRENCY: usize = 2;
/// Streaming, files this small (configs, tokenizers, the weights' index,
/// the signature) take none of those places: each is a request or two, and
/// queued before the first shard they would hold it back by round trips.
const STREAMING_SMALL: u64 = 4 << 20;

/// The order a model server reads files in: configs and tokenizer first,
/// then the weights' index, then the weights by name (shards are
/// numbered). Whole files download in this order, so an engine streaming
/// them through the S3 endpoint waits for each only as long as its download.
pub(super) fn loader_order(path: &str) -> (u8, String) {
    const WEIGHTS: &[&str] = &[
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".gguf",
        ".onnx",
        ".h5",
        ".msgpack",
        ".ckpt",
        ".pdparams",
        ".tflite",
        ".npz",
        ".pb",
    ];
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let rank = if name.ends_with(".index.json") {
        1
    } else if WEIGHTS.iter().any(|w| name.ends_with(w)) {
        2
    } else {
        0
    };
    (rank, path.to_string())
}

/// Whole-file layers, several at once: they are independent blobs.
async fn write_whole_files(
    source: &Source,
    plan: &Plan,
    staging: &Path,
    settings: &Settings,
    stream: Option<&Streaming>,
    progress: &Arc<Board>,
) -> Result<Vec<crate::unpack::FileRecord>> {
    let root = Arc::new(staging.to_path_buf());
    // Owned items: a closure over borrowed ones defeats rustc's Send proof
    // for the whole future (higher-ranked lifetimes), which the sidecar spawns.
    let mut files: Vec<(crate::manifest::Descriptor, String)> = plan
        .steps
        .iter()
        .filter_map(|step| match &step.action {
            Action::WriteFile(path) => Some((step.layer.clone(), path.clone())),
            _ => None,
        })
        .collect();
    // Under a model-signature policy the others wait on the signature.
    let first = stream.and_then(Streaming::first);
    files.sort_by_cached_key(|(_, path)| (Some(path.as_str()) != first, loader_order(path)));
    // Streaming, a loader waits on the files in order: two big ones at
    // once, each allowed all of the host's connections (the sidecar sets
    // that), finish nearly in that order at about the total rate of eight
    // at once; the small ones all start at once beside them.
    let (small, big): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(layer, _)| stream.is_some() && layer.size <= STREAMING_SMALL);
    let concurrency = match stream {
        Some(_) => settings.concurrency.clamp(1, STREAMING_CONCURRENCY),
        None => settings.concurrency.max(1),
    };
    let write = |(layer, path)| {
        write_one(
            source,
            layer,
            path,
            root.clone(),
            progress.clone(),
            stream.cloned(),
        )
    };
    let writes = futures_util::stream::select(
        futures_util::stream::iter(small)
            .map(write)
            .buffer_unordered(settings.concurrency.max(1)),
        futures_util::stream::iter(big)
            .map(write)
            .buffer_unordered(concurrency),
    );
    if stream.is_none() {
        return writes.try_collect().await;
    }
    // Streaming: a bad file fails the pull, but only once the others are
    // in (and served); the next attempt fetches them again otherwise.
    let written: Vec<Result<_>> = writes.collect().await;
    written.into_iter().collect()
}

/// Tar layers in order: image layers stack, artifact layers must not clash.
async fn apply_tar_layers(
    source: &Source,
    plan: &Plan,
    mut tree: Tree,
    settings: &Settings,
    stream: Option<&Streaming>,
    progress: &Arc<Board>,
) -> Result<Tree> {
    let mut tars: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| !matches!(s.action, Action::WriteFile(_)))
        .collect();
    // Artifact layers must not clash, so their order is free: the order a
    // loader reads them in, when every layer names its path (ModelPack's
    // file path or a title). An image's layers stack in manifest order.
    if plan.format != Format::Image {
        let named: Option<Vec<_>> = tars.iter().map(|s| layer_path(&s.layer)).collect();
        if let Some(named) = named {
            let mut order: Vec<_> = named.iter().map(|p| loader_order(p)).zip(0..).collect();
            order.sort();
            tars = order.into_iter().map(|(_, i)| tars[i]).collect();
        }
    }
    let total = tars.len();
    for (i, step) in tars.into_iter().enumerate() {
        let action = step.action.clone();
        tree.set_layer_size(step.layer.size);
        let subtree = settings.subtree.clone();
        let blob = progress.blob(step.layer.size, &format!("layer {} of {total}", i + 1));
        tree = fetch_blob(
            source,
            &step.layer,
            blob.counter(),
            Hashing::OwnThread,
            move |r| {
                match action {
                    Action::ApplyTar(compression) => tree.apply_tar(r, compression, &subtree)?,
                    Action::ExtractTar {
                        compression,
                        into,
                        within,
                        content_digest,
                    } => {
                        let into = clean_dir(&into)?;
                        let within = clean_dir(&within)?;
                        let within = (!within.is_empty()).then_some(&within[..]);
                        tree.extract_tar(r, compression, &into, within, content_digest.as_ref())?
                    }
                    Action::WriteFile(_) => unreachable!("whole files are written above"),
                }
                Ok(tree)
            },
        )
        .await
        .with_context(|| format!("layer {} of {total} ({})", i + 1, step.layer.digest))?;
        if let Some(p) = stream {
            for r in tree.layer_files() {
                p.verified(tree.root(), &r);
            }
        }
    }
    Ok(tree)
}

pub(super) async fn unpack_plan(
    source: &Source,
    plan: &Plan,
    parents: &[Parent],
    staging: &Path,
    settings: &Settings,
    stream: Option<&Streaming>,
    uri: &str,
) -> Result<(Contents, crate::install::DiskUse)> {
    let parent_bytes: u64 = parents.iter().map(|p| p.planned.plan.total_bytes()).sum();
    let total = plan.total_bytes() + parent_bytes;
    tracing::info!(uri, format = %plan.format, layers = plan.steps.len(), size = %mib(plan.total_bytes()), bytes_total = total, cpus = crate::cpus::available(), "pulling");
    // Bars on a terminal, else a log line every interval; gone when dropped.
    let progress = Board::start(uri, "pulling", total, settings.progress_every);
    // Names the tar layers' files for the listing while they download.
    let mut read_ahead = None;
    if let Some(p) = settings.publisher() {
        p.planned(planned_keys(plan));
        if parents.is_empty()
            && plan
                .steps
                .iter()
                .all(|s| matches!(s.action, Action::WriteFile(_)))
        {
            // No tar layer: the plan names every file there will be.
            p.complete();
        } else if parents.is_empty() {
            read_ahead = super::listing::start(source, plan, &settings.filter, p);
        }
    }
    let result = async {
        let records = write_whole_files(source, plan, staging, settings, stream, &progress).await?;
        // Whole files first, then the tar layers over them.
        let mut tree = Tree::new(staging.to_path_buf(), settings.filter.clone());
        tree.limit_expansion(settings.max_expanded);
        tree.limit_entries(settings.max_files);
        if !settings.model_signature.is_off() {
            tree.hash_files_with(Algorithm::Sha256);
        }
        for r in records {
            tree.add_record(r);
        }
        // Parent kits' model layers first, eldest first; the child's over them.
        for p in parents {
            tree = apply_tar_layers(
                &p.source,
                &p.planned.plan,
                tree,
                settings,
                stream,
                &progress,
            )
            .await
            .with_context(|| format!("parent kit {}", p.reference))?;
        }

        let mut tree = apply_tar_layers(source, plan, tree, settings, stream, &progress).await?;
        if plan.format == Format::Image && !tree.saw_subtree {
            bail!(
                "the image has nothing under {}; put the model files there or set OCIMODEL_SUBPATH",
                settings.subtree.display()
            );
        }
        for (path, bytes) in &plan.generated {
            let rel = clean_path(Path::new(path))?;
            let record = write_file(
                staging,
                &rel,
                &mut &bytes[..],
                0o644,
                None,
                FileDigest::Compute(MARKER_ALGORITHM),
            )
            .map_err(|e| anyhow!("cannot write {path}: {e:#}"))?;
            if let Some(p) = stream {
                p.verified(staging, &record);
            }
            tree.add_record(record);
        }
        tree.finish(settings.owner)
    }
    .await;
    drop(read_ahead);
    let line = progress.line();
    let done = progress.done();
    let cloned = progress.cloned();
    drop(progress);
    if result.is_ok() {
        tracing::info!(
            uri,
            bytes_done = done,
            bytes_total = total,
            "fetched {line}"
        );
    }
    result.map(|c| {
        let disk = crate::install::DiskUse::of(&c, cloned);
        (c, disk)
    })
}

/// The files a plan names before anything downloads (whole-file layers and
/// files from the manifest), as S3 keys with sizes and ETags.
fn planned_keys(plan: &Plan) -> Vec<(String, u64, String)> {
    let key = |p: &str| {
        clean_path(Path::new(p))
            .ok()
            .map(|r| crate::unpack::join(&r))
    };
    let whole = plan.steps.iter().filter_map(|s| match &s.action {
        Action::WriteFile(p) => Some((
            key(p)?,
            s.layer.size,
            crate::s3::catalog::etag(&s.layer.digest),
        )),
        _ => None,
    });
    let generated = plan.generated.iter().filter_map(|(p, bytes)| {
        Some((
            key(p)?,
            bytes.len() as u64,
            crate::s3::catalog::etag(&Digest::of(MARKER_ALGORITHM, bytes)),
        ))
    });
    whole.chain(generated).collect()
}
