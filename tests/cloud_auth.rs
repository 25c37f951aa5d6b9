//! Cloud registries without static secrets, with nothing leaving the
//! machine: the real host names (`<account>.dkr.ecr.<region>.amazonaws.com`,
//! `<region>-docker.pkg.dev`, `<name>.azurecr.io`) are reached through an
//! `HTTPS_PROXY` CONNECT proxy on loopback that maps them to local servers
//! (anything else it refuses), whose certificates a test CA in
//! `OCIMODEL_CA_BUNDLE` vouches for, so the real host matching and TLS run.
//! The registry behind each name is docker-registry, checking the
//! credentials the flow produced. AWS's STS and ECR are `moto` in server
//! mode (PyPI): code we did not write answers them. GCP's metadata server,
//! Entra ID and ACR's token exchange have no such part: small fakes follow
//! their documented requests and answers.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const GAR_HOST: &str = "europe-west4-docker.pkg.dev";
const ACR_HOST: &str = "models.azurecr.io";

/// A CA and one server certificate for the cloud host names (and 127.0.0.1).
fn cloud_certs(dir: &Path) {
    make_certs_for(
        dir,
        &format!("DNS:{ECR_HOST},DNS:{GAR_HOST},DNS:{ACR_HOST},IP:127.0.0.1"),
    );
}

/// An `HTTPS_PROXY`: CONNECT to a mapped `host:443` is spliced to its local
/// address; any other target is refused, so nothing leaves the machine.
struct ConnectProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start(routes: &[(&str, &str)]) -> ConnectProxy {
        let routes: HashMap<String, String> = routes
            .iter()
            .map(|(h, a)| (format!("{h}:443"), a.to_string()))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (routes, log) = (routes.clone(), log.clone());
                std::thread::spawn(move || tunnel(client, &routes, &log));
            }
        });
        ConnectProxy { url, seen }
    }
}

fn tunnel(mut client: TcpStream, routes: &HashMap<String, String>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {target}"));
    let upstream = match (method, routes.get(target)) {
        ("CONNECT", Some(addr)) => TcpStream::connect(addr),
        _ => {
            let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    let Ok(mut upstream) = upstream else { return };
    let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut reader, &mut upstream);
    let _ = upstream.shutdown(std::net::Shutdown::Write);
}

/// `moto` in server mode (STS, ECR and the rest of AWS's APIs, answered
/// by moto's own code) on a free port.
struct Moto {
    url: String,
    child: Child,
}

impl Moto {
    fn start() -> Moto {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

/// A helper process, stopped with the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed model on a TLS docker-registry with `auth`; its digest.
fn tls_registry(certs: &Path, auth: Auth) -> (Registry, String) {
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    let digest = plain.digest_of("models/mnist", "v1");
    let reg = Registry::start_tls_with(
        plain.stop(),
        auth,
        &certs.join("server.pem"),
        &certs.join("server.key"),
    );
    (reg, digest)
}

/// `base` with an IRSA identity (EKS's role and web identity token file).
fn irsa_env(base: &[(&'static str, String)], token_file: &Path) -> Vec<(&'static str, String)> {
    let mut env = base.to_vec();
    env.push((
        "AWS_ROLE_ARN",
        "arn:aws:iam::123456789012:role/model-reader".to_string(),
    ));
    env.push((
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        token_file.display().to_string(),
    ));
    env
}

/// No token or secret in anything a person or a cluster reads.
#[track_caller]
fn leaks_nothing(run: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !run.stderr().contains(s) && !run.stdout().contains(s) && !run.termination.contains(s),
            "{s} leaked: {}{}",
            run.stderr(),
            run.termination
        );
    }
}

/// `serve` over TLS, with the server certificate `cloud_certs` made in
/// `certs` (its CA is the one `OCIMODEL_CA_BUNDLE` names).
fn serve_tls(
    listener: TcpListener,
    certs: &Path,
    handler: impl Fn(&Request) -> Vec<u8> + Send + 'static,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            answer_one(rustls::StreamOwned::new(conn, tcp), &handler);
        }
    });
}

/// Requests as a [`Recorder`] saw them: `METHOD path`, and `Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A server that answers every request with the same bytes and records
/// each one as `METHOD path` and its `Authorization`, if any.
struct Recorder {
    addr: String,
    seen: Seen,
}

impl Recorder {
    /// Over plain http.
    fn start(answer: Vec<u8>) -> Recorder {
        Recorder::start_with(answer, None)
    }

    /// Over TLS (`cloud_certs` in `certs`) when given.
    fn start_with(answer: Vec<u8>, certs: Option<&Path>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let handler = move |req: &Request| {
            log.lock().unwrap().push((
                format!("{} {}", req.method, req.path),
                req.authorization.clone(),
            ));
            answer.clone()
        };
        match certs {
            Some(dir) => serve_tls(listener, dir, handler),
            None => serve(listener, handler),
        }
        Recorder { addr, seen }
    }

    /// A 401 with this `WWW-Authenticate` challenge, to every request.
    fn challenging(challenge: &str) -> Recorder {
        Recorder::start(response(
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge.to_string())],
            b"",
        ))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every `Authorization` it was sent.
    fn authorizations(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, a)| a.clone())
            .collect()
    }
}

/// The ECR side: the seed model behind the ECR host name on a TLS
/// docker-registry that takes what moto's GetAuthorizationToken issues
/// ("AWS:<account>-auth-token"), moto itself, and the proxy to the name.
struct Ecr {
    _reg: Registry,
    digest: String,
    moto: Moto,
    proxy: ConnectProxy,
}

