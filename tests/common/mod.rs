//! Test harness: a real registry (Debian's docker-registry, the CNCF
//! distribution registry) on 127.0.0.1 with an ephemeral port and a temp
//! storage directory, fixtures pushed by independent clients (skopeo, the oras
//! Python SDK), and the ocimodel binary run as a user or KServe would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use sha2::Digest as _;

pub const MNIST_TITLE: &str = "v1.nb20231206162408/mnist.onnx";
pub const MNIST_SHA256: &str = "2536d32a8d81c95b8261926e57e34e00b32a7ea22eef96c653ce29be1e64f7e1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed model: its blob in the bundled layout (examples/mnist).
pub fn mnist_path() -> PathBuf {
    repo_root()
        .join("examples/mnist/blobs/sha256")
        .join(MNIST_SHA256)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Relative paths of everything under `dir` except ocimodel's bookkeeping,
/// with a kind letter: `f` file, `d` dir, `l` symlink.
pub fn tree(dir: &Path) -> BTreeMap<String, char> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, char>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".ocimodel" || rel == ".ocimodel.json" {
                continue;
            }
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            let kind = if ft.is_symlink() {
                'l'
            } else if ft.is_dir() {
                'd'
            } else {
                'f'
            };
            out.insert(rel, kind);
            if kind == 'd' {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Model files in `dir` (bookkeeping excluded): none means "no model here".
pub fn model_files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|(_, k)| *k != 'd')
        .map(|(p, _)| p)
        .collect()
}

