//! The pipeline for one model: resolve → (verify) → plan → fetch → unpack →
//! install.
//!
//! Data flows one way. The reference is resolved to a digest once; then
//! [`crate::plan`] narrows an index to one platform manifest, classifies it
//! into a [`Plan`] and narrows that by the file filter; each layer is streamed,
//! verified and unpacked into staging; the finished tree is installed into
//! DEST with its marker. Signature checks (see [`crate::verify`]) sit
//! between resolve and fetch: with a policy, nothing is written to DEST
//! before they pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::digest::Digest;
use crate::format::{Action, Format, Plan};
use crate::install::{Dest, Marker, MARKER_VERSION};
use crate::plan::{check_paths, plan, Planned};
use crate::progress::mib;
use crate::reference::Target;
use crate::registry::RegistryClient;
use crate::source::Source;
use crate::unpack::{clean_path, Contents};
use crate::verify;
use crate::verify::model::ModelSignature;

pub use crate::settings::{Recheck, Settings};

mod kit;
mod listing;
mod stream;
mod write;

use kit::{kit_parents, Parent};
use stream::Streaming;
use write::unpack_plan;

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
    /// Bytes and blobs downloaded (layers; manifests and configs not counted).
    pub bytes_fetched: u64,
    pub blobs_fetched: u64,
}

impl Outcome {
    fn up_to_date(marker: Marker) -> Outcome {
        Outcome {
            marker,
            up_to_date: true,
            bytes_fetched: 0,
            blobs_fetched: 0,
        }
    }
}

/// A `model-registry://` job as the OCI reference the registry records for
/// it; the URI stays the job's (and the marker's `source`).
async fn through_model_registry(
    job: &Job,
    uri: &str,
    settings: &Settings,
    clients: &ClientFactory,
) -> Result<Job> {
    let client = clients()?;
    let r = crate::model_registry::resolve(&*client, uri, &settings.model_registry).await?;
    tracing::info!(uri = %job.uri, registry = %r.api, model = %r.model, version = %r.version, reference = %r.reference, "resolved through the model registry");
    let image = crate::reference::ImageRef::parse(&r.reference).with_context(|| {
        format!(
            "the model registry's artifact URI for {uri} is not an OCI reference: oci://{}",
            r.reference
        )
    })?;
    Ok(Job {
        uri: job.uri.clone(),
        target: Target::Registry(image),
        dest: job.dest.clone(),
    })
}

/// Registry clients are built lazily, once, and shared by all jobs.
pub type ClientFactory = Arc<dyn Fn() -> Result<Arc<RegistryClient>> + Send + Sync>;

pub async fn pull(job: &Job, settings: &Settings, clients: &ClientFactory) -> Result<Outcome> {
    // A model registry's answers count against the deadline too.
    let work = async {
        let resolved;
        let job = match &job.target {
            Target::ModelRegistry(uri) => {
                resolved = through_model_registry(job, uri, settings, clients).await?;
                &resolved
            }
            _ => job,
        };
        pull_model(job, settings, clients).await
    };
    let before = DestBefore::observe(&job.dest);
    let result = match settings.deadline {
        // Dropping the pull on timeout removes its staging directory.
        Some(d) => tokio::time::timeout(d, work)
            .await
            .map_err(|_| anyhow!("gave up after {}s (OCIMODEL_TIMEOUT)", d.as_secs()))
            .and_then(|r| r),
        None => work.await,
    };
    if result.is_err() {
        // The pull (and its lock) is gone: take back what this run made.
        before.undo(&job.dest);
    }
    result
}

/// What DEST looked like before a pull, so that a failed pull leaves
/// neither a directory it created nor ocimodel's bookkeeping in a user's
/// folder behind.
struct DestBefore {
    /// The topmost directory of DEST's path that did not exist.
    created: Option<PathBuf>,
    /// Whether `DEST/.ocimodel` was there.
    bookkeeping: bool,
}

impl DestBefore {
    fn observe(dest: &Path) -> DestBefore {
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let mut created = None;
        let mut p = dest.to_path_buf();
        while !p.as_os_str().is_empty() && !exists(&p) {
            created = Some(p.clone());
            match p.parent() {
                Some(parent) => p = parent.to_path_buf(),
                None => break,
            }
        }
        DestBefore {
            created,
            bookkeeping: exists(&dest.join(crate::install::BOOKKEEPING)),
        }
    }