impl Ecr {
    fn start(work: &Path) -> Ecr {
        cloud_certs(work);
        let (reg, digest) = tls_registry(
            work,
            Auth::Basic {
                user: "AWS".into(),
                password: "123456789012-auth-token".into(),
            },
        );
        let proxy = ConnectProxy::start(&[(ECR_HOST, &reg.addr)]);
        Ecr {
            _reg: reg,
            digest,
            moto: Moto::start(),
            proxy,
        }
    }

    /// What every pull from this ECR sets: its proxy, the CA, and moto as
    /// the AWS endpoint.
    fn env(&self, work: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("HTTPS_PROXY", self.proxy.url.clone()),
            ("NO_PROXY", "127.0.0.1".to_string()),
            (
                "OCIMODEL_CA_BUNDLE",
                work.join("ca.pem").display().to_string(),
            ),
            ("AWS_ENDPOINT_URL", self.moto.url.clone()),
        ]
    }
}

/// ECR through moto: IRSA (STS AssumeRoleWithWebIdentity, then a SigV4
/// GetAuthorizationToken signed with the session credentials), static keys,
/// and explicit docker-config credentials, which win; a denied role names
/// the step; OCIMODEL_CLOUD_AUTH=off asks anonymously.
#[test]
fn ecr_with_irsa_static_keys_and_a_denied_role() {
    let work = tempfile::tempdir().unwrap();
    // Kept whole: its registry and moto stop when it drops.
    let ecr = Ecr::start(work.path());
    let (digest, proxy) = (&ecr.digest, &ecr.proxy);
    let token_file = work.path().join("token");
    fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bW9kZWxzOnJlYWRlciJ9.c2ln\n",
    )
    .unwrap();
    let uri = format!("{ECR_HOST}/models/mnist@{digest}");
    let base = [
        ecr.env(work.path()),
        vec![("AWS_REGION", "us-east-1".to_string())],
    ]
    .concat();
    let irsa = irsa_env(&base, &token_file);
    let dest = work.path().join("irsa");
    let run = Ocimodel::new().envs(&irsa).pull(&uri, &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(
        run.stderr()
            .contains("credentials from the workload's cloud identity")
            && run
                .stderr()
                .contains("role arn:aws:iam::123456789012:role/model-reader (IRSA)"),
        "{}",
        run.stderr()
    );
    leaks_nothing(&run, &["123456789012-auth-token", "c2ln"]);
    assert!(proxy
        .seen
        .lock()
        .unwrap()
        .contains(&format!("CONNECT {ECR_HOST}:443")));

    // Static keys in env, the SDKs' first choice.
    let keys = [
        base.clone(),
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            ),
        ],
    ]
    .concat();
    Ocimodel::new()
        .envs(&keys)
        .pull(&uri, &work.path().join("keys"))
        .assert_ok();

    // Explicit docker-config credentials for the host win over the identity.
    let explicit = [
        irsa.clone(),
        vec![(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config("AWS", "stale-token", ECR_HOST),
        )],
    ]
    .concat();
    Ocimodel::new()
        .envs(&explicit)
        .pull(&uri, &work.path().join("explicit"))
        .assert_fails_with(&[
            "rejected the credentials for user 'AWS' (from OCIMODEL_DOCKER_CONFIG_JSON)",
        ]);

    // Off: asked anonymously, and the registry says no.
    let off = [
        irsa.clone(),
        vec![("OCIMODEL_CLOUD_AUTH", "off".to_string())],
    ]
    .concat();
    Ocimodel::new()
        .envs(&off)
        .pull(&uri, &work.path().join("off"))
        .assert_fails_with(&["requires authentication"]);

    // A role STS refuses: STS's documented error answer, from a fake.
    let sts = TcpListener::bind("127.0.0.1:0").unwrap();
    let sts_url = format!("http://{}", sts.local_addr().unwrap());
    serve(sts, |req| {
        assert_eq!(
            req.form("Action").as_deref(),
            Some("AssumeRoleWithWebIdentity")
        );
        response(
            "403 Forbidden",
            &[("Content-Type", "text/xml".into())],
            b"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>1</RequestId></ErrorResponse>",
        )
    });
    let denied = [irsa.clone(), vec![("AWS_ENDPOINT_URL_STS", sts_url)]].concat();
    let dest = work.path().join("denied");
    let run = Ocimodel::new().envs(&denied).pull(&uri, &dest);
    run.assert_fails_with(&[
        "STS AssumeRoleWithWebIdentity",
        "for role arn:aws:iam::123456789012:role/model-reader answered 403 Forbidden: AccessDenied Not authorized to perform sts:AssumeRoleWithWebIdentity",
        "check AWS_ROLE_ARN",
    ]);
    assert!(!dest.join(MNIST_TITLE).exists());
}

