//! The command line, typed: every flag group, every choice a `ValueEnum`
//! (so `--log-format jsn` is an error naming the choices), and the
//! conversions into the pipeline's [`Settings`] (built once) and registry
//! client options. Env names and defaults come from [`config`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::verify::model::ModelPolicy;
use crate::verify::{self, Policy};

use super::values::{
    parse_range_size, parse_resume_min, parse_size, Compress, LogFormat, OnOff, Output, PushFormat,
    RecheckMode, ResumeMin, Unknown, VerifyMode,
};

/// `0.1.0 (commit 1a2b3c4)`: the commit is embedded by build.rs.
pub(super) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

/// The help's last paragraph states the exit status, one convention for
/// every command: usage errors are failures like any other (as oras, skopeo
/// and regctl; KServe and scripts tell only zero from non-zero), and Ctrl-C
/// is SIGINT's 130.
#[derive(Parser, Debug)]
#[command(
    name = "ocimodel",
    version = VERSION,
    about = "Pull ML models from OCI registries and layouts onto disk, verified by digest",
    after_help = concat!(
        "A bare argument list (as KServe passes it) means `pull`:\n  ocimodel ocimodel://registry/repo@sha256:... /mnt/models\n\n",
        "Exit status: 0 success (and --help, --version); 1 any failure, usage errors included (an unknown command or flag, a bad value, a missing argument, an unknown OCIMODEL_* setting); 130 interrupted (Ctrl-C; run the same command again to resume)."
    )
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,

    /// Where to write the one-line result (Kubernetes reads /dev/termination-log).
    #[arg(long, env = "OCIMODEL_TERMINATION_LOG", global = true)]
    pub(super) termination_log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Pull each URI and install it into its DEST (the KServe storage-initializer contract).
    Pull(PullArgs),
    /// Unpack a model from a local layout or archive (or a registry) into DEST:
    /// the same tree and marker as in the cluster.
    Unpack(PullArgs),
    /// Show what a reference holds: digest, platform, format, files, sizes,
    /// annotations and referrers. Writes nothing.
    Inspect(InspectArgs),
    /// List the manifests that refer to a reference (signatures, SBOMs, lineage).
    Referrers(ReferrersArgs),
    /// Pull like `pull`, then stay alive serving /livez, /readyz, /startupz and
    /// /metrics until SIGTERM (a Kubernetes native sidecar).
    Sidecar(SidecarArgs),
    /// Re-hash an installed DEST against its marker; exit 1 on any difference.
    Check(CheckArgs),
    /// Check a reference's signatures against the policy and print who signed
    /// what; writes nothing. Exit 1 when no trusted signature verifies.
    Verify(VerifyArgs),
    /// Package a model directory and push it (ModelPack, ORAS or modelcar),
    /// or write it as an OCI layout. Prints the pushed digest.
    Push(PushArgs),
    /// Print the version and the git commit it was built from.
    Version,
    /// Print a shell completion script: ocimodel completion bash|zsh|fish > FILE.
    Completion(CompletionArgs),
    /// Print the man page (roff): ocimodel man > ocimodel.1.
    Man,
}

impl Command {
    /// Commands that only print about ocimodel itself: no setting applies.
    pub(super) fn is_informational(&self) -> bool {
        matches!(
            self,
            Command::Version | Command::Completion(_) | Command::Man
        )
    }
}

#[derive(Args, Debug)]
pub(super) struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub(super) shell: clap_complete::Shell,
}

/// The command line as clap sees it: the derived definition, with the
/// flags that do nothing in a command hidden from its help (the download
/// tuning of read-only commands and push) and push's words for --platform.
/// Help, completion and the man page all come from it.
pub(super) fn command() -> clap::Command {
    use clap::CommandFactory;
    const DOWNLOAD_TUNING: [&str; 4] = [
        "range_connections",
        "range_size",
        "split_below",
        "host_connections",
    ];
    let hide = |mut c: clap::Command, ids: &[&str]| {
        for id in ids {
            c = c.mut_arg(*id, |a| a.hide(true));
        }
        c
    };
    Cli::command()
        .mut_subcommand("inspect", |c| {
            hide(hide(c, &DOWNLOAD_TUNING), &["hf_repo"])
        })
        .mut_subcommand("referrers", |c| hide(c, &DOWNLOAD_TUNING))
        .mut_subcommand("push", |c| {
            hide(c, &DOWNLOAD_TUNING).mut_arg("platform", |a| {
                a.help("Platform of a modelcar image, os/arch[/variant] (default linux/<this machine>)")
            })
        })
}

