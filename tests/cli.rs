//! The command line as a newcomer meets it: unknown words, mistakes that
//! retrying cannot fix, settings, and what a failed run leaves behind.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn layout_uri() -> String {
    format!(
        "oci-layout://{}",
        repo_root().join("examples/mnist").display()
    )
}

/// Everything under `dir`, bookkeeping included.
fn everything(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs ocimodel in an empty working directory; returns the run and what
/// it left there.
fn run_in_empty_cwd(args: &[&str]) -> (Run, Vec<String>) {
    let cwd = tempfile::tempdir().unwrap();
    let mut o = Ocimodel::new();
    o.cmd.current_dir(cwd.path());
    let run = o.run(args);
    let left = everything(cwd.path());
    (run, left)
}

/// #23/#24: a first word that is neither a command nor a reference is a
/// usage error (exit 2) with the nearest command, not a Docker Hub pull
/// that retries and leaves `bash/.ocimodel/lock` behind.
#[test]
fn unknown_words_are_not_models() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["inspcet", "127.0.0.1:9/models/mnist:v1"], Some("inspect")),
        (&["pul", "127.0.0.1:9/m:v1", "dest"], Some("pull")),
        (&["login", "127.0.0.1:5078"], None),
        (&["ls"], None),
        (&["ubuntu", "dest"], None),
    ];
    for (args, nearest) in cases {
        let started = std::time::Instant::now();
        let (run, left) = run_in_empty_cwd(args);
        assert_eq!(run.code(), 2, "{args:?}: stderr:\n{}", run.stderr());
        let expected = format!("unknown command '{}'", args[0]);
        assert!(run.stderr().contains(&expected), "{}", run.stderr());
        assert!(run.termination.contains(&expected), "{}", run.termination);
        match nearest {
            Some(n) => assert!(
                run.stderr().contains(&format!("; did you mean '{n}'?")),
                "{}",
                run.stderr()
            ),
            None => assert!(!run.stderr().contains("did you mean"), "{}", run.stderr()),
        }
        assert!(left.is_empty(), "{args:?} left {left:?}");
        assert!(started.elapsed().as_secs() < 5, "{args:?} was slow");
    }
}

/// KServe's bare `URI DEST` form still means pull: URIs with a scheme,
/// `host/repo:tag`, and `repo:tag` are references, not commands.
#[test]
fn bare_uri_dest_still_pulls() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    Ocimodel::new()
        .run(&[&layout_uri(), dest.to_str().unwrap()])
        .assert_ok();
    assert!(dest.join(MNIST_TITLE).is_file());
    // A scheme ocimodel does not know is still read as a URI.
    let (run, _) = run_in_empty_cwd(&["hf://org/model", "dest"]);
    run.assert_fails_with(&["unsupported scheme 'hf://'"]);
    let (run, left) = run_in_empty_cwd(&["127.0.0.1:9/models/mnist:v1", "dest"]);
    run.assert_fails_with(&["127.0.0.1:9"]);
    assert!(left.is_empty(), "left {left:?}");
}

/// A failed pull leaves nothing: no DEST it created (with its parents),
/// and no `.ocimodel/` in a folder that was there before.
#[test]
fn a_failed_pull_leaves_nothing_behind() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let work = tempfile::tempdir().unwrap();
    let missing = format!("{}/models/mnist:v9", reg.addr);
    // A DEST (and parents) that did not exist.
    let dest = work.path().join("a/b/models");
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&missing, dest.to_str().unwrap()])
        .assert_fails_with(&["manifest v9", "not found"]);
    assert!(
        everything(work.path()).is_empty(),
        "{:?}",
        everything(work.path())
    );
    // A user's folder, with a file of theirs.
    let mine = work.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), "mine").unwrap();
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&missing, mine.to_str().unwrap()])
        .assert_fails_with(&["manifest v9"]);
    assert_eq!(everything(&mine), ["notes.txt"]);
    // A failure after the reference resolved (a corrupt blob) too.
    let blob = reg.blob_data_path(MNIST_SHA256);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    reg.pull("models/mnist:v1", &mine)
        .assert_fails_with(&["digest mismatch"]);
    assert_eq!(everything(&mine), ["notes.txt"]);
    let fresh = work.path().join("fresh");
    reg.pull("models/mnist:v1", &fresh)
        .assert_fails_with(&["digest mismatch"]);
    assert!(!fresh.exists());
}

