//! `inspect` and `referrers` against the real registry (which has no
//! referrers API, so the `sha256-<hex>` tag schema is used), and the
//! referrers API itself (pagination, server- and client-side filtering)
//! against a tiny fake, since Debian's registry 2.8 cannot serve it.

mod common;

use std::net::TcpListener;

use common::*;
use serde_json::json;

fn run(args: &[&str], reg: &Registry) -> (i32, String, String) {
    let r = Ocimodel::for_registry(reg).run(args);
    (r.code(), r.stdout(), r.stderr())
}

/// Pushes the seed model, a signature-like and an SBOM-like referrer of it,
/// and the fallback index a client keeps for registries without the API.
fn seed_with_referrers(reg: &Registry) -> (String, Vec<String>) {
    reg.oras_push_mnist("models/mnist:v1");
    let digest = reg.digest_of("models/mnist", "v1");
    let manifest = http_get(
        &reg.addr,
        "/v2/models/mnist/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    let subject = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.body.len()});
    let mut referrers = Vec::new();
    for (i, (t, note)) in [
        ("application/vnd.example.signature.v1", "signed"),
        ("application/spdx+json", "sbom"),
    ]
    .iter()
    .enumerate()
    {
        let d = reg.push_artifact(
            &format!("models/mnist:ref{i}"),
            &json!({"artifactType": t, "subject": subject, "annotations": {"note": note},
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                    "layers": [{"mediaType": "application/octet-stream", "data": note}]}),
        );
        referrers.push((d, t.to_string(), note.to_string()));
    }
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": referrers.iter().map(|(d, t, note)| {
            let size = http_get(&reg.addr, &format!("/v2/models/mnist/manifests/{d}"), &[("Accept", "application/vnd.oci.image.manifest.v1+json")]).body.len();
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size,
                   "artifactType": t, "annotations": {"note": note}})
        }).collect::<Vec<_>>()
    });
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let status = reg.put_manifest(
        "models/mnist",
        &tag,
        "application/vnd.oci.image.index.v1+json",
        index.to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    (digest, referrers.into_iter().map(|(d, _, _)| d).collect())
}

#[test]
fn inspect_reports_files_annotations_and_referrers() {
    let reg = Registry::start(Auth::None);
    let (digest, refs) = seed_with_referrers(&reg);
    let uri = format!("{}/models/mnist:v1", reg.addr);

    let (code, out, err) = run(&["inspect", "--format", "json", &uri], &reg);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["digest"], digest.as_str());
    assert_eq!(r["format"], "oras");
    assert_eq!(r["artifactType"], "application/vnd.unknown.artifact.v1");
    assert_eq!(r["totalSize"], 421403);
    assert_eq!(r["annotations"]["authors"], "John Doe, John Rambo");
    assert_eq!(
        r["files"],
        json!([{"path": MNIST_TITLE, "size": 421403, "digest": format!("sha256:{MNIST_SHA256}"), "mediaType": "application/octet-stream"}])
    );
    let found: Vec<&str> = r["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(found, refs.iter().map(String::as_str).collect::<Vec<_>>());

    let (code, out, _) = run(&["inspect", &uri], &reg);
    assert_eq!(code, 0);
    assert!(out.contains("Format:        oras"), "{out}");
    assert!(out.contains(MNIST_TITLE) && out.contains("421403"), "{out}");
    assert!(
        out.contains("application/spdx+json") && out.contains("note=sbom"),
        "{out}"
    );

    // Nothing was written anywhere: inspect has no DEST.
    let (code, _, err) = run(&["inspect", &format!("{}/models/nope:v1", reg.addr)], &reg);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn referrers_command_with_tag_fallback_and_filter() {
    let reg = Registry::start(Auth::None);
    let (_, refs) = seed_with_referrers(&reg);
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let (code, out, err) = run(&["referrers", "--format", "json", &uri], &reg);
    assert_eq!(code, 0, "{err}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 2);
    let (code, out, _) = run(
        &[
            "referrers",
            "--artifact-type",
            "application/spdx+json",
            "--format",
            "json",
            &uri,
        ],
        &reg,
    );
    assert_eq!(code, 0);
    let filtered: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["digest"], refs[1].as_str());
    assert!(
        reg.log().contains("GET /v2/models/mnist/referrers/sha256:"),
        "the API was tried first"
    );

    // No referrers at all: an empty list, not an error.
    reg.oras_push_mnist("models/lonely:v1");
    let (code, out, _) = run(
        &["referrers", &format!("{}/models/lonely:v1", reg.addr)],
        &reg,
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "Referrers:     none");
}

#[test]
fn inspect_an_index_shows_the_platform() {
    let reg = Registry::start(Auth::None);
    let (layout, index_digest) = modelcar_layout_with(&["--index"]);
    reg.skopeo_push(layout.path(), "v1", "models/multi:v1");
    let (code, out, err) = run(
        &[
            "inspect",
            "--format",
            "json",
            "--platform",
            "linux/arm64",
            &format!("{}/models/multi:v1", reg.addr),
        ],
        &reg,
    );
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["digest"], index_digest.as_str());
    assert_eq!(r["platform"], "linux/arm64/v8");
    assert_ne!(r["manifestDigest"], r["digest"]);
    assert_eq!(r["format"], "image");
    assert_eq!(r["archives"][0]["unpacksTo"], "/models (image layer)");
}