    /// Removes `DEST/.ocimodel` when this run made it and it holds only the
    /// lock (an interrupted install's journal, staging that could not go,
    /// or partial downloads to resume are kept), then the directories this
    /// run created, when empty.
    fn undo(&self, dest: &Path) {
        if !self.bookkeeping {
            let book = dest.join(crate::install::BOOKKEEPING);
            let only_lock = std::fs::read_dir(&book).is_ok_and(|rd| {
                rd.filter_map(|e| e.ok()).all(|e| {
                    let name = e.file_name();
                    name == "lock"
                        || (name == "partials"
                            && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none()))
                })
            });
            let is_dir = std::fs::symlink_metadata(&book).is_ok_and(|m| m.is_dir());
            if is_dir && only_lock {
                if let Err(e) = std::fs::remove_dir_all(&book) {
                    tracing::debug!(path = %book.display(), "cannot remove: {e}");
                }
            }
        }
        let Some(top) = &self.created else { return };
        let mut p = dest.to_path_buf();
        // Empty directories only: remove_dir refuses anything else.
        while std::fs::remove_dir(&p).is_ok() && p != *top {
            match p.parent() {
                Some(parent) => p = parent.to_path_buf(),
                None => break,
            }
        }
    }
}

async fn pull_model(job: &Job, settings: &Settings, clients: &ClientFactory) -> Result<Outcome> {
    if settings.require_digest && job.target.pinned_digest().is_none() {
        bail!("the reference has no digest and OCIMODEL_REQUIRE_DIGEST is set; pin it as REF@sha256:...");
    }
    if std::fs::metadata(&job.dest).is_ok_and(|m| !m.is_dir()) {
        bail!(
            "destination {} is not a directory; name a directory (it is created when missing)",
            job.dest.display()
        );
    }
    let selection = settings.selection();
    let policy = &settings.verify;

    // A digest reference can be checked against an installed DEST without
    // any network, unless signatures must be checked. Otherwise nothing,
    // not even DEST's bookkeeping, is touched before the reference
    // resolves (and its signatures verify).
    let mut opened = None;
    if let (true, Some(d)) = (policy.is_off(), job.target.pinned_digest()) {
        if job.dest.join(crate::install::MARKER).is_file() {
            let dest = Dest::open(&job.dest, settings.lock_timeout).await?;
            if let Some(marker) = up_to_date(&dest, job, d, &selection, settings.recheck) {
                return Ok(Outcome::up_to_date(marker));
            }
            opened = Some(dest);
        }
    }

    let mut source = Source::new(&job.target, || clients(), settings.cache.clone())?;
    let top = source.resolve().await?;
    if job.target.pinned_digest().is_none() {
        tracing::info!(uri = %job.uri, digest = %top.digest, "resolved reference to digest");
    }
    let signatures = if policy.is_off() {
        Vec::new()
    } else {
        let found = verify::verify(&source, &top, policy).await?;
        for s in &found {
            tracing::info!(uri = %job.uri, digest = %top.digest, "verified {s}");
        }
        found
    };
    let dest = match opened {
        Some(d) => d,
        None => Dest::open(&job.dest, settings.lock_timeout).await?,
    };
    if let Some(marker) = up_to_date(&dest, job, &top.digest, &selection, settings.recheck) {
        return Ok(Outcome::up_to_date(marker));
    }
    let planned = plan(&source, top, settings).await?;
    let parents = kit_parents(job, settings, clients, &planned).await?;
    if let (None, Some(min), Target::Registry(_)) =
        (&settings.cache, settings.resume_min, &job.target)
    {
        if planned.plan.steps.iter().any(|s| s.layer.size >= min) {
            // No node cache: big downloads still survive a killed run, in
            // DEST's own bookkeeping.
            match dest.partials_dir() {
                Ok(dir) => source.set_cache(Arc::new(crate::cache::Cache::partials(
                    dir,
                    min,
                    settings.lock_timeout,
                ))),
                Err(e) => {
                    tracing::warn!(dest = %dest.path().display(), "downloads will not resume across runs: {e:#}")
                }
            }
        }
    }
    for (layer, why) in &planned.plan.skipped {
        tracing::info!(uri = %job.uri, layer = %layer.describe(), "skipping layer: {why}");
    }
    refuse_empty(&planned.plan, settings)?;
    check_paths(&planned.plan)?;
    check_space(dest.path(), &planned.plan)?;
    if settings.hf_repo.is_none() {
        dest.check_conflicts(&known_entries(&planned.plan))?;
    }
    // A node-cache entry or a mirror whose bytes failed their digest is
    // dropped or skipped: then again, from the next host.
    let mut retries = 0;
    loop {
        let installed = install_planned(
            job,
            settings,
            &source,
            &dest,
            &planned,
            &parents,
            &selection,
            &signatures,
        )
        .await;
        match installed {
            Err(e)
                if retries < 3
                    && (e.downcast_ref::<crate::cache::StaleEntry>().is_some()
                        || e.downcast_ref::<crate::registry::BadMirror>().is_some()) =>
            {
                tracing::warn!(uri = %job.uri, "{e:#}; installing again");
                retries += 1;
            }
            other => return other,
        }
    }
}

