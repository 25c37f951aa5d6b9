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
mod prepare;
mod values;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
// The tests below build `Cli::command()`; the code goes through args::command().
#[cfg_attr(not(test), allow(unused_imports))]
use clap::CommandFactory;
use clap::FromArgMatches;

use args::{Cli, Command};
use values::LogFormat;

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_LIMIT: usize = 4000;
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
const USAGE: &str = "usage: ocimodel [pull] URI DEST [URI DEST ...]";

/// Runs the command line; returns the process exit code.
pub fn main_with_args(mut argv: Vec<String>) -> ExitCode {
    crate::cpus::limit_malloc_arenas();
    // KServe's bare `URI DEST ...` form means `pull` (or `sidecar`, for images
    // whose arguments KServe fixes, with OCIMODEL_MODE=sidecar).
    let known = args::command()
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string))
        })
        .chain(["help".to_string()])
        .collect::<Vec<_>>();
    if argv.len() > 1 && !argv[1].starts_with('-') && !known.contains(&argv[1]) {
        // Only a word that can be a reference starts a pull: `inspcet`,
        // `ls` or `login` are mistakes, not Docker Hub repositories.
        if !looks_like_reference(&argv[1]) {
            return unknown_command(&argv[1], &known);
        }
        let sidecar = std::env::var("OCIMODEL_MODE").is_ok_and(|m| m.trim() == "sidecar");
        argv.insert(1, if sidecar { "sidecar" } else { "pull" }.to_string());
    }
    if argv.len() == 1 {
        eprintln!("{USAGE}\n(see ocimodel --help)");
        write_termination(None, &format!("ocimodel: {USAGE} (no arguments given)"));
        return ExitCode::FAILURE;
    }
    let parsed = args::command()
        .try_get_matches_from(&argv)
        .and_then(|m| Cli::from_arg_matches(&m));
    // --help and --version answer whatever the environment holds, and so
    // do `version`, `completion` and `man`.
    if let Err(e) = &parsed {
        if !e.use_stderr() {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    }
    let informational = matches!(&parsed, Ok(c) if c.command.is_informational());
    if !informational {
        if let Err(e) = crate::config::check_env(std::env::vars_os()) {
            return fail(&e, None);
        }
    }
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => return usage_error(&e, &argv),
    };
    let log = cli.termination_log.clone();
    match run(cli) {
        Ok(code) => code,
        Err(e) => fail(&e, log.as_deref()),
    }
}

/// Whether a first argument that is no subcommand can be a model
/// reference: a URI (`oci://…`, `hf://…`), `host/repo[:tag]`, `repo:tag`.
fn looks_like_reference(word: &str) -> bool {
    word.contains('/') || word.contains(':')
}

/// `ocimodel inspcet REF`: a usage error (exit 1, as every failure: the
/// help's "Exit status") naming the nearest command, if one is near;
/// nothing is pulled and nothing is created.
fn unknown_command(word: &str, known: &[String]) -> ExitCode {
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2 && *d < word.len().max(k.len()) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    let hint = match nearest {
        Some(k) => format!("; did you mean '{k}'?"),
        None => String::new(),
    };
    let line = crate::text::for_output(&format!(
        "ocimodel: unknown command '{word}'{hint} (see ocimodel --help; a model reference has a '/' or ':', as in registry/repo:tag or oci-layout://DIR)"
    ));
    eprintln!("{line}");
    write_termination(None, &line);
    ExitCode::FAILURE
}

