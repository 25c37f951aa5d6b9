//! Path rules and the one way files are written: names are cleaned (never
//! "fixed"), parents must be real directories, files are created
//! `O_EXCL | O_NOFOLLOW` after the old entry is removed, and modes follow
//! the group-0 rule (see [`shared_mode`]).

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};

use super::{FileRecord, RESERVED_NAMES};
use crate::digest::{Algorithm, Digest, Hasher};

/// A relative path inside the tree, as clean components.
pub type RelPath = Vec<String>;

pub fn join(rel: &[String]) -> String {
    rel.join("/")
}

/// Cleans a name from a layer or annotation: drops `.` and empty parts,
/// refuses absolute paths, `..`, and non-UTF-8.
pub fn clean_path(raw: &Path) -> Result<RelPath> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| anyhow!("entry name {raw:?} is not UTF-8"))?
                    .to_string(),
            ),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing absolute path '{}'", raw.display())
            }
            Component::ParentDir => bail!("refusing path '{}': it contains '..'", raw.display()),
        }
    }
    Ok(out)
}

/// A directory a plan names (a layer's `into` or `within`), cleaned like
/// [`clean_path`]; none is the root.
pub fn clean_dir(dir: &Option<String>) -> Result<RelPath> {
    match dir {
        Some(d) => clean_path(Path::new(d))
            .with_context(|| format!("unsafe directory '{d}' in the manifest")),
        None => Ok(Vec::new()),
    }
}

/// `u=rw(x),g=u,o=r(x)` for files, `u=rwx,g=u,o=rx` for directories.
pub fn normalise_mode(mode: u32, dir: bool) -> u32 {
    let user = ((mode >> 6) & 0o7) | if dir { 0o7 } else { 0o6 };
    let other = 0o4 | (user & 0o1);
    (user << 6) | (user << 3) | other
}

/// Whether what we create belongs to group 0 (OpenShift runs arbitrary
/// UIDs with GID 0; so does root). Only then is `g=u` a grant to the
/// cluster's own UIDs; elsewhere (a laptop, a shared server) the umask says
/// who may read, as for any other tool.
pub fn group_zero() -> bool {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() == 0 }
}

pub(super) fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // Read, not set: umask(2) would change it for every thread for a moment.
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// The mode a finished file or directory gets: [`normalise_mode`] for
/// group 0, else that with the umask applied.
pub fn shared_mode(mode: u32, dir: bool) -> u32 {
    let m = normalise_mode(mode, dir);
    if group_zero() {
        m
    } else {
        m & !umask()
    }
}

pub(super) fn check_not_reserved(rel: &[String]) -> Result<()> {
    if let Some(first) = rel.first() {
        if RESERVED_NAMES.contains(&first.as_str()) {
            bail!(
                "refusing to write '{}': the name is reserved for ocimodel's bookkeeping",
                join(rel)
            );
        }
    }
    Ok(())
}

/// Makes sure every parent of `rel` is a real directory under `root`
/// (creating missing ones), never a symlink. Returns the full path of `rel`.
pub fn prepare_parent(root: &Path, rel: &[String]) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for (i, part) in rel[..rel.len().saturating_sub(1)].iter().enumerate() {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => bail!(
                "refusing to write '{}' through the symlink '{}'",
                join(rel),
                join(&rel[..=i])
            ),
            Ok(_) => bail!(
                "cannot write '{}': '{}' is a file, not a directory",
                join(rel),
                join(&rel[..=i])
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&cur)?,
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", cur.display())),
        }
    }
    Ok(root.join(rel.join("/")))
}

/// Staging directories stay 0700 while they are filled, so nobody else can
/// reach inside to swap a component; [`Tree::finish`] gives the final modes.
/// A directory already there is fine: files of one model are written
/// concurrently, and another writer may make a parent between our look and
/// our mkdir (a symlink there is still refused by the callers' checks).
pub(super) fn make_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) =>
        {
            Ok(())
        }
        other => other.with_context(|| format!("cannot create directory {}", path.display())),
    }
}

/// Removes whatever is at `path` (file, symlink or whole directory) without
/// following symlinks; nothing there is fine.
pub fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("cannot remove {}", path.display()))
}

/// Where a written file's marker digest comes from.
#[derive(Clone, Copy, Debug)]
pub enum FileDigest<'a> {
    /// The digest the caller is already verifying for these exact bytes:
    /// the file is not hashed a second time.
    Known(&'a Digest),
    /// Hashed with this algorithm while it is written.
    Compute(Algorithm),
}

/// Writes `reader` to `rel` under `root`, its digest as `digest` says.
pub fn write_file(
    root: &Path,
    rel: &[String],
    reader: &mut dyn BufRead,
    mode: u32,
    mtime: Option<SystemTime>,
    digest: FileDigest,
) -> Result<FileRecord> {
    check_not_reserved(rel)?;
    if rel.is_empty() {
        bail!("refusing to write a file with an empty name");
    }
    let path = prepare_parent(root, rel)?;
    remove_existing(&path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut hasher = match digest {
        FileDigest::Compute(algorithm) => Some(Hasher::new(algorithm)),
        FileDigest::Known(_) => None,
    };
    let mut size = 0u64;
    loop {
        // Straight from the reader's buffer: no copy of our own.
        let chunk = match reader.fill_buf() {
            Ok([]) => break,
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("reading content for '{}'", join(rel)))
            }
        };
        let n = chunk.len();
        if let Some(h) = &mut hasher {
            h.update(chunk);
        }
        file.write_all(chunk)
            .with_context(|| format!("cannot write {}", path.display()))?;
        reader.consume(n);
        size += n as u64;
    }
    file.set_permissions(fs::Permissions::from_mode(shared_mode(mode, false)))
        .with_context(|| format!("cannot set mode on {}", path.display()))?;
    if let Some(t) = mtime {
        let _ = file.set_modified(t);
    }
    let digest = match (hasher, digest) {
        (Some(h), _) => h.finish(),
        (None, FileDigest::Known(d)) => d.clone(),
        (None, FileDigest::Compute(_)) => unreachable!("a hasher is made for Compute"),
    };
    Ok(FileRecord {
        path: join(rel),
        size,
        digest,
    })
}
