//! OpenSSF model signatures (OMS; sigstore/model-transparency's
//! `docs/model_signing_format.md`, as `model_signing` 1.x writes them): a
//! sigstore bundle whose DSSE envelope carries an in-toto statement that
//! lists every file (or shard) of the model with its digest. Checked on the
//! staged tree, before anything becomes visible in DEST.
//!
//! Checks, in order; any failure refuses the whole model:
//! 1. the bundle's signature over the DSSE PAE, by a configured key, a
//!    certificate chaining to configured CAs, or keyless (Fulcio certificate
//!    and Rekor entry against `OCIMODEL_TRUSTED_ROOT`);
//! 2. the statement: predicate `https://model_signing/signature/v1.0` with
//!    one subject whose digest is SHA-256 over the resources' raw digests
//!    in order (or the legacy v0.2 form, one subject per file);
//! 3. `serialization`: `files` or `shards`, hash `sha256` or `blake3`
//!    (anything else is refused by name), `allow_symlinks`, `ignore_paths`;
//! 4. the tree: every file not ignored (the signature file always is)
//!    hashed and compared with the resources; an extra, a missing or a
//!    changed file refuses.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::cosign::{verify_bundle, Signed};
use super::{keys, matcher, set, sigstore, trusted_root, Mode, Policy};
use crate::digest::{hex, Algorithm, Digest, Hasher};
use crate::error::SignatureError;
use crate::unpack::Contents;

/// Where `model_signing sign` writes the signature by default.
pub const DEFAULT_SIGNATURE: &str = "model.sig";
const PREDICATE_V1: &str = "https://model_signing/signature/v1.0";
const PREDICATE_V02: &str = "https://model_signing/Digests/v0.1";
/// A signature lists every file; a big model's can run to megabytes, but
/// never to this.
const MAX_SIGNATURE_BYTES: u64 = 64 << 20;

/// What a model signature must satisfy. Built once per run.
#[derive(Clone, Debug)]
pub struct ModelPolicy {
    pub mode: Mode,
    /// The signature's path inside the model (`model.sig`).
    pub signature: String,
    pub trust: Policy,
}

impl Default for ModelPolicy {
    fn default() -> ModelPolicy {
        ModelPolicy {
            mode: Mode::Off,
            signature: DEFAULT_SIGNATURE.to_string(),
            trust: Policy::default(),
        }
    }
}

/// The raw settings, from env or flags.
#[derive(Clone, Debug, Default)]
pub struct ModelInputs {
    /// OCIMODEL_MODEL_SIGNATURE.
    pub mode: Option<Mode>,
    /// OCIMODEL_MODEL_KEY.
    pub key: Option<String>,
    /// OCIMODEL_MODEL_CERT_CHAIN.
    pub certificates: Option<String>,
    /// OCIMODEL_MODEL_IDENTITY(_REGEXP), OCIMODEL_MODEL_OIDC_ISSUER(_REGEXP).
    pub identity: Option<String>,
    pub identity_regexp: Option<String>,
    pub issuer: Option<String>,
    pub issuer_regexp: Option<String>,
    /// OCIMODEL_TRUSTED_ROOT, shared with image signatures.
    pub trusted_root: Option<String>,
    /// OCIMODEL_MODEL_SIGNATURE_PATH.
    pub path: Option<String>,
}