/// `ocimodel referrers --format json [extra] ADDR/m:v1` → the digests listed.
fn referrer_digests(addr: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["referrers".to_string(), "--format".into(), "json".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("{addr}/m:v1"));
    let run = Ocimodel::new()
        .env("OCIMODEL_INSECURE_REGISTRIES", addr)
        .run(&args);
    run.assert_ok();
    let found: Vec<serde_json::Value> = serde_json::from_slice(&run.out.stdout).unwrap();
    found
        .iter()
        .map(|v| v["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The referrers API as distribution-spec v1.1 describes it: two pages
/// joined by a `Link` header, with or without `OCI-Filters-Applied`.
#[test]
fn referrers_api_pagination_and_filtering() {
    let subject_manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.x","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    let subject = format!("sha256:{}", sha256_hex(&subject_manifest));
    let d = |n: u8| format!("sha256:{}", sha256_hex(&[n]));
    let entry = move |n: u8, t: &str| json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(n), "size": 10, "artifactType": t});
    let page1 = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [entry(1, "application/a"), entry(2, "application/b")]})
    .to_string();
    let page2 = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [entry(3, "application/a")]})
    .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (subject_c, sm) = (subject.clone(), subject_manifest.clone());
    serve(listener, move |req| {
        let index = [(
            "Content-Type",
            "application/vnd.oci.image.index.v1+json".to_string(),
        )];
        if req.path == "/v2/m/manifests/v1" {
            response(
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
                &sm,
            )
        } else if req.path == format!("/v2/m/referrers/{subject_c}")
            // A registry that ignores the filter (no OCI-Filters-Applied).
            || req.path == format!("/v2/m/referrers/{subject_c}?artifactType=application%2Fb")
        {
            let link = [
                (
                    "Link",
                    format!("</v2/m/referrers/{subject_c}?page=2>; rel=\"next\""),
                ),
                index[0].clone(),
            ];
            response("200 OK", &link, page1.as_bytes())
        } else if req.path == format!("/v2/m/referrers/{subject_c}?page=2") {
            response("200 OK", &index, page2.as_bytes())
        } else if req
            .path
            .starts_with(&format!("/v2/m/referrers/{subject_c}?artifactType="))
        {
            // A registry that filters, and says so.
            let body =
                json!({"schemaVersion": 2, "manifests": [entry(9, "application/a")]}).to_string();
            response(
                "200 OK",
                &[
                    index[0].clone(),
                    ("OCI-Filters-Applied", "artifactType".into()),
                ],
                body.as_bytes(),
            )
        } else {
            response("404 Not Found", &[], b"")
        }
    });
    assert_eq!(
        referrer_digests(&addr, &[]),
        vec![d(1), d(2), d(3)],
        "both pages, in order"
    );
    assert_eq!(
        referrer_digests(&addr, &["--artifact-type", "application/a"]),
        vec![d(9)],
        "the server filtered (OCI-Filters-Applied), so its answer stands"
    );
    assert_eq!(
        referrer_digests(&addr, &["--artifact-type", "application/b"]),
        vec![d(2)],
        "the server did not filter, so the client must"
    );
}