#[derive(Args, Debug)]
pub(super) struct PushArgs {
    /// The model directory.
    pub(super) dir: PathBuf,

    /// Where: REPO[:TAG] in a registry, or oci-layout://DIR[:TAG]. With --oci-layout, just the tag.
    pub(super) reference: Option<String>,

    /// Package as: modelpack (CNCF ModelPack), oras (one layer per file), or modelcar (an image with the files under /models).
    #[arg(long, value_enum, default_value_t = PushFormat::Modelpack)]
    pub(super) format: PushFormat,

    /// A manifest annotation, KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub(super) annotations: Vec<String>,

    /// The artifact type (oras: default application/vnd.unknown.artifact.v1).
    #[arg(long = "artifact-type")]
    pub(super) artifact_type: Option<String>,

    /// Attach the artifact to this manifest as a referrer (lineage, signatures, SBOMs).
    #[arg(long)]
    pub(super) subject: Option<String>,

    /// Layer compression for modelcar images: none, gzip or zstd.
    #[arg(long, value_enum, default_value_t = Compress::None)]
    pub(super) compress: Compress,

    /// Publish what symlinks point to even when that is outside DIR (by
    /// default only links inside DIR, or inside a Hugging Face cache repo, are followed).
    #[arg(long = "follow-symlinks")]
    pub(super) follow_symlinks: bool,

    /// Write an OCI layout into this directory instead of pushing.
    #[arg(long = "oci-layout")]
    pub(super) oci_layout: Option<PathBuf>,

    #[command(flatten)]
    pub(super) access: AccessArgs,
}

#[derive(Args, Debug)]
pub(super) struct SidecarArgs {
    #[command(flatten)]
    pub(super) pull: PullArgs,

    /// Address of the probe and metrics server.
    #[arg(help_heading = "Sidecar", long, env = "OCIMODEL_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub(super) listen: String,

    /// Exit 1 on the first failed pull instead of retrying (for those who prefer a restart).
    #[arg(help_heading = "Sidecar", long, env = "OCIMODEL_SIDECAR_EXIT_ON_FAILURE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub(super) exit_on_failure: bool,

    /// Serve the models read-only over S3 on this loopback address (e.g.
    /// 127.0.0.1:9000) as they install: bucket = DEST's last directory, and
    /// each file once its bytes verified (docs/streaming.md).
    #[arg(
        help_heading = "Sidecar",
        long = "s3-listen",
        env = "OCIMODEL_S3_LISTEN"
    )]
    pub(super) s3_listen: Option<String>,

    /// Seconds the S3 endpoint holds a request for an unverified file before
    /// 503 SlowDown (clients retry it); keep it under their read timeout.
    #[arg(help_heading = "Sidecar", long = "s3-wait", env = "OCIMODEL_S3_WAIT", default_value_t = config::DEFAULT_S3_WAIT, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(super) s3_wait: u64,
}

#[derive(Args, Debug)]
pub(super) struct CheckArgs {
    /// Installed model directories.
    #[arg(required = true)]
    pub(super) dests: Vec<PathBuf>,

    /// With a model signature policy, each tree is verified against its
    /// signature again too.
    #[command(flatten)]
    pub(super) model_policy: ModelPolicyArgs,

    /// Keyless model signatures: a sigstore trusted_root.json (path or JSON text).
    #[arg(
        long = "trusted-root",
        env = "OCIMODEL_TRUSTED_ROOT",
        hide_env_values = true
    )]
    pub(super) trusted_root: Option<String>,
}

/// How to reach sources.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Registry access")]
pub(super) struct AccessArgs {
    /// Platform to pick from an index, os/arch[/variant] (default linux/<this machine>).
    #[arg(long, env = "OCIMODEL_PLATFORM")]
    pub(super) platform: Option<String>,

    /// Registries (host:port) reached over plain HTTP; comma-separated.
    #[arg(
        long = "insecure-registry",
        env = "OCIMODEL_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub(super) insecure_registries: Vec<String>,

