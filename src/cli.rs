//! Command line and environment.
//!
//! KServe appends `URI DEST [URI DEST ...]` to the image's entrypoint and
//! cannot pass flags, so a bare argument list means `pull`, and every flag
//! also reads an `OCIMODEL_*` variable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::auth::CredentialSources;
use crate::format;
use crate::inspect;
use crate::manifest::Platform;
use crate::pull::{pull, ClientFactory, Job, Settings};
use crate::push;
use crate::reference::Target;
use crate::registry::{ClientOptions, RegistryClient};
use crate::select::Filter;
use crate::serve;
use crate::source::Source;
use crate::unpack::Subtree;
use crate::verify::{self, Policy};

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_LIMIT: usize = 4000;
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
const USAGE: &str = "usage: ocimodel [pull] URI DEST [URI DEST ...]";

#[derive(Parser, Debug)]
#[command(
    name = "ocimodel",
    version,
    about = "Pull ML models from OCI registries and layouts onto disk, verified by digest",
    after_help = "A bare argument list (as KServe passes it) means `pull`:\n  ocimodel ocimodel://registry/repo@sha256:... /mnt/models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

const SUBCOMMANDS: &[&str] = &[
    "pull",
    "unpack",
    "inspect",
    "referrers",
    "sidecar",
    "check",
    "verify",
    "push",
    "help",
];

#[derive(Args, Debug)]
struct PushArgs {
    /// The model directory.
    dir: PathBuf,

    /// Where: REPO[:TAG] in a registry, or oci-layout://DIR[:TAG]. With --oci-layout, just the tag.
    reference: Option<String>,

    /// Package as: modelpack (CNCF ModelPack), oras (one layer per file), or modelcar (an image with the files under /models).
    #[arg(long, default_value = "modelpack", value_parser = ["modelpack", "oras", "modelcar"])]
    format: String,

    /// A manifest annotation, KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,

    /// The artifact type (oras: default application/vnd.unknown.artifact.v1).
    #[arg(long = "artifact-type")]
    artifact_type: Option<String>,

    /// Attach the artifact to this manifest as a referrer (lineage, signatures, SBOMs).
    #[arg(long)]
    subject: Option<String>,

    /// Layer compression for modelcar images: none, gzip or zstd.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "zstd"])]
    compress: String,

    /// Publish what symlinks point to even when that is outside DIR (by
    /// default only links inside DIR, or inside a Hugging Face cache repo, are followed).
    #[arg(long = "follow-symlinks")]
    follow_symlinks: bool,

    /// Write an OCI layout into this directory instead of pushing.
    #[arg(long = "oci-layout")]
    oci_layout: Option<PathBuf>,

    #[command(flatten)]
    access: AccessArgs,
}

#[derive(Args, Debug)]
struct SidecarArgs {
    #[command(flatten)]
    pull: PullArgs,

    /// Address of the probe and metrics server.
    #[arg(long, env = "OCIMODEL_LISTEN", default_value = "0.0.0.0:8099")]
    listen: String,

    /// Exit 1 on the first failed pull instead of retrying (for those who prefer a restart).
    #[arg(long, env = "OCIMODEL_SIDECAR_EXIT_ON_FAILURE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    exit_on_failure: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Installed model directories.
    #[arg(required = true)]
    dests: Vec<PathBuf>,
}

/// How to reach sources.
#[derive(Args, Debug, Clone)]
struct AccessArgs {
    /// Platform to pick from an index, os/arch[/variant] (default linux/<this machine>).
    #[arg(long, env = "OCIMODEL_PLATFORM")]
    platform: Option<String>,

    /// Registries (host:port) reached over plain HTTP; comma-separated.
    #[arg(
        long = "insecure-registry",
        env = "OCIMODEL_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,

    /// Extra PEM CA bundle to trust (in addition to the built-in roots).
    #[arg(long = "ca-bundle", env = "OCIMODEL_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,

    /// A docker config / containers auth.json with registry credentials.
    #[arg(long = "auth-file")]
    auth_file: Option<PathBuf>,

