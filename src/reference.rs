//! Model references: what the user (or KServe) names as a model source.
//!
//! Accepted forms:
//! - `ocimodel://REF`, `oci://REF` and plain `REF`, where REF is
//!   `[registry[:port]/]repo[:tag][@sha256:...]` with Docker Hub normalisation;
//! - `oci-layout://PATH[:TAG|@DIGEST]`, an OCI image layout directory;
//! - `oci-archive://FILE[:TAG|@DIGEST]`, the same layout in a tar file;
//! - `docker-archive://FILE[:REPO:TAG]`, a `docker save` / `podman save`
//!   archive (split at the first `:`, as skopeo does).

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

// Docker Hub's names live in config.rs, with the other defaults: the
// credential store (auth.rs, below this file) keys Docker Hub by them too.
pub use crate::config::{DOCKER_HUB, DOCKER_HUB_API};

/// A Kubeflow Model Registry URI's scheme: the parser only recognises it;
/// resolving it is [`crate::model_registry`]'s (it sits above this file).
pub const MODEL_REGISTRY_SCHEME: &str = "model-registry://";

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Registry(ImageRef),
    Layout {
        dir: PathBuf,
        selector: Selector,
    },
    OciArchive {
        file: PathBuf,
        selector: Selector,
    },
    DockerArchive {
        file: PathBuf,
        image: Option<String>,
    },
    /// `model-registry://…`, as written: resolved to an OCI reference
    /// through the Kubeflow Model Registry when pulled
    /// ([`crate::model_registry`]).
    ModelRegistry(String),
}

/// Which manifest of a local layout to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The only manifest in `index.json`.
    Only,
    Tag(String),
    Digest(Digest),
}

/// A reference to a manifest in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty model reference")]
    Empty,
    #[error("unsupported scheme '{0}://' (use ocimodel://, oci://, oci-layout://, oci-archive://, docker-archive:// or a plain registry/repo:tag reference)")]
    Scheme(String),
    #[error("invalid repository name '{0}' (lowercase letters, digits and . _ - separators, / between components)")]
    Repository(String),
    #[error("invalid tag '{0}' (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)")]
    Tag(String),
    #[error("invalid registry host '{0}' (a DNS name or IP address, with an optional :port)")]
    Registry(String),
    /// A local path where a reference was expected: `./examples/mnist`.
    #[error("'{input}' is a local path, not a registry reference; did you mean {suggestion}?")]
    LocalPath { input: String, suggestion: String },
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
}

