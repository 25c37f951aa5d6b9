//! The settings shared by every model of one run: what the command line
//! and the environment decided (see [`crate::config`]), handed to the
//! pipeline ([`crate::pull`]) and the stages it calls. It lives apart from
//! `pull/` so that those stages (`plan.rs`) can read it without importing
//! the pipeline that calls them.

use std::sync::Arc;
use std::time::Duration;

use crate::format;
use crate::manifest::Platform;
use crate::select::Filter;
use crate::unpack::Subtree;
use crate::verify::model::ModelPolicy;
use crate::verify::Policy;

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
    pub filter: Filter,
    pub format: format::Options,
    /// Give up on a model after this long (`OCIMODEL_TIMEOUT`).
    pub deadline: Option<Duration>,
    /// Most bytes tar layers may expand to (`OCIMODEL_MAX_EXPANDED`).
    pub max_expanded: u64,
    /// Most entries one model may have (`OCIMODEL_MAX_FILES`).
    pub max_files: u64,
    /// Longest wait for another run's lock on DEST (`OCIMODEL_LOCK_TIMEOUT`).
    pub lock_timeout: Duration,
    /// Without a node cache, blobs at least this big are kept as they
    /// download under DEST, to resume across runs (`OCIMODEL_RESUME_MIN`).
    pub resume_min: Option<u64>,
    /// How an existing install is checked (`OCIMODEL_RECHECK`).
    pub recheck: Recheck,
    /// The node cache (`OCIMODEL_CACHE_DIR`), shared by every model.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Which signatures to require (shared by every model of the run).
    pub verify: Arc<Policy>,
    /// Which model signatures (OMS, over the files) to require.
    pub model_signature: Arc<ModelPolicy>,
    /// Where `model-registry://` URIs are resolved.
    pub model_registry: crate::model_registry::Config,
    /// Install as this repository of a Hugging Face hub cache.
    pub hf_repo: Option<crate::hf_cache::HfRepo>,
    /// The sidecar's S3 endpoint: where this model's verified files are
    /// reported as they verify (`OCIMODEL_S3_LISTEN`; one per model).
    pub publish: Option<crate::s3::Publisher>,
}

impl Default for Settings {
    /// The defaults of every setting (see [`crate::config`]); no policy.
    fn default() -> Settings {
        Settings {
            subtree: Subtree::parse(crate::config::DEFAULT_SUBPATH).expect("a valid default"),
            platform: Platform::host(),
            require_digest: false,
            concurrency: crate::config::DEFAULT_CONCURRENCY,
            owner: None,
            progress_every: Duration::from_secs(crate::config::DEFAULT_PROGRESS_INTERVAL),
            filter: Filter::default(),
            format: format::Options::default(),
            deadline: None,
            max_expanded: u64::MAX,
            max_files: crate::config::DEFAULT_MAX_FILES,
            lock_timeout: Duration::from_secs(crate::config::DEFAULT_LOCK_TIMEOUT),
            cache: None,
            resume_min: Some(crate::config::DEFAULT_RESUME_MIN),
            recheck: Recheck::Size,
            verify: Arc::new(Policy::default()),
            model_signature: Arc::new(ModelPolicy::default()),
            model_registry: crate::model_registry::Config::default(),
            hf_repo: None,
            publish: None,
        }
    }
}

impl Settings {
    /// The S3 endpoint's publisher, unless DEST's layout differs from the
    /// staged one (a hub cache: then the sidecar publishes the install).
    pub(crate) fn publisher(&self) -> Option<&crate::s3::Publisher> {
        self.publish.as_ref().filter(|_| self.hf_repo.is_none())
    }

    /// Everything besides the digest that shapes the installed tree; a
    /// marker only counts as "this install" when it matches.
    pub fn selection(&self) -> String {
        let mut s = format!("subpath={}", self.subtree.display());
        if let Some(f) = self.filter.describe() {
            s.push_str(&format!("; {f}"));
        }
        if !self.format.kit_filter.is_empty() {
            s.push_str(&format!("; kit={}", self.format.kit_filter.join(",")));
        }
        if self.format.unknown_raw {
            s.push_str("; unknown=raw");
        }
        if let Some(m) = self.model_signature.describe() {
            s.push_str(&format!("; {m}"));
        }
        if let Some(r) = &self.hf_repo {
            s.push_str(&format!("; hf={}", r.id()));
        }
        s
    }
}

/// How an existing install is checked before it counts (`OCIMODEL_RECHECK`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recheck {
    /// Marker, digest and settings match; every file there with its size.
    #[default]
    Size,
    /// The same, and every file re-hashed against the marker.
    Digest,
}
