//! The sidecar's read-only S3 endpoint (`OCIMODEL_S3_LISTEN`), read with
//! boto3 (a real S3 client) while the sidecar pulls from a real registry:
//! files are served as their bytes verify and in the order a loader wants
//! them (proven without timing: a registry front holds the last shard back
//! until the reader has the whole first shard), a corrupt shard is never
//! sent, and the S3 shapes (list, head, get, ranges, errors) are what boto3
//! understands. Also: the example LLMInferenceService is valid against
//! KServe's CRD.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SHARDS: usize = 8;

/// A model shaped like a Hugging Face checkpoint: configs, a tokenizer, a
/// safetensors index and 8 shards (distinct pseudo-random bytes).
fn make_model(dir: &Path, shard_size: usize) -> Vec<String> {
    fs::create_dir_all(dir).unwrap();
    let mut names = vec![
        "config.json".to_string(),
        "tokenizer.json".to_string(),
        "model.safetensors.index.json".to_string(),
    ];
    fs::write(dir.join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    fs::write(dir.join("tokenizer.json"), br#"{"version": "1.0"}"#).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        br#"{"weight_map": {}}"#,
    )
    .unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 1..=SHARDS {
        let name = shard(i);
        let bytes: Vec<u8> = (0..shard_size + i * 4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(dir.join(&name), bytes).unwrap();
        names.push(name);
    }
    names
}

fn shard(i: usize) -> String {
    format!("model-{i:05}-of-{SHARDS:05}.safetensors")
}

/// Pushes the files with the oras SDK, in a scrambled layer order (shards
/// last to first, then the index, the tokenizer, the config), so that the
/// loader order has to come from ocimodel.
fn push(reg: &Registry, dir: &Path, names: &[String], repo_tag: &str) {
    let mut order: Vec<&String> = names.iter().collect();
    order.reverse();
    let files: Vec<_> = order
        .iter()
        .map(|n| {
            serde_json::json!({
                "path": dir.join(n),
                "title": n,
                "mediaType": "application/octet-stream",
            })
        })
        .collect();
    reg.oras_push(
        repo_tag,
        &serde_json::json!({"artifactType": "application/vnd.unknown.artifact.v1", "files": files}),
    );
}

fn sha256_of_file(dir: &Path, name: &str) -> String {
    sha256_file(&dir.join(name))
}

/// A registry front that forwards every request to `upstream`, one
/// connection per request, records the blob GETs in order, and holds the
/// GETs of `held` (a digest, or several joined by commas) back until
/// `/__release` is asked for (with
/// `probes_pass`, all but a `Range` of at most 64 KiB: a peek at its tar
/// header).
struct Front {
    addr: String,
    released: Arc<AtomicBool>,
    blob_gets: Arc<Mutex<Vec<String>>>,
}

impl Front {
    fn start(upstream: &str, held: &str) -> Front {
        Front::start_with(upstream, held, false)
    }

    fn start_with(upstream: &str, held: &str, probes_pass: bool) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let released = Arc::new(AtomicBool::new(false));
        let blob_gets = Arc::new(Mutex::new(Vec::new()));
        let (up, held) = (upstream.to_string(), held.to_string());
        let (rel, gets) = (released.clone(), blob_gets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (up, held, rel, gets) = (up.clone(), held.clone(), rel.clone(), gets.clone());
                std::thread::spawn(move || {
                    answer_one(stream, &|req: &Request| {
                        if req.path == "/__release" {
                            rel.store(true, Ordering::SeqCst);
                            return response("200 OK", &[], b"released\n");
                        }
                        if req.method == "GET" && req.path.contains("/blobs/sha256:") {
                            let digest = req.path.rsplit('/').next().unwrap().to_string();
                            gets.lock().unwrap().push(digest.clone());
                            let probe =
                                probes_pass && range_len(req).is_some_and(|n| n <= 64 << 10);
                            if held.split(',').any(|h| h == digest) && !probe {
                                let deadline = Instant::now() + Duration::from_secs(120);
                                while !rel.load(Ordering::SeqCst) && Instant::now() < deadline {
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                            }
                        }
                        forward(&up, req)
                    })
                });
            }
        });
        Front {
            addr,
            released,
            blob_gets,
        }
    }
}

/// How many bytes `req`'s `Range: bytes=A-B` asks for.
fn range_len(req: &Request) -> Option<u64> {
    let (_, v) = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("range"))?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
}

/// `req` sent on to `upstream`; its answer as raw bytes.
fn forward(upstream: &str, req: &Request) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(k, _)| !["host", "content-length", "connection"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = http_request(upstream, &req.method, &req.path, &headers, &req.body);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
    let mut has_length = false;
    for (k, v) in &r.headers {
        let k_l = k.to_ascii_lowercase();
        if k_l == "connection" || k_l == "transfer-encoding" {
            continue;
        }
        has_length |= k_l == "content-length";
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(&r.body);
    }
    out
}

/// A sidecar with the S3 endpoint on; its log is kept for failures.
struct Sidecar {
    child: Child,
    probes: String,
    s3: String,
    log: PathBuf,
    _harness: Ocimodel,
}

