//! The completion marker `DEST/.ocimodel.json`: what it records, reading
//! it back (refusing one that is too big, or not ours), and checking an
//! installed tree against it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{is_plain_name, MARKER, MARKER_CAP, MARKER_VERSION};
use crate::digest::Digest;
use crate::unpack::Contents;

/// The completion marker, `DEST/.ocimodel.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub version: u32,
    /// The URI as given.
    pub source: String,
    /// The source pinned to the digest.
    pub reference: String,
    /// The digest the reference resolved to (an index's, if it was one).
    pub digest: Digest,
    /// The platform manifest chosen from an index, when different.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    pub format: String,
    /// The subtree taken from a container image, e.g. `/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// The settings that shaped the tree (subpath, file filter, ...); a rerun
    /// with other settings installs again.
    #[serde(default)]
    pub selection: String,
    pub installed_at: String,
    /// The signatures that verified before install (empty when unchecked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<crate::verify::Signature>,
    /// KitOps parent kits whose model layers were installed first, eldest
    /// first, pinned by digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// The model signature (OMS) that verified over the files, if checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_signature: Option<crate::verify::model::ModelSignature>,
    /// Installed as this repository of a Hugging Face hub cache: the files
    /// are under `models--ORG--NAME/snapshots/REVISION/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_repo: Option<String>,
    /// Top-level names in DEST that this install owns.
    pub entries: Vec<String>,
    /// How the files took disk space (absent in markers of older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskUse>,
    #[serde(flatten)]
    pub contents: Contents,
}

/// The marker's `disk`: of the installed files' bytes, those cloned from
/// the node cache (sharing its blocks: no new disk) and those written.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskUse {
    pub cloned_bytes: u64,
    pub written_bytes: u64,
}

impl DiskUse {
    /// `cloned` bytes of `contents` were cloned; the rest were written.
    pub fn of(contents: &Contents, cloned: u64) -> DiskUse {
        let total: u64 = contents.files.iter().map(|f| f.size).sum();
        DiskUse {
            cloned_bytes: cloned,
            written_bytes: total.saturating_sub(cloned),
        }
    }
}

/// Now, as markers record it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Marker {
    /// The model's own tree: where its files are under `dest` and their
    /// records relative to that (DEST itself, or the snapshot of a Hugging
    /// Face cache install, without the cache's `refs/`).
    pub fn model_tree(&self, dest: &Path) -> (PathBuf, Contents) {
        let Some(snapshot) = self
            .hf_repo
            .as_deref()
            .and_then(|r| crate::hf_cache::HfRepo::parse(r).ok())
            .map(|r| r.snapshot(&self.digest))
        else {
            return (dest.to_path_buf(), self.contents.clone());
        };
        let prefix = format!("{snapshot}/");
        let inside = |p: &str| p.strip_prefix(&prefix).map(str::to_string);
        let contents = Contents {
            files: (self.contents.files.iter())
                .filter_map(|f| {
                    Some(crate::unpack::FileRecord {
                        path: inside(&f.path)?,
                        ..f.clone()
                    })
                })
                .collect(),
            links: (self.contents.links.iter())
                .filter_map(|(l, t)| Some((inside(l)?, t.clone())))
                .collect(),
        };
        (dest.join(snapshot), contents)
    }

    /// Every path a marker names must stay inside DEST: it is read back from
    /// a directory others can write.
    pub fn check_paths(&self) -> Result<()> {
        let inside = |p: &str| {
            !p.is_empty()
                && !p.starts_with('/')
                && crate::unpack::clean_path(Path::new(p)).is_ok_and(|c| c.join("/") == p)
        };
        for p in self
            .contents
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(self.contents.links.keys().map(String::as_str))
        {
            if !inside(p) {
                bail!("the marker names a path outside the model: {p:?}");
            }
        }
        if let Some(e) = self.entries.iter().find(|e| !is_plain_name(e)) {
            bail!("the marker names an entry that is not a plain name: {e:?}");
        }
        Ok(())
    }
}