    /// Every registry this command reaches over plain HTTP (oras's spelling).
    #[arg(long = "plain-http")]
    pub(super) plain_http: bool,

    /// --tls-verify=false (skopeo's spelling) is --plain-http.
    #[arg(
        long = "tls-verify",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value = "true",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub(super) tls_verify: bool,

    /// Extra PEM CA bundle to trust (in addition to the built-in roots).
    #[arg(long = "ca-bundle", env = "OCIMODEL_CA_BUNDLE")]
    pub(super) ca_bundle: Option<PathBuf>,

    /// A docker config / containers auth.json with registry credentials.
    #[arg(long = "auth-file")]
    pub(super) auth_file: Option<PathBuf>,

    /// Seconds a docker credential helper (credsStore, credHelpers) may take to answer.
    #[arg(
        long = "credential-helper-timeout",
        env = "OCIMODEL_CREDENTIAL_HELPER_TIMEOUT",
        default_value_t = config::DEFAULT_CREDENTIAL_HELPER_TIMEOUT
    )]
    pub(super) credential_helper_timeout: u64,

    /// Log format: text or json.
    #[arg(long, env = "OCIMODEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Output")]
    pub(super) log_format: LogFormat,

    /// Warnings and errors only: no progress, no info lines (OCIMODEL_LOG=warn).
    #[arg(short, long, conflicts_with = "verbose", help_heading = "Output")]
    pub(super) quiet: bool,

    /// More detail: -v debug lines of ocimodel, -vv everything at trace (over OCIMODEL_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Output")]
    pub(super) verbose: u8,

    /// Seconds a registry may send no bytes before the transfer is abandoned.
    #[arg(long, env = "OCIMODEL_STALL_TIMEOUT", default_value_t = config::DEFAULT_STALL_TIMEOUT, help_heading = "Transfers")]
    pub(super) stall_timeout: u64,

    /// Bytes per second a transfer must average over each stall window (e.g. 1K); a trickling registry fails.
    #[arg(long = "min-rate", env = "OCIMODEL_MIN_RATE", default_value = config::DEFAULT_MIN_RATE, value_parser = parse_size, help_heading = "Transfers")]
    pub(super) min_rate: u64,

    /// Seconds a connection to a registry may take to open.
    #[arg(
        long = "connect-timeout",
        env = "OCIMODEL_CONNECT_TIMEOUT",
        default_value_t = config::DEFAULT_CONNECT_TIMEOUT,
        help_heading = "Transfers"
    )]
    pub(super) connect_timeout: u64,

    /// containerd's registry hosts directory (hosts.toml per registry), for mirrors;
    /// default /etc/containerd/certs.d (or k3s's) when it exists; "off" for none.
    #[arg(long = "hosts-dir", env = "OCIMODEL_HOSTS_DIR")]
    pub(super) hosts_dir: Option<String>,

    /// A containers registries.conf (v2) for mirrors; default /etc/containers/registries.conf
    /// and registries.conf.d/ when present; "off" for none.
    #[arg(long = "registries-conf", env = "OCIMODEL_REGISTRIES_CONF")]
    pub(super) registries_conf: Option<String>,

    /// The node's IP (downward API status.hostIP): a mirror on the node's loopback
    /// (Dragonfly's 127.0.0.1:4001) is reached there. Leave unset with hostNetwork.
    #[arg(long = "node-ip", env = "OCIMODEL_NODE_IP")]
    pub(super) node_ip: Option<String>,

    /// Credentials for ECR, Artifact Registry/GCR and ACR from the workload's cloud identity
    /// (IRSA, EKS Pod Identity, GKE and Azure Workload Identity): on, or off.
    #[arg(long = "cloud-auth", env = "OCIMODEL_CLOUD_AUTH", value_enum, default_value_t = OnOff::On)]
    pub(super) cloud_auth: OnOff,

    /// Retries of transient failures (connection errors, 429/502/503/504, broken transfers).
    #[arg(long, env = "OCIMODEL_RETRIES", default_value_t = config::DEFAULT_RETRIES, help_heading = "Transfers")]
    pub(super) retries: u32,

    /// Connections one big blob is downloaded over, in ranges (1: one stream).
    #[arg(long = "range-connections", env = "OCIMODEL_RANGE_CONNECTIONS", default_value_t = config::DEFAULT_RANGE_CONNECTIONS, help_heading = "Transfers")]
    pub(super) range_connections: usize,

    /// Bytes per ranged GET (e.g. 2M, at most 32M); blobs under twice this are one stream.
    #[arg(long = "range-size", env = "OCIMODEL_RANGE_SIZE", default_value = config::DEFAULT_RANGE_SIZE_TEXT, value_parser = parse_range_size, help_heading = "Transfers")]
    pub(super) range_size: u64,

    /// Split a big blob only when its first range arrived slower than this per second
    /// (e.g. 128M; 1T: always); a faster connection keeps up on its own.
    #[arg(long = "split-below", env = "OCIMODEL_SPLIT_BELOW", default_value = config::DEFAULT_SPLIT_BELOW_TEXT, value_parser = parse_size, help_heading = "Transfers")]
    pub(super) split_below: u64,

    /// Blob requests open at once to one host, across all blobs.
    #[arg(long = "host-connections", env = "OCIMODEL_HOST_CONNECTIONS", default_value_t = config::DEFAULT_HOST_CONNECTIONS, help_heading = "Transfers")]
    pub(super) host_connections: usize,
}

