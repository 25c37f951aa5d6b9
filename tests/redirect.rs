//! Blob redirects to another host (object storage) are followed without
//! forwarding the registry's credentials. A real registry on loopback will
//! not redirect, so this uses a minimal in-process fake: a registry on
//! 127.0.0.1 that demands Basic auth and answers blob GETs with a 307 to a
//! "storage" server on 127.0.0.2.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;

#[test]
fn blob_redirect_to_another_host_drops_credentials() {
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let (manifest, blob_digest) = one_blob_manifest(&blob);
    let (storage_addr, storage_seen) = recorder("127.0.0.2", response("200 OK", &[], &blob));
    let (registry_addr, registry_seen) = redirecting_registry(
        manifest,
        &blob_digest,
        format!("http://{storage_addr}/bucket/blob"),
    );
    let dest = tempfile::tempdir().unwrap();
    with_credentials(&registry_addr)
        .pull(&format!("{registry_addr}/m:v1"), dest.path())
        .assert_ok();
    assert_eq!(std::fs::read(dest.path().join("w.bin")).unwrap(), blob);
    assert!(
        registry_seen
            .lock()
            .unwrap()
            .contains(&format!("/v2/m/blobs/{blob_digest}")),
        "the blob request went to the registry with credentials first"
    );
    let storage_seen = storage_seen.lock().unwrap().clone();
    assert_eq!(
        storage_seen,
        vec![None],
        "storage host must never see the registry's Authorization"
    );
}