/// Checks, without locking or writing, that `dest` holds a complete install
/// (of `digest` and `selection` when given): the marker is there and every
/// file it records exists with its size. The error says what is wrong.
pub fn installed(dest: &Path, digest: Option<&Digest>, selection: Option<&str>) -> Result<Marker> {
    let m = read_marker(dest)?;
    if m.version != MARKER_VERSION {
        bail!("marker version {} is not {MARKER_VERSION}", m.version);
    }
    if let Some(d) = digest {
        if &m.digest != d {
            bail!("{} holds {}, not {d}", dest.display(), m.digest);
        }
    }
    if let Some(s) = selection {
        if m.selection != s {
            bail!(
                "{} was installed with other settings ({})",
                dest.display(),
                m.selection
            );
        }
    }
    for f in &m.contents.files {
        match fs::symlink_metadata(dest.join(&f.path)) {
            Ok(md) if md.is_file() && md.len() == f.size => {}
            Ok(_) => bail!("{} changed (size or type)", f.path),
            Err(_) => bail!("{} is missing", f.path),
        }
    }
    Ok(m)
}

/// The marker of `dest`, or what is wrong with it: read with a cap, from a
/// regular file only, and only when every path in it stays inside DEST.
fn read_marker(dest: &Path) -> Result<Marker> {
    let path = dest.join(MARKER);
    let bytes = match crate::dirfd::read_small_file(&path, MARKER_CAP, false) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{} has no completion marker", dest.display())
        }
        Err(e) => bail!("{} cannot be read: {e}", path.display()),
    };
    let m: Marker = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid marker", path.display()))?;
    m.check_paths()
        .with_context(|| path.display().to_string())?;
    Ok(m)
}

/// Re-hashes every file the marker records and checks every symlink; lists
/// each difference (missing, changed, or extra files under the model's
/// entries). Empty means the tree is exactly what was installed.
pub fn check_tree(dest: &Path) -> Result<(Marker, Vec<String>)> {
    // Not `installed`: its size checks stop at the first problem, and this
    // reports every one.
    let m = read_marker(dest)?;
    // Files are hashed side by side: a sharded model rechecks at the rate
    // of the node's cores, not of one.
    let mut problems: Vec<String> = crate::cpus::map(&m.contents.files, |f| {
        let path = dest.join(&f.path);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => match crate::digest::hash_file(&path, f.digest.algorithm()) {
                Ok((size, d)) if size == f.size && d == f.digest => None,
                Ok((size, d)) => Some(format!(
                    "{}: expected {} bytes {}, found {size} bytes {d}",
                    f.path, f.size, f.digest
                )),
                Err(e) => Some(format!("{}: cannot read: {e}", f.path)),
            },
            Ok(_) => Some(format!("{}: not a regular file any more", f.path)),
            Err(_) => Some(format!("{}: missing", f.path)),
        }
    })
    .into_iter()
    .flatten()
    .collect();
    let mut expected: BTreeSet<String> = m.contents.files.iter().map(|f| f.path.clone()).collect();
    for (link, target) in &m.contents.links {
        expected.insert(link.clone());
        match fs::read_link(dest.join(link)) {
            Ok(t) if t.to_string_lossy() == target.as_str() => {}
            Ok(t) => problems.push(format!(
                "{link}: symlink now points to {}, not {target}",
                t.display()
            )),
            Err(_) => problems.push(format!("{link}: symlink missing")),
        }
    }
    // Anything else under the model's own entries was not installed.
    let mut stack: Vec<String> = m.entries.clone();
    while let Some(rel) = stack.pop() {
        let path = dest.join(&rel);
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(&path) {
                for e in rd.flatten() {
                    stack.push(format!("{rel}/{}", e.file_name().to_string_lossy()));
                }
            }
        } else if !expected.contains(&rel) {
            problems.push(format!("{rel}: not part of the installed model"));
        }
    }
    problems.sort();
    Ok((m, problems))
}
