//! The commands. Each returns `Result<ExitCode>`: output on success, an
//! error for [`super::run`]'s one exit path to report. `check` reports its
//! differences itself and exits 1 without an error.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use super::args::{
    AccessArgs, CheckArgs, InspectArgs, PullArgs, PushArgs, ReferrersArgs, SidecarArgs, VerifyArgs,
};
use super::prepare::{client_factory, prepare, settings};
use super::values::Output;
use super::{runtime, write_termination};
use crate::inspect;
use crate::install::Marker;
use crate::manifest::Platform;
use crate::pull::{pull, ClientFactory, Job, Settings};
use crate::push;
use crate::reference::Target;
use crate::serve;
use crate::source::Source;
use crate::verify;
use crate::verify::model::ModelPolicy;

/// `pull` (and `unpack`): every pair, then one termination line.
pub(super) fn pull_all(args: PullArgs, log: Option<&Path>) -> Result<ExitCode> {
    let (jobs, settings, clients) = prepare(&args, super::prepare::interactive())?;
    execute(jobs, settings, clients, log)
}

fn execute(
    jobs: Vec<Job>,
    settings: Settings,
    clients: ClientFactory,
    log: Option<&Path>,
) -> Result<ExitCode> {
    let runtime = runtime(None)?;
    let results = runtime.block_on(async {
        let tasks = jobs.iter().map(|job| {
            let settings = settings.clone();
            let clients = clients.clone();
            let job = job.clone();
            async move { pull(&job, &settings, &clients).await }
        });
        // Exits from inside the poll, before select! would drop the pulls.
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted(log);
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            results = futures_util::future::join_all(tasks) => results,
            () = ctrl_c => unreachable!("ctrl_c never completes"),
        }
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
                // On a terminal the final line is the error, said once.
                if !crate::progress::watched() {
                    tracing::error!("{line}");
                }
                failed.push(line);
            }
        }
    }
    if failed.is_empty() {
        write_termination(log, &format!("ocimodel: installed {}", done.join("; ")));
        return Ok(ExitCode::SUCCESS);
    }
    // Each failure was logged as it happened; the summary is the error.
    if jobs.len() > 1 {
        return Err(anyhow!(
            "{} of {} models failed: {}",
            failed.len(),
            jobs.len(),
            failed.join("; ")
        ));
    }
    Err(anyhow!("{}", failed.join("; ")))
}

/// Ctrl-C: says how to go on and exits 130 at once, as SIGINT's default
/// would, so every partial download (the cache's ingest, DEST's partials)
/// stays as it is for the rerun to resume; dropping the pulls instead
/// would let their blob readers see a short stream and discard them. The
/// rerun clears the staging directory left behind.
fn interrupted(log: Option<&Path>) -> ! {
    let line = "ocimodel: interrupted; run the same command again to resume";
    crate::progress::clear();
    eprintln!("{line}");
    write_termination(log, line);
    std::process::exit(130)
}

/// `sidecar`: pull, then serve probes until SIGTERM.
pub(super) fn sidecar(mut args: SidecarArgs) -> Result<ExitCode> {
    let s3_listen = args
        .s3_listen
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(crate::s3::server::parse_listen)
        .transpose()?;
    if s3_listen.is_some() {
        // Files download two at a time, in the order a loader reads them:
        // each blob may take every connection to its host, so the first of
        // the two gets them (permits are first come, first served) and
        // finishes first, and the second fills what the first leaves idle.
        let access = &mut args.pull.access;
        access.range_connections = access.range_connections.max(access.host_connections);
    }
    let (jobs, settings, clients) = prepare(&args.pull, false)?;
    let options = serve::Options {
        listen: serve::parse_listen(&args.listen)?,
        exit_on_failure: args.exit_on_failure,
        s3_listen,
        s3_wait: std::time::Duration::from_secs(args.s3_wait),
    };
    // Two workers: pulls overlap hashing and unpacking; idle, both park.
    // Serving over S3, the workers also send what the engine reads while
    // the pull receives: as many as for a pull alone.
    let runtime = runtime(options.s3_listen.is_none().then_some(2))?;
    let result = runtime.block_on(serve::run(jobs, settings, clients, options));
    // Unpack threads of cancelled pulls may still be winding down: don't wait.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result.map(|()| ExitCode::SUCCESS)
}

/// The commands that only read: resolve `uri`, run `work`, print its output.
fn read_only<F, Fut>(uri: &str, access: &AccessArgs, work: F) -> Result<ExitCode>
where
    F: FnOnce(Source) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let out = (|| {
        let target = Target::parse(uri)?;
        let clients = client_factory(access);
        let source = Source::new(&target, || clients(), None)?;
        runtime(None)?.block_on(work(source))
    })()
    .with_context(|| uri.to_string())?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `check`: re-hash installed trees; differences are printed, exit 1.
