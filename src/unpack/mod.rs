//! Writing model files into a staging directory, safely.
//!
//! Rules, whatever the layer says:
//! - names are cleaned; absolute names and `..` are refused, never "fixed";
//! - nothing is ever written through a symlink: every parent directory is
//!   checked, and files are opened with `O_NOFOLLOW | O_EXCL` after the old
//!   entry is removed;
//! - symlinks and hard links must resolve inside the tree (checked again on
//!   the finished tree, following chains, so ordering tricks do not help);
//! - devices, fifos and sockets are skipped; setuid/setgid/sticky dropped;
//! - modes are normalised so any UID in group 0 can read (OpenShift):
//!   directories `u=rwx,g=u,o=rx`; files `u=rw,g=u,o=r`, plus `x` for all
//!   where the owner had it.
//!
//! Container-image layers are applied as changesets: whiteouts (`.wh.NAME`)
//! and opaque whiteouts (`.wh..wh..opq`) hide lower layers, never entries of
//! their own layer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::Compression;
use crate::select::Filter;

mod links;
mod paths;

use links::{check_link_inside, confine_symlink};
use paths::{check_not_reserved, make_dir};
pub use paths::{
    clean_dir, clean_path, group_zero, join, normalise_mode, prepare_parent, remove_existing,
    shared_mode, write_file, FileDigest, RelPath,
};

/// Names at the top of DEST that belong to ocimodel itself.
pub const RESERVED_NAMES: [&str; 2] = [".ocimodel", ".ocimodel.json"];
/// How the marker records a file it had to hash itself (one taken out of a
/// tar layer). The layer's own SHA-256 is what proves the content; this
/// second pass only lets `check` and rechecks find a changed file later, so
/// it uses the fastest sound hash: BLAKE3 runs several times faster than
/// SHA-256 on one core, and one core is what KServe gives an initializer
/// (bench/RESULTS-one-cpu.md). A file whose digest the manifest already
/// gives (an ORAS layer) is recorded with that digest and not hashed again.
pub const MARKER_ALGORITHM: Algorithm = Algorithm::Blake3;
const WRITE_BUF: usize = 256 * 1024;
const MAX_SYMLINK_HOPS: usize = 40;

/// One regular file of an installed model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
}

/// What a finished tree holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contents {
    pub files: Vec<FileRecord>,
    /// Symlinks: path → target, as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
}

/// Which part of an image becomes the model (`/models` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subtree(RelPath);

enum Mapped {
    /// Inside the subtree, at this relative path (empty: the subtree root).
    Inside(RelPath),
    /// A strict ancestor of the subtree (or the image root).
    Ancestor,
    Outside,
}

impl Subtree {
    pub fn parse(s: &str) -> Result<Subtree> {
        clean_path(Path::new(s.trim_start_matches('/')))
            .map(Subtree)
            .with_context(|| format!("invalid subpath '{s}'"))
    }

    pub fn display(&self) -> String {
        format!("/{}", join(&self.0))
    }

    fn map(&self, image_path: &[String]) -> Mapped {
        if image_path.len() >= self.0.len() && image_path[..self.0.len()] == self.0[..] {
            Mapped::Inside(image_path[self.0.len()..].to_vec())
        } else if self.0.starts_with(image_path) {
            Mapped::Ancestor
        } else {
            Mapped::Outside
        }
    }
}

/// A staging tree being built from layers.
pub struct Tree {
    root: PathBuf,
    records: BTreeMap<String, FileRecord>,
    /// Modes directory entries asked for, applied by `finish`.
    dir_modes: HashMap<String, u32>,
    /// Entries still allowed (`OCIMODEL_MAX_FILES`).
    entries_left: u64,
    /// Paths written by the layer being applied (whiteouts spare them).
    this_layer: BTreeSet<String>,
    /// Whether any entry landed inside the subtree at all.
    pub saw_subtree: bool,
    filter: Filter,
    /// Uncompressed bytes still allowed across all tar layers.
    expansion_left: u64,
    /// Compressed size of the layer being unpacked (bounds its ratio).
    layer_size: u64,
    /// What files taken out of layers are hashed with for the marker.
    file_hash: Algorithm,
}