    /// Log format: text or json.
    #[arg(long, env = "OCIMODEL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Seconds a registry may send no bytes before the transfer is abandoned.
    #[arg(long, env = "OCIMODEL_STALL_TIMEOUT", default_value_t = 60)]
    stall_timeout: u64,

    /// Bytes per second a transfer must average over each stall window (e.g. 1K); a trickling registry fails.
    #[arg(long = "min-rate", env = "OCIMODEL_MIN_RATE", default_value = "1K", value_parser = parse_size)]
    min_rate: u64,

    /// Seconds a connection to a registry may take to open.
    #[arg(
        long = "connect-timeout",
        env = "OCIMODEL_CONNECT_TIMEOUT",
        default_value_t = 30
    )]
    connect_timeout: u64,

    /// Retries of transient failures (connection errors, 429/502/503/504, broken transfers).
    #[arg(long, env = "OCIMODEL_RETRIES", default_value_t = 5)]
    retries: u32,
}

/// Which files of a model to install.
#[derive(Args, Debug, Clone)]
struct SelectArgs {
    /// Only take images' files under this directory ("/" for all).
    #[arg(long, env = "OCIMODEL_SUBPATH", default_value = "/models")]
    subpath: String,

    /// Only install files matching these globs (comma-separated, e.g. "*.safetensors,config.json").
    #[arg(long, env = "OCIMODEL_INCLUDE", value_delimiter = ',')]
    include: Vec<String>,

    /// Never install files matching these globs (comma-separated).
    #[arg(long, env = "OCIMODEL_EXCLUDE", value_delimiter = ',')]
    exclude: Vec<String>,

    /// KitOps layers to install: model, datasets, code, docs, prompts (comma-separated; default all).
    #[arg(long, env = "OCIMODEL_KIT_FILTER", value_delimiter = ',')]
    kit_filter: Vec<String>,

    /// Artifacts of unknown type: "refuse", or "raw" to write each layer as blobs/<alg>/<hex>.
    #[arg(long, env = "OCIMODEL_UNKNOWN", default_value = "refuse", value_parser = ["refuse", "raw"])]
    unknown: String,
}

/// Signature policy (see README "Signatures"). Env names are cosign's and
/// kitops-init's, so existing ClusterStorageContainers carry over.
#[derive(Args, Debug, Clone)]
struct PolicyArgs {
    /// off, if-present or required (default: required when a key, identity or cert is set).
    #[arg(long, env = "OCIMODEL_VERIFY")]
    verify: Option<String>,

    /// cosign public key(s): PEM text, a file, a directory, or comma-separated paths.
    #[arg(long = "key", env = "COSIGN_KEY", hide_env_values = true)]
    key: Option<String>,

    /// Keyless: the certificate identity (email or URI) to accept.
    #[arg(long = "certificate-identity", env = "COSIGN_CERT_IDENTITY")]
    identity: Option<String>,

    /// Keyless: a regular expression the certificate identity must match.
    #[arg(
        long = "certificate-identity-regexp",
        env = "COSIGN_CERT_IDENTITY_REGEXP"
    )]
    identity_regexp: Option<String>,

    /// Keyless: the OIDC issuer the certificate must name.
    #[arg(long = "certificate-oidc-issuer", env = "COSIGN_CERT_OIDC_ISSUER")]
    issuer: Option<String>,

    /// Keyless: a regular expression the OIDC issuer must match.
    #[arg(
        long = "certificate-oidc-issuer-regexp",
        env = "COSIGN_CERT_OIDC_ISSUER_REGEXP"
    )]
    issuer_regexp: Option<String>,

    /// Keyless: a sigstore trusted_root.json (Fulcio CAs, Rekor keys): path or JSON text.
    #[arg(
        long = "trusted-root",
        env = "OCIMODEL_TRUSTED_ROOT",
        hide_env_values = true
    )]
    trusted_root: Option<String>,

    /// Notation: trusted root or signing certificates (PEM text, file or directory).
    #[arg(long = "notation-cert", env = "NOTATION_CERT", hide_env_values = true)]
    notation_cert: Option<String>,

    /// Notation: accepted signer subjects, "x509.subject: C=..,ST=..,O=.." separated by ';'.
    #[arg(long = "notation-identity", env = "OCIMODEL_NOTATION_IDENTITY")]
    notation_identity: Option<String>,
}