/// #9: a local path is not a registry reference: it fails at once and
/// names the scheme that reads it, without asking any registry.
#[test]
fn local_paths_suggest_oci_layout_at_once() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let abs = repo_root().join("examples/mnist");
    for (uri, suggestion) in [
        (
            "./examples/mnist".to_string(),
            "did you mean oci-layout://./examples/mnist?".to_string(),
        ),
        (
            "examples/mnist".into(),
            "did you mean oci-layout://examples/mnist?".into(),
        ),
        (
            abs.display().to_string(),
            format!("did you mean oci-layout://{}?", abs.display()),
        ),
    ] {
        let started = std::time::Instant::now();
        let mut o = Ocimodel::new().env("OCIMODEL_RETRIES", "5");
        o.cmd.current_dir(repo_root());
        let run = o.run(&[&uri, dest.to_str().unwrap()]);
        run.assert_fails_with(&[&suggestion]);
        assert!(!run.stderr().contains("retrying"), "{}", run.stderr());
        assert!(started.elapsed().as_secs() < 3, "{uri} was slow");
    }
    assert!(!dest.exists());
}

/// A resolver on 127.0.0.1:53 that answers NXDOMAIN for names under
/// `nx.test` and SERVFAIL for all others.
const FAKE_DNS: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
open(sys.argv[1], "w").close()
while True:
    q, peer = s.recvfrom(512)
    i = 12
    while q[i]:
        i += q[i] + 1
    question = q[12:i + 5]
    name = q[12:i].lower()
    rcode = 3 if name.endswith(b"\x02nx\x04test") else 2
    s.sendto(q[:2] + bytes([0x81, 0x80 | rcode]) + b"\x00\x01" + b"\x00" * 6 + question, peer)
"#;

/// Runs ocimodel in a network and mount namespace of its own, where
/// /etc/resolv.conf names the fake resolver above: no query leaves loopback.
fn pull_with_fake_dns(host: &str, retries: &str) -> (std::process::Output, String, f64) {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("dns.py"), FAKE_DNS).unwrap();
    fs::write(
        t.path().join("resolv.conf"),
        "nameserver 127.0.0.1\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    let script = r#"set -e
ip link set lo up
mount --bind "$T/resolv.conf" /etc/resolv.conf
python3 "$T/dns.py" "$T/ready" >/dev/null 2>&1 &
dns=$!
trap 'kill $dns' EXIT
while [ ! -e "$T/ready" ]; do sleep 0.05; done
start=$(date +%s.%N)
set +e
env -i OCIMODEL_RETRIES="$RETRIES" OCIMODEL_TERMINATION_LOG="$T/termination" "$BIN" "$URI" "$T/dest"
rc=$?
echo "$(date +%s.%N) - $start" | bc > "$T/seconds"
exit $rc"#;
    let out = std::process::Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", script])
        .env("T", t.path())
        .env("BIN", env!("CARGO_BIN_EXE_ocimodel"))
        .env("URI", format!("{host}/models/m:v1"))
        .env("RETRIES", retries)
        .output()
        .unwrap();
    let termination = fs::read_to_string(t.path().join("termination")).unwrap_or_default();
    let seconds = fs::read_to_string(t.path().join("seconds"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(f64::MAX);
    assert!(!t.path().join("dest").exists());
    (out, termination, seconds)
}

/// #14: a host name that does not exist (NXDOMAIN) is not retried (5
/// retries took ~20 s); a resolver that failed (SERVFAIL) or a refused
/// connection, which can heal, still are.
#[test]
fn unknown_hosts_fail_at_once_what_can_heal_is_retried() {
    require_root("a network and mount namespace with a fake resolver");
    let (out, termination, seconds) = pull_with_fake_dns("registry.nx.test", "5");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        termination.contains("cannot resolve registry host registry.nx.test"),
        "{termination}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(seconds < 2.0, "{seconds}s: {stderr}");

    let (out, termination, _) = pull_with_fake_dns("registry.flaky.test", "1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        termination.contains("cannot resolve registry host registry.flaky.test"),
        "{termination}"
    );
    assert!(stderr.contains("retrying"), "{stderr}");

    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let refused = format!("127.0.0.1:{}", free_port());
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &refused)
        .run(&[&format!("{refused}/m:v1"), dest.to_str().unwrap()]);
    run.assert_fails_with(&["cannot reach registry", &refused]);
    assert!(run.stderr().contains("retrying"), "{}", run.stderr());
    assert!(!dest.exists());
}

/// #26: --help and --version answer whatever stray OCIMODEL_* is set; a
/// command still refuses it.
#[test]
fn help_and_version_ignore_stray_settings() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["pull", "--help"],
        &["-h"],
    ] {
        let run = Ocimodel::new().env("OCIMODEL_FOO", "1").run(args);
        assert_eq!(run.code(), 0, "{args:?}: {}", run.stderr());
        assert!(run.stdout().contains("ocimodel"), "{}", run.stdout());
    }
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .env("OCIMODEL_FOO", "1")
        .run(&[&layout_uri(), dest.path().join("m").to_str().unwrap()])
        .assert_fails_with(&["unknown setting OCIMODEL_FOO"]);
}

