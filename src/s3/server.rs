//! The read-only S3 API over the [`Catalog`]: path-style (and virtual-host)
//! buckets, `ListBuckets`, `ListObjectsV2` (and V1), `HeadBucket`,
//! `HeadObject`, `GetObject` with one `Range`. Any credentials pass: it
//! listens on loopback only and SigV4 headers are not checked. Everything
//! else answers 405 (other methods) or 501 (other sub-resources).
//!
//! A key whose bytes have not verified yet is waited for, up to
//! `OCIMODEL_S3_WAIT` ([`S3::wait`]), then answered `503 SlowDown` (S3 clients retry that); a key whose bytes
//! failed their digest answers `500 InternalError`, and no byte of it is
//! ever sent: a body is only ever read from a [`VerifiedFile`](super::VerifiedFile).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::body::{file_body, Body, Buffers};
use super::catalog::{Catalog, FileState, Snapshot};

const MAX_KEYS: usize = 1000;
const MAX_CONNECTIONS: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub type Served = Family<Vec<(String, String)>, Counter>;

/// What the server needs: the catalog, the bytes-served counter and the
/// body buffers.
#[derive(Clone)]
pub struct S3 {
    pub catalog: Catalog,
    pub served: Served,
    pub buffers: Buffers,
    /// How long a request waits for a key to verify (or a listing for the
    /// model's keys to be known) before `503 SlowDown`: shorter than the
    /// client's read timeout, so it retries instead of failing.
    pub wait: Duration,
}

/// `OCIMODEL_S3_LISTEN`: `host:port` (or `:port`, `localhost:port`) on a
/// loopback address only.
pub fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    let t = s.trim();
    let t = if let Some(port) = t.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = t.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        t.to_string()
    };
    let addr: SocketAddr = t.parse().map_err(|_| {
        anyhow::anyhow!("OCIMODEL_S3_LISTEN '{s}' is not host:port (e.g. 127.0.0.1:9000)")
    })?;
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "OCIMODEL_S3_LISTEN '{s}' is not a loopback address: the S3 endpoint accepts any credentials, so it listens only on 127.0.0.1 or [::1], where only the pod's own containers reach it"
        );
    }
    Ok(addr)
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, s3: S3) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("S3 endpoint: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let s3 = s3.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let s3 = s3.clone();
                async move { Ok::<_, Infallible>(handle(req, &s3).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
            drop(permit);
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An S3 error document (no body for HEAD, as S3 answers).
fn error(
    head: bool,
    status: StatusCode,
    code: &str,
    message: &str,
    resource: &str,
) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>ocimodel</RequestId></Error>",
        xml_escape(message),
        xml_escape(resource)
    );
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("x-amz-request-id", "ocimodel");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r = r.header("retry-after", "1");
    }
    if head {
        r.body(full(Bytes::new()))
    } else {
        r.header("content-length", body.len()).body(full(body))
    }
    .expect("a valid response")
}