/// The marker when DEST already holds `digest` with these settings: every
/// file present with its size, and with `OCIMODEL_RECHECK=digest` its
/// digest too (a LocalModelCache job must not trust a folder that exists);
/// anything that differs is replaced by installing again.
fn up_to_date(
    dest: &Dest,
    job: &Job,
    digest: &Digest,
    selection: &str,
    recheck: Recheck,
) -> Option<Marker> {
    let marker = dest.complete_for(digest, selection)?;
    if recheck == Recheck::Digest {
        match crate::install::check_tree(dest.path()) {
            Ok((_, problems)) if problems.is_empty() => {}
            Ok((_, problems)) => {
                tracing::warn!(uri = %job.uri, dest = %dest.path().display(), differences = problems.len(), "the installed tree differs from its marker ({}); installing again", problems.join("; "));
                return None;
            }
            Err(e) => {
                tracing::warn!(uri = %job.uri, dest = %dest.path().display(), "cannot recheck the installed tree ({e:#}); installing again");
                return None;
            }
        }
    }
    tracing::info!(uri = %job.uri, dest = %dest.path().display(), digest = %digest, "already installed; nothing to do");
    Some(marker)
}

/// The top-level names of DEST a plan is known to write before anything is
/// downloaded: whole files, generated files, and tar layers bound to a
/// directory (what other tar layers hold is known once they unpack).
fn known_entries(plan: &Plan) -> Vec<String> {
    let first = |p: &str| {
        clean_path(Path::new(p))
            .ok()
            .and_then(|c| c.into_iter().next())
    };
    let mut names = std::collections::BTreeSet::new();
    for step in &plan.steps {
        let name = match &step.action {
            Action::WriteFile(p) => first(p),
            Action::ExtractTar { into: Some(d), .. } => first(d),
            Action::ExtractTar {
                into: None,
                within: Some(d),
                ..
            } => first(d),
            _ => None,
        };
        names.extend(name);
    }
    names.extend(plan.generated.iter().filter_map(|(p, _)| first(p)));
    names.into_iter().collect()
}

/// A plan with nothing to install is an error that says why.
fn refuse_empty(plan: &Plan, settings: &Settings) -> Result<()> {
    if !plan.steps.is_empty() || !plan.generated.is_empty() {
        return Ok(());
    }
    if settings.filter.is_empty() {
        bail!("the manifest has no layers to install");
    }
    bail!(
        "no file passes the file filter ({}); check OCIMODEL_INCLUDE/OCIMODEL_EXCLUDE and KServe's STORAGE_ALLOW_PATTERNS/STORAGE_IGNORE_PATTERNS",
        settings.filter.describe().unwrap_or_default()
    )
}