/// Which files of a model to install.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "File selection")]
pub(super) struct SelectArgs {
    /// Only take images' files under this directory ("/" for all).
    #[arg(long, env = "OCIMODEL_SUBPATH", default_value = config::DEFAULT_SUBPATH)]
    pub(super) subpath: String,

    /// Only install files matching these globs (comma-separated, e.g. "*.safetensors,config.json").
    #[arg(long, env = "OCIMODEL_INCLUDE", value_delimiter = ',')]
    pub(super) include: Vec<String>,

    /// Never install files matching these globs (comma-separated).
    #[arg(long, env = "OCIMODEL_EXCLUDE", value_delimiter = ',')]
    pub(super) exclude: Vec<String>,

    /// KServe's selective download: only files whose relative path matches one of these
    /// fnmatch patterns (a JSON array or a comma list; `*` crosses `/`).
    #[arg(long = "storage-allow-patterns", env = "STORAGE_ALLOW_PATTERNS")]
    pub(super) storage_allow: Option<String>,

    /// KServe's selective download: never files whose relative path matches one of these.
    #[arg(long = "storage-ignore-patterns", env = "STORAGE_IGNORE_PATTERNS")]
    pub(super) storage_ignore: Option<String>,

    /// KitOps layers to install: model, datasets, code, docs, prompts (comma-separated; default all).
    #[arg(long, env = "OCIMODEL_KIT_FILTER", value_delimiter = ',')]
    pub(super) kit_filter: Vec<String>,

    /// Artifacts of unknown type: "refuse", or "raw" to write each layer as blobs/<alg>/<hex>.
    #[arg(long, env = "OCIMODEL_UNKNOWN", value_enum, default_value_t = Unknown::Refuse)]
    pub(super) unknown: Unknown,

    /// Install as this Hugging Face repository (ORG/NAME) of a hub cache: DEST is then HF_HUB_CACHE.
    #[arg(long = "hf-repo", env = "OCIMODEL_HF_REPO")]
    pub(super) hf_repo: Option<String>,
}

/// Signature policy (see docs/signatures.md). Env names are cosign's and
/// kitops-init's, so existing ClusterStorageContainers carry over.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Signatures")]
pub(super) struct PolicyArgs {
    /// off, if-present or required (default: required when a key, identity or cert is set).
    #[arg(long, env = "OCIMODEL_VERIFY", value_enum)]
    pub(super) verify: Option<VerifyMode>,

    /// cosign public key(s): PEM text, a file, a directory, or comma-separated paths.
    #[arg(long = "key", env = "COSIGN_KEY", hide_env_values = true)]
    pub(super) key: Option<String>,

    /// Keyless: the certificate identity (email or URI) to accept.
    #[arg(long = "certificate-identity", env = "COSIGN_CERT_IDENTITY")]
    pub(super) identity: Option<String>,