pub fn marker(dir: &Path) -> serde_json::Value {
    let bytes = fs::read(dir.join(".ocimodel.json")).expect("marker present");
    serde_json::from_slice(&bytes).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub enum Auth {
    None,
    /// htpasswd Basic auth with one user.
    Basic {
        user: String,
        password: String,
    },
    /// htpasswd Basic auth with several users (user, password).
    Users(Vec<(String, String)>),
    /// Bearer tokens from `realm`, checked against `cert_pem`.
    Token {
        realm: String,
        cert_pem: PathBuf,
    },
}

/// An htpasswd file in `dir` holding `users`; the registry's auth section.
fn htpasswd(dir: &Path, users: &[(&String, &String)]) -> String {
    let file = dir.join("htpasswd");
    for (i, (user, password)) in users.iter().enumerate() {
        let st = Command::new("htpasswd")
            .arg(if i == 0 { "-Bbc" } else { "-Bb" })
            .arg(&file)
            .args([user, password])
            .output()
            .expect("htpasswd (apache2-utils) is installed");
        assert!(st.status.success(), "htpasswd failed: {st:?}");
    }
    format!(
        "auth:\n  htpasswd: {{realm: test, path: {}}}\n",
        file.display()
    )
}

/// A running docker-registry; killed on drop.
pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
    tls: bool,
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        Registry::start_in(dir, auth)
    }

    /// Starts a registry on existing storage (to serve pushed content with
    /// another auth configuration).
    pub fn start_in(dir: tempfile::TempDir, auth: Auth) -> Registry {
        Registry::start_with(dir, auth, None)
    }

    /// Serves HTTPS with this certificate and key.
    pub fn start_tls(dir: tempfile::TempDir, cert: &Path, key: &Path) -> Registry {
        Registry::start_with(dir, Auth::None, Some((cert, key)))
    }

    /// A pull-through cache (distribution's proxy mode) of `upstream`.
    pub fn start_proxy(upstream: &str) -> Registry {
        Registry::start_with_extra(
            tempfile::tempdir().unwrap(),
            Auth::None,
            None,
            &format!("proxy: {{remoteurl: http://{upstream}}}\n"),
        )
    }

    /// A pull-through cache of `upstream` serving HTTPS with this certificate.
    pub fn start_tls_proxy(upstream: &str, cert: &Path, key: &Path) -> Registry {
        Registry::start_with_extra(
            tempfile::tempdir().unwrap(),
            Auth::None,
            Some((cert, key)),
            &format!("proxy: {{remoteurl: http://{upstream}}}\n"),
        )
    }

    /// Serves HTTPS with this certificate and key, and `auth`.
    pub fn start_tls_with(dir: tempfile::TempDir, auth: Auth, cert: &Path, key: &Path) -> Registry {
        Registry::start_with(dir, auth, Some((cert, key)))
    }

    /// Serves HTTPS on existing storage, answering blob GETs with a redirect
    /// to `base_url` + the blob's storage path (distribution's `redirect`
    /// storage middleware, as a registry in front of object storage does).
    pub fn start_tls_redirecting(
        dir: tempfile::TempDir,
        cert: &Path,
        key: &Path,
        base_url: &str,
    ) -> Registry {
        Registry::start_with_extra(
            dir,
            Auth::None,
            Some((cert, key)),
            &format!(
                "middleware:\n  storage:\n    - name: redirect\n      options: {{baseurl: \"{base_url}\"}}\n"
            ),
        )
    }

    fn start_with(dir: tempfile::TempDir, auth: Auth, tls: Option<(&Path, &Path)>) -> Registry {
        Registry::start_with_extra(dir, auth, tls, "")
    }

    fn start_with_extra(
        dir: tempfile::TempDir,
        auth: Auth,
        tls: Option<(&Path, &Path)>,
        extra: &str,
    ) -> Registry {
        let tls_yaml = match tls {
            Some((cert, key)) => format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => htpasswd(dir.path(), &[(user, password)]),
            Auth::Users(users) => htpasswd(
                dir.path(),
                &users.iter().map(|(u, p)| (u, p)).collect::<Vec<_>>(),
            ),
            Auth::Token { realm, cert_pem } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
                cert_pem.display()
            ),
        };
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp:\n  addr: {addr}\n{tls_yaml}{auth_yaml}{extra}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry is installed (apt-get install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken or bad config: try again
                }
                if http_status(&addr, "/v2/").is_some() {
                    return Registry {
                        addr,
                        dir,
                        child,
                        tls: tls.is_some(),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start: {}",
            fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// Stops the registry and hands back its storage.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::mem::forget(self);
        dir
    }

    /// The access log, with every request answered so far in it. The
    /// registry writes a request's line after its last byte went out, so a
    /// client can be done before its line is: a marker request sent now is
    /// answered after them, and the log is read once the marker is in it.
    pub fn log(&self) -> String {
        static MARKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("/v2/?logged={}-{n}", std::process::id());
        let path = self.dir.path().join("registry.log");
        let read = || fs::read_to_string(&path).unwrap_or_default();
        if self.tls {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null"])
                .arg(format!("https://{}{marker}", self.addr))
                .output()
                .expect("curl is installed");
            assert!(out.status.success(), "marker request failed: {out:?}");
        } else {
            assert!(
                http_status(&self.addr, &marker).is_some(),
                "marker request failed"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = read();
            if log.contains(&marker) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the marker never reached the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The blob's file in the registry's storage (to corrupt it on purpose).
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes an OCI layout (`DIR:TAG`) with skopeo, keeping digests.
    pub fn skopeo_push(&self, layout: &Path, tag: &str, repo_tag: &str) {
        self.skopeo_push_with(layout, tag, repo_tag, &["--all", "--preserve-digests"]);
    }

    /// Pushes with other skopeo flags (e.g. `--format v2s2` to convert).
    pub fn skopeo_push_with(&self, layout: &Path, tag: &str, repo_tag: &str, flags: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(flags)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An open registry holding the seed's mnist as `models/mnist:v1`, and
    /// that manifest's digest.
    pub fn with_mnist() -> (Registry, String) {
        let reg = Registry::start(Auth::None);
        reg.oras_push_mnist("models/mnist:v1");
        let digest = reg.digest_of("models/mnist", "v1");
        (reg, digest)
    }

    /// Pushes the seed's mnist artifact with the oras Python SDK, in the
    /// shape of the manifest `oras push` wrote for it (the bundled layout's
    /// examples/mnist/blobs/sha256/52154286…; only its description is
    /// shorter here). Returns the manifest as the registry stored it.
    pub fn oras_push_mnist(&self, repo_tag: &str) -> serde_json::Value {
        let spec = serde_json::json!({
            "artifactType": "application/vnd.unknown.artifact.v1",
            "annotations": {
                "org.opencontainers.image.created": "2023-12-12T09:11:31Z",
                "description": "Lorem ipsum dolor sit amet",
                "authors": "John Doe, John Rambo",
                "state": "LIVE"
            },
            "files": [{
                "path": mnist_path(),
                "title": MNIST_TITLE,
                "mediaType": "application/octet-stream",
                "annotations": {"accuracy": "0.91"}
            }]
        });
        self.oras_push(repo_tag, &spec)
    }

    pub fn oras_push(&self, repo_tag: &str, spec: &serde_json::Value) -> serde_json::Value {
        let spec_file = tempfile::NamedTempFile::new().unwrap();
        fs::write(spec_file.path(), serde_json::to_vec(spec).unwrap()).unwrap();
        let out = Command::new("python3")
            .arg(repo_root().join("tests/support/oras_push.py"))
            .arg(&self.addr)
            .arg(repo_tag)
            .arg(spec_file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "oras push failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("oras_push.py prints the manifest")
    }

    /// The digest of layer `index` in the image manifest `repo:tag`.
    pub fn layer_digest(&self, repo: &str, tag: &str, index: usize) -> String {
        let resp = http_get(
            &self.addr,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&resp.body).expect("the registry sends the manifest");
        manifest["layers"][index]["digest"]
            .as_str()
            .expect("the manifest has that layer")
            .to_string()
    }

    /// The digest the registry reports for `repo:tag`.
    pub fn digest_of(&self, repo: &str, tag: &str) -> String {
        let resp = http_get(
            &self.addr,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[
                ("Accept", "application/vnd.oci.image.manifest.v1+json"),
                ("Accept", "application/vnd.oci.image.index.v1+json"),
            ],
        );
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("docker-content-digest"))
            .map(|(_, v)| v.clone())
            .expect("registry sends Docker-Content-Digest")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the modelcar fixture layout (see tests/support/make_modelcar.py).
pub fn modelcar_layout(evil: bool) -> (tempfile::TempDir, String) {
    modelcar_layout_with(if evil { &["--evil"] } else { &[] })
}

pub fn modelcar_layout_with(flags: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/support/make_modelcar.py"))
        .arg(dir.path())
        .arg("v1")
        .arg(mnist_path());
    cmd.args(flags);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "make_modelcar.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (dir, digest)
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A minimal HTTP/1.0 GET on loopback (no client library in the way).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(addr, "GET", path, headers, b"")
}

/// One HTTP/1.0 request, its whole response.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The ocimodel binary with a clean environment: no credentials or proxies
/// from the machine leak in, and the termination log goes to a temp file.
/// It runs in that temp dir, so a relative path (a DEST, a cache) lands
/// there and never in the checkout; tests pass absolute paths.
pub struct Ocimodel {
    pub cmd: Command,
    pub termination_log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Ocimodel {
    pub fn new() -> Ocimodel {
        let tmp = tempfile::tempdir().unwrap();
        let termination_log = tmp.path().join("termination-log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocimodel"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", tmp.path())
            .env("NO_PROXY", "*")
            .env("OCIMODEL_TERMINATION_LOG", &termination_log)
            // One quick retry keeps failure tests fast; retry tests set their own.
            .env("OCIMODEL_RETRIES", "1")
            .current_dir(tmp.path())
            .stdin(Stdio::null());
        Ocimodel {
            cmd,
            termination_log,
            _tmp: tmp,
        }
    }

    /// Reaches `reg` over plain HTTP (listed in OCIMODEL_INSECURE_REGISTRIES).
    pub fn insecure(mut self, reg: &Registry) -> Ocimodel {
        self.cmd.env("OCIMODEL_INSECURE_REGISTRIES", &reg.addr);
        self
    }

    /// The binary for a test registry: [`Ocimodel::new`], reaching `reg`
    /// over plain HTTP.
    pub fn for_registry(reg: &Registry) -> Ocimodel {
        Ocimodel::new().insecure(reg)
    }

    /// Each of `env` set in the binary's environment.
    pub fn envs<V: AsRef<std::ffi::OsStr>>(mut self, env: &[(&str, V)]) -> Ocimodel {
        for (k, v) in env {
            self.cmd.env(k, v);
        }
        self
    }

    /// `ocimodel URI DEST`, as KServe runs it.
    pub fn pull(self, uri: &str, dest: &Path) -> Run {
        self.run(&[uri, dest.to_str().unwrap()])
    }

    /// Runs as `uid:gid` with no supplementary groups (the test runs as
    /// root); the termination log's directory (its working directory) is
    /// opened up for it.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Ocimodel {
        use std::os::unix::process::CommandExt;
        fs::set_permissions(self._tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        self.cmd.uid(uid).gid(gid);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ocimodel {
        self.cmd.env(k, v);
        self
    }

    /// Starts the binary in the background (output discarded unless the
    /// caller pipes it through `cmd`); the harness's temp dir lives with
    /// the returned guard.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(mut self, args: &[S]) -> Spawned {
        let child = self
            .cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Spawned {
            child,
            _harness: self,
        }
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(mut self, args: &[S]) -> Run {
        let out = self.cmd.args(args).output().unwrap();
        let termination = fs::read_to_string(&self.termination_log).unwrap_or_default();
        Run { out, termination }
    }
}

/// A running binary started by [`Ocimodel::spawn`].
pub struct Spawned {
    pub child: Child,
    _harness: Ocimodel,
}

pub struct Run {
    pub out: Output,
    pub termination: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code(),
            0,
            "expected success; stderr:\n{}",
            self.stderr()
        );
        self
    }

    /// Asserts exit 1 and a single termination line containing every needle.
    #[track_caller]
    pub fn assert_fails_with(&self, needles: &[&str]) -> &Run {
        assert_eq!(
            self.code(),
            1,
            "expected exit 1; stderr:\n{}",
            self.stderr()
        );
        let t = self.termination.trim_end();
        assert!(
            !t.is_empty(),
            "no termination line; stderr:\n{}",
            self.stderr()
        );
        assert_eq!(
            t.lines().count(),
            1,
            "termination log must be one line: {t:?}"
        );
        assert!(t.len() < 4096, "termination line too long");
        for n in needles {
            assert!(t.contains(n), "termination line {t:?} lacks {n:?}");
        }
        self
    }
}

/// One request as the tiny test servers see it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// Every header, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, as `Content-Length` gives it.
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field of an `application/x-www-form-urlencoded` body.
    pub fn form(&self, key: &str) -> Option<String> {
        form_field(&String::from_utf8_lossy(&self.body), key)
    }
}

/// A field of a form-encoded body or query, percent-decoded.
pub fn form_field(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal HTTP server for fault injection and token issuing: one request
/// per connection, answered by `handler` with raw response bytes.
pub fn serve(listener: TcpListener, handler: impl Fn(&Request) -> Vec<u8> + Send + 'static) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            answer_one(stream, &handler);
        }
    });
}

/// Reads one request from `stream` (plain TCP, or TLS over it) and writes
/// `handler`'s answer.
pub fn answer_one<S: Read + Write>(stream: S, handler: &dyn Fn(&Request) -> Vec<u8>) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let method = line.split_whitespace().next().unwrap_or("").to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authorization = None;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = handler(&Request {
        method,
        path,
        authorization,
        headers,
        body,
    });
    let stream = reader.get_mut();
    let _ = stream.write_all(&answer);
    let _ = stream.flush();
}

/// Raw HTTP/1.1 response bytes.
pub fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A fresh ECDSA P-256 key made by openssl in `dir` as `NAME.key` and
/// `NAME.pub`; returns the public key's PEM (what COSIGN_KEY takes).
pub fn ec_keypair(dir: &Path, name: &str) -> String {
    ec_keypair_on(dir, "prime256v1", name);
    fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap()
}

/// The same on another curve (`secp384r1`); returns (private, public) paths.
pub fn ec_keypair_on(dir: &Path, curve: &str, name: &str) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    openssl(
        &["ecparam", "-name", curve, "-genkey", "-noout", "-out", &key],
        dir,
    );
    let public = format!("{name}.pub");
    openssl(&["pkey", "-in", &key, "-pubout", "-out", &public], dir);
    (dir.join(key), dir.join(public))
}

/// Packs the directory `model` with `ocimodel push` as `format` (modelpack,
/// oras, modelcar) into an OCI layout at `layout`, tag v1; the URI to pull.
pub fn push_layout(model: &Path, layout: &Path, format: &str) -> String {
    Ocimodel::new()
        .run(&[
            "push",
            model.to_str().unwrap(),
            "v1",
            "--oci-layout",
            layout.to_str().unwrap(),
            "--format",
            format,
        ])
        .assert_ok();
    format!("oci-layout://{}:v1", layout.display())
}

/// Runs `openssl ARGS` in `dir`, failing the test on error; returns stdout.
pub fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Registry {
    /// Runs `ocimodel push ARGS` against this registry; returns the digest
    /// it prints.
    pub fn ocimodel_push(&self, args: &[&str]) -> String {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        let run = Ocimodel::new().insecure(self).run(&all);
        run.assert_ok();
        run.stdout().split_whitespace().next().unwrap().to_string()
    }

    /// Builds an artifact from a spec (tests/support/make_artifact.py) and
    /// pushes it with skopeo. Returns the manifest digest.
    pub fn push_artifact(&self, repo_tag: &str, spec: &serde_json::Value) -> String {
        let layout = tempfile::tempdir().unwrap();
        let spec_file = layout.path().join("spec.json");
        fs::write(&spec_file, serde_json::to_vec(spec).unwrap()).unwrap();
        let out_dir = layout.path().join("layout");
        let out = Command::new("python3")
            .arg(repo_root().join("tests/support/make_artifact.py"))
            .arg(&out_dir)
            .arg(&spec_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make_artifact.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tag = spec["tag"].as_str().unwrap_or("v1");
        self.skopeo_push(&out_dir, tag, repo_tag);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Pushes a ModelPack artifact with the independent `modelpack-client`.
    /// `layers` are `PATH[:MEDIA_TYPE]` as its CLI takes them.
    pub fn modelpack_push(&self, repo_tag: &str, config: &Path, layers: &[String]) -> String {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "modelpack_client", "--insecure", "push"])
            .arg(format!("{}/{repo_tag}", self.addr))
            .arg("--config")
            .arg(config);
        for l in layers {
            cmd.arg("--layer").arg(l);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "modelpack push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["digest"].as_str().unwrap().to_string()
    }

    /// `ocimodel REG/REPO_TAG DEST` against this registry (plain HTTP).
    pub fn pull(&self, repo_tag: &str, dest: &Path) -> Run {
        Ocimodel::for_registry(self).pull(&format!("{}/{repo_tag}", self.addr), dest)
    }

    /// PUTs a manifest (e.g. the referrers fallback index a client maintains
    /// when the registry has no referrers API). Returns the HTTP status.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> u16 {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "PUT /v2/{repo}/manifests/{reference} HTTP/1.0\r\nHost: {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Uploads `bytes` as a blob of `repo` (the two-step upload: POST,
    /// then PUT with the digest); returns the digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let start = http_request(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(
            start.status,
            202,
            "upload start: {}",
            String::from_utf8_lossy(&start.body)
        );
        let location = start
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
            .unwrap();
        let path = match location.find("/v2/") {
            Some(i) => location[i..].to_string(),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let done = http_request(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(
            done.status,
            201,
            "upload: {}",
            String::from_utf8_lossy(&done.body)
        );
        digest
    }

    /// How many times the registry served blob `digest` (from its access log).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} HTTP");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// The (status, bytes) of each GET of blob `digest`, from the access log
    /// (a blob fetched in ranges is several 206s).
    pub fn blob_responses(&self, digest: &str) -> Vec<(u16, u64)> {
        self.get_responses(&format!("/blobs/{digest} HTTP"))
    }

    /// The (status, bytes) of each GET whose request line contains `needle`.
    pub fn get_responses(&self, needle: &str) -> Vec<(u16, u64)> {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(needle))
            .filter_map(|l| {
                let mut rest = l
                    .split_once(needle)?
                    .1
                    .split_once("\" ")?
                    .1
                    .split_whitespace();
                Some((rest.next()?.parse().ok()?, rest.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Bytes of blob `digest` the registry served, over all its GETs.
    pub fn blob_egress(&self, digest: &str) -> u64 {
        self.blob_responses(digest).iter().map(|(_, n)| n).sum()
    }
}

/// Root-only tests fail, never skip, when not root: CI runs as root, and a
/// skip that passes would hide them.
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test needs root ({why}); run the suite as root, as CI does"
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `cond` every 20 ms until it holds; fails naming `what` after
/// `limit`. For waiting on a real condition instead of sleeping.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds a lock (flock or fcntl) on `path`, as the
/// kernel lists it in /proc/locks (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE
/// ...`; a waiter's line has `->` after `N:`, so it never matches).
pub fn holds_lock(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let (pid, inode) = (pid.to_string(), format!(":{}", meta.ino()));
    fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && f[4] == pid && f[5].ends_with(&inode)
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of the demo layout in `dir` whose model blob is a FIFO, fed by a
/// thread in `chunks` pieces `pause` apart: a pull that takes a while.
/// Returns its URI and the feeding thread (which gives up if the reader goes).
pub fn slow_layout(
    dir: &Path,
    chunks: usize,
    pause: std::time::Duration,
) -> (String, std::thread::JoinHandle<()>) {
    copy_dir(&repo_root().join("examples/mnist"), dir);
    let blob = dir.join("blobs/sha256").join(MNIST_SHA256);
    fs::remove_file(&blob).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&blob)
        .status()
        .unwrap()
        .success());
    let model = fs::read(mnist_path()).unwrap();
    let writer = std::thread::spawn(move || {
        // A reader may never come (a test kills the pull before it opens
        // the blob): wait for one a bounded time, never forever.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut fifo = loop {
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&blob)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return,
            }
        };
        // Blocking writes from here on: the reader sets the pace.
        use std::os::unix::io::AsRawFd;
        // SAFETY: F_SETFL on a descriptor this thread owns.
        unsafe {
            let flags = libc::fcntl(fifo.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fifo.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        for chunk in model.chunks(model.len() / chunks + 1) {
            if fifo.write_all(chunk).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    });
    (format!("oci-layout://{}", dir.display()), writer)
}

/// Pulls with the independent modelpack-client (which validates the
/// artifact against the spec's schemas) into `dest`.
pub fn modelpack_pull(reg: &Registry, repo_tag: &str, dest: &Path) {
    let out = Command::new("python3")
        .args(["-m", "modelpack_client", "--insecure", "pull"])
        .arg(format!("{}/{repo_tag}", reg.addr))
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "modelpack-client pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// Credentials and a token issuer, shared by the auth and fault tests.

pub const USER: &str = "modeler";
pub const PASSWORD: &str = "s3cret-pw";
/// The refresh token [`TokenServer`] takes in the OAuth2 refresh-token grant.
pub const IDENTITY_TOKEN: &str = "refresh-5f0c1e";

/// Pushes the seed artifact to a plain registry, then serves the same
/// storage with `auth`.
pub fn registry_with(auth: Auth) -> Registry {
    let plain = Registry::start(Auth::None);
    plain.oras_push_mnist("models/mnist:v1");
    Registry::start_in(plain.stop(), auth)
}

pub fn docker_config(user: &str, password: &str, registry: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#)
}

/// A token issuer: checks Basic credentials, records what it was asked for,
/// and answers with an RS256 JWT for exactly the requested pull scope.
pub struct TokenServer {
    pub realm: String,
    pub requests: Arc<Mutex<Vec<(String, String)>>>, // (service, scope)
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
    })
}

pub fn sign_jwt(
    key: &Path,
    cert_der_b64: &str,
    repo: &str,
    actions: &[&str],
    valid_secs: u64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // distribution accepts a token up to 60 s past its `exp`, so a token
    // meant to die within the minute carries an `exp` that much earlier.
    let exp = if valid_secs < 60 {
        now + valid_secs - 60
    } else {
        now + valid_secs
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [cert_der_b64]});
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": USER, "aud": "test-registry",
        "exp": exp, "nbf": exp.min(now) - 10, "iat": now, "jti": format!("{now}-{repo}"),
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
    pub fn start(grant: fn(&str) -> String) -> TokenServer {
        TokenServer::start_with(grant, 300)
    }

    /// Tokens that really expire after `valid_secs`, whatever `expires_in`
    /// says (to make a registry answer 401 mid-pull).
    pub fn start_with(grant: fn(&str) -> String, valid_secs: u64) -> TokenServer {
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
            // GET with Basic credentials, or the OAuth2 refresh-token grant
            // (POST, form) with IDENTITY_TOKEN.
            let (service, scope, allowed) = if req.method == "POST" {
                let grant = req.form("grant_type").unwrap_or_default();
                let token = req.form("refresh_token").unwrap_or_default();
                (
                    req.form("service").unwrap_or_default(),
                    req.form("scope").unwrap_or_default(),
                    grant == "refresh_token" && token == IDENTITY_TOKEN,
                )
            } else {
                let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
                (
                    query_param(query, "service").unwrap_or_default(),
                    query_param(query, "scope").unwrap_or_default(),
                    req.authorization.as_deref() == Some(expected_auth.as_str()),
                )
            };
            seen.lock().unwrap().push((service, scope.clone()));
            if !allowed {
                return response("401 Unauthorized", &[], b"");
            }
            let repo = scope.split(':').nth(1).unwrap_or("");
            let token = sign_jwt(&key, &cert_b64, &grant(repo), &["pull"], valid_secs);
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

/// A CA and a server certificate for IP 127.0.0.1 only.
pub fn make_certs(dir: &Path) {
    make_certs_for(dir, "IP:127.0.0.1");
}

/// A CA (`ca.pem`) and a server certificate (`server.pem`, `server.key`)
/// for `names`, a subjectAltName list (`DNS:a.example,IP:127.0.0.1`).
pub fn make_certs_for(dir: &Path, names: &str) {
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
            "/CN=ocimodel test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={names}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
        dir,
    );
}

/// A fake registry on 127.0.0.1 that demands Basic `user:pw` and answers
/// authorized requests with `handler`; returns its address.
pub fn basic_registry(handler: impl Fn(&Request) -> Vec<u8> + Send + 'static) -> String {
    let registry = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = registry.local_addr().unwrap().to_string();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pw")
    );
    serve(registry, move |req| {
        if req.authorization.as_deref() != Some(expected.as_str()) {
            return response(
                "401 Unauthorized",
                &[("WWW-Authenticate", "Basic realm=\"fake\"".into())],
                b"",
            );
        }
        handler(req)
    });
    addr
}

/// ocimodel with `user:pw` for `addr` and plain HTTP to it.
pub fn with_credentials(addr: &str) -> Ocimodel {
    let auth = base64::engine::general_purpose::STANDARD.encode("user:pw");
    Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", addr)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#),
        )
}

/// An OCI artifact manifest with one layer, `w.bin`, holding `blob`; and
/// the blob's digest.
pub fn one_blob_manifest(blob: &[u8]) -> (String, String) {
    let digest = format!("sha256:{}", sha256_hex(blob));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": blob.len(),
                    "annotations": {"org.opencontainers.image.title": "w.bin"}}]
    })
    .to_string();
    (manifest, digest)
}

