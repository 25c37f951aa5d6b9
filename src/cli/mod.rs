//! Command line and environment.
//!
//! KServe appends `URI DEST [URI DEST ...]` to the image's entrypoint and
//! cannot pass flags, so a bare argument list means `pull`, and every flag
//! also reads an `OCIMODEL_*` variable ([`crate::config`] lists them).
//!
//! One way in and one way out, as ripgrep's `main`: [`main_with_args`]
//! checks the environment, parses ([`args`]), runs one of [`commands`],
//! and reports any error once, on stderr and in the termination log.

mod args;
mod commands;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use args::{Cli, Command, LogFormat};

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_LIMIT: usize = 4000;
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
const USAGE: &str = "usage: ocimodel [pull] URI DEST [URI DEST ...]";

/// Runs the command line; returns the process exit code.
pub fn main_with_args(mut argv: Vec<String>) -> ExitCode {
    crate::cpus::limit_malloc_arenas();
    if let Err(e) = crate::config::check_env(std::env::vars_os()) {
        return fail(&e, None);
    }
    // KServe's bare `URI DEST ...` form means `pull` (or `sidecar`, for images
    // whose arguments KServe fixes, with OCIMODEL_MODE=sidecar).
    let known = Cli::command()
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string))
        })
        .chain(["help".to_string()])
        .collect::<Vec<_>>();
    if argv.len() > 1 && !argv[1].starts_with('-') && !known.contains(&argv[1]) {
        let sidecar = std::env::var("OCIMODEL_MODE").is_ok_and(|m| m.trim() == "sidecar");
        argv.insert(1, if sidecar { "sidecar" } else { "pull" }.to_string());
    }
    if argv.len() == 1 {
        eprintln!("{USAGE}\n(see ocimodel --help)");
        write_termination(None, &format!("ocimodel: {USAGE} (no arguments given)"));
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            // The error with its choices, up to clap's "For more information".
            let text = e.to_string();
            let head: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            write_termination(
                None,
                &format!("ocimodel: {}", name_the_env(&head.join(" "))),
            );
            return ExitCode::FAILURE;
        }
    };
    let log = cli.termination_log.clone();
    match run(cli) {
        Ok(code) => code,
        Err(e) => fail(&e, log.as_deref()),
    }
}

/// Dispatches to the command.
fn run(cli: Cli) -> Result<ExitCode> {
    let log = cli.termination_log.as_deref();
    match cli.command {
        Command::Pull(a) | Command::Unpack(a) => {
            init_logging(a.access.log_format);
            commands::pull_all(a, log)
        }
        Command::Sidecar(a) => {
            init_logging(a.pull.access.log_format);
            commands::sidecar(a)
        }
        Command::Inspect(a) => {
            init_logging(a.access.log_format);
            commands::inspect(a)
        }
        Command::Referrers(a) => {
            init_logging(a.access.log_format);
            commands::referrers(a)
        }
        Command::Verify(a) => {
            init_logging(a.access.log_format);
            commands::verify(a)
        }
        Command::Push(a) => {
            init_logging(a.access.log_format);
            commands::push(a)
        }
        Command::Check(a) => commands::check(a),
    }
}

/// The one exit path for errors: one line on stderr and in the
/// termination log (control characters escaped, passwords redacted).
fn fail(e: &anyhow::Error, log: Option<&Path>) -> ExitCode {
    let line = crate::text::for_output(&format!("ocimodel: {e:#}"));
    eprintln!("{line}");
    write_termination(log, &line);
    ExitCode::FAILURE
}

/// The async runtime every command uses (`workers`: threads, else one per
/// CPU this process may use, up to 16). Its threads only move bytes between
/// sockets and the blobs' own threads (which hash, unpack and write), and
/// 16 is the default most connections to one host (`OCIMODEL_HOST_CONNECTIONS`):
/// a 192-core node gets no more of them than a 16-core one.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(
        workers.unwrap_or_else(|| {
            crate::cpus::available().min(crate::config::DEFAULT_HOST_CONNECTIONS)
        }),
    );
    b.enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// A clap error line, with the variable named when the value came from one
/// (a ClusterStorageContainer sets `OCIMODEL_VERIFY`, not `--verify`).
fn name_the_env(line: &str) -> String {
    let line = line.trim_start_matches("error: ");
    for sub in Cli::command().get_subcommands() {
        for a in sub.get_arguments() {
            let (Some(long), Some(env)) = (a.get_long(), a.get_env()) else {
                continue;
            };
            let env = env.to_string_lossy();
            if line.contains(&format!("'--{long}")) && std::env::var_os(env.as_ref()).is_some() {
                return format!("{line} (from {env})");
            }
        }
    }
    line.to_string()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OCIMODEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Writes one line to the termination log: the given path (or
/// `$OCIMODEL_TERMINATION_LOG`), else `/dev/termination-log` when it exists
/// (as in a Kubernetes container).
/// Writes one line to the termination log: the given path (or
/// `$OCIMODEL_TERMINATION_LOG`), else `/dev/termination-log` when it exists
/// (as in a Kubernetes container).
pub(super) fn write_termination(path: Option<&Path>, line: &str) {
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

#[cfg(test)]
mod unit {
    use super::args::{parse_owner, parse_size};
    use super::*;

    #[test]
    fn sizes_and_owners_parse() {
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size(" 16m "), Ok(16 << 20));
        assert_eq!(parse_size("500G"), Ok(500 << 30));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_owner("1000930000:0").unwrap(), (1000930000, 0));
        assert!(parse_owner("1000").is_err());
        assert!(parse_owner("a:b").is_err());
    }

    #[test]
    fn the_termination_line_is_one_capped_clean_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let long = format!("ocimodel: line one\nline two\u{1b}[2J {}", "é".repeat(3000));
        write_termination(Some(&path), &long);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().count(), 1);
        assert!(
            written.starts_with("ocimodel: line one line two\\u{1b}[2J é"),
            "{written}"
        );
        assert!(written.trim_end().ends_with("..."));
        assert!(written.len() <= TERMINATION_LIMIT + 1);
    }
}