impl Sidecar {
    fn start(uri: &str, dest: &Path, registry: &str, env: &[(&str, &str)]) -> Sidecar {
        let probes = format!("127.0.0.1:{}", free_port());
        let s3 = format!("127.0.0.1:{}", free_port());
        let mut h = Ocimodel::new()
            .env("OCIMODEL_MODE", "sidecar")
            .env("OCIMODEL_LISTEN", &probes)
            .env("OCIMODEL_S3_LISTEN", &s3)
            .env("OCIMODEL_INSECURE_REGISTRIES", registry);
        for (k, v) in env {
            h = h.env(k, v);
        }
        let log = h.termination_log.with_file_name("sidecar.log");
        h.cmd
            .args([uri, dest.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let child = h.cmd.spawn().unwrap();
        let s = Sidecar {
            child,
            probes,
            s3,
            log,
            _harness: h,
        };
        wait_until("the S3 endpoint to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&s.s3).is_ok()
        });
        s
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = http_get(&self.probes, path, &[]);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// boto3, as an engine's loader would read: list the bucket, then every
/// file in `range`-byte ranges from `threads` threads at once. 503
/// SlowDown (not verified yet) is retried; any other error is recorded
/// with the bytes of that file received so far. Once every range of
/// `first` has arrived, it asks `release` (when not `-`).
const READER: &str = r#"
import hashlib, json, sys, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, bucket, rng, threads, first, release = sys.argv[1:7]
rng, threads = int(rng), int(threads)
s3 = boto3.client("s3", endpoint_url="http://" + endpoint, region_name="us-east-1",
                  aws_access_key_id="anything", aws_secret_access_key="anything",
                  config=Config(retries={"max_attempts": 1}, read_timeout=60,
                                max_pool_connections=2 * threads))
start = time.monotonic()
lock = threading.Lock()
out = {"keys": {}, "first_byte": {}}

def retrying(call):
    deadline = time.monotonic() + 120
    while True:
        try:
            return call()
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code in ("SlowDown", "503") and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise

keys = []
token = None
while True:
    kw = {"Bucket": bucket}
    if token:
        kw["ContinuationToken"] = token
    page = retrying(lambda: s3.list_objects_v2(**kw))
    keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    if not page.get("IsTruncated"):
        break
    token = page["NextContinuationToken"]

ranges = ThreadPoolExecutor(threads)

def get_range(key, a, b):
    def call():
        body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % (a, b))["Body"]
        parts = []
        while True:
            chunk = body.read(65536)
            if not chunk:
                break
            with lock:
                rec = out["keys"][key]
                rec["bytes"] += len(chunk)
                out["first_byte"].setdefault(key, time.monotonic() - start)
            parts.append(chunk)
        return b"".join(parts)
    return retrying(call)

def read_key(item):
    key, size = item
    with lock:
        out["keys"][key] = {"bytes": 0, "sha256": None, "error": None, "size": size}
    try:
        head = retrying(lambda: s3.head_object(Bucket=bucket, Key=key))
        size = head["ContentLength"]
        futs = [ranges.submit(get_range, key, a, min(a + rng, size) - 1) for a in range(0, size, rng)]
        data = b"".join(f.result() for f in futs)
        with lock:
            out["keys"][key]["sha256"] = hashlib.sha256(data).hexdigest()
            out["keys"][key]["done"] = time.monotonic() - start
        if key == first and release != "-":
            urllib.request.urlopen(release).read()
    except ClientError as e:
        with lock:
            out["keys"][key]["error"] = e.response["Error"]["Code"]
            out["keys"][key]["status"] = e.response["ResponseMetadata"]["HTTPStatusCode"]

with ThreadPoolExecutor(threads) as pool:
    list(pool.map(read_key, keys))
out["elapsed"] = time.monotonic() - start
print(json.dumps(out))
"#;

fn read_all(
    s: &Sidecar,
    bucket: &str,
    range: usize,
    first: &str,
    release: &str,
) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["150", "python3", "-c", READER, &s.s3, bucket])
        .arg(range.to_string())
        .args(["8", first, release])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the boto3 reader failed: {}\nsidecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_loader_reads_the_first_shard_while_the_last_is_still_held_back() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    let names = make_model(&model, 512 * 1024);
    let reg = Registry::start(Auth::None);
    push(&reg, &model, &names, "models/llm:v1");
    let digest_of = |n: &str| format!("sha256:{}", sha256_of_file(&model, n));
    let last = digest_of(&shard(SHARDS));
    let front = Front::start(&reg.addr, &last);
    let dest = work.path().join("Llama_Tiny");
    // One download at a time: the order of blob GETs is the download order.
    let s = Sidecar::start(
        &format!("oci://{}/models/llm:v1", front.addr),
        &dest,
        &front.addr,
        &[("OCIMODEL_CONCURRENCY", "1")],
    );
    let release = format!("http://{}/__release", front.addr);
    // Without streaming, the first shard is only served after the install,
    // which waits for the held last shard: the reader never finishes.
    let got = read_all(&s, "llama-tiny", 256 * 1024, &shard(1), &release);
    assert!(front.released.load(Ordering::SeqCst));
    for n in &names {
        let k = &got["keys"][n];
        assert_eq!(k["error"], serde_json::Value::Null, "{n}: {k}");
        assert_eq!(k["sha256"], sha256_of_file(&model, n), "{n}");
    }
    assert_eq!(got["keys"].as_object().unwrap().len(), names.len());
    // Layers were fetched in loader order, not in the manifest's.
    let mut expected: Vec<String> = vec![
        "config.json".into(),
        "tokenizer.json".into(),
        "model.safetensors.index.json".into(),
    ];
    expected.extend((1..=SHARDS).map(shard));
    let layer_digests: Vec<String> = expected.iter().map(|n| digest_of(n)).collect();
    let gets: Vec<String> = front
        .blob_gets
        .lock()
        .unwrap()
        .iter()
        .filter(|d| layer_digests.contains(d))
        .cloned()
        .collect();
    assert_eq!(gets, layer_digests, "blob GETs in loader order");
    // The first shard was in the reader's hands before the last was released.
    let first_done = got["keys"][shard(1)]["done"].as_f64().unwrap();
    let last_first_byte = got["first_byte"][shard(SHARDS)].as_f64().unwrap();
    assert!(first_done <= last_first_byte, "{got}");

    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    let total: u64 = names
        .iter()
        .map(|n| fs::metadata(model.join(n)).unwrap().len())
        .sum();
    let metrics = s.get("/metrics").1;
    let served: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ocimodel_s3_bytes_served_total{bucket=\"llama-tiny\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no bytes-served metric:\n{metrics}"));
    assert_eq!(served as u64, total);
    for n in &names {
        assert_eq!(sha256_file(&dest.join(n)), sha256_of_file(&model, n));
    }
}

