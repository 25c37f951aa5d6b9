//! Registry mirrors from the node's configuration, against real parts:
//! Debian's docker-registry as the upstream and, in proxy mode, as a real
//! pull-through cache; small fakes only for what no real part does here (a
//! Dragonfly-style mirror that routes by header, a mirror that lies, one
//! that 404s).

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;

/// The binary with the node's mirror configuration in `hosts` (a
/// containerd hosts.toml tree) only: no registries.conf.
fn via_hosts(hosts: &Path) -> Ocimodel {
    Ocimodel::new()
        .env("OCIMODEL_HOSTS_DIR", hosts)
        .env("OCIMODEL_REGISTRIES_CONF", "off")
}

fn pull_via(hosts: &Path, uri: &str, dest: &Path, insecure: &str) -> Run {
    via_hosts(hosts)
        .env("OCIMODEL_INSECURE_REGISTRIES", insecure)
        .pull(uri, dest)
}

/// Two "nodes", each with its own node cache, behind a pull-through
/// registry: the first costs the upstream the blob (twice: distribution 2.8
/// streams it to the client and stores its own copy with a second GET), the
/// second node costs it nothing.
#[test]
fn nodes_behind_a_pull_through_mirror_cost_the_upstream_once() {
    let (upstream, digest) = Registry::with_mnist();
    let mirror = Registry::start_proxy(&upstream.addr);
    let hosts = hosts_dir(&upstream.addr, &[(&format!("http://{}", mirror.addr), "")]);
    let work = tempfile::tempdir().unwrap();
    let uri = format!("{}/models/mnist@{digest}", upstream.addr);
    let insecure = format!("{},{}", upstream.addr, mirror.addr);
    let blob = format!("sha256:{MNIST_SHA256}");
    let mut after_first = 0;
    for node in ["node-a", "node-b"] {
        let dest = work.path().join(node).join("models");
        via_hosts(hosts.path())
            .env("OCIMODEL_INSECURE_REGISTRIES", &insecure)
            .env("OCIMODEL_CACHE_DIR", work.path().join(node).join("cache"))
            .pull(&uri, &dest)
            .assert_ok();
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
        if node == "node-a" {
            // The proxy's own copy is fetched in the background (a second
            // upstream GET) and is stored once it is linked into the
            // mirror's repository; from then on it serves the blob itself.
            let link = mirror
                .dir
                .path()
                .join("data/docker/registry/v2/repositories/models/mnist/_layers/sha256")
                .join(MNIST_SHA256)
                .join("link");
            wait_until(
                "the mirror to store its copy of the blob",
                std::time::Duration::from_secs(10),
                || link.is_file(),
            );
            after_first = upstream.blob_gets(&blob);
            assert_eq!(after_first, 2, "upstream GETs for the first node");
        }
    }
    assert_eq!(
        upstream.blob_gets(&blob),
        after_first,
        "the second node reached the upstream"
    );
    let through_mirror = mirror.get_responses(&format!("/blobs/{blob}?ns=")).len();
    assert_eq!(through_mirror, 2, "both nodes went through the mirror");
    // The requests carried the upstream as ?ns=, as containerd sends it.
    assert!(
        mirror
            .log()
            .contains(&format!("ns={}", upstream.addr.replace(':', "%3A"))),
        "{}",
        mirror.log()
    );
}