pub(super) fn check(args: CheckArgs) -> Result<ExitCode> {
    let model_policy = args.model_policy.policy(args.trusted_root.clone())?;
    let mut code = ExitCode::SUCCESS;
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
                if !report_signatures(dest, &m, &model_policy, "  ") {
                    code = ExitCode::FAILURE;
                }
            }
            Ok((m, problems)) => {
                code = ExitCode::FAILURE;
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
            // Not "has no completion marker": there is nothing at all.
            Err(_) if std::fs::symlink_metadata(dest).is_err() => {
                code = ExitCode::FAILURE;
                println!("{}: does not exist", dest.display());
            }
            Err(e) => {
                code = ExitCode::FAILURE;
                println!("{}: {e:#}", dest.display());
            }
        }
    }
    Ok(code)
}

/// `push`: package DIR and push it (or write a layout); prints the digest.
pub(super) fn push(args: PushArgs) -> Result<ExitCode> {
    let line = push_dir(&args).with_context(|| format!("push {}", args.dir.display()))?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn push_dir(args: &PushArgs) -> Result<String> {
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
        format: args.format.into(),
        annotations,
        artifact_type: args.artifact_type.clone(),
        compression: args.compress.into(),
        platform: match &args.access.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        },
        follow_symlinks: args.follow_symlinks,
    };
    let clients = client_factory(&args.access);
    runtime(None)?.block_on(async {
        let subject = match &args.subject {
            Some(s) => {
                let target = Target::parse(s).with_context(|| format!("--subject {s}"))?;
                let source = Source::new(&target, || clients(), None)?;
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

/// `inspect`: what a reference holds.
pub(super) fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let settings = settings(&args.access, &args.select)?;
    let json = args.format == Output::Json;
    read_only(&args.uri, &args.access, |source| async move {
        let report = inspect::inspect(&source, &settings).await?;
        Ok(if json {
            format!("{}\n", serde_json::to_string_pretty(&report)?)
        } else {
            inspect::render(&report)
        })
    })
}

/// Prints the signatures an installed tree's marker records and, with a
/// model signature policy, checks the tree against its signature now.
/// False when that check fails.
fn report_signatures(dest: &Path, m: &Marker, model_policy: &ModelPolicy, indent: &str) -> bool {
    for s in &m.signatures {
        println!("{indent}verified at install: {s}");
    }
    if let Some(s) = &m.model_signature {
        println!("{indent}verified at install: {s}");
    }
    if m.signatures.is_empty() && m.model_signature.is_none() {
        println!("{indent}no signature was checked at install");
    }
    if model_policy.is_off() {
        return true;
    }
    let (root, contents) = m.model_tree(dest);
    match crate::verify::model::check(&root, &contents, model_policy) {
        Ok(Some(s)) => println!("{indent}verified now: {s}"),
        Ok(None) => println!("{indent}not signed (allowed by OCIMODEL_MODEL_SIGNATURE=if-present)"),
        Err(e) => {
            println!("{indent}{e:#}");
            return false;
        }
    }
    true
}

/// `verify DEST`: an installed tree (a directory with a marker), checked
/// against its marker and, with a model signature policy, its signature.
fn verify_installed(dest: &Path, model_policy: &ModelPolicy) -> Result<ExitCode> {
    let (m, problems) = crate::install::check_tree(dest)?;
    println!("{}: {} ({})", dest.display(), m.digest, m.source);
    let mut ok = report_signatures(dest, &m, model_policy, "  ");
    for p in &problems {
        println!("  differs from its marker: {p}");
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify`: check the signatures only; prints who signed what.
pub(super) fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let installed = Path::new(&args.uri);
    if installed.join(crate::install::MARKER).is_file() {
        let model_policy = args.model_policy.policy(args.policy.trusted_root.clone())?;
        return verify_installed(installed, &model_policy);
    }
    let policy = match args.policy.policy() {
        // `verify` always checks: nothing configured is an error, not a pass.
        Ok(p) if p.is_off() => Err(anyhow!("nothing to verify against: set COSIGN_KEY, COSIGN_CERT_IDENTITY with COSIGN_CERT_OIDC_ISSUER and OCIMODEL_TRUSTED_ROOT, or NOTATION_CERT (or the matching flags)")),
        other => other,
    };
    let policy = policy?;
    let json = args.format == Output::Json;
    read_only(&args.uri, &args.access, |source| async move {
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

/// `referrers`: what refers to a reference.
pub(super) fn referrers(args: ReferrersArgs) -> Result<ExitCode> {
    let json = args.format == Output::Json;
    let artifact_type = args.artifact_type.clone();
    read_only(&args.uri, &args.access, |source| async move {
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
