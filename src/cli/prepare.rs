//! From parsed flags to what the pipeline runs: the jobs, the [`Settings`]
//! (built once), the caches, DEST resolved, and the lazily built registry
//! client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::auth::CredentialSources;
use crate::config;
use crate::format;
use crate::manifest::Platform;
use crate::pull::{ClientFactory, Job, Settings};
use crate::reference::Target;
use crate::registry::{ClientOptions, RegistryClient};
use crate::select::Filter;
use crate::unpack::Subtree;

use super::args::{AccessArgs, PullArgs, SelectArgs};
use super::values::{parse_owner, OnOff, RecheckMode, Unknown};
use super::USAGE;

/// A pull's jobs, settings and client factory.
pub(super) type Prepared = (Vec<Job>, Settings, ClientFactory);

/// `pull` and `unpack` on a terminal (a person at a laptop, not a pod):
/// the per-user cache is the default, so an interrupted pull resumes.
pub(super) fn interactive() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// `$XDG_CACHE_HOME/ocimodel`, else `~/.cache/ocimodel`.
fn user_cache_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .map(|d| d.join("ocimodel"))
}

/// The cache a pull uses: the one named (none for "off"), else on a
/// laptop the per-user one (none, with a warning, when it cannot be made).
fn open_cache(args: &PullArgs, laptop: bool) -> Result<Option<Arc<crate::cache::Cache>>> {
    let lock_wait = Duration::from_secs(args.lock_timeout);
    let open = |dir: &Path| {
        let mut cache = crate::cache::Cache::open(dir, args.cache_max, lock_wait)?;
        cache.clone_files = args.clone == OnOff::On;
        anyhow::Ok(Arc::new(cache))
    };
    match args.cache_dir.as_deref() {
        Some(d) if d.as_os_str() == "off" => Ok(None),
        Some(d) => open(d).map(Some).context("OCIMODEL_CACHE_DIR"),
        None if laptop => {
            let Some(dir) = user_cache_dir() else {
                return Ok(None);
            };
            match open(&dir) {
                Ok(c) => {
                    tracing::info!(cache = %dir.display(), "using the per-user cache, so an interrupted pull resumes (OCIMODEL_CACHE_DIR moves it; off for none)");
                    Ok(Some(c))
                }
                Err(e) => {
                    tracing::warn!(cache = %dir.display(), "no per-user cache: {e:#}");
                    Ok(None)
                }
            }
        }
        None => Ok(None),
    }
}

/// `laptop`: the per-user cache is the default (`pull` and `unpack` on a
/// terminal; never in pods, whose stderr is no terminal).
pub(super) fn prepare(args: &PullArgs, laptop: bool) -> Result<Prepared> {
    if args.pairs.is_empty() || !args.pairs.len().is_multiple_of(2) {
        bail!(
            "{USAGE} (got {} argument{}; URIs and destinations must come in pairs)",
            args.pairs.len(),
            if args.pairs.len() == 1 { "" } else { "s" }
        );
    }
    let mut jobs = Vec::new();
    let mut dests = std::collections::HashMap::new();
    for pair in args.pairs.chunks(2) {
        let (uri, dest) = (&pair[0], &pair[1]);
        let target = Target::parse(uri).with_context(|| uri.to_string())?;
        let dest_path = PathBuf::from(dest);
        // Two names for one directory (a symlink, `d/.`) would let the
        // second model silently replace the first.
        if let Some(first) = dests.insert(resolve_dest(&dest_path), dest.clone()) {
            if &first == dest {
                bail!("destination {dest} is given twice; each model needs its own directory");
            }
            bail!(
                "destinations {first} and {dest} are the same directory; each model needs its own"
            );
        }
        jobs.push(Job {
            uri: uri.clone(),
            target,
            dest: dest_path,
        });
    }
    let settings = Settings {
        require_digest: args.require_digest,
        concurrency: args.concurrency.max(1),
        owner: args.owner.as_deref().map(parse_owner).transpose()?,
        progress_every: Duration::from_secs(args.progress_interval.max(1)),
        deadline: args.timeout.map(Duration::from_secs),
        max_expanded: args.max_expanded.unwrap_or(u64::MAX),
        max_files: args.max_files,
        lock_timeout: Duration::from_secs(args.lock_timeout),
        resume_min: args.resume_min.0,
        recheck: match args.recheck {
            RecheckMode::Size => crate::pull::Recheck::Size,
            RecheckMode::Digest => crate::pull::Recheck::Digest,
        },
        cache: open_cache(args, laptop)?,
        verify: Arc::new(args.policy.policy()?),
        model_signature: Arc::new(args.model_policy.policy(args.policy.trusted_root.clone())?),
        model_registry: args.model_registry.config(),
        ..settings(&args.access, &args.select)?
    };
    Ok((jobs, settings, client_factory(&args.access)))
}

