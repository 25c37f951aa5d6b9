//! `model-registry://` against a Kubeflow Model Registry: a small REST server
//! (tests/support/model_registry_server.py) implementing the calls of the
//! registry's OpenAPI description, with models registered into it by the
//! real Python client (`model-registry` from PyPI); the artifact it records
//! is the seed model on docker-registry.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct ModelRegistry {
    addr: String,
    child: Child,
}

impl ModelRegistry {
    fn start() -> ModelRegistry {
        ModelRegistry::start_with(&[])
    }

    /// With `--token T`: the API wants `Authorization: Bearer T`.
    fn start_with(args: &[&str]) -> ModelRegistry {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/support/model_registry_server.py"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        ModelRegistry {
            addr: format!("127.0.0.1:{}", port.trim()),
            child,
        }
    }

    /// `ModelRegistry(...).register_model(name, uri, version=...)` with the
    /// real client.
    fn register(&self, name: &str, uri: &str, version: &str) {
        self.register_as(name, uri, version, None)
    }

    /// `register`, the client given `user_token` (which it sends as Bearer).
    fn register_as(&self, name: &str, uri: &str, version: &str, token: Option<&str>) {
        let (host, port) = self.addr.split_once(':').unwrap();
        let token = match token {
            Some(t) => format!("{t:?}"),
            None => "None".to_string(),
        };
        let script = format!(
            r#"
from model_registry import ModelRegistry
r = ModelRegistry("http://{host}", {port}, author="ml-engineer", is_secure=False, user_token={token})
r.register_model({name:?}, {uri:?}, version={version:?}, model_format_name="onnx", model_format_version="1")
"#
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "register_model: {out:?}");
    }

    fn requests(&self) -> Vec<String> {
        serde_json::from_slice(&http_get(&self.addr, "/requests", &[]).body).unwrap()
    }
}

impl Drop for ModelRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn model_registry_uris_resolve_to_the_oci_artifact() {
    let (reg, digest) = Registry::with_mnist();
    let mr = ModelRegistry::start();
    let oci = format!("oci://{}/models/mnist@{digest}", reg.addr);
    mr.register("mnist", &oci, "v1");
    mr.register("mnist", "s3://models/mnist/v2", "v2");
    let work = tempfile::tempdir().unwrap();
    let pull = |uri: &str, dest: &str| {
        Ocimodel::for_registry(&reg)
            .env("MODEL_REGISTRY_BASE_URL", &mr.addr)
            .env("OCIMODEL_REQUIRE_DIGEST", "true")
            .pull(uri, &work.path().join(dest))
    };

    let run = pull("model-registry://mnist/v1", "v1");
    run.assert_ok();
    let dest = work.path().join("v1");
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let m = marker(&dest);
    assert_eq!(m["source"], "model-registry://mnist/v1");
    assert_eq!(m["digest"], digest.as_str());
    assert!(
        run.stderr().contains("resolved through the model registry")
            && run
                .stderr()
                .contains(&format!("reference={}/models/mnist@{digest}", reg.addr)),
        "{}",
        run.stderr()
    );
    let asked = mr.requests();
    for call in [
        "GET /api/model_registry/v1alpha3/registered_model?name=mnist",
        "GET /api/model_registry/v1alpha3/model_version?name=v1&parentResourceId=",
        "/artifacts?orderBy=CREATE_TIME&sortOrder=DESC",
    ] {
        assert!(
            asked.iter().any(|r| r.contains(call)),
            "{call} not in {asked:?}"
        );
    }

    // The host in the URI (3 tokens) instead of MODEL_REGISTRY_BASE_URL.
    Ocimodel::for_registry(&reg)
        .pull(
            &format!("model-registry://{}/mnist/v1", mr.addr),
            &work.path().join("host"),
        )
        .assert_ok();

    // No version: the newest, v2, which is in S3.
    pull("model-registry://mnist", "newest").assert_fails_with(&[
        "model 'mnist' version 'v2' is stored at a s3:// URI; ocimodel pulls oci:// artifacts only",
    ]);
    pull("model-registry://llama/v1", "missing")
        .assert_fails_with(&["model 'llama' is not in the model registry at http://"]);
    pull("model-registry://mnist/v9", "no-version")
        .assert_fails_with(&["model 'mnist' has no version 'v9'"]);
    assert!(!work.path().join("newest").join(MNIST_TITLE).exists());
}