impl PolicyArgs {
    fn policy(&self) -> Result<Policy> {
        Policy::from_inputs(&verify::Inputs {
            verify: self.verify.clone(),
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

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The model reference (any form `pull` takes).
    uri: String,

    #[command(flatten)]
    access: AccessArgs,

    #[command(flatten)]
    policy: PolicyArgs,

    /// Output: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

#[derive(Args, Debug)]
struct PullArgs {
    /// URI DEST pairs: ocimodel://REF, oci://REF, REF, oci-layout://DIR[:TAG|@DIGEST],
    /// oci-archive://FILE[:TAG|@DIGEST] or docker-archive://FILE[:REPO:TAG].
    #[arg(value_name = "URI DEST")]
    pairs: Vec<String>,

    #[command(flatten)]
    access: AccessArgs,

    #[command(flatten)]
    select: SelectArgs,

    #[command(flatten)]
    policy: PolicyArgs,

    /// Refuse references that are not pinned by digest.
    #[arg(long, env = "OCIMODEL_REQUIRE_DIGEST", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    require_digest: bool,

    /// How many blobs of one model to download at once.
    #[arg(long, env = "OCIMODEL_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,

    /// Seconds between progress lines on long pulls.
    #[arg(long, env = "OCIMODEL_PROGRESS_INTERVAL", default_value_t = 10)]
    progress_interval: u64,

    /// Most bytes tar layers may expand to, e.g. 500G (default: unlimited, but never over 1000:1 past 1 GiB).
    #[arg(long, env = "OCIMODEL_MAX_EXPANDED", value_parser = parse_size)]
    max_expanded: Option<u64>,

    /// Most files, links and directories one model may have.
    #[arg(long, env = "OCIMODEL_MAX_FILES", default_value_t = 100_000)]
    max_files: u64,

    /// Seconds to wait for another ocimodel holding the same DEST's lock.
    #[arg(long, env = "OCIMODEL_LOCK_TIMEOUT", default_value_t = 1800)]
    lock_timeout: u64,

    /// Give up on a model after this many seconds in all (default: no limit).
    #[arg(long, env = "OCIMODEL_TIMEOUT")]
    timeout: Option<u64>,

    /// uid:gid to own installed files (needs root).
    #[arg(long, env = "OCIMODEL_OWNER")]
    owner: Option<String>,

    /// Where to write the one-line result (Kubernetes reads /dev/termination-log).
    #[arg(long, env = "OCIMODEL_TERMINATION_LOG")]
    termination_log: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The model reference (any form `pull` takes).
    uri: String,

    #[command(flatten)]
    access: AccessArgs,

    #[command(flatten)]
    select: SelectArgs,

    /// Output: text (a table for people) or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

#[derive(Args, Debug)]
struct ReferrersArgs {
    /// The model reference (any form `pull` takes).
    uri: String,

    #[command(flatten)]
    access: AccessArgs,

    /// Only referrers of this artifact type.
    #[arg(long = "artifact-type")]
    artifact_type: Option<String>,

    /// Output: text (a table for people) or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

/// Runs the command line; returns the process exit code.
pub fn main_with_args(mut argv: Vec<String>) -> i32 {
    if let Err(e) = crate::config::check_env(std::env::vars_os()) {
        let line = crate::text::for_output(&format!("ocimodel: {e:#}"));
        eprintln!("{line}");
        write_termination(None, &line);
        return 1;
    }
    // KServe's bare `URI DEST ...` form means `pull` (or `sidecar`, for images
    // whose arguments KServe fixes, with OCIMODEL_MODE=sidecar).
    if argv.len() > 1 && !argv[1].starts_with('-') && !SUBCOMMANDS.contains(&argv[1].as_str()) {
        let mode = std::env::var("OCIMODEL_MODE").unwrap_or_default();
        let command = if mode.eq_ignore_ascii_case("sidecar") {
            "sidecar"
        } else {
            "pull"
        };
        argv.insert(1, command.to_string());
    }
    if argv.len() == 1 {
        eprintln!("{USAGE}\n(see ocimodel --help)");
        write_termination(None, &format!("ocimodel: {USAGE} (no arguments given)"));
        return 1;
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            if code != 0 {
                let first = e.to_string().lines().next().unwrap_or("").to_string();
                write_termination(None, &format!("ocimodel: {first}"));
            }
            return code;
        }
    };
    match cli.command {
        Command::Pull(args) | Command::Unpack(args) => run_pull(args),
        Command::Inspect(args) => run_inspect(args),
        Command::Referrers(args) => run_referrers(args),
        Command::Sidecar(args) => run_sidecar(args),
        Command::Check(args) => run_check(args),
        Command::Push(args) => run_push(args),
        Command::Verify(args) => run_verify(args),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OCIMODEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if format.eq_ignore_ascii_case("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn run_pull(args: PullArgs) -> i32 {
    init_logging(&args.access.log_format);
    let log = args.termination_log.clone();
    match prepare(&args) {
        Ok((jobs, settings, clients)) => execute(jobs, settings, clients, log.as_deref()),
        Err(e) => {
            let msg = format!("ocimodel: {e:#}");
            eprintln!("{}", crate::text::for_output(&msg));
            write_termination(log.as_deref(), &msg);
            1
        }
    }
}

type Prepared = (Vec<Job>, Settings, ClientFactory);

fn prepare(args: &PullArgs) -> Result<Prepared> {
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
    let mut settings = settings(&args.access, &args.select)?;
    settings.require_digest = args.require_digest;
    settings.concurrency = args.concurrency.max(1);
    settings.owner = args.owner.as_deref().map(parse_owner).transpose()?;
    settings.progress_every = std::time::Duration::from_secs(args.progress_interval.max(1));
    settings.deadline = args.timeout.map(std::time::Duration::from_secs);
    settings.max_expanded = args.max_expanded.unwrap_or(u64::MAX);
    settings.max_files = args.max_files;
    settings.lock_timeout = std::time::Duration::from_secs(args.lock_timeout);
    settings.verify = Arc::new(args.policy.policy()?);
    Ok((jobs, settings, client_factory(&args.access)))
}

/// Pipeline settings from the shared flag groups (pull-only ones defaulted).
fn settings(access: &AccessArgs, select: &SelectArgs) -> Result<Settings> {
    let platform = match &access.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    Ok(Settings {
        subtree: Subtree::parse(&select.subpath)?,
        platform,
        require_digest: false,
        concurrency: 8,
        owner: None,
        progress_every: std::time::Duration::from_secs(10),
        deadline: None,
        max_expanded: u64::MAX,
        max_files: 100_000,
        lock_timeout: std::time::Duration::from_secs(1800),
        verify: Arc::new(Policy::default()),
        filter: Filter::new(&select.include, &select.exclude),
        format: format::Options {
            unknown_raw: select.unknown == "raw",
            kit_filter: clean_list(&select.kit_filter),
        },
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
fn client_factory(access: &AccessArgs) -> ClientFactory {
    let mut ca_bundles: Vec<PathBuf> = access.ca_bundle.iter().cloned().collect();
    if let Some(mount) = std::env::var_os("CA_BUNDLE_VOLUME_MOUNT_POINT") {
        let kserve_bundle = PathBuf::from(mount).join("cabundle.crt");
        if kserve_bundle.is_file() {
            ca_bundles.push(kserve_bundle);
        }
    }
    let insecure_all = std::env::var("KSERVE_OCI_INSECURE_REGISTRY")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    let options = ClientOptions {
        insecure_registries: clean_list(&access.insecure_registries),
        insecure_all,
        ca_bundles,
        connect_timeout: Some(std::time::Duration::from_secs(
            access.connect_timeout.max(1),
        )),
        stall_timeout: Some(std::time::Duration::from_secs(access.stall_timeout.max(1))),
        min_rate: access.min_rate,
        retries: access.retries,
    };
    let sources = CredentialSources::from_env(access.auth_file.as_deref());
    let cell: Arc<OnceLock<Arc<RegistryClient>>> = Arc::new(OnceLock::new());
    Arc::new(move || {
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let creds = sources.load()?;
        let client = Arc::new(RegistryClient::new(creds, options.clone())?);
        Ok(cell.get_or_init(|| client).clone())
    })
}

/// Runs a read-only command on one source: prints its output, or one error
/// line on stderr and exit 1.
fn run_read_only<F, Fut>(uri: &str, access: &AccessArgs, work: F) -> i32
where
    F: FnOnce(Source) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    init_logging(&access.log_format);
    let result = (|| {
        let target = Target::parse(uri).with_context(|| uri.to_string())?;
        let clients = client_factory(access);
        let source = Source::new(&target, || clients())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work(source))
    })();
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!(
                "{}",
                crate::text::for_output(&format!("ocimodel: {uri}: {e:#}"))
            );
            1
        }
    }
}

fn run_sidecar(args: SidecarArgs) -> i32 {
    init_logging(&args.pull.access.log_format);
    let log = args.pull.termination_log.clone();
    let fatal = move |line: &str| {
        eprintln!("{}", crate::text::for_output(line));
        write_termination(log.as_deref(), line);
    };
    let prepared = prepare(&args.pull).and_then(|p| Ok((p, serve::parse_listen(&args.listen)?)));
    let ((jobs, settings, clients), listen) = match prepared {
        Ok(p) => p,
        Err(e) => {
            fatal(&format!("ocimodel: {e:#}"));
            return 1;
        }
    };
    let options = serve::Options {
        listen,
        exit_on_failure: args.exit_on_failure,
    };
    // Two workers: pulls overlap hashing and unpacking; idle, both park.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            fatal(&format!("ocimodel: cannot start the async runtime: {e}"));
            return 1;
        }
    };
    let code = runtime.block_on(serve::run(jobs, settings, clients, options, fatal));
    // Unpack threads of cancelled pulls may still be winding down: don't wait.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

fn run_check(args: CheckArgs) -> i32 {
    let mut code = 0;
    for dest in &args.dests {
        match crate::install::check_tree(dest) {
            Ok((m, problems)) if problems.is_empty() => {
                println!(
                    "{}: ok, {} files match {} ({})",
                    dest.display(),
                    m.contents.files.len(),
                    m.digest,
                    m.source
                );
            }
            Ok((m, problems)) => {
                code = 1;
                println!(
                    "{}: {} difference(s) from {} ({}):",
                    dest.display(),
                    problems.len(),
                    m.digest,
                    m.source
                );
                for p in problems {
                    println!("  {p}");
                }
            }
            Err(e) => {
                code = 1;
                println!("{}: {e}", dest.display());
            }
        }
    }
    code
}

fn run_push(args: PushArgs) -> i32 {
    init_logging(&args.access.log_format);
    match push_main(&args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!(
                "{}",
                crate::text::for_output(&format!("ocimodel: push {}: {e:#}", args.dir.display()))
            );
            1
        }
    }
}

fn push_main(args: &PushArgs) -> Result<String> {
    let destination = match &args.oci_layout {
        Some(dir) => push::Destination::Layout {
            dir: dir.clone(),
            tag: args.reference.clone(),
        },
        None => push::Destination::parse(args.reference.as_deref().ok_or_else(|| {
            anyhow!("name where to push: REPO[:TAG], oci-layout://DIR[:TAG], or --oci-layout DIR")
        })?)?,
    };
    let mut annotations = std::collections::BTreeMap::new();
    for a in &args.annotations {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--annotation '{a}' is not KEY=VALUE"))?;
        annotations.insert(k.to_string(), v.to_string());
    }
    let options = push::Options {
        format: match args.format.as_str() {
            "oras" => push::PushFormat::Oras,
            "modelcar" => push::PushFormat::Modelcar,
            _ => push::PushFormat::ModelPack,
        },
        annotations,
        artifact_type: args.artifact_type.clone(),
        compression: match args.compress.as_str() {
            "gzip" => crate::manifest::Compression::Gzip,
            "zstd" => crate::manifest::Compression::Zstd,
            _ => crate::manifest::Compression::None,
        },
        platform: match &args.access.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        },
        follow_symlinks: args.follow_symlinks,
    };
    let clients = client_factory(&args.access);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let subject = match &args.subject {
            Some(s) => {
                let target = Target::parse(s).with_context(|| format!("--subject {s}"))?;
                let source = Source::new(&target, || clients())?;
                Some(
                    push::subject_of(&source)
                        .await
                        .with_context(|| format!("--subject {s}"))?,
                )
            }
            None => None,
        };
        let packed = push::pack(&args.dir, &options, subject)?;
        match destination {
            push::Destination::Registry(r) => {
                let client = clients()?;
                let uploaded = push::push(&client, &r, &packed).await?;
                tracing::info!(reference = %r, digest = %packed.digest, uploaded, "pushed");
                Ok(format!(
                    "{} {}",
                    packed.digest,
                    r.with_digest(packed.digest.clone())
                ))
            }
            push::Destination::Layout { dir, tag } => {
                push::write_layout(&dir, tag.as_deref(), &packed)?;
                Ok(format!(
                    "{} oci-layout://{}{}",
                    packed.digest,
                    dir.display(),
                    tag.map(|t| format!(":{t}")).unwrap_or_default()
                ))
            }
        }
    })
}

fn run_inspect(args: InspectArgs) -> i32 {
    let settings = match settings(&args.access, &args.select) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", crate::text::for_output(&format!("ocimodel: {e:#}")));
            return 1;
        }
    };
    let json = args.format == "json";
    run_read_only(&args.uri, &args.access, |source| async move {
        let report = inspect::inspect(&source, &settings).await?;
        Ok(if json {
            format!("{}\n", serde_json::to_string_pretty(&report)?)
        } else {
            inspect::render(&report)
        })
    })
}