/// Beyond this much output, a layer may expand at most `MAX_RATIO` times
/// its compressed size (a decompression bomb otherwise).
const RATIO_FLOOR: u64 = 1 << 30;
const MAX_RATIO: u64 = 1000;

/// Counts what a decoder produces and stops a bomb.
struct Expansion<'a, R> {
    inner: R,
    produced: u64,
    compressed: u64,
    left: &'a mut u64,
}

impl<R: Read> Read for Expansion<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        if n as u64 > *self.left {
            return Err(io::Error::other(
                "the layer expands beyond OCIMODEL_MAX_EXPANDED; refusing (a decompression bomb, or raise the limit)",
            ));
        }
        *self.left -= n as u64;
        if self.produced > RATIO_FLOOR && self.produced > self.compressed.saturating_mul(MAX_RATIO)
        {
            return Err(io::Error::other(format!(
                "the layer expands more than {MAX_RATIO}:1 ({} bytes from {}); refusing a decompression bomb",
                self.produced, self.compressed
            )));
        }
        Ok(n)
    }
}

/// How a tar layer maps onto the tree.
pub enum TarMode<'a> {
    /// A container-image changeset: whiteouts apply, only `subtree` is kept.
    Changeset(&'a Subtree),
    /// An artifact layer: entries go `into` a directory and must lie `within`
    /// one when given; nothing is overwritten.
    Artifact {
        into: &'a [String],
        within: Option<&'a [String]>,
    },
}