    /// Keyless: a regular expression the certificate identity must match.
    #[arg(
        long = "certificate-identity-regexp",
        env = "COSIGN_CERT_IDENTITY_REGEXP"
    )]
    pub(super) identity_regexp: Option<String>,

    /// Keyless: the OIDC issuer the certificate must name.
    #[arg(long = "certificate-oidc-issuer", env = "COSIGN_CERT_OIDC_ISSUER")]
    pub(super) issuer: Option<String>,

    /// Keyless: a regular expression the OIDC issuer must match.
    #[arg(
        long = "certificate-oidc-issuer-regexp",
        env = "COSIGN_CERT_OIDC_ISSUER_REGEXP"
    )]
    pub(super) issuer_regexp: Option<String>,

    /// Keyless: a sigstore trusted_root.json (Fulcio CAs, Rekor keys): path or JSON text.
    #[arg(
        long = "trusted-root",
        env = "OCIMODEL_TRUSTED_ROOT",
        hide_env_values = true
    )]
    pub(super) trusted_root: Option<String>,

    /// Notation: trusted root or signing certificates (PEM text, file or directory).
    #[arg(long = "notation-cert", env = "NOTATION_CERT", hide_env_values = true)]
    pub(super) notation_cert: Option<String>,

    /// Notation: accepted signer subjects, "x509.subject: C=..,ST=..,O=.." separated by ';'.
    #[arg(long = "notation-identity", env = "OCIMODEL_NOTATION_IDENTITY")]
    pub(super) notation_identity: Option<String>,
}

impl PolicyArgs {
    pub(super) fn policy(&self) -> Result<Policy> {
        Policy::from_inputs(&verify::Inputs {
            verify: self.verify.map(Into::into),
            key: self.key.clone(),
            identity: self.identity.clone(),
            identity_regexp: self.identity_regexp.clone(),
            issuer: self.issuer.clone(),
            issuer_regexp: self.issuer_regexp.clone(),
            trusted_root: self.trusted_root.clone(),
            notation_cert: self.notation_cert.clone(),
            notation_identity: self.notation_identity.clone(),
        })
    }
}

/// Where `model-registry://` URIs are resolved (names as the Kubeflow Model
/// Registry's own storage initializer reads them).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Kubeflow Model Registry")]
pub(super) struct ModelRegistryArgs {
    /// The model registry's host:port.
    #[arg(
        long = "model-registry-base-url",
        env = "MODEL_REGISTRY_BASE_URL",
        default_value = config::DEFAULT_MODEL_REGISTRY_BASE_URL
    )]
    pub(super) base_url: String,

    /// http or https.
    #[arg(
        long = "model-registry-scheme",
        env = "MODEL_REGISTRY_SCHEME",
        default_value = config::DEFAULT_MODEL_REGISTRY_SCHEME
    )]
    pub(super) scheme: String,

    /// The registry's Service name, for `?namespace=NS` URIs.
    #[arg(
        long = "model-registry-service-name",
        env = "MODEL_REGISTRY_SERVICE_NAME",
        default_value = config::DEFAULT_MODEL_REGISTRY_SERVICE
    )]
    pub(super) service: String,

    /// The cluster's DNS domain, for `?namespace=NS` URIs.
    #[arg(
        long = "model-registry-cluster-domain",
        env = "MODEL_REGISTRY_CLUSTER_DOMAIN",
        default_value = config::DEFAULT_MODEL_REGISTRY_CLUSTER_DOMAIN
    )]
    pub(super) cluster_domain: String,

    /// A file holding the registry's bearer token (default: the pod's service-account token, if any).
    #[arg(long = "model-registry-token-path", env = "KF_PIPELINES_SA_TOKEN_PATH")]
    pub(super) token_path: Option<std::path::PathBuf>,
}

impl ModelRegistryArgs {
    pub(super) fn config(&self) -> crate::model_registry::Config {
        crate::model_registry::Config {
            base_url: self.base_url.trim().to_string(),
            scheme: self.scheme.trim().to_string(),
            service: self.service.trim().to_string(),
            cluster_domain: self.cluster_domain.trim().to_string(),
            token_path: self.token_path.clone(),
        }
    }
}

