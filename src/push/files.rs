//! The files of a model directory (symlinks followed only inside it), and
//! the tar layers built from them: deterministic, hashed as written (blob
//! digest and diff ID in one pass).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::Compression;

/// A file of the model directory.
pub(super) struct File {
    pub(super) rel: String,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) mode: u32,
}

/// Where symlinks in DIR may lead: DIR itself, or for a Hugging Face cache
/// snapshot (`models--org--name/snapshots/REV`, all symlinks into
/// `../../blobs`) the cached repository around it.
pub(super) fn link_root(dir: &Path) -> Result<PathBuf> {
    let dir = fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let parent = dir.parent();
    if parent
        .and_then(Path::file_name)
        .is_some_and(|n| n == "snapshots")
    {
        if let Some(repo) = parent.and_then(Path::parent) {
            return Ok(repo.to_path_buf());
        }
    }
    Ok(dir)
}

pub(super) fn walk(dir: &Path, follow_outside: bool) -> Result<Vec<File>> {
    let root = link_root(dir)?;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut skipped = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let e = e?;
            let path = e.path();
            // An installed DEST: its marker and .ocimodel/ are ocimodel's
            // bookkeeping, not the model (and a pull refuses those names).
            if d == dir
                && crate::unpack::RESERVED_NAMES
                    .iter()
                    .any(|r| e.file_name() == *r)
            {
                skipped.push(e.file_name().to_string_lossy().into_owned());
                continue;
            }
            // Follow symlinks (a Hugging Face cache snapshot is all symlinks):
            // the content is what gets published; but only inside the model,
            // unless asked (a link to /etc/shadow must not be published).
            if !follow_outside && e.file_type()?.is_symlink() {
                let target = fs::canonicalize(&path)
                    .with_context(|| format!("cannot follow the symlink {}", path.display()))?;
                if !target.starts_with(&root) {
                    bail!(
                        "{} is a symlink to {}, outside {}; refusing to publish it (pass --follow-symlinks if that is intended)",
                        path.display(),
                        target.display(),
                        root.display()
                    );
                }
            }
            let meta =
                fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let rel = path
                .strip_prefix(dir)?
                .to_str()
                .ok_or_else(|| anyhow!("{} is not a UTF-8 name", path.display()))?
                .to_string();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                out.push(File {
                    rel,
                    path,
                    size: meta.len(),
                    mode: meta.permissions().mode(),
                });
            } else {
                bail!("{} is not a regular file or directory", path.display());
            }
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        tracing::info!(
            dir = %dir.display(),
            "not pushing ocimodel's bookkeeping ({}): {} is an installed DEST",
            skipped.join(", "),
            dir.display()
        );
    }
    if out.is_empty() {
        bail!("{} holds no files to push", dir.display());
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A writer that hashes and counts what passes through.
pub(super) struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
    pub(super) size: u64,
}
impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
/// The layer's compression, as one writer.
pub(super) enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}
impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}
impl<W: Write> Encoder<W> {
    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Writes a tar of `files` (named `prefix` + relative path) into `out`,
/// compressed as asked; returns (blob digest, blob size, uncompressed digest).
pub(super) fn build_tar(
    files: &[&File],
    prefix: &str,
    dirs: bool,
    compression: Compression,
    out: &Path,
) -> Result<(Digest, u64, Digest)> {
    let blob = HashWriter {
        inner: std::io::BufWriter::new(fs::File::create(out)?),
        hasher: Hasher::new(Algorithm::Sha256),
        size: 0,
    };
    let encoder = match compression {
        Compression::None => Encoder::Plain(blob),
        Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
            blob,
            flate2::Compression::default(),
        )),
        Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(blob, 3)?),
    };
    // The tar stream is hashed again before compression, for diff IDs.
    let raw = HashWriter {
        inner: encoder,
        hasher: Hasher::new(Algorithm::Sha256),
        size: 0,
    };
    let mut builder = tar::Builder::new(raw);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut made = std::collections::BTreeSet::new();
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for f in files {
        let name = format!("{prefix}{}", f.rel);
        if dirs {
            // Parent directories first, group-0 readable and traversable.
            let mut parts: Vec<&str> = name.split('/').collect();
            parts.pop();
            for i in 1..=parts.len() {
                let d = format!("{}/", parts[..i].join("/"));
                if made.insert(d.clone()) {
                    let mut h = header(tar::EntryType::Directory, 0o775, 0);
                    builder.append_data(&mut h, &d, std::io::empty())?;
                }
            }
        }
        let mode = if f.mode & 0o100 != 0 { 0o775 } else { 0o664 };
        let mut h = header(tar::EntryType::Regular, mode, f.size);
        let file =
            fs::File::open(&f.path).with_context(|| format!("cannot read {}", f.path.display()))?;
        builder.append_data(&mut h, &name, file.take(f.size))?;
    }
    let raw = builder.into_inner()?;
    let diff_id = raw.hasher.finish();
    let blob = raw.inner.finish()?;
    blob.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok((blob.hasher.finish(), blob.size, diff_id))
}
