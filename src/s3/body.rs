//! Response bodies read from a [`VerifiedFile`]: off the async workers, in
//! frames of [`CHUNK`] bytes, into buffers reused from a pool.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::Frame;
use prometheus_client::metrics::counter::Counter;

use super::catalog::VerifiedFile;

/// Bytes read from disk per body frame.
const CHUNK: u64 = 1 << 20;

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// Body buffers, reused: a fresh 1 MiB a frame costs zeroing and a page
/// fault a page, as much CPU as the copy itself, and the pull beside it
/// shares those CPUs. At most [`POOLED`] buffers wait between frames.
#[derive(Clone, Default)]
pub struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

const POOLED: usize = 16;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| vec![0u8; CHUNK as usize])
    }
}

/// A frame's bytes, its buffer going back to the pool once sent.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    home: Buffers,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut pool = self.home.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// `len` bytes of a verified file from `start`, read off the async workers.
pub(super) fn file_body(
    file: Arc<VerifiedFile>,
    start: u64,
    len: u64,
    counter: Counter,
    buffers: Buffers,
) -> Body {
    let stream = futures_util::stream::try_unfold((start, len), move |(pos, left)| {
        let (file, counter, buffers) = (file.clone(), counter.clone(), buffers.clone());
        async move {
            if left == 0 {
                return Ok(None);
            }
            let n = left.min(CHUNK) as usize;
            let lent = tokio::task::spawn_blocking(move || {
                let mut buf = buffers.take();
                file.file.read_exact_at(&mut buf[..n], pos)?;
                Ok::<_, std::io::Error>(Lent {
                    buf,
                    len: n,
                    home: buffers,
                })
            })
            .await
            .map_err(std::io::Error::other)??;
            counter.inc_by(n as u64);
            Ok(Some((
                Frame::data(Bytes::from_owner(lent)),
                (pos + n as u64, left - n as u64),
            )))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reused_buffer_sends_only_the_bytes_of_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            Arc::new(VerifiedFile {
                file: std::fs::File::open(dir.path().join(name)).unwrap(),
                size: bytes.len() as u64,
                etag: String::new(),
            })
        };
        let big: Vec<u8> = (0..CHUNK + 5).map(|i| i as u8 | 1).collect();
        let (a, b) = (open("a", &big), open("b", b"bb"));
        let buffers = Buffers::default();
        let body = |f: &Arc<VerifiedFile>, start, len| {
            let body = file_body(f.clone(), start, len, Counter::default(), buffers.clone());
            async move { body.collect().await.unwrap().to_bytes() }
        };
        assert_eq!(body(&a, 0, CHUNK + 5).await[..], big[..]);
        // The pool now holds buffers full of the first file's bytes.
        assert!(!buffers.0.lock().unwrap().is_empty());
        assert_eq!(body(&b, 0, 2).await[..], b"bb"[..]);
        assert_eq!(body(&a, 3, 4).await[..], big[3..7]);
        assert!(buffers.0.lock().unwrap().len() <= POOLED);
    }
}