#[test]
fn a_corrupt_shard_is_never_sent_and_the_others_are() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    let names = make_model(&model, 256 * 1024);
    let reg = Registry::start(Auth::None);
    push(&reg, &model, &names, "models/llm:v1");
    let bad = shard(3);
    let blob = reg.blob_data_path(&sha256_of_file(&model, &bad));
    let mut bytes = fs::read(&blob).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&blob, bytes).unwrap();
    let dest = work.path().join("models");
    let s = Sidecar::start(
        &format!("oci://{}/models/llm:v1", reg.addr),
        &dest,
        &reg.addr,
        &[],
    );
    let got = read_all(&s, "models", 64 * 1024, "-", "-");
    let k = &got["keys"][&bad];
    assert_eq!(k["bytes"], 0, "no byte of the corrupt shard is sent: {k}");
    // HEAD answers without a body: boto3 names the error by its status.
    assert!(k["error"] == "InternalError" || k["error"] == "500", "{k}");
    assert_eq!(k["status"], 500, "{k}");
    for n in names.iter().filter(|n| **n != bad) {
        let k = &got["keys"][n];
        assert_eq!(k["sha256"], sha256_of_file(&model, n), "{n}: {k}");
    }
    // A GET of it, too, is refused without a byte.
    let r = http_get(&s.s3, &format!("/models/{bad}"), &[]);
    assert_eq!(r.status, 500);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");
    assert!(body.contains("digest mismatch"), "{body}");
    // Not ready, and once the attempt has ended (it may still be closing
    // when the last good file was read), readiness says why.
    wait_until(
        "readiness to report the mismatch",
        Duration::from_secs(20),
        || {
            let (code, body) = s.get("/readyz");
            assert_eq!(code, 503, "{body}");
            body.contains("digest mismatch")
        },
    );
}

/// boto3 against the endpoint once a small tree is installed.
const SHAPES: &str = r#"
import json, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url="http://" + sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="AKIA", aws_secret_access_key="whatever",
                  config=Config(retries={"max_attempts": 1}))
out = {}
def err(call):
    try:
        call()
        return None
    except ClientError as e:
        return [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"],
                e.response["ResponseMetadata"]["HTTPHeaders"].get("content-range")]
out["buckets"] = [b["Name"] for b in s3.list_buckets()["Buckets"]]
top = s3.list_objects_v2(Bucket="tree", Delimiter="/")
out["top"] = [o["Key"] for o in top.get("Contents", [])]
out["top_prefixes"] = [p["Prefix"] for p in top.get("CommonPrefixes", [])]
sub = s3.list_objects_v2(Bucket="tree", Prefix="sub/")
out["sub"] = [[o["Key"], o["Size"]] for o in sub["Contents"]]
pages, token = [], None
while True:
    kw = {"Bucket": "tree", "MaxKeys": 2}
    if token:
        kw["ContinuationToken"] = token
    p = s3.list_objects_v2(**kw)
    pages.append([o["Key"] for o in p.get("Contents", [])])
    if not p["IsTruncated"]:
        break
    token = p["NextContinuationToken"]
out["pages"] = pages
out["paginator"] = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tree", PaginationConfig={"PageSize": 3}) for o in page.get("Contents", [])]
out["v1"] = [o["Key"] for o in s3.list_objects(Bucket="tree", Prefix="sub/")["Contents"]]
h = s3.head_object(Bucket="tree", Key="weights.bin")
out["head"] = [h["ContentLength"], h["ETag"], h["AcceptRanges"]]
g = s3.get_object(Bucket="tree", Key="weights.bin", Range="bytes=2-5")
out["range"] = [g["ResponseMetadata"]["HTTPStatusCode"], g["ContentRange"], g["Body"].read().decode()]
out["suffix"] = s3.get_object(Bucket="tree", Key="weights.bin", Range="bytes=-3")["Body"].read().decode()
out["whole"] = s3.get_object(Bucket="tree", Key="sub/deeper/b.txt")["Body"].read().decode()
out["spaced"] = s3.get_object(Bucket="tree", Key="sub/with space+plus.txt")["Body"].read().decode()
out["control"] = s3.get_object(Bucket="tree", Key="sub/ctl\x01.txt")["Body"].read().decode()
out["unsatisfiable"] = err(lambda: s3.get_object(Bucket="tree", Key="weights.bin", Range="bytes=100-"))
out["no_key"] = err(lambda: s3.get_object(Bucket="tree", Key="nope.bin"))
out["head_no_key"] = err(lambda: s3.head_object(Bucket="tree", Key="nope.bin"))
out["no_bucket"] = err(lambda: s3.list_objects_v2(Bucket="other"))
out["put"] = err(lambda: s3.put_object(Bucket="tree", Key="x", Body=b"x"))
out["delete"] = err(lambda: s3.delete_object(Bucket="tree", Key="weights.bin"))
out["acl"] = err(lambda: s3.get_object_acl(Bucket="tree", Key="weights.bin"))
out["head_bucket"] = s3.head_bucket(Bucket="tree")["ResponseMetadata"]["HTTPStatusCode"]
print(json.dumps(out))
"#;