/// A registry's answer carrying an OCI image manifest.
pub fn manifest_response(manifest: &str) -> Vec<u8> {
    response(
        "200 OK",
        &[(
            "Content-Type",
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        manifest.as_bytes(),
    )
}

/// A hosts.toml directory naming `mirrors` (in order) for `registry`.
pub fn hosts_dir(registry: &str, mirrors: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (host, port) = registry.split_once(':').unwrap();
    let sub = dir.path().join(format!("{host}_{port}_"));
    fs::create_dir(&sub).unwrap();
    let mut text = format!("server = \"http://{registry}\"\n");
    for (url, extra) in mirrors {
        text.push_str(&format!(
            "\n[host.\"{url}\"]\ncapabilities = [\"pull\", \"resolve\"]\n{extra}\n"
        ));
    }
    fs::write(sub.join("hosts.toml"), text).unwrap();
    dir
}

/// User CPU seconds each live thread of `pid` has used, with the thread's
/// name (from `/proc/PID/task/*/stat`: load on the machine does not inflate
/// them).
pub fn thread_cpu(pid: u32) -> std::collections::HashMap<u32, (String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = std::collections::HashMap::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let Ok(stat) = fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which may hold spaces: state is
        // field 3, utime 14.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map_or("", |(_, n)| n).to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let Ok(user) = f[11].parse::<f64>() else {
            continue;
        };
        let tid = t.file_name().to_string_lossy().parse().unwrap();
        out.insert(tid, (name, user / tick));
    }
    out
}