/// EKS Pod Identity: the agent's endpoint (a fake: the agent is AWS's own
/// binary) gets the token file's contents as `Authorization` and answers
/// with credentials, which sign the ECR call to moto.
#[test]
fn ecr_with_eks_pod_identity() {
    let work = tempfile::tempdir().unwrap();
    // Kept whole: its registry and moto stop when it drops.
    let ecr = Ecr::start(work.path());
    let digest = &ecr.digest;
    let agent = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent_url = format!("http://{}/v1/credentials", agent.local_addr().unwrap());
    let asked: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = asked.clone();
    serve(agent, move |req| {
        log.lock().unwrap().push(req.authorization.clone());
        if req.authorization.as_deref() != Some("pod-identity-token-1") {
            return response("401 Unauthorized", &[], b"");
        }
        response(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            br#"{"AccessKeyId":"ASIAPODIDENTITY","SecretAccessKey":"c2VjcmV0","Token":"session","AccountId":"123456789012","Expiration":"2030-01-01T00:00:00Z"}"#,
        )
    });
    let token_file = work.path().join("eks-pod-identity-token");
    fs::write(&token_file, "pod-identity-token-1").unwrap();
    let env = [
        ecr.env(work.path()),
        vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent_url),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ],
    ]
    .concat();
    let dest = work.path().join("m");
    let run = Ocimodel::new()
        .envs(&env)
        .pull(&format!("{ECR_HOST}/models/mnist@{digest}"), &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(
        run.stderr().contains("EKS Pod Identity"),
        "{}",
        run.stderr()
    );
    assert!(!asked.lock().unwrap().is_empty());
    // The kubelet rotated the token: the next exchange reads the new one.
    fs::write(&token_file, "pod-identity-token-2").unwrap();
    let run = Ocimodel::new().envs(&env).pull(
        &format!("{ECR_HOST}/models/mnist@{digest}"),
        &work.path().join("n"),
    );
    run.assert_fails_with(&["EKS Pod Identity", "answered 401 Unauthorized"]);
    assert_eq!(
        asked.lock().unwrap().last().unwrap().as_deref(),
        Some("pod-identity-token-2")
    );
}

/// A fake EC2 instance metadata service that answers IMDSv2 as documented
/// ("Use the Instance Metadata Service to access instance metadata",
/// "Retrieve security credentials from instance metadata"): `PUT
/// /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to
/// 21600) gives a session token; `GET /latest/meta-data/iam/security-credentials/`
/// with `X-aws-ec2-metadata-token` gives the role's name, and that path
/// plus the name its credentials. No token, or another one: 401. Its base
/// URL and every request it saw (`METHOD path`).
fn imds(role: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    const TOKEN: &str = "AQAEAImdsSessionToken==";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    serve(listener, move |req| {
        log.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
        if req.method == "PUT" && req.path == "/latest/api/token" {
            let ttl = req
                .header("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.parse::<u32>().ok());
            if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
                return response("400 Bad Request", &[], b"");
            }
            return response(
                "200 OK",
                &[(
                    "X-aws-ec2-metadata-token-ttl-seconds",
                    ttl.unwrap().to_string(),
                )],
                TOKEN.as_bytes(),
            );
        }
        if req.method != "GET" || !req.path.starts_with(CREDS) {
            return response("404 Not Found", &[], b"");
        }
        if req.header("x-aws-ec2-metadata-token") != Some(TOKEN) {
            return response("401 Unauthorized", &[], b"");
        }
        match &req.path[CREDS.len()..] {
            "" => response("200 OK", &[("Content-Type", "text/plain".into())], role.as_bytes()),
            r if r == role => response(
                "200 OK",
                &[("Content-Type", "text/plain".into())],
                br#"{"Code":"Success","LastUpdated":"2026-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIANODEROLE","SecretAccessKey":"bm9kZS1zZWNyZXQ","Token":"node-role-session","Expiration":"2030-01-01T00:00:00Z"}"#,
            ),
            _ => response("404 Not Found", &[], b""),
        }
    });
    (url, seen)
}