/// #28: OCIMODEL_LOG takes levels and filter directives; a bare word is
/// refused naming the variable (`verbose!` silently muted every log).
#[test]
fn log_filter_is_a_level_or_directives() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    for bad in ["verbose!", "verbose", "quiet"] {
        let run = Ocimodel::new()
            .env("OCIMODEL_LOG", bad)
            .run(&[&layout_uri(), dest.to_str().unwrap()]);
        run.assert_fails_with(&["OCIMODEL_LOG must be a level", &format!("'{bad}'")]);
        assert!(run.stderr().contains("OCIMODEL_LOG"), "{}", run.stderr());
        assert!(!dest.exists());
    }
    let run = Ocimodel::new()
        .env("OCIMODEL_LOG", "warn")
        .run(&[&layout_uri(), dest.to_str().unwrap()]);
    run.assert_ok();
    assert!(!run.stderr().contains("INFO"), "{}", run.stderr());
    fs::remove_dir_all(&dest).unwrap();
    let run = Ocimodel::new()
        .env("OCIMODEL_LOG", "warn,ocimodel=debug")
        .run(&[&layout_uri(), dest.to_str().unwrap()]);
    run.assert_ok();
    assert!(
        run.stderr().contains("DEBUG") || run.stderr().contains("INFO"),
        "{}",
        run.stderr()
    );
}

/// #27: a bad value from a variable names the variable on stderr too, not
/// only in the termination log; a bad flag value names no variable.
#[test]
fn bad_values_name_their_variable_on_stderr() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let run = Ocimodel::new()
        .env("OCIMODEL_LOG_FORMAT", "jsn")
        .run(&[&layout_uri(), dest.to_str().unwrap()]);
    run.assert_fails_with(&["invalid value 'jsn'", "(from OCIMODEL_LOG_FORMAT)"]);
    assert!(
        run.stderr().contains("invalid value 'jsn'")
            && run.stderr().contains("(from OCIMODEL_LOG_FORMAT)"),
        "{}",
        run.stderr()
    );
    let run = Ocimodel::new().env("OCIMODEL_LOG_FORMAT", "text").run(&[
        "pull",
        "--log-format",
        "jsn",
        &layout_uri(),
        dest.to_str().unwrap(),
    ]);
    run.assert_fails_with(&["invalid value 'jsn'"]);
    assert!(!run.stderr().contains("(from"), "{}", run.stderr());
    assert!(!run.termination.contains("(from"), "{}", run.termination);
    assert!(!dest.exists());
}

