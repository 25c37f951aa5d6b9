//! Every `OCIMODEL_*` setting ocimodel reads, in one place (the
//! table in docs/configuration.md lists the same names). A variable with our prefix
//! that is not one of them is an error, not a silent no-op: a misspelled
//! `OCIMODEL_VERFY=required` must not turn verification off.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};

const PREFIX: &str = "OCIMODEL_";

// Defaults, written once: clap shows them in --help, `Settings::default`
// and the registry client start from them, docs/configuration.md lists them.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8099";
pub const DEFAULT_SUBPATH: &str = "/models";
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const DEFAULT_PROGRESS_INTERVAL: u64 = 10;
pub const DEFAULT_STALL_TIMEOUT: u64 = 60;
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 30;
/// Seconds a docker credential helper may take (a keychain prompt included).
pub const DEFAULT_CREDENTIAL_HELPER_TIMEOUT: u64 = 30;
pub const DEFAULT_RETRIES: u32 = 5;
pub const DEFAULT_MIN_RATE: &str = "1K";
pub const DEFAULT_MAX_FILES: u64 = 100_000;
pub const DEFAULT_LOCK_TIMEOUT: u64 = 1800;
/// Seconds the S3 endpoint holds a request for a file not verified yet
/// before `503 SlowDown`: under boto3's 60 s read timeout.
pub const DEFAULT_S3_WAIT: u64 = 20;
// Sizes are written once, as the text --help shows; the numbers follow.
pub const DEFAULT_RESUME_MIN_TEXT: &str = "4G";
pub const DEFAULT_RESUME_MIN: u64 = size(DEFAULT_RESUME_MIN_TEXT);
/// Ranges of one big blob downloading at once (see `registry/ranges.rs`;
/// bench/RESULTS-far.md measures why).
pub const DEFAULT_RANGE_CONNECTIONS: usize = 8;
pub const DEFAULT_RANGE_SIZE_TEXT: &str = "2M";
pub const DEFAULT_RANGE_SIZE: u64 = size(DEFAULT_RANGE_SIZE_TEXT);
pub const DEFAULT_HOST_CONNECTIONS: usize = 16;
pub const DEFAULT_SPLIT_BELOW_TEXT: &str = "128M";
pub const DEFAULT_SPLIT_BELOW: u64 = size(DEFAULT_SPLIT_BELOW_TEXT);
/// Where `model-registry://` URIs are resolved when the URI names no host
/// (`MODEL_REGISTRY_*`, as the Kubeflow Model Registry's initializer reads).
pub const DEFAULT_MODEL_REGISTRY_BASE_URL: &str = "localhost:8080";
pub const DEFAULT_MODEL_REGISTRY_SCHEME: &str = "http";
pub const DEFAULT_MODEL_REGISTRY_SERVICE: &str = "model-registry-service";
pub const DEFAULT_MODEL_REGISTRY_CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// The registry a name without a host means (Docker Hub's canonical
/// name), and the host its API really lives on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A default size's text (`2M`: digits, then K, M, G or T, powers of 1024)
/// as bytes, at compile time: a typo here fails the build.
const fn size(text: &str) -> u64 {
    let b = text.as_bytes();
    let mut n = 0u64;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        n = n * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    assert!(
        i > 0 && i + 1 >= b.len(),
        "a default size is digits and one unit"
    );
    if i == b.len() {
        return n;
    }
    n * match b[i] {
        b'K' => 1 << 10,
        b'M' => 1 << 20,
        b'G' => 1 << 30,
        b'T' => 1 << 40,
        _ => panic!("a default size's unit is K, M, G or T"),
    }
}

/// Every `OCIMODEL_*` variable, sorted.
pub const SETTINGS: &[&str] = &[
    "OCIMODEL_CACHE_DIR",
    "OCIMODEL_CACHE_MAX",
    "OCIMODEL_CA_BUNDLE",
    "OCIMODEL_CLONE",
    "OCIMODEL_CLOUD_AUTH",
    "OCIMODEL_CONCURRENCY",
    "OCIMODEL_CONNECT_TIMEOUT",
    "OCIMODEL_CREDENTIAL_HELPER_TIMEOUT",
    "OCIMODEL_DOCKER_CONFIG_JSON",
    "OCIMODEL_EXCLUDE",
    "OCIMODEL_HF_REPO",
    "OCIMODEL_HOSTS_DIR",
    "OCIMODEL_HOST_CONNECTIONS",
    "OCIMODEL_INCLUDE",
    "OCIMODEL_INSECURE_REGISTRIES",
    "OCIMODEL_KIT_FILTER",
    "OCIMODEL_LISTEN",
    "OCIMODEL_LOCK_TIMEOUT",
    "OCIMODEL_LOG",
    "OCIMODEL_LOG_FORMAT",
    "OCIMODEL_MAX_EXPANDED",
    "OCIMODEL_MAX_FILES",
    "OCIMODEL_MIN_RATE",
    "OCIMODEL_MODE",
    "OCIMODEL_MODEL_CERT_CHAIN",
    "OCIMODEL_MODEL_IDENTITY",
    "OCIMODEL_MODEL_IDENTITY_REGEXP",
    "OCIMODEL_MODEL_KEY",
    "OCIMODEL_MODEL_OIDC_ISSUER",
    "OCIMODEL_MODEL_OIDC_ISSUER_REGEXP",
    "OCIMODEL_MODEL_SIGNATURE",
    "OCIMODEL_MODEL_SIGNATURE_PATH",
    "OCIMODEL_NODE_IP",
    "OCIMODEL_NOTATION_IDENTITY",
    "OCIMODEL_OWNER",
    "OCIMODEL_PLATFORM",
    "OCIMODEL_PROGRESS_INTERVAL",
    "OCIMODEL_RANGE_CONNECTIONS",
    "OCIMODEL_RANGE_SIZE",
    "OCIMODEL_RECHECK",
    "OCIMODEL_REGISTRIES_CONF",
    "OCIMODEL_REQUIRE_DIGEST",
    "OCIMODEL_RESUME_MIN",
    "OCIMODEL_RETRIES",
    "OCIMODEL_S3_LISTEN",
    "OCIMODEL_S3_WAIT",
    "OCIMODEL_SIDECAR_EXIT_ON_FAILURE",
    "OCIMODEL_SPLIT_BELOW",
    "OCIMODEL_STALL_TIMEOUT",
    "OCIMODEL_SUBPATH",
    "OCIMODEL_TERMINATION_LOG",
    "OCIMODEL_TIMEOUT",
    "OCIMODEL_TRUSTED_ROOT",
    "OCIMODEL_UNKNOWN",
    "OCIMODEL_VERIFY",
];