/// The node's instance role through IMDSv2 (what most EKS clusters pull
/// from ECR with, as the kubelet's ECR credential provider does): after the
/// pod's own identities, for ECR hosts only, at
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`; `AWS_EC2_METADATA_DISABLED=true`
/// turns it off.
#[test]
fn ecr_with_the_node_instance_role_through_imdsv2() {
    let work = tempfile::tempdir().unwrap();
    // Kept whole: its registry and moto stop when it drops.
    let ecr = Ecr::start(work.path());
    let digest = &ecr.digest;
    let (endpoint, seen) = imds("model-node-role");
    let uri = format!("{ECR_HOST}/models/mnist@{digest}");
    let env = [
        ecr.env(work.path()),
        vec![
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint),
        ],
    ]
    .concat();
    let dest = work.path().join("m");
    let run = Ocimodel::new().envs(&env).pull(&uri, &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(
        run.stderr()
            .contains("the node's instance role model-node-role (EC2 instance metadata, IMDSv2)"),
        "{}",
        run.stderr()
    );
    leaks_nothing(
        &run,
        &[
            "node-role-session",
            "bm9kZS1zZWNyZXQ",
            "AQAEAImdsSessionToken",
        ],
    );
    // Token, role name, credentials: once per flow (moto's ECR tokens say
    // they have expired already, so each challenge runs the flow again).
    let flows = seen.lock().unwrap().clone();
    assert!(!flows.is_empty() && flows.len() % 3 == 0, "{flows:?}");
    for flow in flows.chunks(3) {
        assert_eq!(
            flow,
            [
                "PUT /latest/api/token",
                "GET /latest/meta-data/iam/security-credentials/",
                "GET /latest/meta-data/iam/security-credentials/model-node-role",
            ]
        );
    }

    // The pod's own identity (IRSA here) comes first: IMDS is not asked.
    seen.lock().unwrap().clear();
    let token_file = work.path().join("token");
    fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2ln\n",
    )
    .unwrap();
    let irsa = irsa_env(&env, &token_file);
    let run = Ocimodel::new()
        .envs(&irsa)
        .pull(&uri, &work.path().join("irsa"));
    run.assert_ok();
    assert!(run.stderr().contains("(IRSA)"), "{}", run.stderr());
    assert!(
        seen.lock().unwrap().is_empty(),
        "IMDS was asked before IRSA"
    );

    // AWS_EC2_METADATA_DISABLED=true: not asked; the registry wants credentials.
    let off = [
        env.clone(),
        vec![("AWS_EC2_METADATA_DISABLED", "true".to_string())],
    ]
    .concat();
    Ocimodel::new()
        .envs(&off)
        .pull(&uri, &work.path().join("off"))
        .assert_fails_with(&["requires authentication"]);
    assert!(
        seen.lock().unwrap().is_empty(),
        "IMDS was asked while disabled"
    );
}

/// An ECR host name that only challenges (Basic, as ECR does), on TLS
/// behind a CONNECT proxy: enough for the credential flow to run on its
/// first challenge. The env to reach it; the proxy is kept with the guard.
fn ecr_stand_in(work: &Path) -> (Vec<(&'static str, String)>, ConnectProxy, Recorder) {
    cloud_certs(work);
    let registry = Recorder::start_with(
        response(
            "401 Unauthorized",
            &[("WWW-Authenticate", r#"Basic realm="ecr""#.to_string())],
            b"",
        ),
        Some(work),
    );
    let proxy = ConnectProxy::start(&[(ECR_HOST, &registry.addr)]);
    let env = vec![
        ("HTTPS_PROXY", proxy.url.clone()),
        ("NO_PROXY", "127.0.0.1".to_string()),
        (
            "OCIMODEL_CA_BUNDLE",
            work.join("ca.pem").display().to_string(),
        ),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    (env, proxy, registry)
}

/// The AWS SDKs take `AWS_CONTAINER_CREDENTIALS_FULL_URI` over plain http
/// only to a loopback address, `localhost`, 169.254.170.2, 169.254.170.23
/// or fd00:ec2::23 (botocore's `ContainerMetadataFetcher`); any other http
/// host would get the Pod Identity token in clear. 0.0.0.0 is such a host
/// (not loopback), and on Linux it reaches this machine's listeners, so the
/// agent below would see the token if it were sent.
#[test]
fn container_credentials_over_plain_http_only_to_the_sdks_hosts() {
    let work = tempfile::tempdir().unwrap();
    let (base, _proxy, registry) = ecr_stand_in(work.path());
    let agent = Recorder::start(response(
        "200 OK",
        &[("Content-Type", "application/json".into())],
        br#"{"AccessKeyId":"ASIAPODIDENTITY","SecretAccessKey":"c2VjcmV0","Token":"session","Expiration":"2030-01-01T00:00:00Z"}"#,
    ));
    let port = agent.addr.rsplit_once(':').unwrap().1;
    let token_file = work.path().join("eks-pod-identity-token");
    fs::write(&token_file, "pod-identity-token-in-clear").unwrap();
    let ecr_api = Recorder::start(response("500 Internal Server Error", &[], b""));
    let uri = format!("http://0.0.0.0:{port}/v1/credentials");
    let env = [
        base,
        vec![
            ("AWS_ENDPOINT_URL", ecr_api.url()),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.clone()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ],
    ]
    .concat();
    let run = Ocimodel::new().envs(&env).pull(
        &format!("{ECR_HOST}/models/mnist:v1"),
        &work.path().join("m"),
    );
    run.assert_fails_with(&[
        &format!("AWS_CONTAINER_CREDENTIALS_FULL_URI ({uri}) is plain http to a host"),
        "loopback, localhost, 169.254.170.2, 169.254.170.23 or fd00:ec2::23",
        "the AWS SDKs refuse it",
    ]);
    leaks_nothing(&run, &["pod-identity-token-in-clear"]);
    assert!(registry.requests() > 0, "the registry never challenged");
    assert_eq!(agent.requests(), 0, "the token went over plain http");
    assert_eq!(ecr_api.requests(), 0);

    // ECS: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI wins over the full URI,
    // appended as written to http://169.254.170.2, and the same rule checks
    // the result (nothing here may reach 169.254.170.2: this relative URI
    // moves the host, which the rule refuses before any request).
    let loopback_agent = format!("http://{}/v1/credentials", agent.addr);
    let ecs = [
        env.clone(),
        vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", loopback_agent.clone()),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "@credentials.example/v2/credentials/task".to_string(),
            ),
        ],
    ]
    .concat();
    Ocimodel::new()
        .envs(&ecs)
        .pull(
            &format!("{ECR_HOST}/models/mnist:v1"),
            &work.path().join("ecs"),
        )
        .assert_fails_with(&[
            // The line masks user info in URLs: here, 169.254.170.2.
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (http://",
            "@credentials.example/v2/credentials/task) is plain http to a host other than",
        ]);
    assert_eq!(agent.requests(), 0, "the full URI was asked");

    // The same agent at a loopback address is the SDKs' own case.
    let env = [
        env,
        vec![("AWS_CONTAINER_CREDENTIALS_FULL_URI", loopback_agent)],
    ]
    .concat();
    Ocimodel::new()
        .envs(&env)
        .pull(
            &format!("{ECR_HOST}/models/mnist:v1"),
            &work.path().join("n"),
        )
        .assert_fails_with(&["ECR GetAuthorizationToken", "answered 500"]);
    assert_eq!(
        agent.authorizations(),
        vec!["pod-identity-token-in-clear".to_string()]
    );
}

/// Our SigV4 against botocore's signer (PyPI, moto's own dependency) on the
/// request ocimodel sends to ECR, with and without a session token.
#[test]
fn sigv4_matches_botocore() {
    use ocimodel::cloud::sigv4::{sign, AwsCredentials, Request};
    // botocore signs at its own clock; ours signs at the date it used.
    let script = r#"
import sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, body, key, secret, token = sys.argv[1:6]
req = AWSRequest(method="POST", url=url, data=body.encode(), headers={
    "content-type": "application/x-amz-json-1.1",
    "x-amz-target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"})
SigV4Auth(Credentials(key, secret, token or None), "ecr", "eu-west-1").add_auth(req)
print(req.headers["X-Amz-Date"])
print(req.headers["Authorization"])
"#;
    for token in ["", "FQoGZXIvYXdzEBYa//session+token=="] {
        let url = reqwest::Url::parse("https://api.ecr.eu-west-1.amazonaws.com/").unwrap();
        let body = r#"{"registryIds":["123456789012"]}"#;
        let out = Command::new("python3")
            .args(["-c", script, url.as_str(), body])
            .args([
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                token,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "botocore: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (amz_date, theirs) = stdout.trim().split_once('\n').unwrap();
        let ours = sign(
            &Request {
                method: "POST",
                url: &url,
                headers: &[
                    ("content-type", "application/x-amz-json-1.1"),
                    (
                        "x-amz-target",
                        "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
                    ),
                ],
                body: body.as_bytes(),
                region: "eu-west-1",
                service: "ecr",
                amz_date,
            },
            &AwsCredentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                session_token: (!token.is_empty()).then(|| token.to_string()),
            },
        );
        let ours = &ours.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(ours, theirs, "session token {token:?}");
    }
}

/// Artifact Registry: the metadata server's token as Basic
/// `oauth2accesstoken`; a token that expires is fetched again mid-pull;
/// a metadata server that refuses names itself.
/// Artifact Registry behind the CONNECT proxy (docker-registry with Basic
/// `oauth2accesstoken:TOKEN`) and a metadata server that hands out TOKEN,
/// valid `expires_in` seconds, after `delay`; it counts the token requests.
struct Gar {
    _reg: Registry,
    digest: String,
    proxy: ConnectProxy,
    metadata_host: String,
    hits: Arc<Mutex<usize>>,
}

impl Gar {
    fn start(work: &Path, token: &'static str, expires_in: u64, delay: Duration) -> Gar {
        cloud_certs(work);
        let (reg, digest) = tls_registry(
            work,
            Auth::Basic {
                user: "oauth2accesstoken".into(),
                password: token.into(),
            },
        );
        let proxy = ConnectProxy::start(&[(GAR_HOST, &reg.addr)]);
        let (metadata_host, hits) = metadata_server(token, expires_in, delay);
        Gar {
            _reg: reg,
            digest,
            proxy,
            metadata_host,
            hits,
        }
    }

    fn uri(&self) -> String {
        format!("{GAR_HOST}/models/mnist@{}", self.digest)
    }

    /// The pull's env, with the metadata server at `metadata_host`.
    fn env(&self, work: &Path, metadata_host: &str) -> Vec<(&'static str, String)> {
        vec![
            ("HTTPS_PROXY", self.proxy.url.clone()),
            ("NO_PROXY", "127.0.0.1".to_string()),
            (
                "OCIMODEL_CA_BUNDLE",
                work.join("ca.pem").display().to_string(),
            ),
            ("GCE_METADATA_HOST", metadata_host.to_string()),
        ]
    }

    fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

/// A GCP metadata server that hands out `token`, valid `expires_in`
/// seconds, after `delay`: its `host:port`, and how many tokens it gave.
fn metadata_server(
    token: &'static str,
    expires_in: u64,
    delay: Duration,
) -> (String, Arc<Mutex<usize>>) {
    let metadata = TcpListener::bind("127.0.0.1:0").unwrap();
    let metadata_host = metadata.local_addr().unwrap().to_string();
    let hits: Arc<Mutex<usize>> = Arc::default();
    let count = hits.clone();
    serve(metadata, move |req| {
        if req.path != "/computeMetadata/v1/instance/service-accounts/default/token"
            || req.header("metadata-flavor") != Some("Google")
        {
            return response("404 Not Found", &[], b"");
        }
        *count.lock().unwrap() += 1;
        std::thread::sleep(delay);
        let body = format!(
            r#"{{"access_token":"{token}","expires_in":{expires_in},"token_type":"Bearer"}}"#
        );
        response(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        )
    });
    (metadata_host, hits)
}

#[test]
fn artifact_registry_with_the_metadata_server() {
    let work = tempfile::tempdir().unwrap();
    // 300 s: within the 5 minutes ocimodel renews ahead, so every challenge
    // fetches a fresh one.
    let gar = Gar::start(work.path(), "ya29.c.workload-token", 300, Duration::ZERO);
    let uri = gar.uri();
    let dest = work.path().join("m");
    let run = Ocimodel::new()
        .envs(&gar.env(work.path(), &gar.metadata_host))
        .pull(&uri, &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    assert!(gar.hits() >= 2, "the expiring token was not fetched again");
    leaks_nothing(&run, &["ya29.c.workload-token"]);

    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_host = refusing.local_addr().unwrap().to_string();
    serve(refusing, |_| {
        response("403 Forbidden", &[], b"Permission denied on resource")
    });
    Ocimodel::new()
        .envs(&gar.env(work.path(), &refusing_host))
        .pull(&uri, &work.path().join("n"))
        .assert_fails_with(&[
            "the GCP metadata server",
            "answered 403 Forbidden: Permission denied on resource",
            "iam.gke.io/gcp-service-account",
        ]);
}

/// Several models from one cloud registry in one run (`uri dest uri dest
/// …`, pulled together): their first challenges arrive together, and the
/// workload's identity is asked once, not once per model.
#[test]
fn models_pulled_together_ask_the_cloud_once() {
    let work = tempfile::tempdir().unwrap();
    // Slow enough that every model's challenge comes while it answers.
    let gar = Gar::start(
        work.path(),
        "ya29.c.shared-token",
        3600,
        Duration::from_millis(300),
    );
    let uri = gar.uri();
    let dests: Vec<_> = (0..4).map(|i| work.path().join(format!("m{i}"))).collect();
    let mut args = Vec::new();
    for d in &dests {
        args.push(uri.clone());
        args.push(d.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut o = Ocimodel::new();
    for (k, v) in gar.env(work.path(), &gar.metadata_host) {
        o = o.env(k, &v);
    }
    let run = o.run(&args);
    run.assert_ok();
    for d in &dests {
        assert_eq!(sha256_file(&d.join(MNIST_TITLE)), MNIST_SHA256);
    }
    assert_eq!(gar.hits(), 1, "{}", run.stderr());
    leaks_nothing(&run, &["ya29.c.shared-token"]);
}

/// A fake Entra ID token endpoint on TLS (`cloud_certs` in `certs`): the
/// client-credentials grant with the projected token as a JWT-bearer
/// assertion, for ACR's scope. Its `host:port`.
fn entra(assertion: &'static str, certs: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    serve_tls(listener, certs, move |req| {
        let ok = req.method == "POST"
            && req.path == "/tenant-1/oauth2/v2.0/token"
            && req.form("grant_type").as_deref() == Some("client_credentials")
            && req.form("client_id").as_deref() == Some("client-1")
            && req.form("client_assertion_type").as_deref()
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            && req.form("client_assertion").as_deref() == Some(assertion)
            && req.form("scope").as_deref() == Some("https://containerregistry.azure.net/.default");
        if !ok {
            return response(
                "400 Bad Request",
                &[("Content-Type", "application/json".into())],
                br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject.\r\nTrace ID: 1"}"#,
            );
        }
        response(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"aad-access-token"}"#,
        )
    });
    addr
}

