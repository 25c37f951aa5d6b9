//! Blob redirects to another host (object storage) are followed without
//! forwarding the registry's credentials. A real registry on loopback will
//! not redirect, so this uses a minimal in-process fake: a registry on
//! 127.0.0.1 that demands Basic auth and answers blob GETs with a 307 to a
//! "storage" server on 127.0.0.2.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::*;

#[test]
fn blob_redirect_to_another_host_drops_credentials() {
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let blob_digest = format!("sha256:{}", sha256_hex(&blob));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                   "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/octet-stream", "digest": blob_digest, "size": blob.len(),
                    "annotations": {"org.opencontainers.image.title": "weights.bin"}}]
    })
    .to_string();

    let storage = TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    let storage_addr = storage.local_addr().unwrap();
    let storage_seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = storage_seen.clone();
    let body = blob.clone();
    serve(storage, move |req| {
        seen.lock().unwrap().push(req.authorization.clone());
        if req.path == "/bucket/blob" {
            response("200 OK", &[], &body)
        } else {
            response("404 Not Found", &[], b"")
        }
    });

    let registry = TcpListener::bind("127.0.0.1:0").unwrap();
    let registry_addr = registry.local_addr().unwrap().to_string();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pw")
    );
    let registry_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = registry_seen.clone();
    let blob_path = format!("/v2/models/m/blobs/{blob_digest}");
    serve(registry, move |req| {
        if req.authorization.as_deref() != Some(expected.as_str()) {
            return response(
                "401 Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"fake\"".into())],
                b"",
            );
        }
        seen.lock().unwrap().push(req.path.clone());
        if req.path == "/v2/models/m/manifests/v1" {
            response(
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
                manifest.as_bytes(),
            )
        } else if req.path == blob_path {
            response(
                "307 Temporary Redirect",
                &[("Location", format!("http://{storage_addr}/bucket/blob"))],
                b"",
            )
        } else {
            response("404 Not Found", &[], b"")
        }
    });

    let dest = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("user:pw");
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &registry_addr)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            format!(r#"{{"auths":{{"{registry_addr}":{{"auth":"{auth}"}}}}}}"#),
        )
        .run(&[
            &format!("{registry_addr}/models/m:v1"),
            dest.path().to_str().unwrap(),
        ])
        .assert_ok();
    assert_eq!(
        std::fs::read(dest.path().join("weights.bin")).unwrap(),
        blob
    );
    assert!(
        registry_seen
            .lock()
            .unwrap()
            .contains(&format!("/v2/models/m/blobs/{blob_digest}")),
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
    let blob = b"never sent".to_vec();
    let blob_digest = format!("sha256:{}", sha256_hex(&blob));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/octet-stream", "digest": blob_digest, "size": blob.len(),
                    "annotations": {"org.opencontainers.image.title": "w.bin"}}]
    })
    .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let blob_path = format!("/v2/m/blobs/{blob_digest}");
    serve(listener, move |req| {
        if req.path == "/v2/m/manifests/v1" {
            response(
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
                manifest.as_bytes(),
            )
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
        .run(&[&format!("{addr}/m:v1"), dest.path().to_str().unwrap()]);
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
        .run(&[&format!("{addr}/m:v1"), dest.path().to_str().unwrap()])
        .assert_fails_with(&["Docker-Content-Digest", &other, "does not match", &real]);
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", &addr)
        .run(&[&format!("{addr}/m@{real}"), dest.path().to_str().unwrap()])
        .assert_fails_with(&["digest mismatch", &format!("expected {real}")]);
    assert!(model_files(dest.path()).is_empty());
}
