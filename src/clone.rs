//! Cloning a file: the destination shares the source's extents (XFS with
//! `reflink=1`, btrfs, bcachefs; an NFS 4.2 server that clones), so a warm
//! install from the node cache costs metadata, not another copy of the model.
//!
//! The clone is a private snapshot: once made, nothing a co-tenant writes to
//! the source changes it (a write to a shared extent goes elsewhere, copy on
//! write). So hashing the clone, not the source, verifies exactly what is
//! installed. Any failure (another filesystem, one without shared extents, a
//! kernel without the ioctl) is an answer, not an error: the caller copies.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Makes `dst` (an empty file opened for writing) a clone of all of `src`,
/// both already opened and checked by the caller: no path is followed here.
pub fn clone_into(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why a clone was not made, for the log line that says the blob was
/// copied instead.
pub fn why_not(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EXDEV) => "DEST is on another filesystem than the node cache".into(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS) => {
            "the filesystem does not share extents".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    /// Wherever the test's temp directory is, a clone is either made whole
    /// (same bytes) or refused with an answer `why_not` explains; a refusal
    /// leaves the destination empty for the copy.
    #[test]
    fn a_clone_has_the_source_bytes_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = File::create(dir.path().join("src")).unwrap();
        src.write_all(&vec![7u8; 1 << 16]).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let mut dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("dst"))
            .unwrap();
        match clone_into(&src, &dst) {
            Ok(()) => {
                let mut got = Vec::new();
                dst.rewind().unwrap();
                dst.read_to_end(&mut got).unwrap();
                assert_eq!(got, vec![7u8; 1 << 16]);
            }
            Err(e) => {
                assert!(!why_not(&e).is_empty());
                assert_eq!(dst.metadata().unwrap().len(), 0);
            }
        }
    }
}