/// Fetches and unpacks the plan into staging, then installs it with its
/// marker.
#[allow(clippy::too_many_arguments)]
async fn install_planned(
    job: &Job,
    settings: &Settings,
    source: &Source,
    dest: &Dest,
    planned: &Planned,
    parents: &[Parent],
    selection: &str,
    signatures: &[verify::Signature],
) -> Result<Outcome> {
    let plan = &planned.plan;
    let staging = dest.new_staging()?;
    let stream = Streaming::for_plan(settings, plan);
    let unpacked = unpack_plan(
        source,
        plan,
        parents,
        staging.path(),
        settings,
        stream.as_ref(),
        &job.uri,
    )
    .await;
    let (mut contents, disk) = match unpacked {
        Ok(u) => u,
        Err(e) => {
            if let Some(s) = &stream {
                s.close();
            }
            return Err(e);
        }
    };
    let checked = check_model_signature(settings, staging.path(), &contents).await;
    // The tree check has decided: a file still being hashed again against
    // the signature is not served when its hash comes in.
    if let Some(s) = &stream {
        s.close();
    }
    let model_signature = match checked {
        Ok(s) => s,
        Err(e) => {
            // None of the files may be served: say so to whoever waits on one.
            if let Some(p) = settings.publisher() {
                let why = format!("{e:#}");
                for f in &contents.files {
                    p.failed(&f.path, &why);
                }
            }
            return Err(e);
        }
    };
    if let Some(s) = &model_signature {
        tracing::info!(uri = %job.uri, "verified {s}");
    }
    if let Some(p) = settings.publisher() {
        // Every file once the tree verified, unless each was as it came
        // (a file the signature's digests could not judge alone waited).
        if !matches!(stream, Some(Streaming::Each(_))) {
            for f in &contents.files {
                p.verified(staging.path(), f);
            }
        }
        p.complete();
    }
    let top = &planned.top;
    if let Some(repo) = &settings.hf_repo {
        repo.arrange(staging.path(), &top.digest, &mut contents, settings.owner)?;
    }
    let marker = Marker {
        version: MARKER_VERSION,
        source: job.uri.clone(),
        reference: source.pinned(&top.digest),
        digest: top.digest.clone(),
        manifest_digest: (planned.manifest_digest != top.digest)
            .then(|| planned.manifest_digest.clone()),
        format: plan.format.to_string(),
        subpath: (plan.format == Format::Image).then(|| settings.subtree.display()),
        selection: selection.to_string(),
        installed_at: crate::install::now_rfc3339(),
        signatures: signatures.to_vec(),
        model_signature,
        parents: parents.iter().map(|p| p.reference.clone()).collect(),
        hf_repo: settings.hf_repo.as_ref().map(|r| r.id().to_string()),
        entries: Vec::new(),
        disk: Some(disk),
        contents,
    };
    let config = plan
        .keep_config
        .then_some(planned.config.as_deref())
        .flatten();
    let marker = dest.install(&staging, marker, config, settings.owner)?;
    Ok(Outcome {
        marker,
        up_to_date: false,
        bytes_fetched: plan.total_bytes(),
        blobs_fetched: plan.steps.len() as u64,
    })
}

/// The staged tree against its model signature, when the policy asks
/// (hashing reads every file again unless the unpack already hashed it as
/// the signer did).
async fn check_model_signature(
    settings: &Settings,
    staged: &Path,
    contents: &Contents,
) -> Result<Option<ModelSignature>> {
    if settings.model_signature.is_off() {
        return Ok(None);
    }
    let (policy, root, contents) = (
        settings.model_signature.clone(),
        staged.to_path_buf(),
        contents.clone(),
    );
    tokio::task::spawn_blocking(move || verify::model::check(&root, &contents, &policy))
        .await
        .context("the model signature check stopped")?
}

/// Refuses early when DEST's filesystem cannot hold the download (the
/// blobs' sizes: a lower bound for compressed layers, which expand).
fn check_space(dest: &Path, plan: &Plan) -> Result<()> {
    let need = plan.total_bytes();
    let Some(avail) = free_space(dest) else {
        return Ok(());
    };
    if need > avail {
        bail!(
            "not enough space in {}: the model needs at least {need} bytes ({}), the filesystem has {avail} bytes ({}) free; free space or use a bigger volume",
            dest.display(),
            mib(need),
            mib(avail)
        );
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on `path`'s filesystem.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; all-zero is a valid value to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a struct statvfs to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::write::loader_order;

    #[test]
    fn files_download_in_the_order_a_loader_reads_them() {
        let mut files = vec![
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "config.json",
        ];
        files.sort_by_cached_key(|p| loader_order(p));
        assert_eq!(
            files,
            [
                "config.json",
                "tokenizer.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ]
        );
    }
}