impl ModelPolicy {
    pub fn from_inputs(i: &ModelInputs) -> Result<ModelPolicy> {
        let mut trust = Policy {
            key_setting: "OCIMODEL_MODEL_KEY",
            certificate_setting: "OCIMODEL_MODEL_CERT_CHAIN",
            ..Policy::default()
        };
        if let Some(k) = set(&i.key) {
            trust.keys = keys::load_keys("OCIMODEL_MODEL_KEY", k)?;
        }
        if let Some(c) = set(&i.certificates) {
            trust.certificates = keys::load_certificates("OCIMODEL_MODEL_CERT_CHAIN", c)?;
        }
        let identity = matcher(
            set(&i.identity),
            set(&i.identity_regexp),
            "OCIMODEL_MODEL_IDENTITY",
        )?;
        let issuer = matcher(
            set(&i.issuer),
            set(&i.issuer_regexp),
            "OCIMODEL_MODEL_OIDC_ISSUER",
        )?;
        match (identity, issuer) {
            (Some(identity), Some(issuer)) => {
                let Some(root) = set(&i.trusted_root) else {
                    bail!("keyless model signatures need OCIMODEL_TRUSTED_ROOT (a sigstore trusted_root.json); ocimodel makes no network calls to sigstore services");
                };
                trust.keyless = Some(sigstore::Keyless {
                    identity,
                    issuer,
                    root: trusted_root(root)?,
                });
            }
            (Some(_), None) => bail!(
                "OCIMODEL_MODEL_IDENTITY needs OCIMODEL_MODEL_OIDC_ISSUER (or its _REGEXP) too"
            ),
            (None, Some(_)) => bail!(
                "OCIMODEL_MODEL_OIDC_ISSUER needs OCIMODEL_MODEL_IDENTITY (or its _REGEXP) too"
            ),
            (None, None) => {}
        }
        let configured =
            !trust.keys.is_empty() || !trust.certificates.is_empty() || trust.keyless.is_some();
        let mode = match i.mode {
            None if configured => Mode::Required,
            None => Mode::Off,
            Some(Mode::Off) if configured => bail!(
                "OCIMODEL_MODEL_SIGNATURE=off but a model key, certificate chain or identity is set; unset one (ocimodel does not skip verification silently)"
            ),
            Some(mode) => mode,
        };
        if mode != Mode::Off && !configured {
            bail!("OCIMODEL_MODEL_SIGNATURE asks for model signature checks but nothing to trust is set: give OCIMODEL_MODEL_KEY, OCIMODEL_MODEL_CERT_CHAIN, or OCIMODEL_MODEL_IDENTITY with OCIMODEL_MODEL_OIDC_ISSUER and OCIMODEL_TRUSTED_ROOT");
        }
        let signature = match set(&i.path) {
            None => DEFAULT_SIGNATURE.to_string(),
            Some(p) => relative(p)
                .ok_or_else(|| anyhow!("OCIMODEL_MODEL_SIGNATURE_PATH must be a path inside the model (like model.sig or signatures/model.sig), not '{p}'"))?,
        };
        Ok(ModelPolicy {
            mode,
            signature,
            trust,
        })
    }

    pub fn is_off(&self) -> bool {
        self.mode == Mode::Off
    }

    /// What a marker's selection records, so that a tree installed under
    /// another policy is not taken as checked.
    pub fn describe(&self) -> Option<String> {
        match self.mode {
            Mode::Off => None,
            Mode::IfPresent => Some(format!("model-signature=if-present:{}", self.signature)),
            Mode::Required => Some(format!("model-signature=required:{}", self.signature)),
        }
    }
}

/// A model signature that verified, as the marker records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSignature {
    /// The signature file, relative to DEST.
    pub path: String,
    pub signer: String,
    /// The model's OMS digest: SHA-256 over its resources' digests (what
    /// `model_signing digest` prints); absent for the legacy v0.2 form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `files/sha256`, `shards/sha256:1000000000`, ...
    pub serialization: String,
    /// Files or shards signed.
    pub resources: usize,
}

impl std::fmt::Display for ModelSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model signature {} by {} ({} {}",
            self.path, self.signer, self.resources, self.serialization
        )?;
        if let Some(d) = &self.digest {
            write!(f, ", model digest {d}")?;
        }
        write!(f, ")")
    }
}

/// A `model_signing` path: relative, `/`-separated, no `.` or `..` parts.
fn relative(p: &str) -> Option<String> {
    let p = p.trim_start_matches("./");
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if p.starts_with('/') || parts.is_empty() || parts.iter().any(|s| *s == "." || *s == "..") {
        return None;
    }
    Some(parts.join("/"))
}

/// How the signer serialized the model.
#[derive(Debug)]
struct Serialization {
    shard_size: Option<u64>,
    hash: Algorithm,
    allow_symlinks: bool,
    ignore: Vec<String>,
}

impl Serialization {
    fn describe(&self) -> String {
        match self.shard_size {
            None => format!("files/{}", self.hash.name()),
            Some(s) => format!("shards/{}:{s}", self.hash.name()),
        }
    }