#[test]
fn boto3_sees_s3_shapes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let files: BTreeMap<&str, &str> = [
        ("weights.bin", "0123456789"),
        ("config.json", "{}"),
        ("sub/a.txt", "a"),
        ("sub/deeper/b.txt", "bee"),
        ("sub/with space+plus.txt", "odd name"),
        // No XML can hold it: boto3 asks for url-encoded names.
        ("sub/ctl\u{1}.txt", "ctl"),
    ]
    .into();
    let specs: Vec<_> = files
        .iter()
        .map(|(name, data)| {
            let p = src.join(name);
            fs::write(&p, data).unwrap();
            serde_json::json!({"path": p, "title": name, "mediaType": "application/octet-stream"})
        })
        .collect();
    let reg = Registry::start(Auth::None);
    reg.oras_push(
        "models/tree:v1",
        &serde_json::json!({"artifactType": "application/vnd.unknown.artifact.v1", "files": specs}),
    );
    let dest = work.path().join("tree");
    let s = Sidecar::start(
        &format!("oci://{}/models/tree:v1", reg.addr),
        &dest,
        &reg.addr,
        &[],
    );
    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    let out = Command::new("python3")
        .args(["-c", SHAPES, &s.s3])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = |v: serde_json::Value| v;
    assert_eq!(got["buckets"], j(serde_json::json!(["tree"])));
    assert_eq!(
        got["top"],
        j(serde_json::json!(["config.json", "weights.bin"]))
    );
    assert_eq!(got["top_prefixes"], j(serde_json::json!(["sub/"])));
    assert_eq!(
        got["sub"],
        j(serde_json::json!([
            ["sub/a.txt", 1],
            ["sub/ctl\u{1}.txt", 3],
            ["sub/deeper/b.txt", 3],
            ["sub/with space+plus.txt", 8]
        ]))
    );
    let all = serde_json::json!([
        "config.json",
        "sub/a.txt",
        "sub/ctl\u{1}.txt",
        "sub/deeper/b.txt",
        "sub/with space+plus.txt",
        "weights.bin"
    ]);
    assert_eq!(
        got["pages"],
        j(serde_json::json!([
            ["config.json", "sub/a.txt"],
            ["sub/ctl\u{1}.txt", "sub/deeper/b.txt"],
            ["sub/with space+plus.txt", "weights.bin"]
        ]))
    );
    assert_eq!(got["paginator"], all);
    assert_eq!(
        got["v1"],
        j(serde_json::json!([
            "sub/a.txt",
            "sub/ctl\u{1}.txt",
            "sub/deeper/b.txt",
            "sub/with space+plus.txt"
        ]))
    );
    let etag = format!("\"{}\"", &sha256_hex(b"0123456789")[..32]);
    assert_eq!(got["head"], j(serde_json::json!([10, etag, "bytes"])));
    assert_eq!(
        got["range"],
        j(serde_json::json!([206, "bytes 2-5/10", "2345"]))
    );
    assert_eq!(got["suffix"], "789");
    assert_eq!(got["whole"], "bee");
    assert_eq!(got["spaced"], "odd name");
    assert_eq!(got["control"], "ctl");
    assert_eq!(
        got["unsatisfiable"],
        j(serde_json::json!(["InvalidRange", 416, "bytes */10"]))
    );
    assert_eq!(
        got["no_key"],
        j(serde_json::json!(["NoSuchKey", 404, null]))
    );
    assert_eq!(got["head_no_key"], j(serde_json::json!(["404", 404, null])));
    assert_eq!(
        got["no_bucket"],
        j(serde_json::json!(["NoSuchBucket", 404, null]))
    );
    assert_eq!(
        got["put"],
        j(serde_json::json!(["MethodNotAllowed", 405, null]))
    );
    assert_eq!(
        got["delete"],
        j(serde_json::json!(["MethodNotAllowed", 405, null]))
    );
    assert_eq!(
        got["acl"],
        j(serde_json::json!(["NotImplemented", 501, null]))
    );
    assert_eq!(got["head_bucket"], 200);
}

#[test]
fn the_endpoint_refuses_a_non_loopback_address_and_clashing_buckets() {
    let work = tempfile::tempdir().unwrap();
    let uri = "oci-layout:///nonexistent";
    let run = Ocimodel::new()
        .env("OCIMODEL_S3_LISTEN", "0.0.0.0:9000")
        .run(&["sidecar", uri, work.path().join("models").to_str().unwrap()]);
    run.assert_fails_with(&["OCIMODEL_S3_LISTEN", "not a loopback address"]);
    let port = free_port().to_string();
    let run = Ocimodel::new()
        .env("OCIMODEL_S3_LISTEN", format!("127.0.0.1:{port}"))
        .env("OCIMODEL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .run(&[
            "sidecar",
            uri,
            work.path().join("a/models").to_str().unwrap(),
            uri,
            work.path().join("b/Models").to_str().unwrap(),
        ]);
    run.assert_fails_with(&["both be S3 bucket 'models'"]);
}