/// A registry that sends the blob's headers and then nothing: the pull must
/// give up after OCIMODEL_STALL_TIMEOUT with a clear line, not hang.
#[test]
fn a_stalled_blob_download_times_out() {
    let (manifest, blob_digest) = one_blob_manifest(b"never sent");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let blob_path = format!("/v2/m/blobs/{blob_digest}");
    serve(listener, move |req| {
        if req.path == "/v2/m/manifests/v1" {
            manifest_response(&manifest)
        } else if req.path == blob_path {
            // Promise the bytes, then stall past the client's patience.
            std::thread::sleep(std::time::Duration::from_secs(4));
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    let dest = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .env("OCIMODEL_STALL_TIMEOUT", "1")
        .env("OCIMODEL_RETRIES", "0")
        .pull(&format!("{addr}/m:v1"), dest.path());
    run.assert_fails_with(&["w.bin", &addr]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        run.termination
            .contains("sent no data for 1s (OCIMODEL_STALL_TIMEOUT)"),
        "{}",
        run.termination
    );
    assert!(model_files(dest.path()).is_empty());
}

/// A registry that lies: a `Docker-Content-Digest` that is not the digest of
/// what it serves, and a manifest that changes when asked for by digest.
#[test]
fn lying_registries_are_refused() {
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/x",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/octet-stream", "digest": format!("sha256:{}", sha256_hex(b"x")), "size": 1,
                    "annotations": {"org.opencontainers.image.title": "x"}}]
    })
    .to_string();
    let real = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    let other = format!("sha256:{}", sha256_hex(b"something else"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (m, lie) = (manifest.clone(), other.clone());
    serve(listener, move |req| {
        let ct = (
            "Content-Type",
            "application/vnd.oci.image.manifest.v1+json".to_string(),
        );
        if req.path == "/v2/m/manifests/v1" {
            response(
                "200 OK",
                &[ct, ("Docker-Content-Digest", lie.clone())],
                m.as_bytes(),
            )
        } else if req.path.starts_with("/v2/m/manifests/sha256:") {
            // Whatever digest was asked for, serve something else.
            response("200 OK", &[ct], br#"{"schemaVersion":2,"manifests":[]}"#)
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&format!("{addr}/m:v1"), dest.path())
        .assert_fails_with(&["Docker-Content-Digest", &other, "does not match", &real]);
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .pull(&format!("{addr}/m@{real}"), dest.path())
        .assert_fails_with(&["digest mismatch", &format!("expected {real}")]);
    assert!(model_files(dest.path()).is_empty());
}

/// A server on `ip` that counts requests and records their Authorization.
fn recorder(ip: &str, reply: Vec<u8>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let l = TcpListener::bind(format!("{ip}:0")).expect("127.0.0.0/8 is loopback on Linux");
    let addr = l.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s = seen.clone();
    serve(l, move |req| {
        s.lock().unwrap().push(req.authorization.clone());
        reply.clone()
    });
    (addr, seen)
}

/// F3: a blob redirect target that answers 401 with a Bearer challenge must
/// not receive the registry's credentials through the realm it names.
#[test]
fn a_redirect_target_demanding_auth_gets_no_credentials() {
    let (thief, thief_seen) = recorder("127.0.0.3", response("200 OK", &[], br#"{"token":"t"}"#));
    let (storage, storage_seen) = recorder(
        "127.0.0.2",
        response(
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!("Bearer realm=\"http://{thief}/steal\",service=\"s\""),
            )],
            b"",
        ),
    );
    let (manifest, digest) = one_blob_manifest(b"weights");
    let (addr, _) =
        redirecting_registry(manifest, &digest, format!("http://{storage}/bucket/blob"));
    let dest = tempfile::tempdir().unwrap();
    with_credentials(&addr)
        .pull(&format!("{addr}/m:v1"), &dest.path().join("m"))
        .assert_fails_with(&[
            "asks for authentication; ocimodel sends the registry's credentials only to the registry itself",
        ]);
    assert!(
        thief_seen.lock().unwrap().is_empty(),
        "the named realm was contacted"
    );
    assert!(
        storage_seen.lock().unwrap().iter().all(Option::is_none),
        "the storage host saw the registry's Authorization"
    );
}

/// F7: a referrers `Link` to another host is not followed, and a push
/// upload `Location` on another host gets no Authorization.
#[test]
fn links_and_locations_on_other_hosts_get_no_credentials() {
    let (elsewhere, elsewhere_seen) = recorder(
        "127.0.0.2",
        response(
            "200 OK",
            &[(
                "Content-Type",
                "application/vnd.oci.image.index.v1+json".into(),
            )],
            br#"{"schemaVersion":2,"manifests":[]}"#,
        ),
    );
    let (manifest, _) = one_blob_manifest(b"weights");
    let subject = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    let referrers = format!("/v2/m/referrers/{subject}");
    let next = format!("http://{elsewhere}/v2/m/referrers/{subject}?last=x");
    let addr = basic_registry(move |req| {
        if req.path == "/v2/m/manifests/v1" || req.path.starts_with("/v2/m/manifests/sha256:") {
            manifest_response(&manifest)
        } else if req.path == referrers {
            response(
                "200 OK",
                &[
                    (
                        "Content-Type",
                        "application/vnd.oci.image.index.v1+json".into(),
                    ),
                    ("Link", format!("<{next}>; rel=\"next\"")),
                ],
                br#"{"schemaVersion":2,"manifests":[]}"#,
            )
        } else if req.path.starts_with("/v2/m/blobs/uploads/") {
            response(
                "202 Accepted",
                &[("Location", format!("http://{elsewhere}/upload/1"))],
                b"",
            )
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    let run = with_credentials(&addr).run(&["referrers", &format!("{addr}/m:v1")]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("the next page is on another host or scheme"),
        "{}",
        run.stderr()
    );
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "the other host's page was fetched"
    );

    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("w.bin"), b"weights").unwrap();
    let _ = with_credentials(&addr).run(&[
        "push",
        model.path().to_str().unwrap(),
        &format!("{addr}/m:v2"),
        "--format",
        "oras",
    ]);
    let seen = elsewhere_seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "the upload never reached the Location host"
    );
    assert!(
        seen.iter().all(Option::is_none),
        "the Location host got Authorization: {seen:?}"
    );
}

/// F11: a registry that trickles a byte every half second never trips the
/// stall timeout, but the minimum-throughput rule stops it.
#[test]
fn a_trickling_registry_is_stopped() {
    use std::io::{BufRead, Write};
    let blob = vec![7u8; 4096];
    let (manifest, digest) = one_blob_manifest(&blob);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let blob_path = format!("/v2/m/blobs/{digest}");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (manifest, blob_path) = (manifest.clone(), blob_path.clone());
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                if path == "/v2/m/manifests/v1" {
                    let _ = stream.write_all(&manifest_response(&manifest));
                } else if path == blob_path {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n");
                    for _ in 0..4096 {
                        if stream.write_all(&[7]).is_err() {
                            return;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                } else {
                    let _ = stream.write_all(&response("404 Not Found", &[], b""));
                }
            });
        }
    });
    let dest = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .env("OCIMODEL_STALL_TIMEOUT", "2")
        .env("OCIMODEL_RETRIES", "0")
        .pull(&format!("{addr}/m:v1"), &dest.path().join("m"));
    run.assert_fails_with(&["under OCIMODEL_MIN_RATE (1024 bytes/s)", "trickling"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// F6: a registry listing endless, fat referrer pages is cut off early:
/// at most 10,000 descriptors and 16 MiB across pages are read.
#[test]
fn endless_referrer_pages_are_cut_off() {
    let (manifest, _) = one_blob_manifest(b"weights");
    let subject = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    let one = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": subject, "size": 1, "artifactType": "application/x-other"});
    let page = serde_json::json!({"schemaVersion": 2, "manifests": vec![one; 15_000]}).to_string();
    assert!(page.len() > 2 << 20 && page.len() < 4 << 20);
    let referrers = format!("/v2/m/referrers/{subject}");
    let pages = Arc::new(Mutex::new(0usize));
    let seen = pages.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    serve(listener, move |req| {
        if req.path == "/v2/m/manifests/v1" || req.path.starts_with("/v2/m/manifests/sha256:") {
            manifest_response(&manifest)
        } else if req.path.starts_with(&referrers) {
            let mut n = seen.lock().unwrap();
            *n += 1;
            response(
                "200 OK",
                &[
                    (
                        "Content-Type",
                        "application/vnd.oci.image.index.v1+json".into(),
                    ),
                    ("Link", format!("<{referrers}?page={}>; rel=\"next\"", *n)),
                ],
                page.as_bytes(),
            )
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    let uri = format!("{addr}/m:v1");
    let insecure = || Ocimodel::new().env("OCIMODEL_INSECURE_REGISTRIES", &addr);
    let run = insecure().run(&["referrers", &uri]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("more than 10000 referrers; refusing"),
        "{}",
        run.stderr()
    );
    assert_eq!(*pages.lock().unwrap(), 1);
    // Filtered out, the descriptors are not kept; the bytes still count.
    *pages.lock().unwrap() = 0;
    let run = insecure().run(&["referrers", &uri, "--artifact-type", "application/x-wanted"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("bytes across"), "{}", run.stderr());
    assert!(
        *pages.lock().unwrap() <= 8,
        "{} pages read",
        pages.lock().unwrap()
    );
}

/// A Basic-auth registry serving `manifest` as `m:v1` whose blob GET answers
/// 307 to `location`; returns its address and the paths it was asked for.
fn redirecting_registry(
    manifest: String,
    digest: &str,
    location: String,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let blob_path = format!("/v2/m/blobs/{digest}");
    let addr = basic_registry(move |req| {
        log.lock().unwrap().push(req.path.clone());
        if req.path == "/v2/m/manifests/v1" {
            manifest_response(&manifest)
        } else if req.path == blob_path {
            response(
                "307 Temporary Redirect",
                &[("Location", location.clone())],
                b"",
            )
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    (addr, seen)
}

/// An https registry that redirects a blob to plain http (distribution's
/// `redirect` middleware pointed at an http base URL) is refused: the
/// private model and its presigned URL would travel in clear. The target is
/// never asked. (A registry listed insecure is plain http already, and may
/// redirect to plain http: `blob_redirect_to_another_host_drops_credentials`.)
#[test]
fn an_https_registry_redirecting_to_plain_http_is_refused() {
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    let blob = std::fs::read(plain.blob_data_path(MNIST_SHA256)).unwrap();
    let (storage, seen) = recorder("127.0.0.2", response("200 OK", &[], &blob));
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let reg = Registry::start_tls_redirecting(
        plain.stop(),
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
        &format!("http://{storage}/bucket"),
    );
    let dest = tempfile::tempdir().unwrap();
    let run = Ocimodel::new()
        .env("OCIMODEL_CA_BUNDLE", certs.path().join("ca.pem"))
        .pull(&format!("{}/models/mnist:v1", reg.addr), dest.path());
    assert!(
        seen.lock().unwrap().is_empty(),
        "the plain-http target was asked; stderr:\n{}",
        run.stderr()
    );
    run.assert_fails_with(&[&reg.addr, "redirected", &format!("plain http ({storage})")]);
    assert!(
        !run.termination.contains("/bucket"),
        "the redirect's path (a presigned URL's signature) is not shown: {}",
        run.termination
    );
    assert!(model_files(dest.path()).is_empty());
}
