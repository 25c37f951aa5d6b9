//! A local file as a byte stream, read on blocking threads straight into
//! the chunks it yields: the async side copies nothing, so a layout's or the
//! node cache's blobs cost the runtime thread that polls them no work per
//! byte (with `tokio::fs::File`, that thread copied every byte once more).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;

use crate::registry::ByteStream;

/// Bytes per read: large enough that syscalls and thread hand-offs don't
/// dominate, small enough that several chunks of each blob fit the
/// in-flight budget.
const READ_CHUNK: usize = 512 * 1024;

/// `len` bytes of `file` from `offset` (to its end when `None`), keeping
/// `guard` (a cache lock) until the stream is dropped. A file shorter than
/// `len` is an error, not a short stream.
pub fn file_stream<G: Send + 'static>(
    file: File,
    offset: u64,
    len: Option<u64>,
    guard: G,
) -> ByteStream {
    let state = (Arc::new(file), offset, len.map(|l| offset + l), guard);
    Box::pin(futures_util::stream::unfold(
        state,
        |(file, pos, end, guard)| async move {
            let want = match end {
                Some(end) => (end - pos).min(READ_CHUNK as u64) as usize,
                None => READ_CHUNK,
            };
            if want == 0 {
                return None;
            }
            let reader = file.clone();
            let read = tokio::task::spawn_blocking(move || read_at(&reader, pos, want))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("read thread failed: {e}"))));
            match read {
                Ok(chunk) if chunk.is_empty() && end.is_none() => None,
                Ok(chunk) if chunk.is_empty() => Some((
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends at byte {pos}, before the blob does"),
                    )),
                    (file, u64::MAX, Some(u64::MAX), guard),
                )),
                Ok(chunk) => {
                    let next = pos + chunk.len() as u64;
                    Some((Ok(chunk), (file, next, end, guard)))
                }
                // Ends the stream after the error.
                Err(e) => Some((Err(e), (file, u64::MAX, Some(u64::MAX), guard))),
            }
        },
    ))
}

/// Up to `want` bytes at `pos`, fewer only at the end of the file. A pipe
/// (a layout blob fed by another process) has no positions: it is read in
/// order, which is the order this stream asks for.
fn read_at(file: &File, pos: u64, want: usize) -> io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    while buf.len() < want {
        let filled = buf.len();
        // SAFETY: the pointer and length describe the vector's spare
        // capacity, which pread only writes to; the length is raised by
        // exactly the bytes it reports written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                want - filled,
                (pos + filled as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
            _ => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ESPIPE) {
                    let mut rest = vec![0u8; want - filled];
                    let n = std::io::Read::read(&mut &*file, &mut rest)?;
                    // What the pipe has now: its writer may be slow.
                    buf.extend_from_slice(&rest[..n]);
                    break;
                } else if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn whole_files_ranges_and_short_files() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 123)).map(|i| i as u8).collect();
        f.write_all(&data).unwrap();
        let again = || f.try_clone().unwrap();
        assert_eq!(
            collect(file_stream(again(), 0, None, ())).await.unwrap(),
            data
        );
        assert_eq!(
            collect(file_stream(again(), 7, Some(READ_CHUNK as u64 + 9), ()))
                .await
                .unwrap(),
            &data[7..7 + READ_CHUNK + 9]
        );
        let e = collect(file_stream(again(), 100, Some(data.len() as u64), ()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