fn run_verify(args: VerifyArgs) -> i32 {
    let policy = match args.policy.policy() {
        // `verify` always checks: nothing configured is an error, not a pass.
        Ok(p) if p.is_off() => Err(anyhow!("nothing to verify against: set COSIGN_KEY, COSIGN_CERT_IDENTITY with COSIGN_CERT_OIDC_ISSUER and OCIMODEL_TRUSTED_ROOT, or NOTATION_CERT (or the matching flags)")),
        other => other,
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", crate::text::for_output(&format!("ocimodel: {e:#}")));
            return 1;
        }
    };
    let json = args.format == "json";
    run_read_only(&args.uri, &args.access, |source| async move {
        let top = source.resolve().await?;
        let found = verify::verify(&source, &top, &policy).await?;
        Ok(if json {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&serde_json::json!({
                    "digest": top.digest.to_string(),
                    "reference": source.pinned(&top.digest),
                    "signatures": found,
                }))?
            )
        } else if found.is_empty() {
            format!(
                "{}: not signed (allowed by OCIMODEL_VERIFY=if-present)\n",
                top.digest
            )
        } else {
            found
                .iter()
                .map(|s| format!("{}: verified {s}\n", source.pinned(&top.digest)))
                .collect()
        })
    })
}

fn run_referrers(args: ReferrersArgs) -> i32 {
    let json = args.format == "json";
    let artifact_type = args.artifact_type.clone();
    run_read_only(&args.uri, &args.access, |source| async move {
        let top = source.resolve().await?;
        let found = source
            .referrers(&top.digest, artifact_type.as_deref())
            .await?;
        Ok(if json {
            format!("{}\n", serde_json::to_string_pretty(&found)?)
        } else {
            inspect::render_referrers(&found)
        })
    })
}

