//! A layout's files: a directory, or a tar archive indexed once and read in
//! place at each member's offset.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{file_stream, MAX_ARCHIVE_LINK_HOPS};
use crate::digest::Digest;
use crate::registry::ByteStream;

/// Files of a layout or archive: a directory, or a tar read in place.
pub enum Store {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        /// Cleaned entry name → where its data is.
        entries: HashMap<String, TarEntry>,
    },
}

#[derive(Clone, Debug)]
pub enum TarEntry {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink inside the archive (skopeo's docker archives use them).
    Link(String),
}

pub(super) fn clean_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl Store {
    /// Indexes an archive's tar headers (data is skipped by seeking).
    pub fn open_tar(file: &Path) -> Result<Store> {
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot open archive {}", file.display()))?;
        let mut archive = tar::Archive::new(f);
        let mut entries = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .with_context(|| format!("{} is not a tar archive", file.display()))?
        {
            let entry = match entry {
                Ok(e) => e,
                // The tar crate's message quotes raw header bytes; say what it means.
                Err(_) if entries.is_empty() => bail!("{} is not a tar archive", file.display()),
                Err(_) => bail!(
                    "{} is corrupt after {} entries",
                    file.display(),
                    entries.len()
                ),
            };
            let name = clean_name(&entry.path()?.to_string_lossy());
            let kind = entry.header().entry_type();
            if kind.is_file() {
                entries.insert(
                    name,
                    TarEntry::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name()? {
                    let target = target.to_string_lossy().into_owned();
                    let resolved = if kind.is_symlink() {
                        let dir = Path::new(&name)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        clean_name(&format!("{dir}/{target}"))
                    } else {
                        clean_name(&target)
                    };
                    entries.insert(name, TarEntry::Link(resolved));
                }
            }
        }
        Ok(Store::Tar {
            file: file.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Store::Dir(d) => d,
            Store::Tar { file, .. } => file,
        }
    }

    /// Where the data of `name` is in the archive, following links.
    pub(super) fn locate(&self, name: &str) -> Result<(u64, u64)> {
        let Store::Tar { entries, file } = self else {
            bail!("internal: not an archive")
        };
        let mut name = clean_name(name);
        for _ in 0..MAX_ARCHIVE_LINK_HOPS {
            match entries.get(&name) {
                Some(TarEntry::File { offset, size }) => return Ok((*offset, *size)),
                Some(TarEntry::Link(target)) => name = target.clone(),
                None => bail!("{name} is not in archive {}", file.display()),
            }
        }
        bail!("{name} in archive {} is a link loop", file.display())
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => d.join(name).is_file(),
            Store::Tar { .. } => self.locate(name).is_ok(),
        }
    }

    /// Reads a small file whole, refusing more than `cap` bytes.
    pub fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        match self {
            Store::Dir(d) => {
                // Regular files only, capped while reading: a device or a
                // FIFO (whose length says 0) must not hang or flood us.
                let path = d.join(name);
                crate::dirfd::read_small_file(&path, cap, true)
                    .with_context(|| format!("cannot read {}", path.display()))
            }
            Store::Tar { file, .. } => {
                let (offset, size) = self.locate(name)?;
                if size > cap {
                    bail!(
                        "{name} in {} is {size} bytes, over the {cap}-byte limit",
                        file.display()
                    );
                }
                let mut f = std::fs::File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::with_capacity(size as usize);
                f.take(size).read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Streams a file.
    pub async fn open(&self, name: &str) -> Result<ByteStream> {
        let (path, range) = match self {
            Store::Dir(d) => (d.join(name), None),
            Store::Tar { file, .. } => (file.clone(), Some(self.locate(name)?)),
        };
        let f = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(match range {
            None => file_stream(f, 0, None, ()),
            Some((offset, size)) => file_stream(f, offset, Some(size), ()),
        })
    }
}

impl Store {
    /// The first `n` bytes of a file (or fewer).
    pub(super) fn read_head(&self, name: &str, n: u64) -> Result<Vec<u8>> {
        match self {
            Store::Dir(d) => {
                let mut buf = Vec::new();
                std::fs::File::open(d.join(name))?
                    .take(n)
                    .read_to_end(&mut buf)?;
                Ok(buf)
            }
            Store::Tar { file, .. } => {
                let (offset, size) = self.locate(name)?;
                let mut f = std::fs::File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.take(n.min(size)).read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// sha256 of a file in the store (for compressed docker-archive layers,
    /// whose digest the archive does not record).
    pub(super) fn digest_of(&self, name: &str) -> Result<Digest> {
        let Store::Tar { file, .. } = self else {
            bail!("internal: not an archive")
        };
        let (offset, size) = self.locate(name)?;
        let mut f = std::fs::File::open(file)?;
        f.seek(SeekFrom::Start(offset))?;
        let (_, digest) =
            crate::digest::hash_reader(f.take(size), crate::digest::Algorithm::Sha256)?;
        Ok(digest)
    }
}