#[test]
fn the_streaming_llminferenceservice_example_is_valid() {
    let file = repo_root().join("manifests/examples/llminferenceservice-streaming.yaml");
    let text = fs::read_to_string(&file).unwrap();
    // The validator checks a directory against its kustomization.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("llminferenceservice-streaming.yaml"), &text).unwrap();
    fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - llminferenceservice-streaming.yaml\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/support/validate_manifests.py"))
        .arg(dir.path())
        .arg(repo_root().join("tests/fixtures/kserve-crds"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("ok   llminferenceservice-streaming.yaml: LLMInferenceService/"),
        "{report}"
    );
    // What makes it streaming: no storage initializer, ocimodel as a
    // native sidecar with the S3 endpoint, vLLM reading s3:// through it.
    for needle in [
        "enabled: false",
        "restartPolicy: Always",
        "OCIMODEL_S3_LISTEN",
        "--load-format",
        "runai_streamer",
        "s3://",
        "AWS_ENDPOINT_URL",
        "http://127.0.0.1:9000",
    ] {
        assert!(text.contains(needle), "the example lacks {needle}");
    }
    // The kubelet probes the pod's IP from the node: a probe on 127.0.0.1
    // would reach the node's own loopback, and a probe port bound there
    // could not be reached at all.
    assert!(
        !text.contains("host: 127.0.0.1"),
        "a probe on the node's loopback"
    );
    assert!(
        text.contains(r#"{name: OCIMODEL_LISTEN, value: "0.0.0.0:8099"}"#),
        "the probe port must listen on the pod's IP"
    );
}

#[test]
fn tar_layers_come_in_loader_order_and_each_file_is_served_once_its_layer_verified() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    // As modctl writes them: one file a layer, its path annotated.
    let tar_layer = |name: &str, data: &str| {
        serde_json::json!({"mediaType": "application/vnd.cncf.model.weight.v1.tar",
                           "annotations": {"org.cncf.model.filepath": name},
                           "tar": [{"name": name, "data": data}]})
    };
    reg.push_artifact(
        "models/pack:v1",
        &serde_json::json!({
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json",
                       "json": {"descriptor": {"name": "pack"}, "modelfs": {"type": "layers", "diffIds": []}}},
            "layers": [tar_layer("w/shard-2.safetensors", "second shard\n"),
                       tar_layer("w/shard-1.safetensors", "first shard\n")]
        }),
    );
    // The manifest lists the second shard first: it is fetched second.
    let held = reg.layer_digest("models/pack", "v1", 0);
    let front = Front::start(&reg.addr, &held);
    let dest = work.path().join("pack");
    let s = Sidecar::start(
        &format!("oci://{}/models/pack:v1", front.addr),
        &dest,
        &front.addr,
        &[("OCIMODEL_S3_WAIT", "1")],
    );
    // The second shard's layer is held back: the first one's file is
    // served anyway (a key not known yet is waited for while layers remain).
    let r = http_get(&s.s3, "/pack/w/shard-1.safetensors", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"first shard\n");
    assert!(!front.released.load(Ordering::SeqCst));
    assert_eq!(
        s.get("/readyz").0,
        503,
        "not installed while a layer is held"
    );
    // A key not known yet is held for OCIMODEL_S3_WAIT, then S3's retry-me.
    let asked = Instant::now();
    let r = http_get(&s.s3, "/pack/w/shard-2.safetensors", &[]);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("<Code>SlowDown</Code>"));
    assert!(asked.elapsed() >= Duration::from_secs(1));
    http_get(&front.addr, "/__release", &[]);
    let r = http_get(&s.s3, "/pack/w/shard-2.safetensors", &[]);
    assert_eq!(r.body, b"second shard\n");
    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    let r = http_get(&s.s3, "/pack/w/none", &[]);
    assert_eq!(
        r.status, 404,
        "once every layer is in, an unknown key is missing"
    );
}

/// Pushes `models/listed:v1`, a modctl-style model of three one-file tar
/// layers (config.json and two shards), and returns the shards' bytes.
fn push_tar_packed(reg: &Registry) -> (String, String) {
    let shard_1 = "a".repeat(300 * 1024);
    let shard_2 = "b".repeat(200 * 1024 + 7);
    let tar_layer = |name: &str, data: &str| {
        serde_json::json!({"mediaType": "application/vnd.cncf.model.weight.v1.tar",
                           "annotations": {"org.cncf.model.filepath": name},
                           "tar": [{"name": name, "data": data}]})
    };
    reg.push_artifact(
        "models/listed:v1",
        &serde_json::json!({
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json",
                       "json": {"descriptor": {"name": "listed"}, "modelfs": {"type": "layers", "diffIds": []}}},
            "layers": [tar_layer("config.json", "{}\n"),
                       tar_layer("w/shard-1.safetensors", &shard_1),
                       tar_layer("w/shard-2.safetensors", &shard_2)]
        }),
    );
    (shard_1, shard_2)
}

/// Asserts the listing of bucket `listed` names all three keys of
/// [`push_tar_packed`] with their sizes.
fn assert_listed_whole(s: &Sidecar, shard_1: &str, shard_2: &str) {
    let r = http_get(&s.s3, "/listed?list-type=2", &[]);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}\nsidecar log:\n{}", s.log());
    for (key, size) in [
        ("config.json", 3),
        ("w/shard-1.safetensors", shard_1.len()),
        ("w/shard-2.safetensors", shard_2.len()),
    ] {
        assert!(
            body.contains(&format!("<Key>{key}</Key>"))
                && body.contains(&format!("<Size>{size}</Size>")),
            "{key} of {size} bytes is not listed: {body}"
        );
    }
}