/// Waits for `child`, reading every thread's CPU time while it runs (a
/// poll, not a wait: /proc has them only until exit); its exit status and
/// the last reading of every thread that ever lived.
pub fn wait_sampling_threads(
    child: &mut Child,
) -> (
    std::process::ExitStatus,
    std::collections::HashMap<u32, (String, f64)>,
) {
    let pid = child.id();
    let mut seen = std::collections::HashMap::new();
    loop {
        seen.extend(thread_cpu(pid));
        if let Some(status) = child.try_wait().unwrap() {
            return (status, seen);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU seconds this thread spends on SHA-256 of `blobs` (the hasher
/// ocimodel uses), read from the thread's own clock.
pub fn sha256_cpu_seconds<'a>(blobs: impl IntoIterator<Item = &'a [u8]>) -> f64 {
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    let blobs: Vec<&[u8]> = blobs.into_iter().collect();
    let start = now();
    for b in blobs {
        let mut h = ocimodel::digest::Hasher::new(ocimodel::digest::Algorithm::Sha256);
        h.update(b);
        std::hint::black_box(h.finish());
    }
    now() - start
}

/// Signs `model` (signature at `model.sig`) through `model_signing`'s
/// library, for the serializations its CLI does not offer: `serialization`
/// is a `hashing.Config` call such as `use_shard_serialization(shard_size=N)`.
pub fn sign_with_api(model: &Path, private: &Path, serialization: &str) {
    let sig = model.join("model.sig");
    let script = format!(
        r#"
import pathlib
from model_signing import hashing, signing
model = pathlib.Path({model:?})
h = hashing.Config().{serialization}.set_ignored_paths(paths=[model / "model.sig"], ignore_git_paths=True)
signing.Config().use_elliptic_key_signer(private_key={private:?}).set_hashing_config(h).sign(model, {sig:?})
"#,
        model = model.display().to_string(),
        private = private.display().to_string(),
        sig = sig.display().to_string(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "signing via the API: {out:?}");
}