/// A registry that wants a bearer token (its API's Bearer scheme, as behind
/// OpenShift's proxy): the token comes from `KF_PIPELINES_SA_TOKEN_PATH` as
/// the Python client reads it, goes only where it may, and each refusal says
/// what to do without showing the token.
#[test]
fn model_registry_bearer_token_from_kf_pipelines_sa_token_path() {
    let (reg, digest) = Registry::with_mnist();
    let secret = "eyJhbGciOi.registry-token.sig";
    let mr = ModelRegistry::start_with(&["--token", secret]);
    // The real client registers with its user token (sent as Bearer).
    let oci = format!("oci://{}/models/mnist@{digest}", reg.addr);
    mr.register_as("mnist", &oci, "v1", Some(secret));
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    let wrong_file = work.path().join("wrong");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    std::fs::write(&wrong_file, "another-token").unwrap();
    let pull = |dest: &str, token: Option<&std::path::Path>, uri: &str| {
        let mut cmd = Ocimodel::for_registry(&reg).env("MODEL_REGISTRY_BASE_URL", &mr.addr);
        if let Some(t) = token {
            cmd = cmd.env("KF_PIPELINES_SA_TOKEN_PATH", t.to_str().unwrap());
        }
        let run = cmd.pull(uri, &work.path().join(dest));
        assert!(!run.stderr().contains(secret), "{}", run.stderr());
        run
    };

    pull("none", None, "model-registry://mnist/v1").assert_fails_with(&[
        "answered 401 Unauthorized and no token was sent; set KF_PIPELINES_SA_TOKEN_PATH",
    ]);
    pull("wrong", Some(&wrong_file), "model-registry://mnist/v1").assert_fails_with(&[&format!(
        "answered 401 Unauthorized to the token from {}",
        wrong_file.display()
    )]);
    let missing = work.path().join("no-such-token");
    pull("missing", Some(&missing), "model-registry://mnist/v1").assert_fails_with(&[&format!(
        "cannot read KF_PIPELINES_SA_TOKEN_PATH ({})",
        missing.display()
    )]);
    for dest in ["none", "wrong", "missing"] {
        assert!(!work.path().join(dest).join(MNIST_TITLE).exists());
    }

    let before = mr.requests().len();
    pull("ok", Some(&token_file), "model-registry://mnist/v1").assert_ok();
    assert_eq!(
        sha256_file(&work.path().join("ok").join(MNIST_TITLE)),
        MNIST_SHA256
    );
    let calls = mr.requests().split_off(before);
    assert!(calls.len() >= 4, "{calls:?}");
    assert!(calls.iter().all(|c| c.ends_with(" [bearer]")), "{calls:?}");

    // A host the URI names over plain http is not the configured registry:
    // it does not get the token (the configured one is elsewhere here).
    let before = mr.requests().len();
    Ocimodel::for_registry(&reg)
        .env("KF_PIPELINES_SA_TOKEN_PATH", token_file.to_str().unwrap())
        .pull(
            &format!("model-registry://{}/mnist/v1", mr.addr),
            &work.path().join("named"),
        )
        .assert_fails_with(&[
            "the token is sent over plain http only to the configured registry",
            "use https for 127.0.0.1:",
        ]);
    let calls = mr.requests().split_off(before);
    assert!(!calls.is_empty(), "the named host was not asked");
    assert!(calls.iter().all(|c| !c.contains("[bearer]")), "{calls:?}");
    // Named and configured alike: it is the configured registry.
    pull(
        "named-configured",
        Some(&token_file),
        &format!("model-registry://{}/mnist/v1", mr.addr),
    )
    .assert_ok();
}

/// What a recording proxy saw: the request line (an absolute URL) and its
/// Authorization.
type Proxied = Vec<(String, Option<String>)>;

/// A plain-http proxy on 127.0.0.1 (HTTP_PROXY) that answers everything
/// 401 and records what it was asked: it stands for whatever Service a
/// namespace's owner runs at the cluster name the URI picks.
fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Proxied>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: std::sync::Arc<std::sync::Mutex<Proxied>> = Default::default();
    let log = seen.clone();
    serve(listener, move |req| {
        log.lock().unwrap().push((
            format!("{} {}", req.method, req.path),
            req.authorization.clone(),
        ));
        response("401 Unauthorized", &[], b"")
    });
    (addr, seen)
}