#[test]
fn a_loader_lists_a_tar_packed_model_before_its_last_layer_arrives() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let (shard_1, shard_2) = push_tar_packed(&reg);
    // The last shard's download is held back; a peek at its header is not.
    let held = reg.layer_digest("models/listed", "v1", 2);
    let front = Front::start_with(&reg.addr, &held, true);
    let dest = work.path().join("listed");
    let s = Sidecar::start(
        &format!("oci://{}/models/listed:v1", front.addr),
        &dest,
        &front.addr,
        &[("OCIMODEL_S3_WAIT", "2")],
    );
    // The listing is whole while a layer has still to come: every key with
    // the size of its file (without reading ahead: 503 SlowDown after 2 s).
    assert_listed_whole(&s, &shard_1, &shard_2);
    assert!(!front.released.load(Ordering::SeqCst));
    assert_eq!(s.get("/readyz").0, 503, "a layer is still held");
    // A listed key is not served before its layer verified; a key the
    // headers read ahead did not name is not missing until the layers say.
    for key in ["w/shard-2.safetensors", "w/none"] {
        let r = http_get(&s.s3, &format!("/listed/{key}"), &[]);
        assert_eq!(r.status, 503, "{key}: {}", String::from_utf8_lossy(&r.body));
    }
    // boto3 reads it all, asking for the last layer once the first shard is in.
    let release = format!("http://{}/__release", front.addr);
    let out = read_all(&s, "listed", 64 * 1024, "w/shard-1.safetensors", &release);
    for (key, data) in [
        ("config.json", "{}\n"),
        ("w/shard-1.safetensors", shard_1.as_str()),
        ("w/shard-2.safetensors", shard_2.as_str()),
    ] {
        assert_eq!(
            out["keys"][key]["sha256"].as_str(),
            Some(sha256_hex(data.as_bytes()).as_str()),
            "{key}: {}",
            out["keys"][key]
        );
    }
    assert_eq!(out["keys"].as_object().unwrap().len(), 3);
    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    assert_eq!(http_get(&s.s3, "/listed/w/none", &[]).status, 404);
}

#[test]
fn small_files_are_served_while_the_big_ones_before_them_download() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    fs::create_dir_all(&model).unwrap();
    // Two big shards first in the loader's order, a small weights file
    // after them ("zz" sorts last).
    let big: Vec<u8> = (0..(4 << 20) + 1).map(|i: u32| (i % 251) as u8).collect();
    let names = [shard(1), shard(2), "zz-adapter.bin".to_string()];
    fs::write(model.join(&names[0]), &big).unwrap();
    let big_2: Vec<u8> = big.iter().rev().copied().collect();
    fs::write(model.join(&names[1]), &big_2).unwrap();
    fs::write(model.join(&names[2]), b"small weights").unwrap();
    let reg = Registry::start(Auth::None);
    push(&reg, &model, &names, "models/small:v1");
    let digest_of = |n: &str| format!("sha256:{}", sha256_of_file(&model, n));
    // Both big downloads are held: they fill the two places big files take.
    let held = format!("{},{}", digest_of(&names[0]), digest_of(&names[1]));
    let front = Front::start(&reg.addr, &held);
    let s = Sidecar::start(
        &format!("oci://{}/models/small:v1", front.addr),
        &work.path().join("small"),
        &front.addr,
        &[("OCIMODEL_S3_WAIT", "10")],
    );
    // Queued behind the held shards it would wait for them: 503 after 10 s.
    let r = http_get(&s.s3, "/small/zz-adapter.bin", &[]);
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!((r.status, &*body), (200, "small weights"), "{}", s.log());
    assert!(!front.released.load(Ordering::SeqCst));
    http_get(&front.addr, "/__release", &[]);
    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    let r = http_get(&s.s3, &format!("/small/{}", names[1]), &[]);
    assert_eq!((r.status, r.body), (200, big_2));
}