/// Model signature policy (see docs/signatures.md): OpenSSF model
/// signing (`model_signing sign`) over the installed files.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model signatures (OpenSSF model signing)")]
pub(super) struct ModelPolicyArgs {
    /// off, if-present or required (default: required when a model key, chain or identity is set).
    #[arg(long = "model-signature", env = "OCIMODEL_MODEL_SIGNATURE", value_enum)]
    pub(super) model_mode: Option<VerifyMode>,

    /// Public key(s) model signatures may be made with: PEM text, a file, a directory, or comma-separated paths.
    #[arg(long = "model-key", env = "OCIMODEL_MODEL_KEY", hide_env_values = true)]
    pub(super) model_key: Option<String>,

    /// CA certificates a certificate-signed model's chain must lead to (PEM text, file or directory).
    #[arg(
        long = "model-cert-chain",
        env = "OCIMODEL_MODEL_CERT_CHAIN",
        hide_env_values = true
    )]
    pub(super) model_certificates: Option<String>,

    /// Keyless model signatures: the certificate identity to accept (with OCIMODEL_TRUSTED_ROOT).
    #[arg(long = "model-identity", env = "OCIMODEL_MODEL_IDENTITY")]
    pub(super) model_identity: Option<String>,

    /// Keyless model signatures: a regular expression the identity must match.
    #[arg(long = "model-identity-regexp", env = "OCIMODEL_MODEL_IDENTITY_REGEXP")]
    pub(super) model_identity_regexp: Option<String>,

    /// Keyless model signatures: the OIDC issuer the certificate must name.
    #[arg(long = "model-oidc-issuer", env = "OCIMODEL_MODEL_OIDC_ISSUER")]
    pub(super) model_issuer: Option<String>,

    /// Keyless model signatures: a regular expression the OIDC issuer must match.
    #[arg(
        long = "model-oidc-issuer-regexp",
        env = "OCIMODEL_MODEL_OIDC_ISSUER_REGEXP"
    )]
    pub(super) model_issuer_regexp: Option<String>,

    /// Where the signature is inside the model.
    #[arg(long = "model-signature-path", env = "OCIMODEL_MODEL_SIGNATURE_PATH", default_value = verify::model::DEFAULT_SIGNATURE)]
    pub(super) model_path: String,
}

impl ModelPolicyArgs {
    /// `trusted_root` is the image policy's OCIMODEL_TRUSTED_ROOT: one
    /// sigstore root serves both.
    pub(super) fn policy(&self, trusted_root: Option<String>) -> Result<ModelPolicy> {
        ModelPolicy::from_inputs(&verify::model::ModelInputs {
            mode: self.model_mode.map(Into::into),
            key: self.model_key.clone(),
            certificates: self.model_certificates.clone(),
            identity: self.model_identity.clone(),
            identity_regexp: self.model_identity_regexp.clone(),
            issuer: self.model_issuer.clone(),
            issuer_regexp: self.model_issuer_regexp.clone(),
            trusted_root,
            path: Some(self.model_path.clone()),
        })
    }
}

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    /// The model reference (any form `pull` takes), or an installed DEST.
    pub(super) uri: String,

    #[command(flatten)]
    pub(super) access: AccessArgs,

    #[command(flatten)]
    pub(super) policy: PolicyArgs,

    /// For an installed DEST: its model signature, checked again.
    #[command(flatten)]
    pub(super) model_policy: ModelPolicyArgs,

    /// Output: text or json.
    #[arg(long, value_enum, default_value_t = Output::Text, help_heading = "Output")]
    pub(super) format: Output,
}

#[derive(Args, Debug)]
pub(super) struct PullArgs {
    /// URI DEST pairs: ocimodel://REF, oci://REF, REF, oci-layout://DIR[:TAG|@DIGEST],
    /// oci-archive://FILE[:TAG|@DIGEST] or docker-archive://FILE[:REPO:TAG].
    #[arg(value_name = "URI DEST")]
    pub(super) pairs: Vec<String>,

    #[command(flatten)]
    pub(super) access: AccessArgs,

    #[command(flatten)]
    pub(super) select: SelectArgs,

    #[command(flatten)]
    pub(super) policy: PolicyArgs,

    #[command(flatten)]
    pub(super) model_policy: ModelPolicyArgs,

    #[command(flatten)]
    pub(super) model_registry: ModelRegistryArgs,

    /// Refuse references that are not pinned by digest.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_REQUIRE_DIGEST", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub(super) require_digest: bool,