/// #2/#4: oras's --plain-http and skopeo's --tls-verify=false reach a
/// plain-HTTP registry, and a near miss is not pointed at --verify (the
/// signature policy).
#[test]
fn plain_http_and_tls_verify_false_are_insecure_registry() {
    let reg = Registry::start(Auth::None);
    reg.oras_push_mnist("models/mnist:v1");
    let work = tempfile::tempdir().unwrap();
    let uri = format!("{}/models/mnist:v1", reg.addr);
    for (i, flag) in ["--plain-http", "--tls-verify=false"].iter().enumerate() {
        let dest = work.path().join(format!("m{i}"));
        Ocimodel::new()
            .run(&["pull", flag, &uri, dest.to_str().unwrap()])
            .assert_ok();
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    }
    let dest = work.path().join("m");
    Ocimodel::new()
        .run(&["pull", "--tls-verify=true", &uri, dest.to_str().unwrap()])
        .assert_fails_with(&["the server answered plain HTTP"]);
    let run = Ocimodel::new().run(&["pull", "--tls-verfy=false", &uri, dest.to_str().unwrap()]);
    assert!(run.stderr().contains("'--tls-verify'"), "{}", run.stderr());
    assert!(!dest.exists());
}

/// `--version` and `version` name the git commit the binary was built from
/// (build.rs), whatever stray setting is set.
#[test]
fn version_names_the_commit() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let expected = format!("ocimodel {} (commit {head})", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["version"]] {
        let run = Ocimodel::new().env("OCIMODEL_FOO", "1").run(args);
        assert_eq!(run.code(), 0, "{args:?}: {}", run.stderr());
        assert_eq!(run.stdout().trim(), expected, "{args:?}");
    }
}

/// Shell completion and a man page come from the clap definitions.
#[test]
fn completion_and_man_page() {
    for (shell, needle) in [
        ("bash", "complete -F _ocimodel"),
        ("zsh", "#compdef ocimodel"),
        ("fish", "complete -c ocimodel"),
    ] {
        let (run, left) = run_in_empty_cwd(&["completion", shell]);
        assert_eq!(run.code(), 0, "{shell}: {}", run.stderr());
        assert!(run.stdout().contains(needle), "{shell}: {}", run.stdout());
        assert!(run.stdout().contains("inspect"), "{shell}");
        assert!(left.is_empty(), "completion {shell} left {left:?}");
    }
    // bash reads it: the function completes ocimodel's words.
    let run = Ocimodel::new().run(&["completion", "bash"]);
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "eval \"$SCRIPT\"; COMP_WORDS=(ocimodel insp); COMP_CWORD=1; _ocimodel ocimodel insp ocimodel; echo \"${COMPREPLY[*]}\"",
        ])
        .env("SCRIPT", run.stdout())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inspect");
    let run = Ocimodel::new().run(&["man"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains(".TH ocimodel 1"), "{}", run.stdout());
    assert!(run.stdout().contains("inspect"), "{}", run.stdout());
    let run = Ocimodel::new().run(&["completion", "nushell"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("possible values: bash"),
        "{}",
        run.stderr()
    );
}

/// `--help` is grouped under headings, and the download tuning is not
/// shown where it does nothing (inspect, referrers, push).
#[test]
fn help_is_grouped_and_shows_what_applies() {
    let help = |args: &[&str]| {
        let run = Ocimodel::new().run(args);
        assert_eq!(run.code(), 0, "{args:?}: {}", run.stderr());
        run.stdout()
    };
    let pull = help(&["pull", "--help"]);
    for heading in [
        "Registry access:",
        "Transfers:",
        "File selection:",
        "Signatures:",
        "Install:",
    ] {
        assert!(
            pull.contains(&format!("\n{heading}\n")),
            "pull lacks {heading}:\n{pull}"
        );
    }
    assert!(pull.contains("--range-size"));
    for cmd in ["inspect", "referrers", "push"] {
        let text = help(&[cmd, "--help"]);
        for hidden in [
            "--range-size",
            "--range-connections",
            "--split-below",
            "--host-connections",
        ] {
            assert!(!text.contains(hidden), "{cmd} shows {hidden}");
        }
    }
    assert!(!help(&["inspect", "--help"]).contains("--hf-repo"));
    let push = help(&["push", "--help"]);
    assert!(push.contains("Platform of a modelcar image"), "{push}");
    assert!(!push.contains("Platform to pick from an index"), "{push}");
}