/// A dead mirror, one that 404s what it lacks (as Spegel does), and one that
/// lies (a corrupted blob): the pull still installs the right bytes, from
/// the next host.
#[test]
fn dead_missing_and_lying_mirrors_cannot_break_a_pull() {
    let (upstream, digest) = Registry::with_mnist();
    let up = upstream.addr.clone();
    // Lying: relays manifests, flips a byte in blobs.
    let liar = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap().to_string();
    let lies = Arc::new(Mutex::new(0usize));
    let count = lies.clone();
    serve(liar, move |req| {
        let path = req.path.split('?').next().unwrap_or("").to_string();
        let resp = http_get(
            &up,
            &path,
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        let mut body = resp.body.clone();
        if path.contains("/blobs/") && !body.is_empty() {
            body[0] ^= 0xff;
            *count.lock().unwrap() += 1;
        }
        response(
            &format!("{} X", resp.status),
            &[(
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            &body,
        )
    });
    let missing = TcpListener::bind("127.0.0.1:0").unwrap();
    let missing_addr = missing.local_addr().unwrap().to_string();
    serve(missing, |_| response("404 Not Found", &[], b""));
    let hosts = hosts_dir(
        &upstream.addr,
        &[
            ("http://127.0.0.1:9", ""),
            (&format!("http://{missing_addr}"), ""),
            (&format!("http://{liar_addr}"), ""),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let run = via_hosts(hosts.path())
        .env(
            "OCIMODEL_INSECURE_REGISTRIES",
            format!("{},{missing_addr},{liar_addr}", upstream.addr),
        )
        .env("OCIMODEL_CONNECT_TIMEOUT", "2")
        .pull(&format!("{}/models/mnist@{digest}", upstream.addr), &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(
        *lies.lock().unwrap() >= 1,
        "the lying mirror was never asked"
    );
    assert!(
        run.stderr().contains("served content that does not match"),
        "{}",
        run.stderr()
    );
    assert!(upstream.blob_gets(&format!("sha256:{MNIST_SHA256}")) >= 1);
    // The dead mirror is asked once and never retried: the next host is the
    // retry (with the default OCIMODEL_RETRIES it used to cost 30 s).
    let asked = |what: &str| {
        run.stderr()
            .lines()
            .filter(|l| l.contains(what) && l.contains("mirror=127.0.0.1:9"))
            .count()
    };
    assert_eq!(asked("not asking it again"), 1, "{}", run.stderr());
    assert_eq!(asked("mirror failed"), 1, "{}", run.stderr());
    assert!(!run.stderr().contains("retrying"), "{}", run.stderr());
}

/// What a fake mirror saw of one request: path, Authorization, routing header.
type Seen = (String, Option<String>, Option<String>);

/// A Dragonfly-style mirror on the node's loopback, which learns the
/// upstream from X-Dragonfly-Registry: the header and ?ns= reach it, the
/// registry's credentials never do, and OCIMODEL_NODE_IP rewrites its
/// loopback address (a pod's loopback is not the node's).
#[test]
fn a_dragonfly_style_mirror_gets_its_header_and_no_credentials() {
    let (open, digest) = Registry::with_mnist();
    let upstream = Registry::start_in(
        open.stop(),
        Auth::Basic {
            user: USER.into(),
            password: PASSWORD.into(),
        },
    );
    // The "node" address the pod would use: another loopback address.
    let dfdaemon = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = dfdaemon.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    serve(dfdaemon, move |req| {
        let routed = req
            .headers
            .iter()
            .find(|(k, _)| k == "x-dragonfly-registry")
            .map(|(_, v)| v.clone());
        log.lock()
            .unwrap()
            .push((req.path.clone(), req.authorization.clone(), routed));
        response("404 Not Found", &[], b"")
    });
    let hosts = hosts_dir(
        &upstream.addr,
        &[(
            &format!("http://127.0.0.1:{port}"),
            &format!(
                "[host.\"http://127.0.0.1:{port}\".header]\nX-Dragonfly-Registry = \"http://{}\"",
                upstream.addr
            ),
        )],
    );
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    via_hosts(hosts.path())
        .env("OCIMODEL_NODE_IP", "127.0.0.2")
        .env("OCIMODEL_INSECURE_REGISTRIES", &upstream.addr)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &upstream.addr),
        )
        .pull(&format!("{}/models/mnist@{digest}", upstream.addr), &dest)
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "the mirror (rewritten to the node IP) was never asked"
    );
    let want = format!("http://{}", upstream.addr);
    for (path, auth, routed) in &seen {
        assert!(
            path.contains(&format!("ns={}", upstream.addr.replace(':', "%3A"))),
            "{path}"
        );
        assert!(auth.is_none(), "the mirror got credentials: {seen:?}");
        assert_eq!(
            routed.as_deref(),
            Some(want.as_str()),
            "X-Dragonfly-Registry: {seen:?}"
        );
    }
}

/// registries.conf: a digest-only mirror serves pinned pulls; a tag goes to
/// the registry; a blocked prefix is refused.
#[test]
fn registries_conf_mirrors_by_digest_and_blocks() {
    let (upstream, digest) = Registry::with_mnist();
    let mirror = Registry::start_proxy(&upstream.addr);
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("registries.conf");
    fs::write(
        &file,
        format!(
            "[[registry]]\nprefix = \"{up}/models\"\nlocation = \"{up}/models\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{m}/models\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n\n[[registry]]\nprefix = \"{up}/secret\"\nblocked = true\n",
            up = upstream.addr,
            m = mirror.addr
        ),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let pull = |uri: String, name: &str| {
        Ocimodel::new()
            .env("OCIMODEL_HOSTS_DIR", "off")
            .env("OCIMODEL_REGISTRIES_CONF", &file)
            .env("OCIMODEL_INSECURE_REGISTRIES", &upstream.addr)
            .pull(uri.as_str(), &work.path().join(name))
    };
    pull(format!("{}/models/mnist@{digest}", upstream.addr), "pinned").assert_ok();
    assert!(
        mirror
            .log()
            .contains(&format!("/blobs/sha256:{MNIST_SHA256}")),
        "the digest went to the mirror"
    );
    let before = mirror
        .log()
        .lines()
        .filter(|l| l.contains("/manifests/v1"))
        .count();
    pull(format!("{}/models/mnist:v1", upstream.addr), "tag").assert_ok();
    let after = mirror
        .log()
        .lines()
        .filter(|l| l.contains("/manifests/v1"))
        .count();
    assert_eq!(before, after, "a tag went to a digest-only mirror");
    pull(format!("{}/secret/x:v1", upstream.addr), "blocked")
        .assert_fails_with(&["is blocked by registries.conf"]);
}

/// A mirror serving HTTPS under a private CA: trusted through its
/// hosts.toml `ca` or `skip_verify`, and otherwise skipped (the pull falls
/// back to the registry, never fails for it).
#[test]
fn a_mirror_behind_a_private_ca_uses_its_own_tls_settings() {
    let (upstream, digest) = Registry::with_mnist();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let mirror = Registry::start_tls_proxy(
        &upstream.addr,
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let url = format!("https://{}", mirror.addr);
    let blob_via_mirror = || {
        mirror
            .get_responses(&format!("/blobs/sha256:{MNIST_SHA256}?ns="))
            .len()
    };
    let work = tempfile::tempdir().unwrap();
    let uri = format!("{}/models/mnist@{digest}", upstream.addr);
    for (name, extra, via_mirror) in [
        ("untrusted", "", false),
        ("ca", "ca = \"ca.pem\"", true),
        ("skip-verify", "skip_verify = true", true),
    ] {
        let hosts = hosts_dir(&upstream.addr, &[(&url, extra)]);
        let sub = fs::read_dir(hosts.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::copy(certs.path().join("ca.pem"), sub.join("ca.pem")).unwrap();
        let before = blob_via_mirror();
        let dest = work.path().join(name);
        let run = pull_via(hosts.path(), &uri, &dest, &upstream.addr);
        run.assert_ok();
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
        assert_eq!(
            blob_via_mirror() > before,
            via_mirror,
            "{name}; stderr:\n{}",
            run.stderr()
        );
    }
}

/// containerd itself (Debian's containerd 1.6 and `ctr content fetch
/// --hosts-dir`) reading the same hosts.toml files: a recording mirror
/// (that has nothing, so both fall back to the registry) must see the same
/// manifest and blob paths, with the same `?ns=`, from both; with
/// `capabilities = ["pull"]` neither may ask it to resolve the tag.
#[test]
fn our_reading_of_hosts_toml_matches_containerd() {
    require_root("running containerd");
    let (upstream, digest) = Registry::with_mnist();
    let work = tempfile::tempdir().unwrap();
    // A fresh containerd (empty content store) for every fetch.
    let fetches = std::sync::atomic::AtomicUsize::new(0);
    let ctr_fetch = |hosts: &Path, reference: &str| {
        let n = fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Containerd::start(&work.path().join(format!("containerd-{n}"))).fetch(hosts, reference);
    };
    for (name, caps, path) in [
        ("resolve", "[\"pull\", \"resolve\"]", ""),
        ("pull-only", "[\"pull\"]", ""),
        ("override", "[\"pull\", \"resolve\"]", "/custom/api"),
    ] {
        let recorder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = recorder.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        serve(recorder, move |req| {
            log.lock().unwrap().push(req.path.clone());
            response("404 Not Found", &[], b"")
        });
        let extra = if path.is_empty() {
            String::new()
        } else {
            "override_path = true".into()
        };
        let dir = tempfile::tempdir().unwrap();
        let (host, port) = upstream.addr.split_once(':').unwrap();
        let sub = dir.path().join(format!("{host}_{port}_"));
        fs::create_dir(&sub).unwrap();
        fs::write(
            sub.join("hosts.toml"),
            format!(
                "server = \"http://{up}\"\n\n[host.\"http://{addr}{path}\"]\ncapabilities = {caps}\n{extra}\n",
                up = upstream.addr
            ),
        )
        .unwrap();
        // A tag: the mirror resolves it only with the resolve capability.
        // What the mirror was asked for: by ocimodel, then by containerd.
        let both_fetch = |reference: &str, dest: &str| {
            ctr_fetch(dir.path(), reference);
            let theirs = std::mem::take(&mut *seen.lock().unwrap());
            pull_via(
                dir.path(),
                reference,
                &work.path().join(dest),
                &upstream.addr,
            )
            .assert_ok();
            let ours = std::mem::take(&mut *seen.lock().unwrap());
            (ours, theirs)
        };
        let tag = format!("{}/models/mnist:v1", upstream.addr);
        let (ours, theirs) = both_fetch(&tag, &format!("{name}-tag"));
        let asked_tag = |v: &[String]| v.iter().any(|p| p.contains("/manifests/v1"));
        assert_eq!(
            asked_tag(&ours),
            asked_tag(&theirs),
            "{name}: ours {ours:?}, containerd's {theirs:?}"
        );
        assert_eq!(asked_tag(&ours), name != "pull-only", "{name}: {ours:?}");
        // A digest (ocimodel's normal case): manifests and blobs on pull
        // hosts. Everything we asked the mirror for, containerd asked too,
        // in the same form (it asks for more: the config blob our
        // descriptor embeds).
        let pinned = format!("{}/models/mnist@{digest}", upstream.addr);
        let (ours, theirs) = both_fetch(&pinned, &format!("{name}-digest"));
        let distinct = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        assert!(!ours.is_empty(), "{name}: we never asked the mirror");
        assert!(
            distinct(&ours).is_subset(&distinct(&theirs)),
            "{name}: ours {ours:?}, containerd's {theirs:?}"
        );
        let ns = format!("ns={}", upstream.addr.replace(':', "%3A"));
        let root = if path.is_empty() { "/v2/" } else { path };
        assert!(
            ours.iter().all(|p| p.contains(&ns) && p.starts_with(root)),
            "{ours:?}"
        );
    }
}

/// A throwaway containerd daemon (CRI off) in `dir`, for `ctr`.
struct Containerd {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let root = dir.join("containerd");
        fs::create_dir_all(&root).unwrap();
        let config = root.join("config.toml");
        fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .unwrap();
        let socket = root.join("containerd.sock");
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(root.join("root"))
            .arg("--state")
            .arg(root.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("containerd is installed (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Containerd { child, socket }
    }

    fn fetch(&self, hosts_dir: &Path, reference: &str) {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args([
                "--namespace",
                "ocimodel-test",
                "content",
                "fetch",
                "--plain-http",
                "--hosts-dir",
            ])
            .arg(hosts_dir)
            .arg(reference)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr content fetch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// skopeo (containers/image) reading the same registries.conf: a recording
/// mirror that has nothing sees the same paths from both, for a digest
/// reference through a `location`-rewriting mirror.
#[test]
fn our_reading_of_registries_conf_matches_skopeo() {
    let (upstream, digest) = Registry::with_mnist();
    let recorder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = recorder.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    serve(recorder, move |req| {
        log.lock().unwrap().push(req.path.clone());
        // A registry that has nothing: it answers the ping, 404s the rest.
        if req.path == "/v2/" {
            return response("200 OK", &[], b"{}");
        }
        response("404 Not Found", &[], b"")
    });
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("registries.conf");
    fs::write(
        &file,
        format!(
            "[[registry]]\nprefix = \"{up}/models\"\nlocation = \"{up}/models\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{addr}/cache/models\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n",
            up = upstream.addr
        ),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("skopeo")
        .arg("--registries-conf")
        .arg(&file)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/models/mnist@{digest}", upstream.addr))
        .arg(format!("oci:{}:x", work.path().join("layout").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = std::mem::take(&mut *seen.lock().unwrap());
    Ocimodel::new()
        .env("OCIMODEL_HOSTS_DIR", "off")
        .env("OCIMODEL_REGISTRIES_CONF", &file)
        .pull(
            &format!("{}/models/mnist@{digest}", upstream.addr),
            &work.path().join("ours"),
        )
        .assert_ok();
    let ours = std::mem::take(&mut *seen.lock().unwrap());
    let manifest_path = format!("/v2/cache/models/mnist/manifests/{digest}");
    assert!(theirs.contains(&manifest_path), "skopeo: {theirs:?}");
    assert!(ours.contains(&manifest_path), "ours: {ours:?}");
    let distinct = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert!(
        distinct(&ours).is_subset(&distinct(&theirs)),
        "ours {ours:?}, skopeo's {theirs:?}"
    );
}

/// S3-7: a mirror that sends a blob's headers and its first bytes, then
/// stalls (a wedged pull-through cache, an overloaded dfdaemon), is left
/// like a dead one: the download resumes from the registry at the bytes
/// already verified, instead of asking the stalled mirror again until the
/// pull fails.
#[test]
fn a_mirror_that_stalls_mid_blob_is_left_for_the_registry() {
    use std::io::{BufRead, BufReader, Write};
    let (upstream, digest) = Registry::with_mnist();
    let up = upstream.addr.clone();
    let blob = format!("sha256:{MNIST_SHA256}");
    let stalling = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalling_addr = stalling.local_addr().unwrap().to_string();
    let blob_asks = Arc::new(Mutex::new(Vec::<String>::new()));
    let asks = blob_asks.clone();
    std::thread::spawn(move || {
        for conn in stalling.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (up, asks) = (up.clone(), asks.clone());
            // A thread per connection: a stalled one holds only itself.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let Some(path) = head.first().and_then(|l| l.split_whitespace().nth(1)) else {
                    return;
                };
                let path = path.split('?').next().unwrap_or("").to_string();
                let resp = http_get(
                    &up,
                    &path,
                    &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                );
                if !path.contains("/blobs/") || resp.status != 200 {
                    let _ = conn.write_all(&response(
                        &format!("{} X", resp.status),
                        &[(
                            "Content-Type",
                            "application/vnd.oci.image.manifest.v1+json".into(),
                        )],
                        &resp.body,
                    ));
                    return;
                }
                let range = head.iter().find_map(|h| {
                    h.to_ascii_lowercase()
                        .strip_prefix("range: ")
                        .map(str::to_string)
                });
                asks.lock().unwrap().push(range.clone().unwrap_or_default());
                let from = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0);
                let total = resp.body.len();
                let head = match range {
                    Some(_) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{total}\r\n\r\n",
                        total - from,
                        total - 1
                    ),
                    None => format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n"),
                };
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&resp.body[from..(from + 1000).min(total)]);
                let _ = conn.flush();
                // Then nothing, for longer than the pull may take.
                std::thread::sleep(std::time::Duration::from_secs(60));
            });
        }
    });
    let hosts = hosts_dir(&upstream.addr, &[(&format!("http://{stalling_addr}"), "")]);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("m");
    let started = std::time::Instant::now();
    let run = via_hosts(hosts.path())
        .env(
            "OCIMODEL_INSECURE_REGISTRIES",
            format!("{},{stalling_addr}", upstream.addr),
        )
        .env("OCIMODEL_STALL_TIMEOUT", "2")
        .pull(&format!("{}/models/mnist@{digest}", upstream.addr), &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert_eq!(
        *blob_asks.lock().unwrap(),
        vec![String::new()],
        "the stalled mirror was asked again; stderr:\n{}",
        run.stderr()
    );
    // The rest came from the registry, from where the mirror stopped.
    let resumed = upstream.get_responses(&format!("/blobs/{blob}"));
    assert!(
        resumed.iter().any(|(status, _)| *status == 206),
        "{resumed:?}; stderr:\n{}",
        run.stderr()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// What a plain-http listener saw of one connection: its request line and
/// Authorization, or `None` for a TLS handshake.
type PlainSeen = Option<(String, Option<String>)>;

/// A plain-http host on 127.0.0.2 that wants Basic credentials and has
/// nothing (401 without them, 404 with them), recording every connection;
/// a TLS handshake is recorded as `None` and closed.
fn basic_host_with_nothing() -> (String, Arc<Mutex<Vec<PlainSeen>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.2:0").expect("127.0.0.0/8 is loopback on Linux");
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<PlainSeen>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut first = [0u8; 1];
                if conn.peek(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                if first[0] == 0x16 {
                    log.lock().unwrap().push(None);
                    let _ = conn.read(&mut [0u8; 4096]);
                    return;
                }
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let mut auth = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            auth = Some(v.trim().to_string());
                        }
                    }
                }
                let reply = match auth {
                    None => response(
                        "401 Unauthorized",
                        &[("WWW-Authenticate", "Basic realm=\"r2\"".into())],
                        b"",
                    ),
                    Some(_) => response("404 Not Found", &[], b""),
                };
                log.lock()
                    .unwrap()
                    .push(Some((line.trim_end().to_string(), auth)));
                let _ = conn.write_all(&reply);
            });
        }
    });
    (addr, seen)
}

/// A child ModelKit on `reg` whose model is the parent kit `parent`.
fn child_kit(reg: &Registry, repo: &str, parent: &str) -> String {
    reg.push_artifact(
        &format!("{repo}:v1"),
        &serde_json::json!({
            "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "json": {
                "manifestVersion": "1.0.0",
                "package": {"name": "child"},
                "model": {"name": "child", "path": parent},
                "code": [{"path": "ft", "digest": "$digest:0"}]
            }},
            "layers": [
                {"mediaType": "application/vnd.kitops.modelkit.code.v1.tar",
                 "tar": [{"name": "ft", "type": "dir"}, {"name": "ft/train.py", "data": "fit()\n"}]}
            ]
        }),
    );
    format!("{}/{repo}@{}", reg.addr, reg.digest_of(repo, "v1"))
}