#[test]
fn layers_in_the_node_cache_are_not_read_ahead_and_a_planted_one_names_nothing() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Auth::None);
    let (shard_1, shard_2) = push_tar_packed(&reg);
    let cache = work.path().join("cache");
    let cache_env = ("OCIMODEL_CACHE_DIR", cache.to_str().unwrap());
    let uri = |addr: &str| format!("oci://{addr}/models/listed:v1");
    // An earlier pod's pull left every layer in the node cache.
    Ocimodel::for_registry(&reg)
        .envs(&[cache_env])
        .pull(&uri(&reg.addr), &work.path().join("earlier"))
        .assert_ok();
    let layers: Vec<String> = (0..3)
        .map(|i| reg.layer_digest("models/listed", "v1", i))
        .collect();
    // Every request for a layer's bytes, a peek included, is held.
    let front = Front::start(&reg.addr, &layers.join(","));
    let sidecar = |name: &str| {
        Sidecar::start(
            &uri(&front.addr),
            &work.path().join(name),
            &front.addr,
            &[cache_env, ("OCIMODEL_S3_WAIT", "2")],
        )
    };
    // Every layer is in the cache: the model installs from it, and nothing
    // was asked of the registry, not even a peek to read ahead.
    let s = sidecar("listed");
    wait_until("readiness", Duration::from_secs(30), || {
        s.get("/readyz").0 == 200
    });
    assert_listed_whole(&s, &shard_1, &shard_2);
    let gets = front.blob_gets.lock().unwrap().clone();
    assert!(gets.is_empty(), "blob requests: {gets:?}");
    drop(s);

    // A co-tenant replaced the first shard's copy with a layer of its own
    // that names another file (the same size: only hashing tells).
    let planted = cache
        .join("blobs/sha256")
        .join(layers[1].trim_start_matches("sha256:"));
    let real = fs::read(&planted).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(shard_1.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "w/evil.safetensors", shard_1.as_bytes())
        .unwrap();
    let mut evil = b.into_inner().unwrap();
    evil.resize(real.len(), 0);
    fs::write(&planted, &evil).unwrap();
    // Its name is never listed: the copy fails its digest and is fetched
    // again, and the listing waits for the layers.
    let s = sidecar("again");
    wait_until("the shard's download", Duration::from_secs(30), || {
        front.blob_gets.lock().unwrap().contains(&layers[1])
    });
    let r = http_get(&s.s3, "/again?list-type=2", &[]);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!body.contains("evil"), "{body}");
    assert_eq!(r.status, 503, "the listing waits for the layers: {body}");

    http_get(&front.addr, "/__release", &[]);
    wait_until("readiness", Duration::from_secs(60), || {
        s.get("/readyz").0 == 200
    });
    let r = http_get(&s.s3, "/again?list-type=2", &[]);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !body.contains("evil") && body.contains("<Key>w/shard-1.safetensors</Key>"),
        "{body}"
    );
    let r = http_get(&s.s3, "/again/w/shard-1.safetensors", &[]);
    assert_eq!((r.status, r.body), (200, shard_1.into_bytes()));
}

/// `python3 -m model_signing sign key` over `model`, the signature at
/// `model.sig` inside it.
fn sign(model: &Path, private: &Path) {
    let out = Command::new("python3")
        .args(["-m", "model_signing", "--log-level", "ERROR", "sign", "key"])
        .arg("--private_key")
        .arg(private)
        .arg("--signature")
        .arg(model.join("model.sig"))
        .arg(model)
        .output()
        .unwrap();
    assert!(out.status.success(), "model_signing sign: {out:?}");
}

#[test]
fn under_a_model_signature_policy_a_model_signed_by_another_key_sends_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "good");
    let (other, _) = ec_keypair_on(work.path(), "prime256v1", "other");
    for (name, signer, ok) in [("signed", &private, true), ("forged", &other, false)] {
        let model = work.path().join(name).join("model");
        fs::create_dir_all(model.join("weights")).unwrap();
        fs::write(model.join("config.json"), br#"{"arch": "tiny"}"#).unwrap();
        let weights: Vec<u8> = (0..=255u8).cycle().take(300_001).collect();
        fs::write(model.join("weights/part-1.bin"), &weights).unwrap();
        sign(&model, signer);
        let uri = push_layout(&model, &work.path().join(name).join("layout"), "oras");
        let dest = work.path().join(name).join("models");
        let s = Sidecar::start(
            &uri,
            &dest,
            "127.0.0.1:1",
            &[("OCIMODEL_MODEL_KEY", public.to_str().unwrap())],
        );
        let r = http_get(&s.s3, "/models/weights/part-1.bin", &[]);
        if ok {
            assert_eq!(r.status, 200, "{}", s.log());
            assert_eq!(r.body, weights);
        } else {
            // The blobs matched their digests, the tree not its signature:
            // nothing of it is sent.
            assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("<Code>InternalError</Code>"), "{body}");
            assert!(body.contains("model signature"), "{body}");
            assert!(
                !body.contains("\u{0}\u{1}\u{2}"),
                "no weights in the answer"
            );
            assert_eq!(s.get("/readyz").0, 503);
        }
    }
}

#[test]
fn under_a_model_signature_policy_each_file_is_served_once_it_matches_its_signed_digest() {
    // Files and SHA-256 as the CLI signs; shards and BLAKE3, whose digests
    // the download's cannot stand for: the sidecar hashes those again.
    for serialization in [
        None,
        Some("use_shard_serialization(shard_size=100000)"),
        Some("use_file_serialization(hashing_algorithm=\"blake3\")"),
    ] {
        each_file_is_served_once_it_matches_its_signature(serialization);
    }
}