/// Pipeline settings from the shared flag groups; the pull-only ones keep
/// their defaults (`Settings::default`, from [`config`]).
pub(super) fn settings(access: &AccessArgs, select: &SelectArgs) -> Result<Settings> {
    let platform = match &access.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    Ok(Settings {
        subtree: Subtree::parse(&select.subpath)?,
        platform,
        filter: Filter::new(&select.include, &select.exclude).with_kserve(
            select.storage_allow.as_deref(),
            select.storage_ignore.as_deref(),
        )?,
        format: format::Options {
            unknown_raw: select.unknown == Unknown::Raw,
            kit_filter: clean_list(&select.kit_filter),
        },
        hf_repo: select
            .hf_repo
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .map(crate::hf_cache::HfRepo::parse)
            .transpose()
            .context("OCIMODEL_HF_REPO")?,
        ..Settings::default()
    })
}

/// Where a DEST really is: symlinks followed (dangling ones too, since
/// `mkdir -p` would create their target), then made absolute.
fn resolve_dest(path: &Path) -> PathBuf {
    let mut p = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(target) => p = p.parent().map(|d| d.join(&target)).unwrap_or(target),
            Err(_) => break,
        }
    }
    // Canonicalise the longest existing prefix; keep the rest as written.
    let mut rest = Vec::new();
    let mut head = p.clone();
    loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            return rest
                .iter()
                .rev()
                .fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                head = parent.to_path_buf();
            }
            _ => return p,
        }
    }
}

/// A comma-separated setting's items, trimmed, empty ones dropped.
fn clean_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A lazily built, shared registry client: local sources never need one.
pub(super) fn client_factory(access: &AccessArgs) -> ClientFactory {
    let mut ca_bundles: Vec<PathBuf> = access.ca_bundle.iter().cloned().collect();
    let kserve = config::KserveOverrides::from_env();
    ca_bundles.extend(kserve.ca_bundle);
    let insecure_all = kserve.insecure_all || access.plain_http || !access.tls_verify;
    let options = ClientOptions {
        insecure_registries: clean_list(&access.insecure_registries),
        insecure_all,
        ca_bundles,
        connect_timeout: Duration::from_secs(access.connect_timeout.max(1)),
        stall_timeout: Duration::from_secs(access.stall_timeout.max(1)),
        min_rate: access.min_rate,
        mirrors: crate::mirrors::Mirrors::default(),
        node_ip: access.node_ip.clone().filter(|ip| !ip.trim().is_empty()),
        cloud: (access.cloud_auth == OnOff::On).then(crate::cloud::CloudEnv::from_env),
        retries: access.retries,
        ranges: crate::registry::Limits {
            connections: access.range_connections.max(1),
            range_size: access.range_size,
            per_host: access.host_connections.max(1),
            split_below: access.split_below,
        },
    };
    let mut sources = CredentialSources::from_env(access.auth_file.as_deref());
    sources.helper_timeout = Some(Duration::from_secs(access.credential_helper_timeout.max(1)));
    let (default_hosts, default_conf) = crate::mirrors::default_paths();
    let off = |v: &Option<String>| v.as_deref().is_some_and(|v| v.trim() == "off");
    let hosts_dir = match &access.hosts_dir {
        _ if off(&access.hosts_dir) => None,
        Some(d) if !d.trim().is_empty() => Some(PathBuf::from(d)),
        _ => default_hosts,
    };
    let registries_conf = match &access.registries_conf {
        _ if off(&access.registries_conf) => Vec::new(),
        Some(f) if !f.trim().is_empty() => vec![PathBuf::from(f)],
        _ => default_conf,
    };
    let cell: Arc<OnceLock<Arc<RegistryClient>>> = Arc::new(OnceLock::new());
    Arc::new(move || {
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let creds = sources.load()?;
        let mut options = options.clone();
        options.mirrors = crate::mirrors::Mirrors::load(hosts_dir.as_deref(), &registries_conf)
            .context("the node's registry mirror configuration")?;
        let client = Arc::new(RegistryClient::new(creds, options)?);
        Ok(cell.get_or_init(|| client).clone())
    })
}
