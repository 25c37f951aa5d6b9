//! Filesystem calls relative to open directories, never through a symlink.
//!
//! DEST is shared: an `emptyDir` (0777), a PVC, a node volume, written by
//! other containers and other UIDs in group 0. Whoever can write DEST can
//! rename entries and plant symlinks or FIFOs in it at any moment, so
//! ocimodel opens DEST and its bookkeeping directory once and does every
//! create, rename and delete relative to those descriptors: names are
//! single components, opened with `O_NOFOLLOW`, created with `O_EXCL`, and
//! modes are changed on open descriptors. Small files (markers, journals,
//! layout indexes) are read with a cap, from regular files only.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only; never used to reach the directory.
    path: PathBuf,
}

fn cname(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a single file name"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Closes a descriptor `open`/`openat` returned.
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

impl Dir {
    /// Opens `path` as given by the operator (symlinks in it are theirs).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a valid C string; the result is checked.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir {
            fd: owned(fd),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// `/proc/self/fd/N`: a path that reaches this very directory whatever
    /// is renamed or planted along its real path meanwhile.
    pub fn pinned_path(&self) -> io::Result<PathBuf> {
        let p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let here = std::fs::metadata(&p).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach {} through /proc/self/fd ({e}); /proc must be mounted",
                    self.path.display()
                ),
            )
        })?;
        let me = self.metadata()?;
        if (here.dev(), here.ino()) != (me.dev(), me.ino()) {
            return Err(io::Error::other(
                "/proc/self/fd does not show this process's descriptors",
            ));
        }
        Ok(p)
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.as_file().metadata()
    }

    /// The descriptor as a `File`, for fstat/fchmod/fchown (not for I/O).
    fn as_file(&self) -> std::mem::ManuallyDrop<File> {
        // SAFETY: the File is never dropped, so the descriptor stays ours.
        std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd.as_raw_fd()) })
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Opens child directory `name`, refusing a symlink.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir {
            fd: owned(fd),
            path: self.path.join(name),
        })
    }

    /// Creates child directory `name` with `mode` (before the umask); false
    /// when it already existed.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<bool> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and C string.
        let rc = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) };
        match check(rc) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `name` afresh (removing whatever was there, never writing
    /// through it) and opens it for writing.
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        self.remove_file(name)?;
        let c = cname(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = check(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint)
        })?;
        Ok(File::from(owned(fd)))
    }

    /// Opens (creating if needed) `name` for locking: read-only is enough
    /// for flock, so a lock file another UID made still serves. Refuses
    /// anything but a regular file, without blocking on a FIFO.
    pub fn open_lock(&self, name: &str, mode: u32) -> io::Result<(File, bool)> {
        let c = cname(name)?;
        let flags =
            libc::O_RDONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let existed = self.stat(name)?.is_some();
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = check(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint)
        })?;
        let f = File::from(owned(fd));
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.path.join(name).display()
            )));
        }
        Ok((f, !existed))
    }

    /// Opens `name` with `flags` (`O_CREAT` creating it with `mode`), never
    /// through a symlink and never blocking on a FIFO: regular files only.
    /// `O_NONBLOCK` is cleared once the file is known to be one.
    pub fn open_regular(&self, name: &str, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = match check(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint)
        }) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::other(format!(
                    "{} is a symlink",
                    self.path.join(name).display()
                )))
            }
            Err(e) => return Err(e),
        };
        let f = File::from(owned(fd));
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.path.join(name).display()
            )));
        }
        // SAFETY: fcntl on a descriptor we own.
        let fl = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) })?;
        Ok(f)
    }

    /// Flushes this directory's entries (after a rename into it).
    pub fn sync(&self) -> io::Result<()> {
        self.as_file().sync_all()
    }

    /// lstat of child `name`; `None` when absent.
    pub fn stat(&self, name: &str) -> io::Result<Option<libc::stat>> {
        let c = cname(name)?;
        // SAFETY: a zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and out-pointer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(rc) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renames child `from` to `to_name` in `to` (both single names).
    pub fn rename(&self, from: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        let (a, b) = (cname(from)?, cname(to_name)?);
        // SAFETY: valid descriptors and C strings.
        check(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
            )
        })
        .map(drop)
    }

    /// Removes non-directory `name`; absent is fine.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and C string.
        match check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes `name` whatever it is, a whole directory tree included,
    /// descending through descriptors so a swapped-in symlink is unlinked,
    /// never followed. Absent is fine.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        let Some(st) = self.stat(name)? else {
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            match self.open_dir(name) {
                Ok(child) => {
                    for entry in child.names()? {
                        child.remove_tree(&entry)?;
                    }
                }
                // Replaced by a non-directory since the stat: unlink below.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTDIR)
                        || e.raw_os_error() == Some(libc::ELOOP) => {}
                Err(e) => return Err(e),
            }
            let c = cname(name)?;
            // SAFETY: valid descriptor and C string.
            let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            match check(rc) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => self.remove_file(name),
                Err(e) => Err(e),
            }
        } else {
            self.remove_file(name)
        }
    }

    /// The names in this directory (not `.`/`..`), sorted.
    pub fn names(&self) -> io::Result<Vec<String>> {
        // A fresh descriptor for reading, so this Dir's own offset is
        // untouched; fdopendir takes it over and closedir closes it.
        let c = CString::new(".").expect("no NUL");
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), DIR_FLAGS) })?;
        // SAFETY: `fd` is an open directory descriptor we own.
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut out = Vec::new();
        let mut bad = None;
        loop {
            // SAFETY: `dirp` is a valid DIR*; errno is reset to tell end from error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: as above.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                if e.raw_os_error().unwrap_or(0) != 0 {
                    bad = Some(e);
                }
                break;
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            match std::str::from_utf8(bytes) {
                Ok(n) => out.push(n.to_string()),
                Err(_) => {
                    bad = Some(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("non-UTF-8 name {name:?} in {}", self.path.display()),
                    ));
                    break;
                }
            }
        }
        // SAFETY: `dirp` is valid and closed once.
        unsafe { libc::closedir(dirp) };
        if let Some(e) = bad {
            return Err(e);
        }
        out.sort();
        Ok(out)
    }

    /// Reads small file `name` (at most `cap` bytes); `None` when absent.
    pub fn read_small(&self, name: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
        let c = cname(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string.
        let rc = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        match check(rc) {
            Ok(fd) => read_capped(File::from(owned(fd)), &self.path.join(name), cap).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(io::Error::other(format!(
                "{} is a symlink; refusing to read through it",
                self.path.join(name).display()
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Reads a small file by path (a layout's `index.json`, a marker): regular
/// files only, never blocking on a FIFO, at most `cap` bytes. The final
/// component may be a symlink only where `follow` says so.
pub fn read_small_file(path: &Path, cap: u64, follow: bool) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    read_capped(f, path, cap)
}

fn read_capped(f: File, path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "{} is over the {cap}-byte limit; refusing to read it",
            path.display()
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_fifos_are_never_followed_or_blocked_on() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).unwrap();
        symlink(&outside, d.join("link")).unwrap();
        symlink(tmp.path(), d.join("dirlink")).unwrap();
        let c = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let dir = Dir::open(&d).unwrap();

        let e = dir.read_small("link", 100).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        let e = dir.read_small("fifo", 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(dir.open_dir("dirlink").is_err());
        assert!(dir.open_lock("fifo", 0o660).is_err());
        let e = dir.open_lock("link", 0o660).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));

        // Writing a name that is a symlink replaces the link.
        use std::io::Write;
        dir.create_new("link", 0o644)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert_eq!(std::fs::read(d.join("link")).unwrap(), b"new");

        // Removing a tree through a symlink removes the link only.
        dir.remove_tree("dirlink").unwrap();
        assert!(outside.exists());
        assert!(!d.join("dirlink").exists());
    }

    #[test]
    fn small_reads_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big"), vec![b'x'; 101]).unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        assert!(dir.read_small("big", 100).is_err());
        assert_eq!(dir.read_small("big", 101).unwrap().unwrap().len(), 101);
        assert!(dir.read_small("absent", 100).unwrap().is_none());
        let e = read_small_file(Path::new("/dev/zero"), 100, true).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn pinned_paths_survive_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        let parent = Dir::open(tmp.path()).unwrap();
        let a = parent.open_dir("a").unwrap();
        parent.rename("a", &parent, "b").unwrap();
        symlink("/", tmp.path().join("a")).unwrap();
        std::fs::write(a.pinned_path().unwrap().join("f"), b"1").unwrap();
        assert!(tmp.path().join("b/f").exists());
    }
}
