//! Big blobs over several connections: parallel ranged GETs against Debian's
//! docker-registry (directly, through a pull-through mirror, and through
//! small TCP proxies that count connections, strip `Range` or cut a
//! transfer), and against an in-process fake where no real part behaves like
//! object storage: a registry that redirects blob GETs to presigned URLs
//! which refuse credentials and expire.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

const MIB: usize = 1 << 20;
/// Six ranges of 1 MiB each.
const SIZE: usize = 6 * MIB;

fn weights() -> Vec<u8> {
    (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

/// A registry holding an ORAS model with `weights.bin`; returns it, the
/// manifest digest, the blob digest and the bytes.
fn model() -> (Registry, String, String, Vec<u8>) {
    let reg = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let weights = weights();
    fs::write(dir.path().join("weights.bin"), &weights).unwrap();
    let digest = reg.ocimodel_push(&[
        dir.path().to_str().unwrap(),
        &format!("{}/models/big:v1", reg.addr),
        "--format",
        "oras",
    ]);
    (
        reg,
        digest,
        format!("sha256:{}", sha256_hex(&weights)),
        weights,
    )
}

/// ocimodel cutting blobs into 1 MiB ranges, and splitting them whatever
/// the first range's speed (loopback is faster than any far link).
fn ranged() -> Ocimodel {
    Ocimodel::new()
        .env("OCIMODEL_RANGE_SIZE", "1M")
        .env("OCIMODEL_SPLIT_BELOW", "1T")
}

#[track_caller]
fn installed(dest: &Path, weights: &[u8]) {
    assert!(
        fs::read(dest.join("weights.bin")).unwrap() == weights,
        "weights.bin differs"
    );
    Ocimodel::new()
        .run(&["check", dest.to_str().unwrap()])
        .assert_ok();
}

/// A TCP proxy to `upstream` counting the connections clients open;
/// `tamper` may rewrite each request head, and `cut_after(n)` closes the
/// n-th connection (0-based) after that many response bytes.
struct Proxy {
    addr: String,
    opened: Arc<AtomicUsize>,
}

fn proxy(
    upstream: &str,
    tamper: impl Fn(&str) -> String + Send + Sync + 'static,
    cut_after: impl Fn(usize) -> Option<usize> + Send + Sync + 'static,
) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    let upstream = upstream.to_string();
    let tamper = Arc::new(tamper);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let tamper = tamper.clone();
            // Requests: GETs have no body, so head by head.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(c_in);
                while let Some(head) = request_head(&mut reader) {
                    if s_out.write_all(tamper(&head).as_bytes()).is_err() {
                        return;
                    }
                }
            });
            let limit = cut_after(n);
            std::thread::spawn(move || {
                let (mut s_in, mut c_out) = (server, client);
                let mut sent = 0;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let want = limit.map_or(buf.len(), |l| buf.len().min(l - sent));
                    match s_in.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if c_out.write_all(&buf[..k]).is_err() {
                                break;
                            }
                            sent += k;
                            if limit == Some(sent) {
                                break;
                            }
                        }
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
                let _ = s_in.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Proxy { addr, opened }
}

/// The next request head on a connection (GETs have no body), or `None`
/// when the client is gone.
fn request_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

fn untouched(head: &str) -> String {
    head.to_string()
}

fn pull(o: Ocimodel, host: &str, digest: &str, dest: &Path) -> Run {
    o.env("OCIMODEL_INSECURE_REGISTRIES", host)
        .pull(&format!("{host}/models/big@{digest}"), dest)
}

