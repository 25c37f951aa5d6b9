//! Credentials against a real registry: htpasswd Basic auth with every
//! credential source, and the Bearer token flow against the registry's
//! `auth: token` mode with a small token issuer (JWTs signed by `openssl`).

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::*;

const USER: &str = "modeler";
const PASSWORD: &str = "s3cret-pw";

/// Pushes the seed artifact to a plain registry, then serves the same
/// storage with `auth`.
fn registry_with(auth: Auth) -> Registry {
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    Registry::start_in(plain.stop(), auth)
}

fn docker_config(user: &str, password: &str, registry: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#)
}

#[test]
fn basic_auth_from_every_credential_source() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("ocimodel://{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let config_dir = work.path().join("docker");
    fs::create_dir(&config_dir).unwrap();
    let config_file = config_dir.join("config.json");
    fs::write(&config_file, docker_config(USER, PASSWORD, &reg.addr)).unwrap();
    // username/password form, and a URL-shaped key.
    let podman_file = work.path().join("auth.json");
    fs::write(
        &podman_file,
        format!(
            r#"{{"auths":{{"http://{}/":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();

    type Setup<'a> = Box<dyn Fn(Ocimodel) -> Ocimodel + 'a>;
    let cases: Vec<(&str, Setup, Vec<String>)> = vec![
        (
            "DOCKER_CONFIG",
            Box::new(|o: Ocimodel| o.env("DOCKER_CONFIG", &config_dir)),
            vec![],
        ),
        (
            "REGISTRY_AUTH_FILE",
            Box::new(|o: Ocimodel| o.env("REGISTRY_AUTH_FILE", &podman_file)),
            vec![],
        ),
        (
            "KSERVE_OCI_DOCKER_CONFIG",
            Box::new(|o: Ocimodel| o.env("KSERVE_OCI_DOCKER_CONFIG", &config_file)),
            vec![],
        ),
        (
            "OCIMODEL_DOCKER_CONFIG_JSON",
            Box::new(|o: Ocimodel| {
                o.env(
                    "OCIMODEL_DOCKER_CONFIG_JSON",
                    docker_config(USER, PASSWORD, &reg.addr),
                )
            }),
            vec![],
        ),
        (
            "--auth-file",
            Box::new(|o| o),
            vec!["--auth-file".into(), podman_file.display().to_string()],
        ),
    ];
    for (name, setup, extra) in cases {
        let dest = work.path().join(name.trim_start_matches('-'));
        let mut args = vec!["pull".to_string()];
        args.extend(extra);
        args.push(uri.clone());
        args.push(dest.display().to_string());
        let run = setup(Ocimodel::new().insecure(&reg)).run(&args);
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256, "{name}");
    }

    // Sources merge: an inline config for another registry does not hide the file.
    let dest = work.path().join("merged");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config("x", "y", "other.example:5000"),
        )
        .env("DOCKER_CONFIG", &config_dir)
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_ok();
}

#[test]
fn basic_auth_failures_are_specific() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();

    let dest = work.path().join("wrong");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, "wrong", &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&[
            "401 Unauthorized",
            &format!("registry {}", reg.addr),
            &format!("user '{USER}'"),
            "OCIMODEL_DOCKER_CONFIG_JSON",
            "check the username and password",
        ]);
    assert!(model_files(&dest).is_empty());

    let dest = work.path().join("none");
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&["requires authentication", &reg.addr, "no credentials"]);

    Ocimodel::new()
        .insecure(&reg)
        .env("OCIMODEL_DOCKER_CONFIG_JSON", "{not json")
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&["OCIMODEL_DOCKER_CONFIG_JSON is not a valid docker config JSON"]);
}

/// A token issuer: checks Basic credentials, records what it was asked for,
/// and answers with an RS256 JWT for exactly the requested pull scope.
struct TokenServer {
    pub realm: String,
    pub requests: Arc<Mutex<Vec<(String, String)>>>, // (service, scope)
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
    })
}

fn sign_jwt(key: &Path, cert_der_b64: &str, repo: &str, actions: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [cert_der_b64]});
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": USER, "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{repo}"),
        "access": [{"type": "repository", "name": repo, "actions": actions}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("{signing_input}.{}", b64url(&out.stdout))
}

impl TokenServer {
    /// `grant` maps the requested repository to the one put in the token
    /// (identity for an honest issuer).
    fn start(grant: fn(&str) -> String) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-issuer",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ],
            dir.path(),
        );
        let der = openssl(&["x509", "-outform", "DER", "-in", "cert.pem"], dir.path());
        let cert_b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let key = dir.path().join("key.pem");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        serve(listener, move |req| {
            let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let service = query_param(query, "service").unwrap_or_default();
            let scope = query_param(query, "scope").unwrap_or_default();
            seen.lock().unwrap().push((service, scope.clone()));
            if req.authorization.as_deref() != Some(expected_auth.as_str()) {
                return response("401 Unauthorized", &[], b"");
            }
            let repo = scope.split(':').nth(1).unwrap_or("");
            let token = sign_jwt(&key, &cert_b64, &grant(repo), &["pull"]);
            let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
            response(
                "200 OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            )
        });
        TokenServer {
            realm,
            requests,
            cert: dir.path().join("cert.pem"),
            _dir: dir,
        }
    }
}

#[test]
fn bearer_token_flow() {
    let issuer = TokenServer::start(|repo| repo.to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let requests = issuer.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![(
            "test-registry".to_string(),
            "repository:models/mnist:pull".to_string()
        )],
        "one token, for exactly the pull scope of this repository, reused for every request"
    );

    // Wrong password: the token service refuses, and the message says so.
    let dest = work.path().join("wrong");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, "nope", &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&[
            "token service",
            &issuer.realm,
            &reg.addr,
            "rejected the credentials",
            USER,
        ]);
    assert!(model_files(&dest).is_empty());
}

#[test]
fn bearer_token_for_another_repository_is_refused_by_the_registry() {
    // An issuer that grants a different repository than asked: the registry
    // must refuse the token, and ocimodel must report it, not loop.
    let issuer = TokenServer::start(|_| "models/other".to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &reg.addr),
        )
        .run(&[
            &format!("{}/models/mnist:v1", reg.addr),
            dest.path().to_str().unwrap(),
        ])
        .assert_fails_with(&[
            "401 Unauthorized",
            &reg.addr,
            "refused the token",
            "repository:models/mnist:pull",
        ]);
    assert!(model_files(dest.path()).is_empty());
}