/// Hashes what passes through, when asked to.
struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl Tree {
    pub fn new(root: PathBuf, filter: Filter) -> Tree {
        Tree {
            root,
            records: BTreeMap::new(),
            dir_modes: HashMap::new(),
            entries_left: u64::MAX,
            this_layer: BTreeSet::new(),
            saw_subtree: false,
            filter,
            expansion_left: u64::MAX,
            layer_size: u64::MAX,
            file_hash: MARKER_ALGORITHM,
        }
    }

    /// Hashes extracted files with `algorithm` instead of BLAKE3 (SHA-256
    /// when a model signature will be checked: what `model_signing` signs
    /// by default, so the check reads no file twice).
    pub fn hash_files_with(&mut self, algorithm: Algorithm) {
        self.file_hash = algorithm;
    }

    /// The compressed size of the next layer, for the expansion-ratio check.
    pub fn set_layer_size(&mut self, size: u64) {
        self.layer_size = size;
    }

    /// Caps the files, links and directories all layers may create together.
    pub fn limit_entries(&mut self, max: u64) {
        self.entries_left = max;
    }

    /// Caps the uncompressed bytes all tar layers may produce together.
    pub fn limit_expansion(&mut self, max: u64) {
        self.expansion_left = max;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn add_record(&mut self, r: FileRecord) {
        self.records.insert(r.path.clone(), r);
    }

    /// The files the last applied layer wrote (for the S3 endpoint, which
    /// serves them once that layer verified).
    pub fn layer_files(&self) -> Vec<FileRecord> {
        self.this_layer
            .iter()
            .filter_map(|k| self.records.get(k).cloned())
            .collect()
    }

    /// Applies one container-image layer (possibly compressed) as a
    /// changeset, keeping `subtree`.
    pub fn apply_tar(
        &mut self,
        reader: &mut dyn Read,
        compression: Compression,
        subtree: &Subtree,
    ) -> Result<()> {
        self.unpack_tar(reader, compression, &TarMode::Changeset(subtree), None)
    }

    /// Extracts one artifact tar layer: entries go `into` a directory (or the
    /// root), must lie `within` a directory when given, may not overwrite
    /// anything, and the uncompressed stream must hash to `content_digest`.
    pub fn extract_tar(
        &mut self,
        reader: &mut dyn Read,
        compression: Compression,
        into: &[String],
        within: Option<&[String]>,
        content_digest: Option<&Digest>,
    ) -> Result<()> {
        self.unpack_tar(
            reader,
            compression,
            &TarMode::Artifact { into, within },
            content_digest,
        )
    }

    fn unpack_tar(
        &mut self,
        reader: &mut dyn Read,
        compression: Compression,
        mode: &TarMode<'_>,
        content_digest: Option<&Digest>,
    ) -> Result<()> {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => {
                Box::new(zstd::Decoder::new(reader).context("cannot start zstd decoder")?)
            }
        };
        let layer_size = self.layer_size;
        let mut left = self.expansion_left;
        let counted = Expansion {
            inner: decoded,
            produced: 0,
            compressed: layer_size,
            left: &mut left,
        };
        let mut hashing = HashingReader {
            inner: counted,
            hasher: content_digest.map(|d| Hasher::new(d.algorithm())),
        };
        let mut archive = tar::Archive::new(&mut hashing);
        self.this_layer.clear();
        for entry in archive.entries().context("cannot read tar layer")? {
            let mut entry = entry.context("corrupt tar layer")?;
            let raw = entry.path().context("invalid entry name")?.into_owned();
            let comps = clean_path(&raw)?;
            self.apply_entry(&mut entry, comps, mode)
                .with_context(|| format!("layer entry '{}'", raw.display()))?;
        }
        // Read to the end so compressed trailers (gzip CRC) are checked and
        // the whole uncompressed stream is hashed.
        io::copy(&mut archive.into_inner(), &mut io::sink()).context("corrupt compressed layer")?;
        let hasher = hashing.hasher.take();
        drop(hashing);
        self.expansion_left = left;
        if let (Some(expected), Some(h)) = (content_digest, hasher) {
            let actual = h.finish();
            if actual != *expected {
                bail!("the unpacked tar does not match its content digest: expected {expected}, got {actual}");
            }
        }
        Ok(())
    }

    /// Where an entry goes, or `None` when it is not part of the model.
    fn place(&mut self, comps: &[String], mode: &TarMode<'_>) -> Result<Option<RelPath>> {
        match mode {
            TarMode::Changeset(subtree) => match subtree.map(comps) {
                Mapped::Inside(rel) => Ok(Some(rel)),
                Mapped::Ancestor | Mapped::Outside => Ok(None),
            },
            TarMode::Artifact { into, within } => {
                if let Some(w) = within {
                    if !comps.starts_with(w) {
                        bail!(
                            "the entry is outside '{}', the directory this layer holds",
                            join(w)
                        );
                    }
                }
                let mut rel = into.to_vec();
                rel.extend_from_slice(comps);
                Ok(Some(rel))
            }
        }
    }

    fn apply_entry(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        comps: RelPath,
        mode: &TarMode<'_>,
    ) -> Result<()> {
        let Some(name) = comps.last().cloned() else {
            return Ok(()); // the archive root "./"
        };
        let changeset = match mode {
            TarMode::Changeset(subtree) => Some(*subtree),
            TarMode::Artifact { .. } => None,
        };
        if let (Some(subtree), Some(hidden)) = (changeset, name.strip_prefix(".wh.")) {
            let parent = &comps[..comps.len() - 1];
            if hidden == ".wh..opq" {
                return self.whiteout_children(parent, subtree);
            }
            if hidden.is_empty() {
                bail!("invalid whiteout entry with no name");
            }
            let mut target = parent.to_vec();
            target.push(hidden.to_string());
            return self.whiteout(&target, subtree);
        }
        let Some(rel) = self.place(&comps, mode)? else {
            return Ok(());
        };
        self.saw_subtree = true;
        let header = entry.header();
        let kind = header.entry_type();
        let perm = header.mode().unwrap_or(0o644);
        if rel.is_empty() {
            if kind.is_dir() {
                return Ok(());
            }
            bail!(
                "{} is not a directory in the image (it is a {:?}); set OCIMODEL_SUBPATH to the directory that holds the model",
                changeset.map(Subtree::display).unwrap_or_default(),
                kind
            );
        }
        check_not_reserved(&rel)?;
        if self.entries_left == 0 {
            bail!("the model has more entries than OCIMODEL_MAX_FILES allows; refusing (raise the limit if it is genuine)");
        }
        self.entries_left -= 1;
        let key = join(&rel);
        let selected = self.filter.allows(&key);
        let path = self.root.join(&key);
        if changeset.is_none() && !kind.is_dir() && fs::symlink_metadata(&path).is_ok() {
            bail!("'{key}' is written twice (two layers or entries claim it)");
        }
        match kind {
            tar::EntryType::Directory => {
                if !self.filter.is_empty() {
                    return Ok(()); // with a filter, only directories of kept files exist
                }
                self.make_directory(&rel, &key, perm, changeset.is_some())?;
            }
            _ if !selected => return Ok(()),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mtime = header
                    .mtime()
                    .ok()
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                self.forget_under(&key);
                let mut entry = io::BufReader::with_capacity(WRITE_BUF, entry);
                let record = write_file(
                    &self.root,
                    &rel,
                    &mut entry,
                    perm,
                    mtime,
                    FileDigest::Compute(self.file_hash),
                )?;
                self.add_record(record);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("symlink without a target"))?
                    .into_owned();
                self.write_symlink(&rel, &key, &target, changeset)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("hard link without a target"))?
                    .into_owned();
                self.write_hardlink(&rel, &key, &target, mode)?;
            }
            other => {
                tracing::warn!(entry = %key, kind = ?other, "skipping special file (devices, fifos and sockets are never installed)");
                return Ok(());
            }
        }
        self.this_layer.insert(key);
        Ok(())
    }

    /// A directory entry: made (0700 while staging; `finish` applies its
    /// mode), replacing a file there in a changeset.
    fn make_directory(
        &mut self,
        rel: &[String],
        key: &str,
        perm: u32,
        changeset: bool,
    ) -> Result<()> {
        let path = prepare_parent(&self.root, rel)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) if !changeset => bail!("'{key}' is written twice (a file and a directory)"),
            Ok(_) => {
                remove_existing(&path)?;
                self.forget_under(key);
                make_dir(&path)?;
            }
            Err(_) => make_dir(&path)?,
        }
        self.dir_modes.insert(key.to_string(), perm);
        Ok(())
    }

    /// A symlink entry, its target confined to the tree.
    fn write_symlink(
        &mut self,
        rel: &[String],
        key: &str,
        target: &Path,
        changeset: Option<&Subtree>,
    ) -> Result<()> {
        let target = confine_symlink(rel, target, changeset)?;
        let path = prepare_parent(&self.root, rel)?;
        remove_existing(&path)?;
        self.forget_under(key);
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("cannot create symlink {}", path.display()))
    }

    /// A hard link entry: only to a regular file already in the tree.
    fn write_hardlink(
        &mut self,
        rel: &[String],
        key: &str,
        raw_target: &Path,
        mode: &TarMode<'_>,
    ) -> Result<()> {
        let target_rel = match self.place(&clean_path(raw_target)?, mode) {
            Ok(Some(t)) if !t.is_empty() => t,
            _ => bail!(
                "refusing hard link to '{}': it is outside the model directory",
                raw_target.display()
            ),
        };
        let target_path = prepare_parent(&self.root, &target_rel)?;
        let is_file = fs::symlink_metadata(&target_path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file {
            bail!(
                "refusing hard link to '{}': no regular file there",
                raw_target.display()
            );
        }
        let path = prepare_parent(&self.root, rel)?;
        if path != target_path {
            remove_existing(&path)?;
            self.forget_under(key);
            fs::hard_link(&target_path, &path)
                .with_context(|| format!("cannot create hard link {}", path.display()))?;
            if let Some(r) = self.records.get(&join(&target_rel)).cloned() {
                self.add_record(FileRecord {
                    path: key.to_string(),
                    ..r
                });
            }
        }
        Ok(())
    }

    /// Forgets file records at or below `key` (they were replaced): one
    /// range of the sorted map, not a pass over every record.
    fn forget_under(&mut self, key: &str) {
        self.records.remove(key);
        self.dir_modes.remove(key);
        let prefix = format!("{key}/");
        let below: Vec<String> = self
            .records
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in below {
            self.records.remove(&k);
        }
    }

    fn whiteout(&mut self, target: &[String], subtree: &Subtree) -> Result<()> {
        match subtree.map(target) {
            Mapped::Inside(rel) if !rel.is_empty() => {
                let key = join(&rel);
                if self.this_layer.contains(&key) || !parents_are_dirs(&self.root, &rel) {
                    return Ok(());
                }
                remove_existing(&self.root.join(&key))?;
                self.forget_under(&key);
                Ok(())
            }
            Mapped::Inside(_) | Mapped::Ancestor => self.prune(&[]),
            Mapped::Outside => Ok(()),
        }
    }

    fn whiteout_children(&mut self, dir: &[String], subtree: &Subtree) -> Result<()> {
        match subtree.map(dir) {
            Mapped::Inside(rel) => {
                if rel.is_empty() || parents_are_dirs(&self.root, &rel) {
                    self.prune(&rel)
                } else {
                    Ok(())
                }
            }
            Mapped::Ancestor => self.prune(&[]),
            Mapped::Outside => Ok(()),
        }
    }

    /// Removes everything below `dir` that the current layer did not write.
    fn prune(&mut self, dir: &[String]) -> Result<()> {
        let path = self.root.join(join(dir));
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                return Ok(())
            }
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", path.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| anyhow!("non-UTF-8 name {n:?} in staging"))?;
            let mut child = dir.to_vec();
            child.push(name);
            let key = join(&child);
            let keeps_descendants = self
                .this_layer
                .range(format!("{key}/")..)
                .next()
                .is_some_and(|k| k.starts_with(&format!("{key}/")));
            let is_dir = entry.file_type()?.is_dir();
            if is_dir && (self.this_layer.contains(&key) || keeps_descendants) {
                self.prune(&child)?;
            } else if !self.this_layer.contains(&key) {
                remove_existing(&entry.path())?;
                self.forget_under(&key);
            }
        }
        Ok(())
    }

    /// Validates every symlink, normalises directory modes, applies the
    /// owner, and lists the files.
    pub fn finish(mut self, owner: Option<(u32, u32)>) -> Result<Contents> {
        let mut contents = Contents::default();
        let root = self.root.clone();
        // The staging root itself stays 0700 (it is removed once its entries
        // move into DEST), so the chmods below, by path, stay out of reach.
        let mut queue: VecDeque<RelPath> = VecDeque::from([Vec::new()]);
        while let Some(dir) = queue.pop_front() {
            let mut names: Vec<String> = Vec::new();
            for entry in fs::read_dir(root.join(join(&dir)))? {
                names.push(
                    entry?
                        .file_name()
                        .into_string()
                        .map_err(|n| anyhow!("non-UTF-8 name {n:?} in staging"))?,
                );
            }
            names.sort();
            for name in names {
                let mut rel = dir.clone();
                rel.push(name);
                let key = join(&rel);
                let path = root.join(&key);
                let meta = fs::symlink_metadata(&path)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(|| {
                        format!(
                            "cannot chown {} to {uid}:{gid} (OCIMODEL_OWNER needs root)",
                            path.display()
                        )
                    })?;
                }
                if meta.file_type().is_symlink() {
                    check_link_inside(&root, &rel)?;
                    let target = fs::read_link(&path)?;
                    contents
                        .links
                        .insert(key, target.to_string_lossy().into_owned());
                } else if meta.is_dir() {
                    let perm = self.dir_modes.get(&key).copied().unwrap_or(0o755);
                    fs::set_permissions(&path, fs::Permissions::from_mode(shared_mode(perm, true)))
                        .with_context(|| format!("cannot set mode on {key}"))?;
                    queue.push_back(rel);
                } else if meta.is_file() {
                    let record = match self.records.remove(&key) {
                        Some(r) => r,
                        None => hash_existing(&path, &key, self.file_hash)?,
                    };
                    contents.files.push(record);
                }
            }
        }
        contents.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(contents)
    }
}