impl Target {
    pub fn parse(input: &str) -> Result<Target, ReferenceError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.starts_with(MODEL_REGISTRY_SCHEME) {
            return Ok(Target::ModelRegistry(input.to_string()));
        }
        if let Some(rest) = input.strip_prefix("oci-layout://") {
            let (dir, selector) = parse_layout(rest)?;
            return Ok(Target::Layout { dir, selector });
        }
        if let Some(rest) = input.strip_prefix("oci-archive://") {
            let (file, selector) = parse_layout(rest)?;
            return Ok(Target::OciArchive { file, selector });
        }
        if let Some(rest) = input.strip_prefix("docker-archive://") {
            let (file, image) = match rest.split_once(':') {
                Some((f, i)) => (f, Some(i.to_string())),
                None => (rest, None),
            };
            return Ok(Target::DockerArchive {
                file: PathBuf::from(non_empty(file)?),
                image,
            });
        }
        let rest = if let Some((scheme, rest)) = input.split_once("://") {
            match scheme {
                // `ocimodel+NAME://` routes to another ClusterStorageContainer
                // (e.g. one with a signature policy); it reads the same way.
                "ocimodel" | "oci" => rest,
                s if s.starts_with("ocimodel+") && s.len() > "ocimodel+".len() => rest,
                other => return Err(ReferenceError::Scheme(other.to_string())),
            }
        } else {
            if let Some(e) = local_path(input) {
                return Err(e);
            }
            input
        };
        Ok(Target::Registry(ImageRef::parse(rest)?))
    }

    /// True when the reference pins a digest, so nothing needs resolving.
    pub fn pinned_digest(&self) -> Option<&Digest> {
        match self {
            Target::Registry(r) => r.digest.as_ref(),
            Target::Layout {
                selector: Selector::Digest(d),
                ..
            }
            | Target::OciArchive {
                selector: Selector::Digest(d),
                ..
            } => Some(d),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Registry(r) => write!(f, "{r}"),
            Target::Layout { dir, selector } => {
                write!(f, "oci-layout://{}{selector}", dir.display())
            }
            Target::OciArchive { file, selector } => {
                write!(f, "oci-archive://{}{selector}", file.display())
            }
            Target::ModelRegistry(uri) => f.write_str(uri),
            Target::DockerArchive { file, image } => {
                write!(f, "docker-archive://{}", file.display())?;
                match image {
                    Some(i) => write!(f, ":{i}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Only => Ok(()),
            Selector::Tag(t) => write!(f, ":{t}"),
            Selector::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// A plain reference that names a local path (`./dir`, `/dir`, `~/dir`,
/// an existing directory or file) or uses skopeo's `oci:DIR` form: the
/// scheme that reads it, as a suggestion. No registry is ever asked.
fn local_path(input: &str) -> Option<ReferenceError> {
    let suggest = |suggestion: String| {
        Some(ReferenceError::LocalPath {
            input: input.to_string(),
            suggestion,
        })
    };
    for (skopeo, ours) in [
        ("oci:", "oci-layout://"),
        ("oci-archive:", "oci-archive://"),
        ("docker-archive:", "docker-archive://"),
    ] {
        if let Some(rest) = input.strip_prefix(skopeo) {
            if !rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit()) {
                return suggest(format!("{ours}{rest}"));
            }
        }
    }
    let path_syntax = input.starts_with('/')
        || input.starts_with("./")
        || input.starts_with("../")
        || input.starts_with('~')
        || input == "."
        || input == "..";
    let path = std::path::Path::new(input);
    if path.is_file() {
        return suggest(format!(
            "oci-archive://{input} (or docker-archive://{input} for a docker save archive)"
        ));
    }
    if path_syntax || path.is_dir() {
        return suggest(format!("oci-layout://{input}"));
    }
    None
}

/// `PATH[:TAG|@DIGEST]` of a layout or OCI archive.
fn parse_layout(rest: &str) -> Result<(PathBuf, Selector), ReferenceError> {
    if let Some((path, digest)) = rest.rsplit_once('@') {
        return Ok((
            PathBuf::from(non_empty(path)?),
            Selector::Digest(digest.parse()?),
        ));
    }
    // A tag follows the last ':' only when no '/' comes after it.
    if let Some((path, tag)) = rest.rsplit_once(':') {
        if !tag.contains('/') && !path.is_empty() {
            validate_tag(tag)?;
            return Ok((PathBuf::from(path), Selector::Tag(tag.to_string())));
        }
    }
    Ok((PathBuf::from(non_empty(rest)?), Selector::Only))
}

fn non_empty(s: &str) -> Result<&str, ReferenceError> {
    if s.is_empty() {
        Err(ReferenceError::Empty)
    } else {
        Ok(s)
    }
}

impl ImageRef {
    /// Parses `[registry[:port]/]repo[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_registry(&registry)?;
        validate_repository(&repository)?;
        if let Some(t) = &tag {
            validate_tag(t)?;
        }
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to put after `/manifests/`: the digest when known, else the tag
    /// (`latest` when neither was given, as every container tool does).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The host the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `host[:port]`: DNS labels (letters, digits, inner '-') or an IPv4
/// address, or `[IPv6]`; a port of digits.
fn validate_registry(r: &str) -> Result<(), ReferenceError> {
    let port_ok = |p: Option<&str>| {
        p.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let ok = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => {
                ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && (tail.is_empty() || (tail.starts_with(':') && port_ok(Some(&tail[1..]))))
            }
            None => false,
        }
    } else {
        let (host, port) = match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        };
        host.len() <= 253 && host.split('.').all(label_ok) && port_ok(port)
    };
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Registry(r.to_string()))
    }
}

/// distribution-spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
fn validate_repository(repo: &str) -> Result<(), ReferenceError> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if is_alnum(b) {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__' or one or more '-'.
            let start = i;
            while i < bytes.len() && !is_alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let valid = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
            if !valid {
                return false;
            }
        }
        true
    };
    if repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ReferenceError::Repository(repo.to_string()))
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn validate_tag(t: &str) -> Result<(), ReferenceError> {
    let bytes = t.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag(t.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2536d32a8d81c95b8261926e57e34e00b32a7ea22eef96c653ce29be1e64f7e1";

    fn reg(s: &str) -> ImageRef {
        match Target::parse(s).unwrap() {
            Target::Registry(r) => r,
            other => panic!("not a registry ref: {other:?}"),
        }
    }

    #[test]
    fn docker_hub_normalisation() {
        let r = reg("ubuntu");
        assert_eq!(r.to_string(), "docker.io/library/ubuntu");
        assert_eq!(r.manifest_reference(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            reg("kserve/model:v1").to_string(),
            "docker.io/kserve/model:v1"
        );
        assert_eq!(
            reg("index.docker.io/library/x").to_string(),
            "docker.io/library/x"
        );
    }

    #[test]
    fn schemes_host_port_tag_digest() {
        for prefix in ["", "oci://", "ocimodel://", "ocimodel+signed://"] {
            let r = reg(&format!("{prefix}127.0.0.1:5000/models/mnist:v1@{D}"));
            assert_eq!(r.registry, "127.0.0.1:5000");
            assert_eq!(r.repository, "models/mnist");
            assert_eq!(r.tag.as_deref(), Some("v1"));
            assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
            assert_eq!(r.manifest_reference(), D);
        }
        let r = reg("localhost/m");
        assert_eq!(r.registry, "localhost");
        let r = reg("quay.io/a/b/c");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag, None);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Target::parse("s3://bucket/x"),
            Err(ReferenceError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("quay.io/UPPER/x"),
            Err(ReferenceError::Repository(_))
        ));
        assert!(matches!(
            Target::parse("quay.io/a/x:-bad"),
            Err(ReferenceError::Tag(_))
        ));
        assert!(matches!(
            Target::parse("quay.io/a/x@sha256:zz"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(Target::parse(""), Err(ReferenceError::Empty)));
        assert!(matches!(
            Target::parse("quay.io/a..b"),
            Err(ReferenceError::Repository(_))
        ));
        for bad in [
            "my_registry.io/a",
            "-x.io/a",
            "a..io/a",
            "reg.io:/a",
            "reg.io:80x/a",
            "[::1/a",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ReferenceError::Registry(_))),
                "{bad}"
            );
        }
        for good in [
            "[::1]:5000/a",
            "127.0.0.1:5000/a",
            "reg-1.example.com:443/a",
            "localhost:5000/a",
        ] {
            Target::parse(good).unwrap();
        }
    }

    #[test]
    fn local_paths_suggest_the_scheme_that_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.tar");
        std::fs::write(&file, b"").unwrap();
        let d = dir.path().display().to_string();
        let f = file.display().to_string();
        for (input, suggestion) in [
            (
                "./examples/mnist",
                "oci-layout://./examples/mnist".to_string(),
            ),
            ("../m", "oci-layout://../m".into()),
            ("/mnt/models", "oci-layout:///mnt/models".into()),
            ("~/models", "oci-layout://~/models".into()),
            ("oci:examples/mnist", "oci-layout://examples/mnist".into()),
            (d.as_str(), format!("oci-layout://{d}")),
            (f.as_str(), format!("oci-archive://{f}")),
        ] {
            match Target::parse(input) {
                Err(ReferenceError::LocalPath { suggestion: s, .. }) => {
                    assert!(s.starts_with(&suggestion), "{input}: {s}")
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        // A registry on a port still reads as one.
        assert!(Target::parse("oci:5000/m").is_ok());
    }

    #[test]
    fn layout_forms() {
        assert_eq!(
            Target::parse("oci-layout://examples/mnist").unwrap(),
            Target::Layout {
                dir: "examples/mnist".into(),
                selector: Selector::Only
            }
        );
        assert_eq!(
            Target::parse("oci-layout:///tmp/x:v1").unwrap(),
            Target::Layout {
                dir: "/tmp/x".into(),
                selector: Selector::Tag("v1".into())
            }
        );
        let t = Target::parse(&format!("oci-layout://./a:b/c@{D}")).unwrap();
        assert_eq!(t.pinned_digest().unwrap().to_string(), D);
        assert_eq!(t.to_string(), format!("oci-layout://./a:b/c@{D}"));
    }

    #[test]
    fn archive_forms() {
        assert_eq!(
            Target::parse("oci-archive:///tmp/m.tar:v1").unwrap(),
            Target::OciArchive {
                file: "/tmp/m.tar".into(),
                selector: Selector::Tag("v1".into())
            }
        );
        assert_eq!(
            Target::parse("docker-archive:///tmp/m.tar:models/car:v1").unwrap(),
            Target::DockerArchive {
                file: "/tmp/m.tar".into(),
                image: Some("models/car:v1".into())
            }
        );
        assert_eq!(
            Target::parse("docker-archive://m.tar").unwrap().to_string(),
            "docker-archive://m.tar"
        );
    }
}