/// What KServe tells storage initializers through its own variables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KserveOverrides {
    /// `KSERVE_OCI_INSECURE_REGISTRY=true`: every registry over plain HTTP.
    pub insecure_all: bool,
    /// `CA_BUNDLE_VOLUME_MOUNT_POINT/cabundle.crt`, when mounted.
    pub ca_bundle: Option<PathBuf>,
}

impl KserveOverrides {
    pub fn from_env() -> KserveOverrides {
        KserveOverrides {
            insecure_all: std::env::var("KSERVE_OCI_INSECURE_REGISTRY")
                .is_ok_and(|v| v.eq_ignore_ascii_case("true")),
            ca_bundle: std::env::var_os("CA_BUNDLE_VOLUME_MOUNT_POINT")
                .map(|mount| PathBuf::from(mount).join("cabundle.crt"))
                .filter(|bundle| bundle.is_file()),
        }
    }
}

/// Refuses any `OCIMODEL_*` variable that is not a setting, naming the
/// closest one; and values of the settings clap does not parse itself.
pub fn check_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<()> {
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        if !SETTINGS.contains(&name) {
            bail!(
                "unknown setting {name}; did you mean {}? (every setting is listed in the README's Configuration table)",
                closest(name)
            );
        }
        let value = value.to_string_lossy();
        if name == "OCIMODEL_MODE" && !["", "pull", "sidecar"].contains(&value.trim()) {
            bail!("OCIMODEL_MODE must be pull or sidecar, not '{value}'");
        }
        if name == "OCIMODEL_LOG" {
            check_log_filter(&value)?;
        }
    }
    Ok(())
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `OCIMODEL_LOG`: a level, or tracing filter directives that each end in
/// one (`ocimodel=debug,warn`). tracing reads a bare word as a target to
/// log at TRACE, so `verbose` would silently mute everything else.
fn check_log_filter(value: &str) -> Result<()> {
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    let bad = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .find(|d| match d.rsplit_once('=') {
            Some((target, level)) => target.trim().is_empty() || !is_level(level),
            None => !is_level(d),
        });
    let parsed = tracing_subscriber::EnvFilter::try_new(value);
    if bad.is_some() || parsed.is_err() {
        bail!(
            "OCIMODEL_LOG must be a level ({}) or tracing filter directives such as 'ocimodel=debug,warn', not '{value}'",
            LEVELS.join(", ")
        );
    }
    Ok(())
}

/// The known setting nearest to `name` by edit distance.
fn closest(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .min_by_key(|s| strsim::levenshtein(name, s))
        .expect("SETTINGS is not empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn typos_name_the_closest_setting() {
        let e = check_env(env(&[("OCIMODEL_VERFY", "required")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown setting OCIMODEL_VERFY; did you mean OCIMODEL_VERIFY?"),
            "{e}"
        );
        let e = check_env(env(&[("OCIMODEL_CONCURENCY", "4")])).unwrap_err();
        assert!(
            e.to_string().contains("did you mean OCIMODEL_CONCURRENCY?"),
            "{e}"
        );
    }

    #[test]
    fn default_sizes_are_their_text_in_bytes() {
        assert_eq!(DEFAULT_RANGE_SIZE, 2 << 20);
        assert_eq!(DEFAULT_SPLIT_BELOW, 128 << 20);
        assert_eq!(DEFAULT_RESUME_MIN, 4 << 30);
        assert_eq!(size("1K"), 1024);
        assert_eq!(size("7"), 7);
    }

    #[test]
    fn known_and_foreign_names_pass() {
        check_env(env(&[
            ("OCIMODEL_VERIFY", "required"),
            ("OCIMODEL_MODE", "sidecar"),
            ("COSIGN_KEY", "x"),
            ("OCIMODELX", "not ours"),
        ]))
        .unwrap();
        let e = check_env(env(&[("OCIMODEL_MODE", "sidecars")])).unwrap_err();
        assert!(e.to_string().contains("pull or sidecar"), "{e}");
    }

    #[test]
    fn log_filters_are_levels_or_directives() {
        for ok in [
            "",
            "debug",
            "WARN",
            "ocimodel=debug,warn",
            "info,ocimodel::fetch=trace",
            "[pulling]=debug",
        ] {
            check_log_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "verbose",
            "verbose!",
            "quiet",
            "ocimodel",
            "debug,loud",
            "x=loud",
            "=debug",
        ] {
            let e = check_env(env(&[("OCIMODEL_LOG", bad)])).unwrap_err();
            assert!(
                e.to_string().starts_with("OCIMODEL_LOG must be"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn settings_are_sorted_and_unique() {
        let mut sorted = SETTINGS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, SETTINGS);
    }
}
