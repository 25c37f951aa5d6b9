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
/// usage error (exit 1, as every failure) with the nearest command, not a Docker Hub pull
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
        assert_eq!(run.code(), 1, "{args:?}: stderr:\n{}", run.stderr());
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

/// A registry on 127.0.0.1 serving one 3 MiB blob that, while `stall` is
/// set, sends its first MiB and then holds the connection; ranged GETs
/// get the rest. Every blob GET's Range header is recorded.
struct StallingRegistry {
    addr: String,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    blob: Vec<u8>,
}

impl StallingRegistry {
    const SENT_BEFORE_STALL: usize = 1 << 20;

    fn start() -> StallingRegistry {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let blob: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (manifest, digest) = one_blob_manifest(&blob);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let r = StallingRegistry {
            addr: listener.local_addr().unwrap().to_string(),
            stall: Default::default(),
            stalled: Default::default(),
            ranges: Default::default(),
            blob: blob.clone(),
        };
        let (stall, stalled, ranges) = (r.stall.clone(), r.stalled.clone(), r.ranges.clone());
        let blob = std::sync::Arc::new(blob);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (manifest, digest, blob) = (manifest.clone(), digest.clone(), blob.clone());
                let (stall, stalled, ranges) = (stall.clone(), stalled.clone(), ranges.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let (method, path) = {
                            let mut w = line.split_whitespace();
                            (
                                w.next().unwrap_or("").to_string(),
                                w.next().unwrap_or("").to_string(),
                            )
                        };
                        let mut range = None;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("range") {
                                    range = Some(v.trim().to_string());
                                }
                            }
                        }
                        let head = method == "HEAD";
                        if path.ends_with(&format!("/blobs/{digest}")) {
                            ranges.lock().unwrap().push(range.clone());
                            let from = range
                                .as_deref()
                                .and_then(|r| r.strip_prefix("bytes="))
                                .and_then(|r| r.split('-').next())
                                .and_then(|n| n.parse::<usize>().ok())
                                .unwrap_or(0);
                            let status = if from > 0 {
                                "206 Partial Content"
                            } else {
                                "200 OK"
                            };
                            let body = &blob[from..];
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {from}-{}/{}\r\nAccept-Ranges: bytes\r\n\r\n",
                                body.len(),
                                blob.len() - 1,
                                blob.len()
                            );
                            if from == 0 && stall.load(SeqCst) {
                                let _ =
                                    stream.write_all(&body[..StallingRegistry::SENT_BEFORE_STALL]);
                                let _ = stream.flush();
                                stalled.store(true, SeqCst);
                                std::thread::sleep(std::time::Duration::from_secs(30));
                                return;
                            }
                            if stream.write_all(body).is_err() {
                                return;
                            }
                            continue;
                        }
                        let (status, ctype, body): (&str, &str, &[u8]) =
                            if path.contains("/manifests/") {
                                (
                                    "200 OK",
                                    "application/vnd.oci.image.manifest.v1+json",
                                    manifest.as_bytes(),
                                )
                            } else if path == "/v2/" {
                                ("200 OK", "application/json", b"{}")
                            } else {
                                ("404 Not Found", "application/json", b"{}")
                            };
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nDocker-Content-Digest: {}\r\n\r\n",
                            body.len(),
                            if path.contains("/manifests/") {
                                format!("sha256:{}", sha256_hex(manifest.as_bytes()))
                            } else {
                                String::new()
                            }
                        );
                        if !head && stream.write_all(body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        r
    }
}