    fn ignored(&self, path: &str) -> bool {
        self.ignore.iter().any(|i| {
            path == i
                || path
                    .strip_prefix(i.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// What the signature says the model is: resource name → hex digest.
#[derive(Debug)]
struct Statement {
    serialization: Serialization,
    resources: BTreeMap<String, String>,
    digest: Option<String>,
}

/// Checks the staged model at `root` (whose files `contents` lists) against
/// its signature. `Ok(None)`: unsigned, and the policy allows it.
pub fn check(
    root: &Path,
    contents: &Contents,
    policy: &ModelPolicy,
) -> Result<Option<ModelSignature>> {
    let refuse = |e: anyhow::Error| -> anyhow::Error {
        anyhow::Error::new(SignatureError(format!(
            "model signature {}: {e:#}",
            policy.signature
        )))
    };
    let Some(bytes) = read_signature(root, contents, &policy.signature).map_err(refuse)? else {
        if policy.mode == Mode::Required {
            return Err(refuse(anyhow!(
                "the model has no signature file there (OCIMODEL_MODEL_SIGNATURE=required); sign it with `model_signing sign`, or set OCIMODEL_MODEL_SIGNATURE_PATH to where its signature is"
            )));
        }
        tracing::warn!(signature = %policy.signature, "the model is not signed; installing it (OCIMODEL_MODEL_SIGNATURE=if-present)");
        return Ok(None);
    };
    let SignedFiles { signer, statement } = read_signed(&bytes, policy).map_err(refuse)?;
    compare(root, contents, &statement).map_err(refuse)?;
    Ok(Some(ModelSignature {
        path: policy.signature.clone(),
        signer,
        digest: statement.digest.map(|d| format!("sha256:{d}")),
        serialization: statement.serialization.describe(),
        resources: statement.resources.len(),
    }))
}

/// What a signature that verified lists: each file's digest, so a file can
/// be judged alone as it arrives (the S3 endpoint serves it then); the
/// whole tree is still checked by [`check`].
#[derive(Debug)]
pub struct SignedFiles {
    pub signer: String,
    statement: Statement,
}

impl SignedFiles {
    /// Whether the file at `path` with `digest` is what the signature lists
    /// for it. `None` when its digest alone cannot tell: shard or other-hash
    /// serializations (the file must be hashed again), ignored paths.
    pub fn vouches(&self, path: &str, digest: &Digest) -> Option<bool> {
        let s = &self.statement.serialization;
        if s.shard_size.is_some() || s.hash != digest.algorithm() || s.ignored(path) {
            return None;
        }
        Some(self.statement.resources.get(path).map(String::as_str) == Some(digest.hex()))
    }

    /// Whether `file` (opened at `path`) is what the signature lists, hashed
    /// as the signer serialized it: for shard and other-hash serializations,
    /// where [`SignedFiles::vouches`] cannot tell from the download's digest.
    /// `None` for an ignored path: only the tree check decides those.
    /// `size` is what will be served from `file`; the file must hold just
    /// that. Each chunk takes a CPU slot, beside the download's hashing.
    pub fn vouches_for_bytes(
        &self,
        path: &str,
        file: &fs::File,
        size: u64,
    ) -> Result<Option<bool>> {
        let s = &self.statement.serialization;
        if s.ignored(path) {
            return Ok(None);
        }
        let held = file
            .metadata()
            .with_context(|| format!("cannot read {path}"))?
            .len();
        if held != size {
            bail!("{path} holds {held} bytes, not the {size} that verified");
        }
        let mut actual = BTreeMap::new();
        hash_into(&mut actual, file, path, s, true)?;
        let signed: BTreeMap<&String, &String> = match s.shard_size {
            None => self
                .statement
                .resources
                .get_key_value(path)
                .into_iter()
                .collect(),
            // `path:start:end`, and only this file's (another file's name may
            // begin with `path:`).
            Some(_) => {
                let prefix = format!("{path}:");
                self.statement
                    .resources
                    .range(prefix.clone()..)
                    .take_while(|(name, _)| name.starts_with(&prefix))
                    .filter(|(name, _)| file_of(name, s) == path)
                    .collect()
            }
        };
        Ok(Some(
            actual.len() == signed.len()
                && actual.iter().all(|(name, d)| signed.get(name) == Some(&d)),
        ))
    }
}

#[cfg(test)]
impl SignedFiles {
    /// What a verified signature over `files` with the shard serialization
    /// would list (no bundle: for tests of what is done with it).
    pub fn sharded_for_tests(shard_size: u64, files: &[(&str, &[u8])]) -> SignedFiles {
        let serialization = serde_json::json!({"method": "shards", "hash_type": "sha256", "shard_size": shard_size});
        let algorithm = format!("sha256-sharded-{shard_size}");
        let mut resources = Vec::new();
        for (name, bytes) in files {
            for (i, chunk) in bytes.chunks(shard_size as usize).enumerate() {
                let start = i as u64 * shard_size;
                let end = start + chunk.len() as u64;
                resources.push((format!("{name}:{start}:{end}"), hex(&Sha256::digest(chunk))));
            }
        }
        let listed: Vec<_> = resources
            .iter()
            .map(|(n, d)| (n.as_str(), algorithm.as_str(), d.as_str()))
            .collect();
        SignedFiles {
            signer: "test".into(),
            statement: read_statement(&tests::statement(serialization, &listed, None)).unwrap(),
        }
    }
}

/// The signature file's bytes checked against the policy's trust, and the
/// statement they sign read.
pub fn read_signed(bytes: &[u8], policy: &ModelPolicy) -> Result<SignedFiles> {
    let verified = verify_bundle(bytes, None, &policy.trust)?;
    let Signed::Statement(payload) = verified.signed else {
        bail!("the bundle holds a message signature, not a DSSE envelope; model_signing signs statements");
    };
    let mut statement = read_statement(&payload)?;
    statement
        .serialization
        .ignore
        .push(policy.signature.clone());
    Ok(SignedFiles {
        signer: verified.signer,
        statement,
    })
}

/// The signature file's bytes, if the model has one: a regular file we
/// unpacked (never a link out of the tree).
fn read_signature(root: &Path, contents: &Contents, path: &str) -> Result<Option<Vec<u8>>> {
    if contents.links.contains_key(path) {
        bail!("the signature file is a symlink; refusing it");
    }
    if !contents.files.iter().any(|f| f.path == path) {
        return Ok(None);
    }
    let file = fs::File::open(root.join(path)).context("cannot open it")?;
    read_signature_file(&file).map(Some)
}

/// A signature file's bytes, from its start whatever the descriptor's
/// offset (others may read it too); refused past a sane size.
pub fn read_signature_file(file: &fs::File) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; 64 << 10];
    let mut len = 0;
    while len as u64 <= MAX_SIGNATURE_BYTES {
        if len == bytes.len() {
            bytes.resize((len * 2).min(MAX_SIGNATURE_BYTES as usize + 1), 0);
        }
        match file.read_at(&mut bytes[len..], len as u64) {
            Ok(0) => {
                bytes.truncate(len);
                return Ok(bytes);
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read it")),
        }
    }
    bail!(
        "it is larger than {} MiB; not a model signature",
        MAX_SIGNATURE_BYTES >> 20
    )
}

fn read_statement(payload: &[u8]) -> Result<Statement> {
    let st: Value = serde_json::from_slice(payload).context("the DSSE payload is not JSON")?;
    if st["_type"].as_str() != Some("https://in-toto.io/Statement/v1") {
        bail!("the payload is not an in-toto v1 statement");
    }
    match st["predicateType"].as_str().unwrap_or("") {
        PREDICATE_V1 => read_v1(&st),
        PREDICATE_V02 => read_v02(&st),
        other => bail!(
            "the statement's predicate type is '{other}', not a model signature ({PREDICATE_V1})"
        ),
    }
}

fn read_v1(st: &Value) -> Result<Statement> {
    let subjects = st["subject"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [subject] = subjects else {
        bail!(
            "the statement has {} subjects; a model signature has exactly one",
            subjects.len()
        );
    };
    let want = subject["digest"]["sha256"]
        .as_str()
        .ok_or_else(|| anyhow!("the subject has no sha256 digest"))?;
    let p = &st["predicate"];
    let s = &p["serialization"];
    let method = s["method"].as_str().unwrap_or("");
    let shard_size = match method {
        "files" => None,
        // A protobuf Struct holds numbers as doubles: `1000000000.0`.
        "shards" => Some(
            s["shard_size"]
                .as_u64()
                .or_else(|| {
                    s["shard_size"]
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && *f < 2f64.powi(63))
                        .map(|f| f as u64)
                })
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    anyhow!("shard serialization without a positive whole shard_size")
                })?,
        ),
        other => bail!("serialization method '{other}' is not supported (files and shards are)"),
    };
    let hash = match s["hash_type"].as_str().unwrap_or("") {
        "sha256" => Algorithm::Sha256,
        "blake3" => Algorithm::Blake3,
        other => bail!("hash type '{other}' is not supported (sha256 and blake3 are); re-sign the model with one of them"),
    };
    let allow_symlinks = match &s["allow_symlinks"] {
        Value::Bool(b) => *b,
        Value::Null => false,
        _ => bail!("serialization.allow_symlinks is not a boolean"),
    };
    let mut ignore = Vec::new();
    for i in s["ignore_paths"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let i = i
            .as_str()
            .ok_or_else(|| anyhow!("an ignore_paths entry is not a string"))?;
        ignore.push(
            relative(i).ok_or_else(|| {
                anyhow!("ignore_paths entry '{i}' is not a path inside the model")
            })?,
        );
    }
    // What the signer names each digest: `sha256`, or `sha256-sharded-N`.
    let algorithm = match shard_size {
        None => hash.name().to_string(),
        Some(n) => format!("{}-sharded-{n}", hash.name()),
    };
    let mut root = Sha256::new();
    let mut resources = BTreeMap::new();
    for r in p["resources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = r["name"]
            .as_str()
            .ok_or_else(|| anyhow!("a resource has no name"))?;
        let digest = r["digest"].as_str().unwrap_or("");
        let raw = unhex(digest).ok_or_else(|| anyhow!("resource {name}: digest is not hex"))?;
        if r["algorithm"].as_str() != Some(algorithm.as_str()) || raw.len() * 2 != hash.hex_len() {
            bail!(
                "resource {name}: a {} digest where the serialization makes {algorithm}",
                r["algorithm"].as_str().unwrap_or("unnamed"),
            );
        }
        root.update(&raw);
        if resources
            .insert(name.to_string(), digest.to_ascii_lowercase())
            .is_some()
        {
            bail!("resource {name} is listed twice");
        }
    }
    let got = hex(&root.finalize());
    if !got.eq_ignore_ascii_case(want) {
        bail!("the statement is inconsistent: its subject digest is {want}, its resources hash to {got}");
    }
    Ok(Statement {
        serialization: Serialization {
            shard_size,
            hash,
            allow_symlinks,
            ignore,
        },
        resources,
        digest: Some(got),
    })
}

/// The pre-1.0 form: one subject per file, SHA-256, no serialization.
fn read_v02(st: &Value) -> Result<Statement> {
    let mut resources = BTreeMap::new();
    for s in st["subject"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = s["name"]
            .as_str()
            .ok_or_else(|| anyhow!("a subject has no name"))?;
        let digest = s["digest"]["sha256"]
            .as_str()
            .filter(|d| unhex(d).is_some_and(|r| r.len() == 32))
            .ok_or_else(|| anyhow!("subject {name} has no sha256 digest"))?;
        resources.insert(name.to_string(), digest.to_ascii_lowercase());
    }
    Ok(Statement {
        serialization: Serialization {
            shard_size: None,
            hash: Algorithm::Sha256,
            allow_symlinks: false,
            ignore: Vec::new(),
        },
        resources,
        digest: None,
    })
}

/// Hashes the tree as the signer serialized it and compares.
fn compare(root: &Path, contents: &Contents, signed: &Statement) -> Result<()> {
    let s = &signed.serialization;
    let mut actual = BTreeMap::new();
    for (path, target) in &contents.links {
        if s.ignored(path) {
            continue;
        }
        if !s.allow_symlinks {
            bail!("{path} is a symlink (to {target}) and the signature does not allow symlinks");
        }
        let resolved = fs::canonicalize(root.join(path))
            .with_context(|| format!("symlink {path} points nowhere"))?;
        let inside = fs::canonicalize(root)?;
        if !resolved.starts_with(&inside) || !resolved.is_file() {
            bail!("symlink {path} does not point to a file inside the model");
        }
        let file = fs::File::open(&resolved).with_context(|| format!("cannot read {path}"))?;
        hash_into(&mut actual, &file, path, s, false)?;
    }
    let files: Vec<_> = contents
        .files
        .iter()
        .filter(|f| !s.ignored(&f.path))
        .collect();
    // Files the unpack did not already hash are hashed side by side.
    for hashed in crate::cpus::map(&files, |f| {
        let mut one = BTreeMap::new();
        match (s.shard_size, f.digest.algorithm() == s.hash) {
            // Already hashed as the signer did while it was written.
            (None, true) => {
                one.insert(f.path.clone(), f.digest.hex().to_string());
            }
            _ => {
                let file = fs::File::open(root.join(&f.path))
                    .with_context(|| format!("cannot read {}", f.path))?;
                hash_into(&mut one, &file, &f.path, s, false)?
            }
        }
        Ok::<_, anyhow::Error>(one)
    }) {
        actual.extend(hashed?);
    }
    let mut problems = Vec::new();
    for (name, digest) in &actual {
        match signed.resources.get(name) {
            None => problems.push(format!("{} is not signed", shown(name))),
            Some(want) if want != digest => problems.push(format!("{} has changed", shown(name))),
            Some(_) => {}
        }
    }
    for name in signed.resources.keys() {
        if !actual.contains_key(name) && !s.ignored(file_of(name, s)) {
            problems.push(format!("{} is signed but missing", shown(name)));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(5);
    bail!(
        "the model does not match its signature: {}{}",
        problems.join("; "),
        if n > 5 {
            format!("; and {} more", n - 5)
        } else {
            String::new()
        }
    )
}

/// A resource name's file: `path:start:end` for shards.
fn file_of<'a>(name: &'a str, s: &Serialization) -> &'a str {
    match s.shard_size {
        None => name,
        Some(_) => name.rsplitn(3, ':').nth(2).unwrap_or(name),
    }
}

fn shown(name: &str) -> String {
    crate::text::escape_controls(name)
}

/// The file's digest (files) or each of its shards' (shards: `path:start:end`,
/// end exclusive; an empty file has none), as the signer computes them.
/// Positional reads: others may be reading the same descriptor. With
/// `pace`, each chunk holds a CPU slot ([`crate::cpus::Slot`]).
fn hash_into(
    out: &mut BTreeMap<String, String>,
    file: &fs::File,
    name: &str,
    s: &Serialization,
    pace: bool,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?
        .len();
    let shard = s.shard_size.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 1 << 20];
    let mut start = 0u64;
    loop {
        let end = size.min(start.saturating_add(shard));
        let mut h = Hasher::new(s.hash);
        let mut at = start;
        while at < end {
            let want = (end - at).min(buf.len() as u64) as usize;
            let _cpu = pace.then(crate::cpus::Slot::take);
            let n = file
                .read_at(&mut buf[..want], at)
                .with_context(|| format!("cannot read {name}"))?;
            if n == 0 {
                bail!("{name} shrank while it was hashed");
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        let hex = h.finish().hex().to_string();
        match s.shard_size {
            None => {
                out.insert(name.to_string(), hex);
                return Ok(());
            }
            // An empty file has no shard.
            Some(_) if start < end => {
                out.insert(format!("{name}:{start}:{end}"), hex);
            }
            Some(_) => {}
        }
        if end >= size {
            return Ok(());
        }
        start = end;
    }
}

/// Hex that is not empty: an empty digest is no digest here.
fn unhex(s: &str) -> Option<Vec<u8>> {
    crate::digest::unhex(s).filter(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::unpack::FileRecord;

    /// A v1.0 statement over `resources` (name, algorithm, hex), with the
    /// subject digest computed as the format says, or `subject` if given.
    pub(super) fn statement(
        serialization: Value,
        resources: &[(&str, &str, &str)],
        subject: Option<&str>,
    ) -> Vec<u8> {
        let mut r = Sha256::new();
        for (_, _, d) in resources {
            r.update(unhex(d).unwrap());
        }
        let computed = hex(&r.finalize());
        serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "m", "digest": {"sha256": subject.unwrap_or(&computed)}}],
            "predicateType": PREDICATE_V1,
            "predicate": {
                "serialization": serialization,
                "resources": resources.iter().map(|(n, a, d)| serde_json::json!({"name": n, "algorithm": a, "digest": d})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn files() -> Value {
        serde_json::json!({"method": "files", "hash_type": "sha256", "allow_symlinks": false, "ignore_paths": [".git", "model.sig"]})
    }

    #[test]
    fn a_file_is_vouched_for_alone_only_by_its_own_listed_digest() {
        let signed = |serialization, algorithm| SignedFiles {
            signer: "key".into(),
            statement: read_statement(&statement(
                serialization,
                &[("w/a", algorithm, &sha(b"a"))],
                None,
            ))
            .unwrap(),
        };
        let sha256 = |bytes| Digest::of(Algorithm::Sha256, bytes);
        let files = signed(files(), "sha256");
        assert_eq!(files.vouches("w/a", &sha256(b"a")), Some(true));
        assert_eq!(files.vouches("w/a", &sha256(b"b")), Some(false));
        assert_eq!(
            files.vouches("w/b", &sha256(b"a")),
            Some(false),
            "not listed"
        );
        // Another hash, an ignored path or shards: the tree check decides.
        let blake3 = Digest::of(Algorithm::Blake3, b"a");
        assert_eq!(files.vouches("w/a", &blake3), None);
        assert_eq!(files.vouches(".git/x", &sha256(b"a")), None);
        let shards =
            serde_json::json!({"method": "shards", "hash_type": "sha256", "shard_size": 10});
        let shards = signed(shards, "sha256-sharded-10");
        assert_eq!(shards.vouches("w/a", &sha256(b"a")), None);
    }

    #[test]
    fn a_file_is_hashed_again_as_shards_or_blake3_were_signed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..25u8).collect();
        std::fs::write(dir.path().join("a"), &bytes).unwrap();
        let mut changed = bytes.clone();
        changed[12] ^= 1;
        std::fs::write(dir.path().join("b"), &changed).unwrap();
        std::fs::write(dir.path().join("c"), &bytes[..20]).unwrap();
        let open = |name: &str| std::fs::File::open(dir.path().join(name)).unwrap();
        let signed = |serialization, resources: &[(&str, &str, &str)]| SignedFiles {
            signer: "key".into(),
            statement: read_statement(&statement(serialization, resources, None)).unwrap(),
        };
        let shard = |r: std::ops::Range<usize>| sha(&bytes[r]);
        let (s0, s1, s2) = (shard(0..10), shard(10..20), shard(20..25));
        let shards = signed(
            serde_json::json!({"method": "shards", "hash_type": "sha256", "shard_size": 10, "ignore_paths": ["skip"]}),
            &[
                ("a:0:10", "sha256-sharded-10", &s0),
                ("a:10:20", "sha256-sharded-10", &s1),
                ("a:20:25", "sha256-sharded-10", &s2),
                // Another file whose name begins with `a:`, and `c` signed
                // with one shard more than it has.
                ("a:0:10:0:3", "sha256-sharded-10", &s0),
                ("c:0:10", "sha256-sharded-10", &s0),
                ("c:10:20", "sha256-sharded-10", &s1),
                ("c:20:25", "sha256-sharded-10", &s2),
            ],
        );
        let judge = |signed: &SignedFiles, path: &str, file: &str| {
            let f = open(file);
            let size = f.metadata().unwrap().len();
            signed.vouches_for_bytes(path, &f, size).unwrap()
        };
        assert_eq!(judge(&shards, "a", "a"), Some(true));
        assert_eq!(judge(&shards, "a", "b"), Some(false), "a changed shard");
        assert_eq!(judge(&shards, "c", "c"), Some(false), "a missing shard");
        assert_eq!(judge(&shards, "d", "a"), Some(false), "not signed");
        assert_eq!(judge(&shards, "skip", "b"), None, "ignored");
        // Not the size that verified (what would be served): not judged.
        let e = shards.vouches_for_bytes("a", &open("a"), 24).unwrap_err();
        assert!(format!("{e}").contains("holds 25 bytes, not the 24"), "{e}");

        let blake3 = Digest::of(Algorithm::Blake3, &bytes);
        let files = signed(
            serde_json::json!({"method": "files", "hash_type": "blake3", "allow_symlinks": false}),
            &[("a", "blake3", blake3.hex())],
        );
        assert_eq!(judge(&files, "a", "a"), Some(true));
        assert_eq!(judge(&files, "a", "b"), Some(false));
        assert_eq!(judge(&files, "b", "a"), Some(false), "not signed");
    }

    #[test]
    fn statements_are_read_as_the_format_says() {
        let d = sha(b"x");
        let s = read_statement(&statement(files(), &[("a", "sha256", &d)], None)).unwrap();
        assert_eq!(s.resources["a"], d);
        assert!(s.serialization.ignored(".git/config"));
        assert!(s.serialization.ignored("model.sig"));
        assert!(!s.serialization.ignored(".github"));
        assert!(!s.serialization.ignored("model.sig2"));

        let err = |bytes: Vec<u8>| format!("{:#}", read_statement(&bytes).err().unwrap());
        let other = "0".repeat(64);
        assert!(
            err(statement(files(), &[("a", "sha256", &d)], Some(&other)))
                .contains("its resources hash to")
        );
        let blake2 =
            serde_json::json!({"method": "files", "hash_type": "blake2", "allow_symlinks": false});
        assert!(err(statement(blake2, &[], None)).contains("hash type 'blake2' is not supported"));
        assert!(
            err(statement(files(), &[("a", "sha256-sharded-10", &d)], None))
                .contains("a sha256-sharded-10 digest")
        );
        assert!(err(statement(
            files(),
            &[("a", "sha256", &d), ("a", "sha256", &d)],
            None
        ))
        .contains("listed twice"));
        let escape =
            serde_json::json!({"method": "files", "hash_type": "sha256", "ignore_paths": ["../x"]});
        assert!(err(statement(escape, &[], None)).contains("not a path inside the model"));
        let shards =
            serde_json::json!({"method": "shards", "hash_type": "sha256", "shard_size": 2.5});
        assert!(err(statement(shards, &[], None)).contains("positive whole shard_size"));
        let cosign = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}"#;
        assert!(err(cosign.to_vec()).contains("not a model signature"));
    }

    /// The pre-1.0 form: one subject per file; compared like files/sha256,
    /// with no model digest to record.
    #[test]
    fn legacy_statements_list_one_subject_per_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("w.bin"), b"w").unwrap();
        let contents = Contents {
            files: vec![FileRecord {
                path: "w.bin".into(),
                size: 1,
                digest: Digest::of(Algorithm::Blake3, b"w"),
            }],
            links: Default::default(),
        };
        let legacy = |digest: &str| {
            serde_json::to_vec(&serde_json::json!({
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [{"name": "w.bin", "digest": {"sha256": digest}}],
                "predicateType": PREDICATE_V02,
                "predicate": {"unused": 0}
            }))
            .unwrap()
        };
        let st = read_statement(&legacy(&sha(b"w"))).unwrap();
        assert!(st.digest.is_none());
        compare(dir.path(), &contents, &st).unwrap();
        let st = read_statement(&legacy(&sha(b"v"))).unwrap();
        let err = format!("{:#}", compare(dir.path(), &contents, &st).unwrap_err());
        assert!(err.contains("w.bin has changed"), "{err}");
    }