/// S3-8: a host's hosts.toml settings as some registry's mirror (plain
/// http, `skip_verify`) apply to it in that role only. Reached as a
/// registry in the same run (here a KitOps parent kit on it, which the
/// child's publisher chooses), it is https with verified certificates, as
/// when it is pulled from alone: its credentials never go in clear.
#[test]
fn a_mirror_s_transport_settings_do_not_follow_its_host_into_other_roles() {
    let upstream = Registry::start(Auth::None);
    let work = tempfile::tempdir().unwrap();

    // A plain-http mirror with credentials of its own.
    let (plain, seen) = basic_host_with_nothing();
    let child = child_kit(&upstream, "kits/child", &format!("{plain}/kits/parent:v1"));
    let hosts = hosts_dir(&upstream.addr, &[(&format!("http://{plain}"), "")]);
    let run = via_hosts(hosts.path())
        .env("OCIMODEL_INSECURE_REGISTRIES", &upstream.addr)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config("bob", "R2secret", &plain),
        )
        .pull(&child, &work.path().join("plain"));
    let seen = seen.lock().unwrap().clone();
    // As the mirror it is asked over plain http, as configured...
    assert!(
        seen.iter()
            .flatten()
            .any(|(line, _)| line.contains("/v2/kits/child/manifests/")),
        "{seen:?}; stderr:\n{}",
        run.stderr()
    );
    // ...as a registry, never.
    let in_clear: Vec<_> = seen
        .iter()
        .flatten()
        .filter(|(line, _)| line.contains("/kits/parent/"))
        .collect();
    assert!(
        in_clear.is_empty(),
        "plain http as a registry: {in_clear:?}"
    );
    assert!(seen.contains(&None), "never asked over https: {seen:?}");
    run.assert_fails_with(&[&format!("parent kit {plain}/kits/parent:v1")]);

    // A `skip_verify` mirror (a real pull-through cache under a private
    // CA): its certificate goes unchecked as the mirror, and is checked as
    // a registry.
    upstream.push_artifact(
        "kits/parent:v1",
        &serde_json::json!({
            "config": {"mediaType": "application/vnd.kitops.modelkit.config.v1+json", "json": {
                "manifestVersion": "1.0.0",
                "package": {"name": "parent"},
                "model": {"name": "parent", "path": "m.gguf", "digest": "$digest:0"}
            }},
            "layers": [
                {"mediaType": "application/vnd.kitops.modelkit.model.v1.tar",
                 "tar": [{"name": "m.gguf", "data": "GGUF"}]}
            ]
        }),
    );
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let mirror = Registry::start_tls_proxy(
        &upstream.addr,
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let child = child_kit(
        &upstream,
        "kits/child-tls",
        &format!("{}/kits/parent:v1", mirror.addr),
    );
    let hosts = hosts_dir(
        &upstream.addr,
        &[(&format!("https://{}", mirror.addr), "skip_verify = true")],
    );
    let run = pull_via(
        hosts.path(),
        &child,
        &work.path().join("tls"),
        &upstream.addr,
    );
    assert!(
        mirror
            .log()
            .contains("/v2/kits/child-tls/manifests/sha256:"),
        "the skip_verify mirror was not used as the mirror; stderr:\n{}",
        run.stderr()
    );
    run.assert_fails_with(&[&format!("parent kit {}/kits/parent:v1", mirror.addr)]);
    assert!(
        run.stderr().to_lowercase().contains("certificate"),
        "{}",
        run.stderr()
    );
}