/// S3-10: `?namespace=NS` picks the registry's Service name in a namespace
/// the URI chooses; over plain http it does not get the service-account
/// token (whoever controls NS runs that Service). The configured registry
/// (MODEL_REGISTRY_BASE_URL) does, even when named through its namespace.
#[test]
fn a_namespace_in_the_uri_does_not_get_the_token_in_clear() {
    let work = tempfile::tempdir().unwrap();
    let secret = "sa-token.for-team-a.sig";
    let token = work.path().join("token");
    std::fs::write(&token, secret).unwrap();
    let (proxy, seen) = recording_proxy();
    let pull = |uri: &str, dest: &str| {
        let mut cmd = Ocimodel::new()
            .env("KF_PIPELINES_SA_TOKEN_PATH", &token)
            .env(
                "MODEL_REGISTRY_BASE_URL",
                "model-registry-service.team-a.svc.cluster.local:8080",
            )
            .env("HTTP_PROXY", format!("http://{proxy}"));
        cmd.cmd.env_remove("NO_PROXY");
        let run = cmd.pull(uri, &work.path().join(dest));
        assert!(!run.stderr().contains(secret), "{}", run.stderr());
        run
    };
    let bearer = format!("Bearer {secret}");
    let sent_to = |host: &str| -> Vec<Option<String>> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(line, _)| line.contains(&format!("http://{host}/")))
            .map(|(_, auth)| auth.clone())
            .collect()
    };

    pull("model-registry://m?namespace=attacker", "attacker").assert_fails_with(&[
        "model-registry-service.attacker.svc.cluster.local:8080",
        "plain http",
    ]);
    let asked = sent_to("model-registry-service.attacker.svc.cluster.local:8080");
    assert!(!asked.is_empty(), "{:?}", seen.lock().unwrap());
    assert!(
        asked.iter().all(Option::is_none),
        "the namespace the URI chose got: {asked:?}"
    );

    // The configured registry's own namespace is the configured registry.
    pull("model-registry://m?namespace=team-a", "team-a").assert_fails_with(&["401"]);
    let asked = sent_to("model-registry-service.team-a.svc.cluster.local:8080");
    assert!(!asked.is_empty(), "{:?}", seen.lock().unwrap());
    assert!(
        asked.iter().all(|a| a.as_deref() == Some(bearer.as_str())),
        "{asked:?}"
    );
}

/// A hostile model registry on 127.0.0.1: it answers the host probe
/// (`…/registered_models?pageSize=1`) as a registry does, then every other
/// call with `answer`, which writes what it likes to the connection (a
/// thread per connection).
fn hostile_registry(answer: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                if line.contains("/registered_models?pageSize=1") {
                    let _ = conn.write_all(&response(
                        "200 OK",
                        &[("Content-Type", "application/json".into())],
                        br#"{"items":[],"size":0,"pageSize":1,"nextPageToken":""}"#,
                    ));
                    return;
                }
                answer(&mut conn);
            });
        }
    });
    addr
}

/// S3-11: a model registry's answers are capped (an endless JSON body is cut
/// off at a limit, not read until memory runs out), held to the
/// minimum-rate rule the registry client uses, and inside OCIMODEL_TIMEOUT.
#[test]
fn model_registry_answers_are_capped_timed_and_rated() {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let work = tempfile::tempdir().unwrap();
    let resolve = |addr: &str, env: &[(&str, &str)]| {
        let cmd = Ocimodel::new()
            .env("MODEL_REGISTRY_BASE_URL", addr)
            .envs(env);
        let started = std::time::Instant::now();
        let run = cmd.run(&[
            "model-registry://m/v1",
            work.path().join("m").to_str().unwrap(),
        ]);
        (run, started.elapsed())
    };

    // Endless JSON (bounded here at 64 MiB, so the test ends either way).
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    let endless = hostile_registry(move |conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"items\":[",
        );
        let chunk = "{\"id\":\"1\",\"name\":\"m\"},".repeat(1 << 12);
        while count.load(Ordering::Relaxed) < 64 << 20 {
            if conn.write_all(chunk.as_bytes()).is_err() {
                return;
            }
            count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let (run, _) = resolve(&endless, &[]);
    run.assert_fails_with(&["model registry", "16777216-byte limit"]);
    assert!(
        sent.load(Ordering::Relaxed) < 32 << 20,
        "read {} bytes of the answer",
        sent.load(Ordering::Relaxed)
    );

    // A byte every second: each read is quick, the answer never ends.
    let trickle = hostile_registry(|conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        );
        for _ in 0..40 {
            if conn.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    // Under the minimum rate (1 KiB/s by default) over a 3 s window.
    let (run, took) = resolve(&trickle, &[("OCIMODEL_STALL_TIMEOUT", "3")]);
    run.assert_fails_with(&["model registry", "OCIMODEL_MIN_RATE"]);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    // With no rate rule, OCIMODEL_TIMEOUT still ends it.
    let (run, took) = resolve(
        &trickle,
        &[
            ("OCIMODEL_STALL_TIMEOUT", "3"),
            ("OCIMODEL_MIN_RATE", "0"),
            ("OCIMODEL_TIMEOUT", "5"),
        ],
    );
    run.assert_fails_with(&["gave up after 5s (OCIMODEL_TIMEOUT)"]);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
}