fn parents_are_dirs(root: &Path, rel: &[String]) -> bool {
    let mut cur = root.to_path_buf();
    for part in &rel[..rel.len().saturating_sub(1)] {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

fn hash_existing(path: &Path, key: &str, algorithm: Algorithm) -> Result<FileRecord> {
    let (size, digest) = crate::digest::hash_file(path, algorithm)?;
    Ok(FileRecord {
        path: key.to_string(),
        size,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::links::relative_path;
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(normalise_mode(0o600, false), 0o664);
        assert_eq!(normalise_mode(0o644, false), 0o664);
        assert_eq!(normalise_mode(0o755, false), 0o775);
        assert_eq!(normalise_mode(0o4755, false), 0o775);
        assert_eq!(normalise_mode(0o000, false), 0o664);
        assert_eq!(normalise_mode(0o777, false), 0o775);
        assert_eq!(normalise_mode(0o700, true), 0o775);
        assert_eq!(normalise_mode(0o1777, true), 0o775);
    }

    #[test]
    fn path_cleaning() {
        assert_eq!(
            clean_path(Path::new("./models/a//b")).unwrap(),
            vec!["models", "a", "b"]
        );
        let err = |p: &str| clean_path(Path::new(p)).unwrap_err().to_string();
        assert_eq!(err("/etc/passwd"), "refusing absolute path '/etc/passwd'");
        assert_eq!(
            err("models/../../x"),
            "refusing path 'models/../../x': it contains '..'"
        );
    }

    #[test]
    fn subtree_mapping() {
        let s = Subtree::parse("/models").unwrap();
        let v = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        assert!(matches!(s.map(&v("models/a")), Mapped::Inside(r) if r == vec!["a"]));
        assert!(matches!(s.map(&v("models")), Mapped::Inside(r) if r.is_empty()));
        assert!(matches!(s.map(&[]), Mapped::Ancestor));
        assert!(matches!(s.map(&v("etc/x")), Mapped::Outside));
        let all = Subtree::parse("/").unwrap();
        assert!(matches!(all.map(&v("etc/x")), Mapped::Inside(r) if r.len() == 2));
    }

    #[test]
    fn relative_paths() {
        let v = |p: &str| {
            p.split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            relative_path(&v("a/b"), &v("a/c/d")),
            PathBuf::from("../c/d")
        );
        assert_eq!(relative_path(&v(""), &v("x")), PathBuf::from("x"));
        assert_eq!(relative_path(&v("a"), &v("a")), PathBuf::from("."));
    }

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn add_link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        b.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn layers_whiteouts_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        fs::create_dir(&root).unwrap();
        let models = Subtree::parse("/models").unwrap();
        let mut tree = Tree::new(root.clone(), Filter::default());
        let l1 = tar_bytes(|b| {
            add_file(b, "models/keep.txt", b"keep", 0o600);
            add_file(b, "models/gone.txt", b"gone", 0o644);
            add_file(b, "models/sub/old.bin", b"old", 0o644);
            add_file(b, "models/run.sh", b"#!", 0o4755);
            add_file(b, "etc/passwd", b"root", 0o644);
            add_link(
                b,
                tar::EntryType::Symlink,
                "models/latest",
                "/models/keep.txt",
            );
            for (name, kind) in [
                ("models/pipe", tar::EntryType::Fifo),
                ("models/null", tar::EntryType::Char),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o666);
                h.set_entry_type(kind);
                b.append_data(&mut h, name, &b""[..]).unwrap();
            }
        });
        tree.apply_tar(&mut &l1[..], Compression::None, &models)
            .unwrap();
        let l2 = tar_bytes(|b| {
            add_file(b, "models/.wh.gone.txt", b"", 0o644);
            add_file(b, "models/sub/new.bin", b"new", 0o644);
            add_file(b, "models/sub/.wh..wh..opq", b"", 0o644);
            add_link(
                b,
                tar::EntryType::Link,
                "models/hard.txt",
                "models/keep.txt",
            );
        });
        tree.apply_tar(&mut &l2[..], Compression::None, &models)
            .unwrap();
        let c = tree.finish(None).unwrap();
        let paths: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["hard.txt", "keep.txt", "run.sh", "sub/new.bin"]);
        assert_eq!(c.links.get("latest").map(String::as_str), Some("keep.txt"));
        assert!(!root.join("etc").exists());
        assert!(
            fs::symlink_metadata(root.join("pipe")).is_err(),
            "fifo skipped"
        );
        assert!(
            fs::symlink_metadata(root.join("null")).is_err(),
            "device skipped"
        );
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("keep.txt"), 0o664);
        assert_eq!(mode("run.sh"), 0o775);
        assert_eq!(mode("sub"), 0o775);
        assert_eq!(c.files[1].digest, Digest::of(MARKER_ALGORITHM, b"keep"));
    }

    #[test]
    fn hostile_entries_are_refused() {
        let models = Subtree::parse("/models").unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "symlink escape",
                tar_bytes(|b| {
                    add_link(
                        b,
                        tar::EntryType::Symlink,
                        "models/evil",
                        "../../etc/passwd",
                    )
                }),
            ),
            (
                "absolute symlink",
                tar_bytes(|b| add_link(b, tar::EntryType::Symlink, "models/evil", "/etc/passwd")),
            ),
            (
                "hardlink outside",
                tar_bytes(|b| add_link(b, tar::EntryType::Link, "models/evil", "etc/passwd")),
            ),
            (
                "write through symlink",
                tar_bytes(|b| {
                    add_link(b, tar::EntryType::Symlink, "models/d", "sub");
                    add_file(b, "models/sub/x", b"", 0o644);
                    add_file(b, "models/d/y", b"", 0o644);
                }),
            ),
            (
                "chained escape",
                tar_bytes(|b| {
                    add_file(b, "models/sub/x", b"", 0o644);
                    add_link(b, tar::EntryType::Symlink, "models/sub/up", "..");
                    add_link(b, tar::EntryType::Symlink, "models/sub/up2", "up/..");
                }),
            ),
            (
                "loop",
                tar_bytes(|b| {
                    add_link(b, tar::EntryType::Symlink, "models/a", "b");
                    add_link(b, tar::EntryType::Symlink, "models/b", "a");
                }),
            ),
            (
                "reserved name",
                tar_bytes(|b| add_file(b, "models/.ocimodel.json", b"{}", 0o644)),
            ),
        ];
        let refusals: std::collections::HashMap<&str, &str> = [
            ("symlink escape", "refusing symlink 'evil' -> '../../etc/passwd': it points outside the model directory"),
            ("absolute symlink", "refusing symlink 'evil' -> '/etc/passwd': the target is outside /models"),
            ("hardlink outside", "refusing hard link to 'etc/passwd': it is outside the model directory"),
            ("write through symlink", "refusing to write 'd/y' through the symlink 'd'"),
            ("chained escape", "refusing symlink 'sub/up2': following it leaves the model directory"),
            ("loop", "refusing symlink 'a': it is part of a symlink loop"),
            ("reserved name", "refusing to write '.ocimodel.json': the name is reserved"),
        ]
        .into_iter()
        .collect();
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut tree = Tree::new(dir.path().to_path_buf(), Filter::default());
            let result = tree
                .apply_tar(&mut &bytes[..], Compression::None, &models)
                .and_then(|_| tree.finish(None).map(|_| ()));
            let expected = refusals[what];
            match result {
                Ok(()) => panic!("{what} was accepted"),
                Err(e) => assert!(
                    format!("{e:#}").contains(expected),
                    "{what}: refused for '{e:#}', not '{expected}'"
                ),
            }
        }
    }

    #[test]
    fn dotdot_names_in_raw_tar_are_refused() {
        // tar::Builder refuses '..', so write the header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0; 1024]);
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path().join("s"), Filter::default());
        fs::create_dir(tree.root()).unwrap();
        let err = tree
            .apply_tar(
                &mut &bytes[..],
                Compression::None,
                &Subtree::parse("/").unwrap(),
            )
            .unwrap_err();
        assert!(format!("{err:#}").contains("'..'"), "{err:#}");
        assert!(!dir.path().join("escape").exists());
    }

    /// A raw old-style header for `name` with `data`, for names the tar
    /// crate's builder refuses to write.
    fn raw_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn apply(layers: &[Vec<u8>], subtree: &str) -> (tempfile::TempDir, Result<Contents>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        fs::create_dir(&root).unwrap();
        let subtree = Subtree::parse(subtree).unwrap();
        let mut tree = Tree::new(root, Filter::default());
        let mut result = Ok(());
        for l in layers {
            result = tree.apply_tar(&mut &l[..], Compression::None, &subtree);
            if result.is_err() {
                break;
            }
        }
        let contents = result.and_then(|_| tree.finish(None));
        (dir, contents)
    }

    #[test]
    fn hostile_absolute_name() {
        let mut layer = raw_entry("/etc/passwd", b"root");
        layer.extend_from_slice(&[0; 1024]);
        let (dir, result) = apply(&[layer], "/");
        let err = format!("{:#}", result.unwrap_err());
        assert!(
            err.contains("refusing absolute path '/etc/passwd'"),
            "{err}"
        );
        assert!(!dir.path().join("s/etc").exists());
    }

    #[test]
    fn long_names_are_fine() {
        let name = format!("models/{}/weights.bin", "d".repeat(180));
        let layer = tar_bytes(|b| add_file(b, &name, b"w", 0o644));
        let (dir, result) = apply(&[layer], "/models");
        result.unwrap();
        assert_eq!(
            fs::read(dir.path().join("s").join(&name["models/".len()..])).unwrap(),
            b"w"
        );
    }

    #[test]
    fn pax_header_with_a_huge_size_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"99999999999999"[..])])
            .unwrap();
        add_file(&mut b, "models/x", b"tiny", 0o644);
        let layer = b.into_inner().unwrap();
        let (dir, result) = apply(&[layer], "/models");
        match &result {
            Ok(_) => panic!("a PAX size far beyond the data must not be accepted"),
            Err(e) => assert!(
                format!("{e:#}").contains("corrupt tar layer"),
                "refused for '{e:#}'"
            ),
        }
        // Whatever was half-written stays inside the staging tree, which the
        // pipeline discards on error.
        let outside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("s")]);
    }

    #[test]
    fn duplicate_entries_in_an_image_layer_last_wins() {
        let layer = tar_bytes(|b| {
            add_file(b, "models/x", b"first", 0o644);
            add_file(b, "models/x", b"second", 0o644);
        });
        let (dir, result) = apply(&[layer], "/models");
        let c = result.unwrap();
        assert_eq!(fs::read(dir.path().join("s/x")).unwrap(), b"second");
        assert_eq!(c.files[0].digest, Digest::of(MARKER_ALGORITHM, b"second"));
    }

    #[test]
    fn a_file_replaced_by_a_directory_across_layers() {
        let l1 = tar_bytes(|b| add_file(b, "models/x", b"file", 0o644));
        let l2 = tar_bytes(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, "models/x/", std::io::empty())
                .unwrap();
            add_file(b, "models/x/y", b"inside", 0o644);
        });
        let (dir, result) = apply(&[l1, l2], "/models");
        let c = result.unwrap();
        assert_eq!(fs::read(dir.path().join("s/x/y")).unwrap(), b"inside");
        assert_eq!(
            c.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            vec!["x/y"]
        );
    }

    #[test]
    fn whiteouts_cannot_reach_outside() {
        let mut layer = raw_entry("models/../.wh.etc", b"");
        layer.extend_from_slice(&[0; 1024]);
        let (_dir, result) = apply(&[layer], "/models");
        assert!(format!("{:#}", result.unwrap_err()).contains("'..'"));
        // A whiteout of the subtree itself (or an ancestor) only clears what
        // lower layers put in it.
        let l1 = tar_bytes(|b| add_file(b, "models/old", b"o", 0o644));
        let l2 = tar_bytes(|b| {
            add_file(b, ".wh.models", b"", 0o644);
            add_file(b, "models/new", b"n", 0o644);
        });
        let (dir, result) = apply(&[l1, l2], "/models");
        result.unwrap();
        assert!(!dir.path().join("s/old").exists());
        assert!(dir.path().join("s/new").exists());
    }

    #[test]
    fn entries_after_end_of_archive_are_ignored() {
        let mut layer = tar_bytes(|b| add_file(b, "models/a", b"a", 0o644));
        layer.extend(raw_entry("models/smuggled", b"s"));
        layer.extend_from_slice(&[0; 1024]);
        let (dir, result) = apply(&[layer], "/models");
        result.unwrap();
        assert!(dir.path().join("s/a").exists());
        assert!(!dir.path().join("s/smuggled").exists());
    }

    #[test]
    fn sockets_and_block_devices_are_skipped() {
        let layer = tar_bytes(|b| {
            for (name, kind) in [
                ("models/blk", tar::EntryType::Block),
                ("models/ok", tar::EntryType::Regular),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_entry_type(kind);
                b.append_data(&mut h, name, &b""[..]).unwrap();
            }
        });
        let (dir, result) = apply(&[layer], "/models");
        result.unwrap();
        assert!(fs::symlink_metadata(dir.path().join("s/blk")).is_err());
        assert!(dir.path().join("s/ok").exists());
    }
}