/// Runs ocimodel with its stderr on a terminal (`script` gives it a pty),
/// as a person on a laptop does; `input` is typed into that terminal once
/// `when` says so. Returns the exit code and what the terminal showed.
fn on_a_terminal(
    home: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    input: Option<(&[u8], &dyn Fn() -> bool)>,
) -> (i32, String) {
    use std::io::{Read, Write};
    let mut line = format!("exec {}", env!("CARGO_BIN_EXE_ocimodel"));
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SHELL", "/bin/sh")
        .env("HOME", home)
        .env("TERM", "dumb")
        .env("NO_PROXY", "*")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("script (util-linux) is installed");
    let mut stdin = child.stdin.take().unwrap();
    if let Some((bytes, when)) = input {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !when() {
            assert!(
                std::time::Instant::now() < deadline,
                "the moment never came"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out)
}

/// Ctrl-C on a laptop: `interrupted; run the same command again to
/// resume`, exit 130, and the rerun fetches only the rest, from the
/// per-user cache a terminal gets by default (~/.cache/ocimodel). Without a
/// terminal (a pod) there is no default cache.
#[test]
fn ctrl_c_on_a_laptop_resumes_from_the_per_user_cache() {
    use std::sync::atomic::Ordering::SeqCst;
    let reg = StallingRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    fs::create_dir(&home).unwrap();
    let uri = format!("{}/models/big:v1", reg.addr);
    let env = [("OCIMODEL_INSECURE_REGISTRIES", reg.addr.as_str())];

    // A pod (no terminal): no cache appears in HOME.
    let pod = work.path().join("pod");
    Ocimodel::new()
        .env("HOME", &home)
        .env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr)
        .run(&[&uri, pod.to_str().unwrap()])
        .assert_ok();
    assert!(!home.join(".cache").exists(), "a cache without a terminal");

    let dest = work.path().join("laptop");
    reg.stall.store(true, SeqCst);
    let stalled = || reg.stalled.load(SeqCst);
    let (code, shown) = on_a_terminal(
        &home,
        &env,
        &[&uri, dest.to_str().unwrap()],
        Some((b"\x03", &stalled)),
    );
    assert_eq!(code, 130, "{shown}");
    assert!(
        shown.contains("interrupted; run the same command again to resume"),
        "{shown}"
    );
    assert!(home.join(".cache/ocimodel/ingest").is_dir(), "{shown}");
    let partial: u64 = fs::read_dir(home.join(".cache/ocimodel/ingest/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(partial > 0, "nothing kept to resume: {shown}");

    assert!(!dest.join("w.bin").exists());

    reg.stall.store(false, SeqCst);
    let (code, shown) = on_a_terminal(&home, &env, &[&uri, dest.to_str().unwrap()], None);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("resuming a partial download"), "{shown}");
    assert_eq!(fs::read(dest.join("w.bin")).unwrap(), reg.blob);
    let ranges = reg.ranges.lock().unwrap().clone();
    let last = ranges.last().unwrap().clone().unwrap_or_default();
    let from: usize = last
        .trim_start_matches("bytes=")
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap_or(0);
    assert!(
        from > 0,
        "the rerun asked for the whole blob again: {ranges:?}"
    );

    // OCIMODEL_CACHE_DIR=off: no cache, even on a terminal.
    let other_home = work.path().join("other-home");
    fs::create_dir(&other_home).unwrap();
    let off = work.path().join("off");
    let env_off = [env[0], ("OCIMODEL_CACHE_DIR", "off")];
    let (code, shown) = on_a_terminal(&other_home, &env_off, &[&uri, off.to_str().unwrap()], None);
    assert_eq!(code, 0, "{shown}");
    assert!(!other_home.join(".cache").exists(), "{shown}");
    assert!(!off.join("off").exists());
}

/// `cargo run` (the README's demo) and `cargo test` put the build script's
/// rustc-env variables in the environment of what they run, where an
/// unknown `OCIMODEL_*` name is refused: the build must set none.
#[test]
fn the_build_sets_no_ocimodel_variable_for_cargo_run() {
    let stray: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("OCIMODEL_"))
        .collect();
    assert!(
        stray.is_empty(),
        "cargo passes these to `cargo run`, and the binary refuses them: {stray:?}"
    );
}

/// On a terminal a pull draws bars (the whole pull's and one per blob in
/// flight, with sizes, rate and ETA) and says an error once; `-q` draws
/// none and logs no info; in a pipe (a pod's log) there is no bar, only
/// log lines.
#[test]
fn progress_bars_on_a_terminal_and_not_in_a_pipe() {
    use std::sync::atomic::Ordering::SeqCst;
    let reg = StallingRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    fs::create_dir(&home).unwrap();
    let uri = format!("{}/models/big:v1", reg.addr);
    let env = [
        ("OCIMODEL_INSECURE_REGISTRIES", reg.addr.as_str()),
        ("OCIMODEL_CACHE_DIR", "off"),
        ("TERM", "xterm"),
    ];
    let stalled = || reg.stalled.load(SeqCst);

    // Stalled after 1 MiB of 3 MiB: the bars stand still on screen.
    reg.stall.store(true, SeqCst);
    let dest = work.path().join("tty");
    let (code, shown) = on_a_terminal(
        &home,
        &env,
        &["pull", &uri, dest.to_str().unwrap()],
        Some((b"\x03", &stalled)),
    );
    assert_eq!(code, 130, "{shown}");
    let whole = format!("pulling {uri} [");
    assert!(shown.contains(&whole), "no bar for the pull: {shown}");
    let blob_bar = shown
        .split(['\r', '\n'])
        .find(|l| l.contains("w.bin [") && l.contains("1.00 MiB/3.00 MiB"))
        .unwrap_or_else(|| panic!("no bar for w.bin at 1 of 3 MiB: {shown}"));
    assert!(
        blob_bar.contains("/s") && blob_bar.contains("ETA"),
        "{blob_bar}"
    );
    assert!(
        !shown.contains("progress: "),
        "a log line as well as bars: {shown}"
    );

    // -q: no bar, no info line; the interruption is still said.
    reg.stalled.store(false, SeqCst);
    let quiet = work.path().join("quiet");
    let (code, shown) = on_a_terminal(
        &home,
        &env,
        &["pull", "-q", &uri, quiet.to_str().unwrap()],
        Some((b"\x03", &stalled)),
    );
    assert_eq!(code, 130, "{shown}");
    assert!(shown.contains("interrupted"), "{shown}");
    assert!(
        !shown.contains("w.bin") && !shown.contains(&whole) && !shown.contains("INFO"),
        "-q showed progress or info: {shown}"
    );

    // An error on a terminal: said once, not as a log line and again.
    let missing = work.path().join("no-such-layout");
    let (code, shown) = on_a_terminal(
        &home,
        &env,
        &[
            &format!("oci-layout://{}", missing.display()),
            work.path().join("e").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{shown}");
    assert_eq!(
        shown.matches("is not an OCI image layout").count(),
        1,
        "{shown}"
    );
    assert!(!shown.contains("ERROR"), "{shown}");

    // A pipe: no bar, whatever happens; the numbers are in the log line.
    reg.stall.store(false, SeqCst);
    let pod = work.path().join("pod");
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr)
        .run(&[&uri, pod.to_str().unwrap()]);
    run.assert_ok();
    let err = run.stderr();
    assert!(
        !err.contains('\r') && !err.contains(" [="),
        "a bar in a pipe: {err}"
    );
    assert!(
        err.contains("fetched 3.0 MiB of 3.0 MiB (100%)")
            && err.contains(&format!("bytes_done={} bytes_total={}", 3 << 20, 3 << 20)),
        "{err}"
    );
}

/// JSON logs carry sizes and progress as numbers: `bytes_total` when the
/// pull starts, `bytes_done`/`bytes_total` every progress interval (a pod
/// has no bars) and when it is fetched.
#[test]
fn json_logs_carry_progress_as_numbers() {
    use std::sync::atomic::Ordering::SeqCst;
    let reg = StallingRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let uri = format!("{}/models/big:v1", reg.addr);
    let fields = |text: &str, message: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
            })
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .map(|v| v["fields"].clone())
            .collect()
    };

    // Stalled at 1 MiB of 3: the periodic line says so in numbers.
    reg.stall.store(true, SeqCst);
    let log = work.path().join("stderr.json");
    let mut o = Ocimodel::new().env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr);
    let mut child = o
        .cmd
        .args([
            "pull",
            "--log-format",
            "json",
            "--progress-interval",
            "1",
            &uri,
            work.path().join("stalled").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        "a progress line at 1 MiB",
        std::time::Duration::from_secs(30),
        || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            text.ends_with('\n')
                && fields(&text, "progress: ")
                    .iter()
                    .any(|f| f["bytes_done"].as_u64() == Some(1 << 20))
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let progress = fields(&text, "progress: ");
    assert!(
        progress
            .iter()
            .all(|f| f["bytes_total"].as_u64() == Some(3 << 20) && f["bytes_done"].is_u64()),
        "{text}"
    );
    assert_eq!(
        fields(&text, "pulling")[0]["bytes_total"].as_u64(),
        Some(3 << 20),
        "{text}"
    );

    reg.stall.store(false, SeqCst);
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr)
        .run(&[
            "pull",
            "--log-format",
            "json",
            &uri,
            work.path().join("m").to_str().unwrap(),
        ]);
    run.assert_ok();
    let fetched = fields(&run.stderr(), "fetched ");
    assert_eq!(fetched.len(), 1, "{}", run.stderr());
    assert_eq!(fetched[0]["bytes_done"].as_u64(), Some(3 << 20));
    assert_eq!(fetched[0]["bytes_total"].as_u64(), Some(3 << 20));
}