/// ACR with Azure Workload Identity: Entra token → `/oauth2/exchange` on
/// the registry host → a refresh token, traded at the registry's token
/// realm with the refresh-token grant; docker-registry checks the JWT.
#[test]
fn acr_with_azure_workload_identity() {
    let work = tempfile::tempdir().unwrap();
    cloud_certs(work.path());
    let issuer = TokenServer::start(|repo| repo.to_string());
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    let digest = plain.digest_of("models/mnist", "v1");
    let reg = Registry::start_in(
        plain.stop(),
        Auth::Token {
            realm: format!("https://{ACR_HOST}/oauth2/token"),
            cert_pem: issuer.cert.clone(),
        },
    );
    let issuer_addr = issuer
        .realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let mut front = KillOnDrop(
        Command::new("python3")
            .arg(repo_root().join("tests/support/acr_front.py"))
            .arg(work.path().join("server.pem"))
            .arg(work.path().join("server.key"))
            .args([&reg.addr, &issuer_addr, "aad-access-token", IDENTITY_TOKEN])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    BufReader::new(front.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let front_addr = format!("127.0.0.1:{}", port.trim());
    let proxy = ConnectProxy::start(&[(ACR_HOST, &front_addr)]);
    let token_file = work.path().join("azure-identity-token");
    fs::write(&token_file, "projected-sa-token").unwrap();
    let env = |authority: String| {
        vec![
            ("HTTPS_PROXY", proxy.url.clone()),
            ("NO_PROXY", "127.0.0.1".to_string()),
            (
                "OCIMODEL_CA_BUNDLE",
                work.path().join("ca.pem").display().to_string(),
            ),
            ("AZURE_CLIENT_ID", "client-1".to_string()),
            ("AZURE_TENANT_ID", "tenant-1".to_string()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", authority),
        ]
    };
    let uri = format!("{ACR_HOST}/models/mnist@{digest}");
    let dest = work.path().join("m");
    // Without a scheme, as azure-identity takes it: https:// is added.
    let run = Ocimodel::new()
        .envs(&env(entra("projected-sa-token", work.path())))
        .pull(&uri, &dest);
    run.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    leaks_nothing(
        &run,
        &["aad-access-token", IDENTITY_TOKEN, "projected-sa-token"],
    );
    assert!(issuer
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|(_, scope)| scope == "repository:models/mnist:pull"));

    // A federated credential Entra does not know: the step and what to check.
    let run = Ocimodel::new()
        .envs(&env(format!(
            "https://{}/",
            entra("another-token", work.path())
        )))
        .pull(&uri, &work.path().join("n"));
    run.assert_fails_with(&[
        "Entra ID token at",
        "for client client-1 answered 400 Bad Request: invalid_client: AADSTS700213",
        "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the federated credential",
        "AZURE_FEDERATED_TOKEN_FILE",
    ]);

    // A plain-http authority: azure-identity refuses it (the projected
    // token would go in clear), and so does ocimodel, before any request.
    let plain = Recorder::start(response("500 Internal Server Error", &[], b""));
    let run = Ocimodel::new()
        .envs(&env(plain.url()))
        .pull(&uri, &work.path().join("o"));
    run.assert_fails_with(&[
        &format!("AZURE_AUTHORITY_HOST ({}) is not https", plain.url()),
        "azure-identity refuses it",
    ]);
    leaks_nothing(&run, &["projected-sa-token"]);
    assert_eq!(
        plain.requests(),
        0,
        "the authority was asked over plain http"
    );
}

/// A docker config `identitytoken` (what `az acr login` writes) is traded at
/// the token realm with the refresh-token grant, not sent as a password or
/// a Bearer; a wrong one is refused with its own line.
#[test]
fn docker_config_identity_tokens_use_the_refresh_grant() {
    let issuer = TokenServer::start(|repo| repo.to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let work = tempfile::tempdir().unwrap();
    let config = |token: &str| {
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}","identitytoken":"{token}"}}}}}}"#,
            reg.addr,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "<token>:"),
        )
    };
    let run = Ocimodel::for_registry(&reg)
        .env("OCIMODEL_DOCKER_CONFIG_JSON", config(IDENTITY_TOKEN))
        .pull(
            &format!("{}/models/mnist:v1", reg.addr),
            &work.path().join("m"),
        );
    run.assert_ok();
    leaks_nothing(&run, &[IDENTITY_TOKEN]);
    let run = Ocimodel::for_registry(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            config("expired-refresh-token"),
        )
        .pull(
            &format!("{}/models/mnist:v1", reg.addr),
            &work.path().join("n"),
        );
    run.assert_fails_with(&["refused the identity token (from OCIMODEL_DOCKER_CONFIG_JSON)"]);
    leaks_nothing(&run, &["expired-refresh-token"]);
}