/// `123`, `64K`, `500M`, `2G`, `1T` (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("'{s}': use a number with an optional K, M, G or T")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("'{s}' is not a size"))
}

fn parse_owner(s: &str) -> Result<(u32, u32)> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("OCIMODEL_OWNER must be uid:gid, got '{s}'"))?;
    Ok((
        u.parse()
            .map_err(|_| anyhow!("OCIMODEL_OWNER: bad uid '{u}'"))?,
        g.parse()
            .map_err(|_| anyhow!("OCIMODEL_OWNER: bad gid '{g}'"))?,
    ))
}

fn execute(jobs: Vec<Job>, settings: Settings, clients: ClientFactory, log: Option<&Path>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("ocimodel: cannot start the async runtime: {e}");
            eprintln!("{}", crate::text::for_output(&msg));
            write_termination(log, &msg);
            return 1;
        }
    };
    let results = runtime.block_on(async {
        let tasks = jobs.iter().map(|job| {
            let settings = settings.clone();
            let clients = clients.clone();
            let job = job.clone();
            async move { pull(&job, &settings, &clients).await }
        });
        futures_util::future::join_all(tasks).await
    });

    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (job, result) in jobs.iter().zip(results) {
        match result {
            Ok(outcome) => {
                let m = &outcome.marker;
                tracing::info!(
                    uri = %job.uri,
                    dest = %job.dest.display(),
                    digest = %m.digest,
                    files = m.contents.files.len(),
                    up_to_date = outcome.up_to_date,
                    "model installed"
                );
                // stdout carries the result for scripts: digest, URI, DEST.
                println!("{} {} {}", m.digest, job.uri, job.dest.display());
                done.push(format!(
                    "{} -> {} ({})",
                    job.uri,
                    job.dest.display(),
                    m.digest
                ));
            }
            Err(e) => {
                let line = crate::text::for_output(&format!("{}: {e:#}", job.uri));
                tracing::error!("{line}");
                failed.push(line);
            }
        }
    }
    if failed.is_empty() {
        write_termination(log, &format!("ocimodel: installed {}", done.join("; ")));
        0
    } else {
        let head = if jobs.len() > 1 {
            format!(
                "ocimodel: {} of {} models failed: ",
                failed.len(),
                jobs.len()
            )
        } else {
            "ocimodel: ".to_string()
        };
        write_termination(log, &format!("{head}{}", failed.join("; ")));
        1
    }
}