/// `push` shows the same: a bar on a terminal, numbers in JSON logs.
#[test]
fn push_shows_progress_on_a_terminal_and_numbers_in_json() {
    let reg = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    fs::create_dir(&home).unwrap();
    let model = work.path().join("model");
    fs::create_dir(&model).unwrap();
    let weights: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(model.join("weights.bin"), &weights).unwrap();
    let target = format!("{}/models/pushed:v1", reg.addr);
    let env = [
        ("OCIMODEL_INSECURE_REGISTRIES", reg.addr.as_str()),
        ("TERM", "xterm"),
    ];
    let (code, shown) = on_a_terminal(
        &home,
        &env,
        &["push", model.to_str().unwrap(), &target],
        None,
    );
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(&format!("pushing {target} [")),
        "no bar: {shown}"
    );

    let run = Ocimodel::new().insecure(&reg).run(&[
        "push",
        "--log-format",
        "json",
        model.to_str().unwrap(),
        &format!("{}/models/pushed:v2", reg.addr),
    ]);
    run.assert_ok();
    let err = run.stderr();
    assert!(!err.contains('\r'), "a bar in a pipe: {err}");
    // The blobs are in the registry already (v1): nothing to upload.
    assert!(!err.contains("\"uploaded "), "{err}");
    let run = Ocimodel::new().insecure(&reg).run(&[
        "push",
        "--log-format",
        "json",
        "--format",
        "oras",
        model.to_str().unwrap(),
        &format!("{}/models/other:v1", reg.addr),
    ]);
    run.assert_ok();
    let uploaded: Vec<serde_json::Value> = run
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("uploaded "))
        })
        .collect();
    assert_eq!(uploaded.len(), 1, "{}", run.stderr());
    let f = &uploaded[0]["fields"];
    assert!(
        f["bytes_total"].as_u64().is_some_and(|t| t >= 2 << 20),
        "{f}"
    );
    assert_eq!(f["bytes_done"], f["bytes_total"], "{f}");
}