/// S3-9: a cloud registry set to plain http (`KSERVE_OCI_INSECURE_REGISTRY`,
/// or listed in `OCIMODEL_INSECURE_REGISTRIES`) gets no cloud credential.
/// Whoever answers `http://<cloud host>` (here an `HTTP_PROXY` that
/// challenges every request and records it) is sent none, no flow runs
/// (the metadata server, ECR's API and Entra are never asked), and the line
/// says why. A lookalike host is no cloud's and gets nothing either.
#[test]
fn cloud_credentials_never_go_over_plain_http() {
    let work = tempfile::tempdir().unwrap();
    let (metadata_host, metadata_hits) = metadata_server("ya29.c.clear-text", 3600, Duration::ZERO);
    let on_path = Recorder::challenging(r#"Basic realm="registry""#);
    let base = vec![
        ("HTTP_PROXY", on_path.url()),
        ("NO_PROXY", "127.0.0.1".to_string()),
        ("GCE_METADATA_HOST", metadata_host.clone()),
    ];
    // Artifact Registry, as the review reproduced it: both switches.
    for (setting, value, named) in [
        (
            "KSERVE_OCI_INSECURE_REGISTRY",
            "true",
            "KSERVE_OCI_INSECURE_REGISTRY=true",
        ),
        (
            "OCIMODEL_INSECURE_REGISTRIES",
            GAR_HOST,
            "listed in OCIMODEL_INSECURE_REGISTRIES",
        ),
    ] {
        let env = [base.clone(), vec![(setting, value.to_string())]].concat();
        let run = Ocimodel::new().envs(&env).pull(
            &format!("{GAR_HOST}/proj/repo/m:v1"),
            &work.path().join(setting),
        );
        run.assert_fails_with(&[
            &format!("registry {GAR_HOST} is set to plain http ({named})"),
            "sends the workload's cloud credentials only over TLS",
        ]);
        leaks_nothing(&run, &["ya29.c.clear-text"]);
    }
    assert!(
        on_path.requests() > 0,
        "the pull never reached the registry"
    );
    assert_eq!(
        *metadata_hits.lock().unwrap(),
        0,
        "the metadata server was asked"
    );
    assert_eq!(on_path.authorizations(), Vec::<String>::new());

    // ECR (static keys): its API, a recorder here, is never asked.
    let ecr_api = Recorder::start(response("500 Internal Server Error", &[], b""));
    let ecr = [
        base.clone(),
        vec![
            ("KSERVE_OCI_INSECURE_REGISTRY", "true".to_string()),
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            ),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", ecr_api.url()),
        ],
    ]
    .concat();
    Ocimodel::new()
        .envs(&ecr)
        .pull(
            &format!("{ECR_HOST}/models/mnist:v1"),
            &work.path().join("ecr"),
        )
        .assert_fails_with(&[&format!(
            "registry {ECR_HOST} is set to plain http (KSERVE_OCI_INSECURE_REGISTRY=true)"
        )]);
    assert_eq!(ecr_api.requests(), 0, "ECR's API was asked");
    assert_eq!(on_path.authorizations(), Vec::<String>::new());

    // ACR: a Bearer challenge naming a plain-http realm on the same host.
    let acr_on_path = Recorder::challenging(&format!(
        r#"Bearer realm="http://{ACR_HOST}/oauth2/token",service="{ACR_HOST}""#
    ));
    cloud_certs(work.path());
    let entra_fake = Recorder::start_with(
        response("500 Internal Server Error", &[], b""),
        Some(work.path()),
    );
    let token_file = work.path().join("azure-identity-token");
    fs::write(&token_file, "projected-sa-token").unwrap();
    let acr = vec![
        ("HTTP_PROXY", acr_on_path.url()),
        ("NO_PROXY", "127.0.0.1".to_string()),
        ("OCIMODEL_INSECURE_REGISTRIES", ACR_HOST.to_string()),
        (
            "OCIMODEL_CA_BUNDLE",
            work.path().join("ca.pem").display().to_string(),
        ),
        ("AZURE_CLIENT_ID", "client-1".to_string()),
        ("AZURE_TENANT_ID", "tenant-1".to_string()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        (
            "AZURE_AUTHORITY_HOST",
            format!("https://{}/", entra_fake.addr),
        ),
    ];
    let run = Ocimodel::new().envs(&acr).pull(
        &format!("{ACR_HOST}/models/mnist:v1"),
        &work.path().join("acr"),
    );
    run.assert_fails_with(&[&format!(
        "registry {ACR_HOST} is set to plain http (listed in OCIMODEL_INSECURE_REGISTRIES)"
    )]);
    leaks_nothing(&run, &["projected-sa-token"]);
    assert_eq!(entra_fake.requests(), 0, "Entra ID was asked");
    assert!(acr_on_path.requests() > 0);
    assert_eq!(acr_on_path.authorizations(), Vec::<String>::new());
    assert!(
        acr_on_path
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|(line, _)| !line.contains("oauth2")),
        "the plain-http realm was asked"
    );

    // A lookalike is no cloud's: asked anonymously, no flow.
    let lookalike = format!("{GAR_HOST}.evil.io");
    let env = [
        base.clone(),
        vec![("KSERVE_OCI_INSECURE_REGISTRY", "true".to_string())],
    ]
    .concat();
    Ocimodel::new()
        .envs(&env)
        .pull(
            &format!("{lookalike}/proj/repo/m:v1"),
            &work.path().join("lookalike"),
        )
        .assert_fails_with(&[&format!("registry {lookalike} requires authentication")]);
    assert_eq!(*metadata_hits.lock().unwrap(), 0);
    assert_eq!(on_path.authorizations(), Vec::<String>::new());
}