fn xml(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/xml")
        .header("x-amz-request-id", "ocimodel")
        .body(full(body))
        .expect("a valid response")
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hexval = |c: u8| (c as char).to_digit(16);
                match (hexval(b[i + 1]), hexval(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Sub-resources of the S3 API this endpoint does not implement.
const UNSUPPORTED: &[&str] = &[
    "acl",
    "attributes",
    "cors",
    "delete",
    "encryption",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

async fn handle(req: Request<hyper::body::Incoming>, s3: &S3) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let path = percent_decode(req.uri().path(), false);
    if req.method() != Method::GET && !head {
        return error(
            head,
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this S3 endpoint is read-only (GET and HEAD)",
            &path,
        );
    }
    let q = query(&req);
    if let Some((k, _)) = q.iter().find(|(k, _)| UNSUPPORTED.contains(&k.as_str())) {
        return error(
            head,
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            &format!("'{k}' is not implemented by this read-only endpoint"),
            &path,
        );
    }
    let snapshot = s3.catalog.snapshot();
    let rest = path.trim_start_matches('/');
    // Virtual-host style: the first label of Host names a bucket.
    let host_bucket = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once('.'))
        .map(|(b, _)| b.to_string())
        .filter(|b| snapshot.buckets.contains_key(b));
    let (bucket, key) = match host_bucket {
        Some(b) => (b, rest.to_string()),
        None => match rest.split_once('/') {
            Some((b, k)) => (b.to_string(), k.to_string()),
            None => (rest.to_string(), String::new()),
        },
    };
    if bucket.is_empty() {
        return list_buckets(&snapshot, head);
    }
    if !snapshot.buckets.contains_key(&bucket) {
        return error(
            head,
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
            &bucket,
        );
    }
    if key.is_empty() {
        if head {
            return Response::builder()
                .header("x-amz-bucket-region", "us-east-1")
                .body(full(Bytes::new()))
                .expect("a valid response");
        }
        return list_objects(s3, &bucket, &q).await;
    }
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|r| r.to_str().ok())
        .map(str::to_string);
    get_object(s3, &bucket, &key, head, range.as_deref()).await
}

fn list_buckets(snapshot: &Snapshot, head: bool) -> Response<Body> {
    let created = rfc3339(snapshot.started);
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>ocimodel</ID><DisplayName>ocimodel</DisplayName></Owner><Buckets>");
    for name in snapshot.buckets.keys() {
        let _ = write!(
            body,
            "<Bucket><Name>{}</Name><CreationDate>{created}</CreationDate></Bucket>",
            xml_escape(name)
        );
    }
    body.push_str("</Buckets></ListAllMyBucketsResult>");
    if head {
        return xml(String::new());
    }
    xml(body)
}

/// One listed entry: an object, or a common prefix standing for many.
enum Entry {
    Object(String, u64, String),
    Prefix(String),
}

async fn list_objects(s3: &S3, bucket: &str, q: &[(String, String)]) -> Response<Body> {
    let get = |k: &str| {
        q.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let v2 = get("list-type") == Some("2");
    // `encoding-type=url` (boto3 always asks): names percent-encoded, so
    // that any key, a control character included, survives the XML.
    let url = get("encoding-type") == Some("url");
    let name = |s: &str| if url { url_encode(s) } else { xml_escape(s) };
    let prefix = get("prefix").unwrap_or("").to_string();
    let delimiter = get("delimiter").unwrap_or("").to_string();
    let max_keys = get("max-keys")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(MAX_KEYS)
        .min(MAX_KEYS);
    // The token is the last entry handed out, hex-encoded (opaque to clients).
    let token = get("continuation-token").map(str::to_string);
    let after = if v2 {
        match &token {
            Some(t) => match unhex(t) {
                Some(a) => a,
                None => {
                    return error(
                        false,
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        "The continuation token provided is incorrect",
                        bucket,
                    )
                }
            },
            None => get("start-after").unwrap_or("").to_string(),
        }
    } else {
        get("marker").unwrap_or("").to_string()
    };
    // A listing is only true once every key of the model is named.
    let listed = s3
        .catalog
        .wait_for(s3.wait, |s| {
            let b = &s.buckets[bucket];
            (b.complete || b.listed).then(|| {
                b.keys
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, st)| (k.clone(), st.size(), st.etag().to_string()))
                    .collect::<Vec<_>>()
            })
        })
        .await;
    let Some(keys) = listed else {
        tracing::info!(bucket, "S3 endpoint: the listing is not whole after {:?}; answered 503 SlowDown (the client retries)", s3.wait);
        return error(
            false,
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "the model's files are still being pulled; retry",
            bucket,
        );
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (key, size, etag) in keys {
        if !after.is_empty()
            && (key.as_str() <= after.as_str()
                || (after.ends_with(&delimiter)
                    && !delimiter.is_empty()
                    // A token or marker that was a common prefix stands
                    // for its whole group; a client's StartAfter does not.
                    && (token.is_some() || !v2)
                    && key.starts_with(&after)))
        {
            continue;
        }
        let rest = &key[prefix.len()..];
        match (!delimiter.is_empty())
            .then(|| rest.find(&delimiter))
            .flatten()
        {
            Some(i) => {
                let cp = format!("{prefix}{}", &rest[..i + delimiter.len()]);
                if !matches!(entries.last(), Some(Entry::Prefix(p)) if *p == cp) {
                    entries.push(Entry::Prefix(cp));
                }
            }
            None => entries.push(Entry::Object(key, size, etag)),
        }
    }
    let truncated = entries.len() > max_keys;
    entries.truncate(max_keys);
    let last = entries.last().map(|e| match e {
        Entry::Object(k, ..) => k.clone(),
        Entry::Prefix(p) => p.clone(),
    });
    let modified = rfc3339(s3.catalog.snapshot().started);
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    let _ = write!(
        body,
        "<Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{max_keys}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        xml_escape(bucket),
        name(&prefix)
    );
    if url {
        body.push_str("<EncodingType>url</EncodingType>");
    }
    if !delimiter.is_empty() {
        let _ = write!(body, "<Delimiter>{}</Delimiter>", name(&delimiter));
    }
    if v2 {
        let _ = write!(body, "<KeyCount>{}</KeyCount>", entries.len());
        if let Some(t) = &token {
            let _ = write!(
                body,
                "<ContinuationToken>{}</ContinuationToken>",
                xml_escape(t)
            );
        }
        if let Some(sa) = get("start-after") {
            let _ = write!(body, "<StartAfter>{}</StartAfter>", name(sa));
        }
        if let (true, Some(l)) = (truncated, &last) {
            let _ = write!(
                body,
                "<NextContinuationToken>{}</NextContinuationToken>",
                hex(l)
            );
        }
    } else {
        let _ = write!(body, "<Marker>{}</Marker>", name(&after));
        if let (true, Some(l)) = (truncated, &last) {
            let _ = write!(body, "<NextMarker>{}</NextMarker>", name(l));
        }
    }
    for e in &entries {
        match e {
            Entry::Object(k, size, etag) => {
                let _ = write!(
                    body,
                    "<Contents><Key>{}</Key><LastModified>{modified}</LastModified><ETag>{}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                    name(k),
                    xml_escape(etag)
                );
            }
            Entry::Prefix(p) => {
                let _ = write!(
                    body,
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    name(p)
                );
            }
        }
    }
    body.push_str("</ListBucketResult>");
    xml(body)
}

/// A name as S3 writes it under `encoding-type=url`: every byte but the
/// unreserved ones and `/` percent-encoded.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
    Several,
}

fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        // No range, or one in another unit: the whole object (RFC 9110).
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Several;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // The last `n` bytes.
        (true, false) => match num(b) {
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(size - n.min(size), size - 1),
            None => Wanted::Whole,
        },
        (false, _) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    Wanted::Unsatisfiable
                } else {
                    Wanted::Part(start, end.min(size - 1))
                }
            }
            _ => Wanted::Whole,
        },
        (true, true) => Wanted::Whole,
    }
}

async fn get_object(
    s3: &S3,
    bucket: &str,
    key: &str,
    head: bool,
    range: Option<&str>,
) -> Response<Body> {
    let resource = format!("/{bucket}/{key}");
    // Settled: verified, failed, or absent from a model whose keys are all known.
    let settled = s3
        .catalog
        .wait_for(s3.wait, |s| {
            let b = &s.buckets[bucket];
            match b.keys.get(key) {
                Some(FileState::Pending { .. }) => None,
                Some(state) => Some(Some(state.clone())),
                None if b.complete => Some(None),
                None => None,
            }
        })
        .await;
    let file = match settled {
        None => {
            tracing::info!(bucket, key = %crate::text::escape_controls(key), "S3 endpoint: not verified after {:?}; answered 503 SlowDown (the client retries)", s3.wait);
            return error(
                head,
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "the file has not been downloaded and verified yet; retry",
                &resource,
            );
        }
        Some(None) => {
            return error(
                head,
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
                &resource,
            )
        }
        Some(Some(FileState::Failed(why))) => {
            return error(
                head,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("the file failed verification and is never served: {why}"),
                &resource,
            )
        }
        Some(Some(FileState::Verified(v))) => v,
        Some(Some(FileState::Pending { .. })) => unreachable!("pending keys are waited for"),
    };
    let size = file.size;
    let modified = http_date(s3.catalog.snapshot().started);
    let builder = || {
        Response::builder()
            .header("content-type", "application/octet-stream")
            .header("accept-ranges", "bytes")
            .header("etag", file.etag.clone())
            .header("last-modified", modified.clone())
            .header("x-amz-request-id", "ocimodel")
    };
    let (status, start, len, content_range) = match wanted(range, size) {
        Wanted::Whole => (StatusCode::OK, 0, size, None),
        Wanted::Part(a, b) => (
            StatusCode::PARTIAL_CONTENT,
            a,
            b - a + 1,
            Some(format!("bytes {a}-{b}/{size}")),
        ),
        Wanted::Several => {
            return error(
                head,
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "only one range per request",
                &resource,
            )
        }
        Wanted::Unsatisfiable => {
            let mut r = error(
                head,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
                &resource,
            );
            r.headers_mut().insert(
                hyper::header::CONTENT_RANGE,
                format!("bytes */{size}").parse().expect("a valid header"),
            );
            return r;
        }
    };
    let mut r = builder().status(status).header("content-length", len);
    if let Some(cr) = content_range {
        r = r.header("content-range", cr);
    }
    let body = if head {
        full(Bytes::new())
    } else {
        let counter = s3
            .served
            .get_or_create(&vec![("bucket".to_string(), bucket.to_string())])
            .clone();
        file_body(file, start, len, counter, s3.buffers.clone())
    };
    r.body(body).expect("a valid response")
}