/// One exit-status convention, stated in --help: 0 success (and help,
/// version), 1 every failure, usage errors included; 130 is Ctrl-C's
/// (ctrl_c_on_a_laptop_resumes_from_the_per_user_cache).
#[test]
fn exit_status_is_0_or_1_and_stated_in_help() {
    let help = Ocimodel::new().run(&["--help"]);
    assert_eq!(help.code(), 0);
    assert!(
        help.stdout().contains("Exit status: 0 success")
            && help.stdout().contains("130 interrupted"),
        "{}",
        help.stdout()
    );
    assert_eq!(Ocimodel::new().run(&["--version"]).code(), 0);
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().join("m");
    let d = d.to_str().unwrap();
    let layout = layout_uri();
    let usage_errors: &[&[&str]] = &[
        &[],
        &["pull", "--no-such-flag", &layout, d],
        &["pull", "--retries", "many", &layout, d],
        &["pull", &layout],
        &["inspcet", &layout],
        &["completion", "tcsh"],
    ];
    for args in usage_errors {
        let run = Ocimodel::new().run(args);
        assert_eq!(run.code(), 1, "{args:?}: {}", run.stderr());
        assert!(
            !run.termination.trim().is_empty(),
            "{args:?}: no termination line"
        );
    }
    let run = Ocimodel::new()
        .env("OCIMODEL_NO_SUCH", "1")
        .run(&[&layout, d]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(!Path::new(d).exists());
}

/// #32: `check` of a directory that does not exist says so, not that it
/// "has no completion marker" (which an empty directory gets).
#[test]
fn check_of_a_missing_directory_says_it_does_not_exist() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("nosuchdir");
    let run = Ocimodel::new().run(&["check", missing.to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(
        run.stdout().trim(),
        format!("{}: does not exist", missing.display())
    );
    let empty = work.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let run = Ocimodel::new().run(&["check", empty.to_str().unwrap()]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout().contains("has no completion marker"),
        "{}",
        run.stdout()
    );
}