/// A big blob is fetched as back-to-back ranges over several connections at
/// once, and no more connections than OCIMODEL_HOST_CONNECTIONS allows.
#[test]
fn a_big_blob_comes_in_parallel_ranges_within_the_host_cap() {
    let (reg, digest, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let p = proxy(&reg.addr, untouched, |_| None);
    let dest = work.path().join("parallel");
    pull(
        ranged().env("OCIMODEL_RANGE_CONNECTIONS", "4"),
        &p.addr,
        &digest,
        &dest,
    )
    .assert_ok();
    installed(&dest, &weights);
    assert_eq!(
        reg.blob_responses(&blob),
        vec![(206, MIB as u64); 6],
        "six 1 MiB ranges, each fetched once"
    );
    let parallel = p.opened.load(Ordering::SeqCst);
    assert!(
        parallel >= 3,
        "ranges went over {parallel} connection(s), not in parallel"
    );

    let capped = proxy(&reg.addr, untouched, |_| None);
    let dest = work.path().join("capped");
    pull(
        ranged()
            .env("OCIMODEL_RANGE_CONNECTIONS", "4")
            .env("OCIMODEL_HOST_CONNECTIONS", "1"),
        &capped.addr,
        &digest,
        &dest,
    )
    .assert_ok();
    installed(&dest, &weights);
    let opened = capped.opened.load(Ordering::SeqCst);
    assert!(
        opened <= 2,
        "one connection allowed per host, {opened} opened"
    );
}

/// On a link where one connection is fast enough (`OCIMODEL_SPLIT_BELOW`),
/// the first range shows it and the rest comes as one stream: no request
/// per range for the registry to serve. (The threshold is set low here:
/// loopback under a busy test run can dip below the default 128M.)
#[test]
fn a_fast_connection_takes_the_rest_as_one_stream() {
    let (reg, digest, blob, weights) = model();
    let dest = tempfile::tempdir().unwrap();
    pull(
        Ocimodel::new()
            .env("OCIMODEL_RANGE_SIZE", "1M")
            .env("OCIMODEL_SPLIT_BELOW", "1M"),
        &reg.addr,
        &digest,
        dest.path(),
    )
    .assert_ok();
    installed(dest.path(), &weights);
    assert_eq!(
        reg.blob_responses(&blob),
        vec![(206, MIB as u64), (206, (SIZE - MIB) as u64)]
    );
}

/// A registry (or proxy) that ignores `Range` and answers 200 with the whole
/// blob is read as one stream, once.
#[test]
fn a_server_ignoring_range_is_read_as_one_stream() {
    let (reg, digest, blob, weights) = model();
    let strip = |head: &str| {
        head.lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("range:"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
    };
    let p = proxy(&reg.addr, strip, |_| None);
    let dest = tempfile::tempdir().unwrap();
    let run = pull(ranged(), &p.addr, &digest, dest.path());
    run.assert_ok();
    installed(dest.path(), &weights);
    assert_eq!(reg.blob_responses(&blob), vec![(200, SIZE as u64)]);
    assert!(
        run.stderr()
            .contains("the registry ignored Range; one stream"),
        "{}",
        run.stderr()
    );
}

/// A range cut mid-way asks again for the rest of that range only; the
/// other ranges are not fetched again.
#[test]
fn a_range_cut_midway_fetches_only_its_rest() {
    let (reg, digest, blob, weights) = model();
    // The second connection carries a range (the first carried the
    // manifest); it dies 300 KB into its answer.
    let p = proxy(&reg.addr, untouched, |n| (n == 1).then_some(300_000));
    let dest = tempfile::tempdir().unwrap();
    let run = pull(
        ranged().env("OCIMODEL_RANGE_CONNECTIONS", "2"),
        &p.addr,
        &digest,
        dest.path(),
    );
    run.assert_ok();
    installed(dest.path(), &weights);
    let stderr = run.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("asking for the rest of the range"))
        .unwrap_or_else(|| panic!("no range was cut: {stderr}"));
    let received: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("received="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(received > 0 && received < MIB as u64, "{line}");
    let served = reg.blob_responses(&blob);
    assert!(
        served.contains(&(206, MIB as u64 - received)),
        "the rest of the cut range was not asked for alone: {served:?}"
    );
    // Six ranges and the rest of the cut one; nothing else again. (The cut
    // GET may be logged whole: the registry had written it to the socket.)
    assert_eq!(served.len(), 7, "{served:?}");
}

/// A pull-through mirror (distribution's proxy mode) that does not hold the
/// blob yet answers a range with the whole blob: one stream. Once it holds
/// it, the next node's pull takes it from the mirror in ranges, and the
/// upstream serves nothing more.
#[test]
fn ranges_come_from_a_warm_mirror() {
    let (upstream, digest, blob, weights) = model();
    let mirror = Registry::start_proxy(&upstream.addr);
    let hosts = hosts_dir(&upstream.addr, &[(&format!("http://{}", mirror.addr), "")]);
    let work = tempfile::tempdir().unwrap();
    let via_mirror = |node: &str| {
        let dest = work.path().join(node);
        let run = ranged()
            .env("OCIMODEL_HOSTS_DIR", hosts.path())
            .env("OCIMODEL_REGISTRIES_CONF", "off")
            .env(
                "OCIMODEL_INSECURE_REGISTRIES",
                format!("{},{}", upstream.addr, mirror.addr),
            )
            .pull(&format!("{}/models/big@{digest}", upstream.addr), &dest);
        run.assert_ok();
        installed(&dest, &weights);
        run
    };
    via_mirror("node-a");
    assert_eq!(
        mirror_responses(&mirror, &blob),
        vec![(200, SIZE as u64)],
        "the cold mirror streams the whole blob whatever the range"
    );
    // The mirror stores its own copy in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mirror_holds(&mirror, &blob).is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        mirror_holds(&mirror, &blob).is_some(),
        "the mirror never stored the blob"
    );
    let upstream_before = upstream.blob_egress(&blob);
    let mirror_before = mirror_responses(&mirror, &blob).len();
    via_mirror("node-b");
    let warm = mirror_responses(&mirror, &blob).split_off(mirror_before);
    assert_eq!(
        warm,
        vec![(206, MIB as u64); 6],
        "node-b's GETs at the mirror"
    );
    assert_eq!(
        upstream.blob_egress(&blob),
        upstream_before,
        "node-b reached the upstream"
    );
}

/// The mirror's blob GETs (its requests carry `?ns=`), as (status, bytes).
fn mirror_responses(mirror: &Registry, blob: &str) -> Vec<(u16, u64)> {
    mirror.get_responses(&format!("/blobs/{blob}?ns="))
}

fn mirror_holds(mirror: &Registry, blob: &str) -> Option<()> {
    mirror.blob_data_path(&blob[7..]).exists().then_some(())
}

/// What the fake object store saw: each request's Authorization and
/// answer status.
type Seen = Arc<Mutex<Vec<(Option<String>, u16)>>>;

/// A registry that demands Basic auth (`basic_registry`) and answers the
/// blob's GETs with a 307 to a presigned URL on another host (127.0.0.2), as
/// ECR, GAR and ACR do; each URL is good for `uses` requests, then the store
/// answers 403 (expired). The store refuses any request carrying
/// Authorization (400), as S3 does for a presigned URL. Returns the
/// registry address, its blob GET count and what the store saw.
fn redirecting_registry(
    manifest: String,
    blob: Vec<u8>,
    uses: usize,
) -> (String, Arc<AtomicUsize>, Seen) {
    let digest = format!("sha256:{}", sha256_hex(&blob));
    let store = TcpListener::bind("127.0.0.2:0").expect("127.0.0.0/8 is loopback on Linux");
    let store_addr = store.local_addr().unwrap().to_string();
    let issued: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen: Seen = Arc::default();
    let (issued_s, seen_s) = (issued.clone(), seen.clone());
    serve(store, move |req| {
        let token: usize = req
            .path
            .split_once("?token=")
            .and_then(|(_, t)| t.parse().ok())
            .unwrap_or(usize::MAX);
        let fresh = issued_s.lock().unwrap().get_mut(token).is_some_and(|left| {
            let ok = *left > 0;
            *left = left.saturating_sub(1);
            ok
        });
        let (status, answer) = match ranged_body(req, &blob) {
            _ if req.authorization.is_some() => (
                400,
                response("400 Bad Request", &[], b"Only one auth mechanism allowed"),
            ),
            _ if !fresh => (403, response("403 Forbidden", &[], b"Request has expired")),
            Some((range, body)) => (
                206,
                response("206 Partial Content", &[("Content-Range", range)], &body),
            ),
            None => (200, response("200 OK", &[], &blob)),
        };
        seen_s
            .lock()
            .unwrap()
            .push((req.authorization.clone(), status));
        answer
    });
    let gets = Arc::new(AtomicUsize::new(0));
    let count = gets.clone();
    let addr = basic_registry(move |req| {
        if req.path == "/v2/m/manifests/v1" {
            manifest_response(&manifest)
        } else if req.path == format!("/v2/m/blobs/{digest}") {
            count.fetch_add(1, Ordering::SeqCst);
            let mut issued = issued.lock().unwrap();
            issued.push(uses);
            let url = format!("http://{store_addr}/bucket/blob?token={}", issued.len() - 1);
            response("307 Temporary Redirect", &[("Location", url)], b"")
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    (addr, gets, seen)
}

/// The `Content-Range` and bytes a `Range: bytes=A-B` request asks for.
fn ranged_body(req: &Request, blob: &[u8]) -> Option<(String, Vec<u8>)> {
    let spec = req
        .headers
        .iter()
        .find(|(k, _)| k == "range")?
        .1
        .strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = b
        .parse()
        .map_or(blob.len() - 1, |b: usize| b.min(blob.len() - 1));
    Some((
        format!("bytes {a}-{b}/{}", blob.len()),
        blob[a..=b].to_vec(),
    ))
}

/// Each range follows the redirect to the object store without the
/// registry's credentials; when the presigned URL expires (403), the
/// registry is asked again for a fresh one, and the pull completes.
#[test]
fn ranges_follow_redirects_without_credentials_and_renew_expired_urls() {
    let weights = weights();
    let (manifest, _) = one_blob_manifest(&weights);
    // Each presigned URL serves two requests, then has expired.
    let (addr, registry_gets, store_seen) = redirecting_registry(manifest, weights.clone(), 2);
    let dest = tempfile::tempdir().unwrap();
    let run = with_credentials(&addr)
        .env("OCIMODEL_RANGE_SIZE", "1M")
        .env("OCIMODEL_SPLIT_BELOW", "1T")
        .env("OCIMODEL_RANGE_CONNECTIONS", "2")
        .pull(&format!("{addr}/m:v1"), dest.path());
    run.assert_ok();
    assert!(
        fs::read(dest.path().join("w.bin")).unwrap() == weights,
        "w.bin differs"
    );
    let seen = store_seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(auth, _)| auth.is_none()),
        "the store saw the registry's credentials: {seen:?}"
    );
    let served = seen.iter().filter(|(_, s)| *s == 206).count();
    let expired = seen.iter().filter(|(_, s)| *s == 403).count();
    assert_eq!(served, 6, "six ranges from the store: {seen:?}");
    assert!(expired >= 1, "no URL expired: {seen:?}");
    assert!(
        registry_gets.load(Ordering::SeqCst) >= 3,
        "expired URLs were not renewed at the registry"
    );
    assert!(
        run.stderr().contains("asking the registry again"),
        "{}",
        run.stderr()
    );
}

/// With a node cache, ranges land in it in order: the blob is committed
/// whole, the registry served it once, and the next pod reads the cache.
#[test]
fn ranges_fill_the_node_cache() {
    let (reg, digest, blob, weights) = model();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    for pod in ["a", "b"] {
        let dest = work.path().join(pod);
        pull(
            ranged().env("OCIMODEL_CACHE_DIR", &cache),
            &reg.addr,
            &digest,
            &dest,
        )
        .assert_ok();
        installed(&dest, &weights);
    }
    assert_eq!(reg.blob_responses(&blob), vec![(206, MIB as u64); 6]);
    let entry = cache.join("blobs/sha256").join(&blob[7..]);
    assert_eq!(sha256_file(&entry), &blob[7..]);
}

/// Through bench/wan.py, the user-space WAN emulator the benchmarks use:
/// each connection capped, a delay per connection and per request, blob
/// GETs redirected to its "object store" whose URLs expire after half a
/// second. The pull completes, renewing expired URLs at the registry.
#[test]
fn through_the_wan_emulator_with_expiring_redirects() {
    let (reg, digest, _blob, weights) = model();
    let mut wan = std::process::Command::new("python3")
        .arg(repo_root().join("bench/wan.py"))
        .args([
            "--upstream",
            &reg.addr,
            "--rate",
            "2M",
            "--connect-delay",
            "0.01",
        ])
        .args(["--rtt", "0.01", "--redirect", "--expires", "0.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(wan.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("wan ")
        .unwrap_or_else(|| panic!("wan.py said {line:?}"))
        .trim()
        .to_string();
    let dest = tempfile::tempdir().unwrap();
    let run = pull(
        ranged().env("OCIMODEL_RANGE_CONNECTIONS", "4"),
        &addr,
        &digest,
        dest.path(),
    );
    let _ = wan.kill();
    let _ = wan.wait();
    run.assert_ok();
    installed(dest.path(), &weights);
    assert!(
        run.stderr().contains("asking the registry again"),
        "no redirect URL expired: {}",
        run.stderr()
    );
}

/// Per blob path, whether another range of it was asked for (as it
/// stands now), and then, once its first range's body was let go, whether
/// that happened while the body was held back.
#[derive(Default)]
struct Firsts {
    asked_more: Vec<(String, bool)>,
    decided: Vec<(String, bool)>,
}
type FirstRanges = Arc<(Mutex<Firsts>, std::sync::Condvar)>;

/// A TCP proxy that holds back the body of each blob's first range (after
/// the response head) for up to `hold`, releasing it as soon as another
/// range of that blob is asked for, and records which came first.
fn first_range_proxy(upstream: &str, hold: std::time::Duration) -> (String, FirstRanges) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: FirstRanges = Arc::default();
    let (upstream, state) = (upstream.to_string(), seen.clone());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            // The request this connection is answering: (path, range start).
            let asked: Arc<Mutex<Option<(String, u64)>>> = Arc::default();
            let (c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (asked_w, state_w) = (asked.clone(), state.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(c_in);
                while let Some(head) = request_head(&mut reader) {
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let start = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("range: bytes=")
                                .map(str::to_string)
                        })
                        .and_then(|r| r.split('-').next().and_then(|s| s.parse::<u64>().ok()));
                    if let (true, Some(start)) = (path.contains("/blobs/"), start) {
                        *asked_w.lock().unwrap() = Some((path.clone(), start));
                        if start > 0 {
                            let (firsts, changed) = &*state_w;
                            let mut firsts = firsts.lock().unwrap();
                            for (p, joined) in firsts.asked_more.iter_mut() {
                                *joined |= *p == path;
                            }
                            changed.notify_all();
                        }
                    }
                    if s_out.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                }
            });
            let state = state.clone();
            std::thread::spawn(move || {
                let (mut s_in, mut c_out) = (server, client);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(k) = s_in.read(&mut buf) {
                    if k == 0 || c_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    let first = asked.lock().unwrap().take_if(|(_, start)| *start == 0);
                    if let Some((path, _)) = first {
                        let (firsts, changed) = &*state;
                        let mut firsts = firsts.lock().unwrap();
                        if firsts.asked_more.iter().all(|(p, _)| *p != path) {
                            firsts.asked_more.push((path.clone(), false));
                            let deadline = std::time::Instant::now() + hold;
                            let joined =
                                |f: &Firsts| f.asked_more.iter().any(|(p, j)| *p == path && *j);
                            while !joined(&firsts) {
                                let left =
                                    deadline.saturating_duration_since(std::time::Instant::now());
                                if left.is_zero() {
                                    break;
                                }
                                firsts = changed.wait_timeout(firsts, left).unwrap().0;
                            }
                            let decided = joined(&firsts);
                            firsts.decided.push((path, decided));
                        }
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
                let _ = s_in.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, seen)
}

/// A host whose first blob came slowly is not timed again: the next
/// blob's other ranges are asked for while its first range still comes
/// (before, each blob waited for its whole first range on one connection,
/// leaving the others idle for that range's time, once per blob).
#[test]
fn after_one_slow_blob_the_next_splits_from_its_first_request() {
    let reg = Registry::start(Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        weights(),
        weights().iter().rev().copied().collect::<Vec<u8>>(),
    );
    fs::write(dir.path().join("a.bin"), &a).unwrap();
    fs::write(dir.path().join("b.bin"), &b).unwrap();
    let digest = reg.ocimodel_push(&[
        dir.path().to_str().unwrap(),
        &format!("{}/models/two:v1", reg.addr),
        "--format",
        "oras",
    ]);
    let (addr, firsts) = first_range_proxy(&reg.addr, std::time::Duration::from_secs(3));
    let dest = tempfile::tempdir().unwrap();
    ranged()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .env("OCIMODEL_CONCURRENCY", "1")
        .env("OCIMODEL_RANGE_CONNECTIONS", "4")
        .pull(&format!("{addr}/models/two@{digest}"), dest.path())
        .assert_ok();
    assert!(
        fs::read(dest.path().join("a.bin")).unwrap() == a,
        "a.bin differs"
    );
    assert!(
        fs::read(dest.path().join("b.bin")).unwrap() == b,
        "b.bin differs"
    );
    let firsts = firsts.0.lock().unwrap().decided.clone();
    let blobs: Vec<String> = [&a, &b]
        .iter()
        .map(|w| format!("/v2/models/two/blobs/sha256:{}", sha256_hex(w)))
        .collect();
    let joined: Vec<bool> = blobs
        .iter()
        .filter_map(|blob| firsts.iter().find(|(p, _)| p == blob).map(|(_, j)| *j))
        .collect();
    // The first blob's first range measures the link alone (nothing else
    // of it is asked for until it is in); the second's is not waited for.
    assert_eq!(joined, vec![false, true], "first ranges seen: {firsts:?}");
}