fn rfc3339(t: Option<SystemTime>) -> String {
    humantime::format_rfc3339_millis(t.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: Option<SystemTime>) -> String {
    let secs = t
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // "YYYY-MM-DDTHH:MM:SSZ"
    let iso = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][iso[5..7].parse::<usize>().unwrap_or(1) - 1];
    format!(
        "{weekday}, {} {month} {} {} GMT",
        &iso[8..10],
        &iso[0..4],
        &iso[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-3"), 10), Wanted::Part(0, 3));
        assert_eq!(wanted(Some("bytes=5-"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=5-100"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=-4"), 10), Wanted::Part(6, 9));
        assert_eq!(wanted(Some("bytes=-40"), 10), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-0"), 0), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::Several);
        assert_eq!(wanted(Some("bytes=4-2"), 10), Wanted::Whole);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::Whole);
    }

    #[test]
    fn listen_is_loopback_only() {
        assert_eq!(parse_listen(":9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(
            parse_listen("localhost:9000").unwrap().to_string(),
            "127.0.0.1:9000"
        );
        assert_eq!(
            parse_listen("[::1]:9000").unwrap().to_string(),
            "[::1]:9000"
        );
        let e = parse_listen("0.0.0.0:9000").unwrap_err().to_string();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn url_encoded_names() {
        assert_eq!(
            url_encode("sub/a b+c\u{1}é.txt"),
            "sub/a%20b%2Bc%01%C3%A9.txt"
        );
        assert_eq!(url_encode("Az09-_.~/"), "Az09-_.~/");
    }

    #[test]
    fn dates_and_tokens() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(Some(t)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(unhex(&hex("a/b é")).unwrap(), "a/b é");
        assert!(unhex("zz").is_none());
        assert_eq!(percent_decode("a%2Fb+c%20d", true), "a/b c d");
        assert_eq!(percent_decode("a+b%", false), "a+b%");
    }
}