fn each_file_is_served_once_it_matches_its_signature(serialization: Option<&str>) {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = ec_keypair_on(work.path(), "prime256v1", "good");
    let model = work.path().join("model");
    let mut names = make_model(&model, 256 * 1024);
    match serialization {
        None => sign(&model, &private),
        Some(s) => sign_with_api(&model, &private, s),
    }
    // Changed after signing: its blob's digest matches what the registry
    // holds, not what the signature lists.
    let changed = shard(5);
    let mut bytes = fs::read(model.join(&changed)).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(model.join(&changed), bytes).unwrap();
    names.push("model.sig".into());
    let reg = Registry::start(Auth::None);
    push(&reg, &model, &names, "models/llm:v1");
    let digest_of = |n: &str| format!("sha256:{}", sha256_of_file(&model, n));
    let front = Front::start(&reg.addr, &digest_of(&shard(SHARDS)));
    let dest = work.path().join("signed-llm");
    let s = Sidecar::start(
        &format!("oci://{}/models/llm:v1", front.addr),
        &dest,
        &front.addr,
        &[
            ("OCIMODEL_CONCURRENCY", "1"),
            ("OCIMODEL_MODEL_KEY", public.to_str().unwrap()),
        ],
    );
    let release = format!("http://{}/__release", front.addr);
    // Served only after the whole tree's check, the first shard would wait
    // for the held last one: the reader would never finish.
    let got = read_all(&s, "signed-llm", 64 * 1024, &shard(1), &release);
    assert!(front.released.load(Ordering::SeqCst));
    let first_done = got["keys"][shard(1)]["done"].as_f64().unwrap();
    let last_first_byte = got["first_byte"][shard(SHARDS)].as_f64().unwrap();
    assert!(first_done <= last_first_byte, "{serialization:?}: {got}");
    for n in names.iter().filter(|n| **n != changed) {
        let k = &got["keys"][n];
        assert_eq!(k["sha256"], sha256_of_file(&model, n), "{n}: {k}");
    }
    let k = &got["keys"][&changed];
    assert_eq!(k["bytes"], 0, "no byte of the changed shard is sent: {k}");
    assert_eq!(k["status"], 500, "{k}");
    let r = http_get(&s.s3, &format!("/signed-llm/{changed}"), &[]);
    assert_eq!(r.status, 500);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("is not signed with these bytes"), "{body}");
    // The signature downloaded first: the others waited on it.
    assert_eq!(
        front.blob_gets.lock().unwrap().first(),
        Some(&digest_of("model.sig"))
    );
    // The whole tree's check still refuses the install.
    wait_until("readiness to fail", Duration::from_secs(30), || {
        s.get("/readyz").1.contains("model signature")
    });
    assert_eq!(s.get("/readyz").0, 503);
    assert!(!dest.join(&changed).exists());
}

/// The Run:ai Model Streamer's wheels (0.17.1, with the S3 backend) from
/// PyPI, installed once into `target/test-deps/` without their dependencies
/// (torch is not needed by `tests/support/runai_reader.py`).
fn runai_streamer() -> PathBuf {
    let dir = repo_root().join("target/test-deps/runai-model-streamer-0.17.1");
    if dir
        .join("runai_model_streamer/libstreamer/lib/libstreamers3.so")
        .exists()
    {
        return dir;
    }
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
        .arg(&partial)
        .args([
            "runai-model-streamer==0.17.1",
            "runai-model-streamer-s3==0.17.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "installing the Run:ai Model Streamer from PyPI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir).unwrap();
    dir
}

/// `tests/support/runai_reader.py` (the Run:ai streamer's own S3 client)
/// on `names` in 64 KiB ranges against the sidecar's endpoint, set up as
/// vLLM's environment would be (`AWS_ENDPOINT_URL`, path-style addressing).
fn runai_read(
    s: &Sidecar,
    bucket: &str,
    model: &Path,
    names: &[String],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let files: Vec<String> = names
        .iter()
        .map(|n| format!("{n}:{}", fs::metadata(model.join(n)).unwrap().len()))
        .collect();
    let out = Command::new("timeout")
        .args(["150", "python3"])
        .arg(repo_root().join("tests/support/runai_reader.py"))
        .arg(runai_streamer())
        .args([bucket, &(64 * 1024).to_string()])
        .args(&files)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", model)
        .env("AWS_ENDPOINT_URL", format!("http://{}", s.s3))
        .env("AWS_ACCESS_KEY_ID", "anything")
        .env("AWS_SECRET_ACCESS_KEY", "anything")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Run:ai reader failed: {}{}\nsidecar log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_run_ai_streamer_s_s3_client_reads_each_shard_while_the_last_is_held_back() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    let names = make_model(&model, 256 * 1024);
    let reg = Registry::start(Auth::None);
    push(&reg, &model, &names, "models/llm:v1");
    let last = format!("sha256:{}", sha256_of_file(&model, &shard(SHARDS)));
    let front = Front::start(&reg.addr, &last);
    let dest = work.path().join("llm");
    let s = Sidecar::start(
        &format!("oci://{}/models/llm:v1", front.addr),
        &dest,
        &front.addr,
        &[("OCIMODEL_CONCURRENCY", "1"), ("OCIMODEL_S3_WAIT", "1")],
    );
    let release = format!("http://{}/__release", front.addr);
    let shards: Vec<String> = (1..=SHARDS).map(shard).collect();
    // The last shard is released 3 s after the first is read: its ranges
    // meet `503 SlowDown` every second until then, which the client retries
    // for as long as RUNAI_STREAMER_S3_TIMEOUT allows.
    let got = runai_read(
        &s,
        "llm",
        &model,
        &shards,
        &[
            ("RELEASE_WHEN", &shard(1)),
            ("RELEASE_URL", &release),
            ("RELEASE_AFTER", "3"),
            ("RUNAI_STREAMER_S3_TIMEOUT", "60"),
        ],
    );
    assert!(front.released.load(Ordering::SeqCst));
    for n in &shards {
        assert_eq!(got["errors"][n], serde_json::Value::Null, "{n}: {got}");
        assert_eq!(got["hashes"][n], sha256_of_file(&model, n), "{n}: {got}");
    }
    // The first shard was whole in the reader's hands before any range of
    // the held last one arrived.
    let first_done = got["done_at"][shard(1)].as_f64().unwrap();
    let last_first = got["first"][shard(SHARDS)].as_f64().unwrap();
    assert!(first_done + 3.0 <= last_first, "{got}");
    let slowed = s
        .log()
        .lines()
        .filter(|l| l.contains("answered 503 SlowDown") && l.contains(&shard(SHARDS)))
        .count();
    assert!(slowed >= 2, "{slowed} SlowDown answers:\n{}", s.log());
}