/// OCIMODEL_NODE_IP stands for the node's loopback only where a mirror's
/// host is loopback, the whole host: a mirror at 127.0.0.10 stays there
/// (matched by prefix, it became `<ip>0:PORT`).
#[test]
fn the_node_ip_replaces_only_a_whole_loopback_host() {
    let (upstream, digest) = Registry::with_mnist();
    let mirror = TcpListener::bind("127.0.0.10:0").expect("127.0.0.0/8 is loopback on Linux");
    let port = mirror.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    serve(mirror, move |req| {
        log.lock().unwrap().push(req.path.clone());
        response("404 Not Found", &[], b"")
    });
    let hosts = hosts_dir(
        &upstream.addr,
        &[(&format!("http://127.0.0.10:{port}"), "")],
    );
    let work = tempfile::tempdir().unwrap();
    let run = via_hosts(hosts.path())
        .env("OCIMODEL_NODE_IP", "127.0.0.2")
        .env("OCIMODEL_INSECURE_REGISTRIES", &upstream.addr)
        .env("OCIMODEL_CONNECT_TIMEOUT", "2")
        .pull(
            &format!("{}/models/mnist@{digest}", upstream.addr),
            &work.path().join("m"),
        );
    run.assert_ok();
    assert!(
        !seen.lock().unwrap().is_empty(),
        "the mirror at 127.0.0.10 was never asked; stderr:\n{}",
        run.stderr()
    );
}