    #[test]
    fn paths_must_stay_inside_the_model() {
        assert_eq!(
            relative("./sigs//model.sig").as_deref(),
            Some("sigs/model.sig")
        );
        for bad in ["/etc/model.sig", "../model.sig", "a/../../b", "", "."] {
            assert_eq!(relative(bad), None, "{bad}");
        }
    }

    /// A staged tree with a symlink: refused unless the signature allows
    /// symlinks, then hashed through to its target (inside the model only).
    #[test]
    fn symlinks_follow_the_signature_s_allow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("weights.bin"), b"w").unwrap();
        std::os::unix::fs::symlink("weights.bin", dir.path().join("alias.bin")).unwrap();
        let contents = Contents {
            files: vec![FileRecord {
                path: "weights.bin".into(),
                size: 1,
                digest: Digest::of(Algorithm::Blake3, b"w"),
            }],
            links: [("alias.bin".to_string(), "weights.bin".to_string())].into(),
        };
        let d = sha(b"w");
        let resources = [
            ("alias.bin", "sha256", d.as_str()),
            ("weights.bin", "sha256", d.as_str()),
        ];
        let mut serialization = files();
        let check = |ser: &Value| {
            let st = read_statement(&statement(ser.clone(), &resources, None)).unwrap();
            compare(dir.path(), &contents, &st).map_err(|e| format!("{e:#}"))
        };
        assert!(check(&serialization)
            .unwrap_err()
            .contains("alias.bin is a symlink (to weights.bin)"));
        serialization["allow_symlinks"] = true.into();
        check(&serialization).unwrap();
        fs::remove_file(dir.path().join("alias.bin")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("alias.bin")).unwrap();
        assert!(check(&serialization)
            .unwrap_err()
            .contains("does not point to a file inside the model"));
    }
}