/// Writes one line to the termination log: the given path (or
/// `$OCIMODEL_TERMINATION_LOG`), else `/dev/termination-log` when it exists
/// (as in a Kubernetes container).
fn write_termination(path: Option<&Path>, line: &str) {
    let from_env = std::env::var_os("OCIMODEL_TERMINATION_LOG").map(PathBuf::from);
    let path = match path.map(Path::to_path_buf).or(from_env) {
        Some(p) => p,
        None => {
            let default = PathBuf::from(DEFAULT_TERMINATION_LOG);
            if !default.exists() {
                return;
            }
            default
        }
    };
    // One line, no control characters, no passwords (KServe copies it into
    // the InferenceService status).
    let mut line = crate::text::for_output(&line.replace('\n', " "));
    if line.len() > TERMINATION_LIMIT {
        let mut cut = TERMINATION_LIMIT - 3;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!(
            "ocimodel: cannot write termination log {}: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every env name a flag reads is in `config::SETTINGS`, and every
    /// setting there is read somewhere, so the unknown-variable check can
    /// neither refuse a real setting nor accept a dead one.
    #[test]
    fn flag_env_names_match_the_settings_list() {
        fn walk(cmd: &clap::Command, names: &mut std::collections::BTreeSet<String>) {
            for a in cmd.get_arguments() {
                if let Some(env) = a.get_env() {
                    names.insert(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, names);
            }
        }
        let mut names = std::collections::BTreeSet::new();
        walk(&Cli::command(), &mut names);
        // Read outside clap: before parsing (MODE), by the log filter (LOG).
        names.insert("OCIMODEL_MODE".into());
        names.insert("OCIMODEL_LOG".into());
        // Read by the credential sources (auth.rs).
        names.insert("OCIMODEL_DOCKER_CONFIG_JSON".into());
        let ours: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with("OCIMODEL_"))
            .collect();
        assert_eq!(ours, crate::config::SETTINGS);
    }
}