/// S3-9, over TLS: a cloud registry's Bearer challenge that names a realm
/// on a host that is not that cloud's gets no cloud credential (the realm
/// is sent nothing, the metadata server is not asked) and a line saying why.
#[test]
fn cloud_credentials_go_only_to_the_clouds_own_token_realm() {
    let work = tempfile::tempdir().unwrap();
    cloud_certs(work.path());
    let (metadata_host, metadata_hits) =
        metadata_server("ya29.c.foreign-realm", 3600, Duration::ZERO);
    let realm = Recorder::start_with(
        response(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            br#"{"token":"t"}"#,
        ),
        Some(work.path()),
    );
    let realm_url = format!("https://{}/token", realm.addr);
    let registry = Recorder::start_with(
        response(
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!(r#"Bearer realm="{realm_url}",service="{GAR_HOST}""#),
            )],
            b"",
        ),
        Some(work.path()),
    );
    let proxy = ConnectProxy::start(&[(GAR_HOST, &registry.addr)]);
    let env = vec![
        ("HTTPS_PROXY", proxy.url.clone()),
        ("NO_PROXY", "127.0.0.1".to_string()),
        (
            "OCIMODEL_CA_BUNDLE",
            work.path().join("ca.pem").display().to_string(),
        ),
        ("GCE_METADATA_HOST", metadata_host),
    ];
    let run = Ocimodel::new().envs(&env).pull(
        &format!("{GAR_HOST}/proj/repo/m:v1"),
        &work.path().join("m"),
    );
    run.assert_fails_with(&[
        &format!("registry {GAR_HOST} names the token realm {realm_url}"),
        "cloud credentials only over TLS to the cloud's own hosts",
    ]);
    leaks_nothing(&run, &["ya29.c.foreign-realm"]);
    assert!(registry.requests() > 0);
    assert_eq!(
        *metadata_hits.lock().unwrap(),
        0,
        "the metadata server was asked"
    );
    assert_eq!(realm.authorizations(), Vec::<String>::new());
}

