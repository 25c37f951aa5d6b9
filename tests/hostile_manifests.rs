//! Hostile manifests, each served from a crafted OCI layout: too big, nested
//! too deep, negative sizes, unknown digest algorithms, invalid UTF-8. Each is
//! refused with a specific line and installs nothing. (An index cycle cannot
//! be built: every index names its children by digest, so a cycle would need
//! a hash collision; nesting depth covers the same attack.)

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::json;

/// A layout whose index.json names `top` (raw manifest bytes); `extra`
/// blobs are stored too. Returns the layout URI.
fn layout(dir: &Path, top: &[u8], extra: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for b in extra.iter().chain([&top.to_vec()]) {
        fs::write(blobs.join(sha256_hex(b)), b).unwrap();
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let media_type = if String::from_utf8_lossy(top).contains("\"manifests\"") {
        "application/vnd.oci.image.index.v1+json"
    } else {
        "application/vnd.oci.image.manifest.v1+json"
    };
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(top)), "size": top.len()}]}))
        .unwrap(),
    )
    .unwrap();
    format!("oci-layout://{}", dir.display())
}

fn manifest_with_layer(layer: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/x",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2, "data": "e30="},
        "layers": [layer]}))
    .unwrap()
}

fn refused(uri: &str, needles: &[&str]) {
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .pull(uri, dest.path())
        .assert_fails_with(needles);
    assert!(model_files(dest.path()).is_empty());
}

#[test]
fn a_manifest_over_4_mib() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(b"x")), "size": 1, "annotations": {"org.opencontainers.image.title": "x"}}));
    // Pad with whitespace: still valid JSON, just too big.
    m.splice(1..1, std::iter::repeat_n(b' ', 4 * 1024 * 1024));
    refused(
        &layout(dir.path(), &m, &[b"x".to_vec()]),
        &["over the 4194304-byte limit"],
    );
}

#[test]
fn indexes_nested_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(b"x")), "size": 1, "annotations": {"org.opencontainers.image.title": "x"}}));
    let mut blobs = vec![b"x".to_vec(), leaf.clone()];
    let mut child = (leaf, "application/vnd.oci.image.manifest.v1+json");
    for _ in 0..6 {
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": child.1, "digest": format!("sha256:{}", sha256_hex(&child.0)), "size": child.0.len()}]}))
        .unwrap();
        blobs.push(index.clone());
        child = (index, "application/vnd.oci.image.index.v1+json");
    }
    refused(
        &layout(dir.path(), &child.0, &blobs),
        &["nest deeper than 4 levels"],
    );
}

#[test]
fn negative_and_huge_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(b"x")), "size": -1, "annotations": {"org.opencontainers.image.title": "x"}}));
    refused(
        &layout(dir.path(), &m, &[b"x".to_vec()]),
        &["invalid image manifest"],
    );

    // A size no disk can hold: refused before anything is fetched.
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(b"x")), "size": 1u64 << 50, "annotations": {"org.opencontainers.image.title": "x"}}));
    refused(
        &layout(dir.path(), &m, &[b"x".to_vec()]),
        &["not enough space"],
    );
}

#[test]
fn unknown_digest_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": "sha1:2aae6c35c94fcfb415dbe95f408b9ce91ee846ed", "size": 1, "annotations": {"org.opencontainers.image.title": "x"}}));
    refused(
        &layout(dir.path(), &m, &[]),
        &["digest algorithm 'sha1' is not supported"],
    );
}

#[test]
fn invalid_utf8_in_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(b"x")), "size": 1, "annotations": {"org.opencontainers.image.title": "XX"}}));
    let at = m.windows(2).position(|w| w == b"XX").unwrap();
    let mut bad = m.clone();
    bad[at] = 0xff;
    bad[at + 1] = 0xfe;
    refused(
        &layout(dir.path(), &bad, &[b"x".to_vec()]),
        &["not valid JSON"],
    );
}

#[test]
fn a_blob_longer_than_declared() {
    let dir = tempfile::tempdir().unwrap();
    let blob = b"twelve bytes".to_vec();
    // The descriptor claims 4 bytes (with the digest of all 12).
    let m = manifest_with_layer(json!({"mediaType": "application/octet-stream",
        "digest": format!("sha256:{}", sha256_hex(&blob)), "size": 4, "annotations": {"org.opencontainers.image.title": "x"}}));
    refused(
        &layout(dir.path(), &m, &[blob]),
        &["more than the 4 bytes the manifest declares"],
    );
}

/// GNU tar's sparse entries (holes) unpack to the right bytes.
#[test]
fn sparse_tar_entries() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/models");
    fs::create_dir_all(&src).unwrap();
    let file = fs::File::create(src.join("sparse.bin")).unwrap();
    file.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_at(b"middle", 2 << 20).unwrap();
    file.write_at(b"end", (4 << 20) - 3).unwrap();
    let tar = dir.path().join("layer.tar");
    let st = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(dir.path().join("src"))
        .arg("-cf")
        .arg(&tar)
        .arg("models")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = fs::read(&tar).unwrap();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]}})).unwrap();
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}]}))
    .unwrap();
    assert!(
        layer.len() < 1 << 20,
        "GNU tar wrote the holes as sparse maps"
    );
    let uri = layout(&dir.path().join("layout"), &m, &[layer, config]);
    let dest = dir.path().join("out");
    Ocimodel::new().pull(&uri, &dest).assert_ok();
    assert_eq!(
        sha256_file(&dest.join("sparse.bin")),
        sha256_file(&src.join("sparse.bin"))
    );
}