    /// How many blobs of one model to download at once.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_CONCURRENCY", default_value_t = config::DEFAULT_CONCURRENCY)]
    pub(super) concurrency: usize,

    /// Seconds between progress lines on long pulls.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_PROGRESS_INTERVAL", default_value_t = config::DEFAULT_PROGRESS_INTERVAL)]
    pub(super) progress_interval: u64,

    /// Most bytes tar layers may expand to, e.g. 500G (default: unlimited, but never over 1000:1 past 1 GiB).
    #[arg(help_heading = "Install", long, env = "OCIMODEL_MAX_EXPANDED", value_parser = parse_size)]
    pub(super) max_expanded: Option<u64>,

    /// Most files, links and directories one model may have.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_MAX_FILES", default_value_t = config::DEFAULT_MAX_FILES)]
    pub(super) max_files: u64,

    /// The node cache: a directory shared by every ocimodel on the node
    /// (hostPath or a local PV), so each blob is downloaded once per node.
    /// On a terminal the default is the per-user cache
    /// ($XDG_CACHE_HOME/ocimodel, else ~/.cache/ocimodel); "off" for none.
    #[arg(
        help_heading = "Install",
        long = "cache-dir",
        env = "OCIMODEL_CACHE_DIR"
    )]
    pub(super) cache_dir: Option<PathBuf>,

    /// Most bytes of blobs the node cache keeps (e.g. 500G); least recently used go first.
    #[arg(help_heading = "Install", long = "cache-max", env = "OCIMODEL_CACHE_MAX", value_parser = parse_size)]
    pub(super) cache_max: Option<u64>,

    /// Whole files from the node cache are cloned into DEST (sharing its
    /// disk blocks) where the filesystem allows, then verified; off: copied.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_CLONE", value_enum, default_value_t = OnOff::On)]
    pub(super) clone: OnOff,

    /// Without a node cache: blobs at least this big (default 4G; 0 for all) are
    /// kept as they download under DEST/.ocimodel, so a killed run resumes;
    /// "off" for none.
    #[arg(help_heading = "Install", long = "resume-min", env = "OCIMODEL_RESUME_MIN", default_value = config::DEFAULT_RESUME_MIN_TEXT, value_parser = parse_resume_min)]
    pub(super) resume_min: ResumeMin,

    /// How a DEST that already holds the model is checked: size (every file
    /// there with its size) or digest (every file re-hashed; what differs is
    /// installed again).
    #[arg(help_heading = "Install", long, env = "OCIMODEL_RECHECK", value_enum, default_value_t = RecheckMode::Size)]
    pub(super) recheck: RecheckMode,

    /// Seconds to wait for another ocimodel holding the same DEST's lock.
    #[arg(help_heading = "Install", long, env = "OCIMODEL_LOCK_TIMEOUT", default_value_t = config::DEFAULT_LOCK_TIMEOUT)]
    pub(super) lock_timeout: u64,

    /// Give up on a model after this many seconds in all (default: no limit).
    #[arg(help_heading = "Install", long, env = "OCIMODEL_TIMEOUT")]
    pub(super) timeout: Option<u64>,

    /// uid:gid to own installed files (needs root).
    #[arg(help_heading = "Install", long, env = "OCIMODEL_OWNER")]
    pub(super) owner: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct InspectArgs {
    /// The model reference (any form `pull` takes).
    pub(super) uri: String,

    #[command(flatten)]
    pub(super) access: AccessArgs,

    #[command(flatten)]
    pub(super) select: SelectArgs,

    /// Output: text (a table for people) or json.
    #[arg(long, value_enum, default_value_t = Output::Text, help_heading = "Output")]
    pub(super) format: Output,
}

#[derive(Args, Debug)]
pub(super) struct ReferrersArgs {
    /// The model reference (any form `pull` takes).
    pub(super) uri: String,

    /// Only referrers of this artifact type.
    #[arg(long = "artifact-type")]
    pub(super) artifact_type: Option<String>,

    #[command(flatten)]
    pub(super) access: AccessArgs,

    /// Output: text (a table for people) or json.
    #[arg(long, value_enum, default_value_t = Output::Text, help_heading = "Output")]
    pub(super) format: Output,
}