/// S3-8 with S3-9: a cloud host named as a plain-http mirror of another
/// registry is reached over plain http in that role only, and in that role
/// gets no cloud credential (whoever answers `http://<cloud host>` would get
/// the workload's token); the mirror is skipped and the registry serves.
#[test]
fn a_plain_http_mirror_on_a_cloud_host_gets_no_cloud_credential() {
    let (upstream, digest) = Registry::with_mnist();
    let work = tempfile::tempdir().unwrap();
    let (metadata_host, metadata_hits) =
        metadata_server("ya29.c.mirror-in-clear", 3600, Duration::ZERO);
    let on_path = Recorder::challenging(r#"Basic realm="registry""#);
    let hosts = hosts_dir(&upstream.addr, &[(&format!("http://{GAR_HOST}"), "")]);
    let run = Ocimodel::new()
        .envs(&[
            ("HTTP_PROXY", on_path.url()),
            ("NO_PROXY", "127.0.0.1".to_string()),
            ("GCE_METADATA_HOST", metadata_host),
            ("OCIMODEL_HOSTS_DIR", hosts.path().display().to_string()),
            ("OCIMODEL_REGISTRIES_CONF", "off".to_string()),
            ("OCIMODEL_INSECURE_REGISTRIES", upstream.addr.clone()),
        ])
        .pull(
            &format!("{}/models/mnist@{digest}", upstream.addr),
            &work.path().join("m"),
        );
    run.assert_ok();
    leaks_nothing(&run, &["ya29.c.mirror-in-clear"]);
    assert!(on_path.requests() > 0, "the mirror was never asked");
    assert_eq!(on_path.authorizations(), Vec::<String>::new());
    assert_eq!(
        *metadata_hits.lock().unwrap(),
        0,
        "the metadata server was asked"
    );
}