/// Dispatches to the command.
fn run(cli: Cli) -> Result<ExitCode> {
    let log = cli.termination_log.as_deref();
    match cli.command {
        Command::Pull(a) | Command::Unpack(a) => {
            init_logging(&a.access);
            commands::pull_all(a, log)
        }
        Command::Sidecar(a) => {
            init_logging(&a.pull.access);
            commands::sidecar(a)
        }
        Command::Inspect(a) => {
            init_logging(&a.access);
            commands::inspect(a)
        }
        Command::Referrers(a) => {
            init_logging(&a.access);
            commands::referrers(a)
        }
        Command::Verify(a) => {
            init_logging(&a.access);
            commands::verify(a)
        }
        Command::Push(a) => {
            init_logging(&a.access);
            commands::push(a)
        }
        Command::Check(a) => commands::check(a),
        Command::Version => {
            println!("ocimodel {}", args::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion(a) => {
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut args::command(), "ocimodel", &mut script);
            print_bytes(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(args::command()).render(&mut page)?;
            print_bytes(&page)
        }
    }
}

/// Writes generated text to stdout; a reader that stopped early (`| head`)
/// is not an error.
fn print_bytes(bytes: &[u8]) -> Result<ExitCode> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(ExitCode::SUCCESS),
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

/// A clap error: on stderr and in the termination log, with the variable
/// named when the value came from one (a ClusterStorageContainer sets
/// `OCIMODEL_VERIFY`, not `--verify`).
fn usage_error(e: &clap::Error, argv: &[String]) -> ExitCode {
    // The error with its choices, up to clap's "For more information".
    let text = e.to_string();
    let head: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let head = head.join(" ");
    let head = head.trim_start_matches("error: ");
    match env_behind(head, argv) {
        Some(env) => {
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            eprintln!("{first} (from {env})");
            for l in lines {
                eprintln!("{l}");
            }
            write_termination(None, &format!("ocimodel: {head} (from {env})"));
        }
        None => {
            let _ = e.print();
            write_termination(None, &format!("ocimodel: {head}"));
        }
    }
    ExitCode::FAILURE
}

/// The variable a flag's bad value came from: the flag the error names
/// reads it, it is set, and the flag was not given.
fn env_behind(line: &str, argv: &[String]) -> Option<String> {
    for sub in args::command().get_subcommands() {
        for a in sub.get_arguments() {
            let (Some(long), Some(env)) = (a.get_long(), a.get_env()) else {
                continue;
            };
            let flag = format!("--{long}");
            let given = argv
                .iter()
                .any(|w| w == &flag || w.starts_with(&format!("{flag}=")));
            if line.contains(&format!("'{flag}")) && !given && std::env::var_os(env).is_some() {
                return Some(env.to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// Logs on stderr: `-q` / `-v` / `-vv` over `OCIMODEL_LOG` (warn, debug
/// for ocimodel, trace), else `info`. On a terminal with text logs: no
/// timestamps, and progress bars unless the level hides progress.
fn init_logging(access: &args::AccessArgs) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::EnvFilter;
    let format = access.log_format;
    let filter = match (access.quiet, access.verbose) {
        (true, _) => EnvFilter::new("warn"),
        (false, 1) => EnvFilter::new("info,ocimodel=debug"),
        (false, 2..) => EnvFilter::new("trace"),
        (false, 0) => {
            EnvFilter::try_from_env("OCIMODEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
        }
    };
    let shows_progress = filter
        .max_level_hint()
        .is_none_or(|max| max >= LevelFilter::INFO);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let watched = terminal && format == LogFormat::Text;
    // A terminal that cannot move the cursor (TERM unset or dumb) gets the
    // log lines a pod gets, as indicatif would draw nothing there.
    let can_draw = std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb");
    crate::progress::set_display(watched, shows_progress && can_draw);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter)
        .with_ansi(terminal)
        .with_target(false);
    let _ = match (format, watched) {
        (LogFormat::Json, _) => builder.json().try_init(),
        // A person at a terminal knows the time; a log collector does not.
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}

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
    use std::collections::BTreeSet;

    /// Every env name a flag reads or the code reads itself is in
    /// `config::SETTINGS`, and every setting there is read somewhere, so the
    /// unknown-variable check can neither refuse a real setting nor accept a
    /// dead one.
    #[test]
    fn env_names_read_match_the_settings_list() {
        fn walk(cmd: &clap::Command, names: &mut BTreeSet<String>) {
            for a in cmd.get_arguments() {
                if let Some(env) = a.get_env() {
                    names.insert(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, names);
            }
        }
        let mut by_clap = BTreeSet::new();
        walk(&Cli::command(), &mut by_clap);
        let outside = read_outside_clap();
        assert!(!outside.is_empty(), "no env reads found in src/");
        let settings: BTreeSet<String> = crate::config::SETTINGS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let read: BTreeSet<String> = by_clap
            .into_iter()
            .chain(outside)
            .filter(|n| n.starts_with("OCIMODEL_"))
            .collect();
        let unlisted: Vec<_> = read.difference(&settings).collect();
        let unread: Vec<_> = settings.difference(&read).collect();
        assert!(
            unlisted.is_empty() && unread.is_empty(),
            "read but not in config::SETTINGS: {unlisted:?}; in it but read nowhere: {unread:?}"
        );
    }

    /// The `OCIMODEL_*` names the code reads itself, not through clap: each
    /// string literal passed straight to `var(`, `var_os(`, `try_from_env(`
    /// or a local `env(` closure, anywhere in the crate's sources up to the
    /// file's `#[cfg(test)]` module (a read this misses leaves its setting
    /// "read nowhere" above, so the test fails rather than passes).
    fn read_outside_clap() -> BTreeSet<String> {
        fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut names = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code: Vec<&str> = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .collect();
            let code = code.join("\n");
            let mut rest = code.as_str();
            while let Some(i) = rest.find("\"OCIMODEL_") {
                let before = rest[..i].trim_end();
                let literal = &rest[i + 1..];
                let end = literal.find('"').unwrap_or(literal.len());
                let name = &literal[..end];
                rest = &literal[(end + 1).min(literal.len())..];
                let Some(call) = before.strip_suffix('(') else {
                    continue;
                };
                let callee = call
                    .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("");
                let is_name = name.len() > "OCIMODEL_".len()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if is_name && ["var", "var_os", "try_from_env", "env"].contains(&callee) {
                    names.insert(name.to_string());
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod unit {
    use super::values::{parse_owner, parse_size};
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
