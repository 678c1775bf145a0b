//! The body of a streamed blob upload: the source registry's answer, chunk by chunk, checked
//! on the way (size and sha256 digest) and counted for progress. Nothing is buffered beyond
//! the chunk in flight; a wrong byte count or digest ends the stream with an error, so the
//! upload fails instead of storing a wrong blob (the registry checks `?digest=` as well).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

/// How often, in bytes, progress is reported while a blob streams.
pub(crate) const REPORT_EVERY: u64 = 1024 * 1024;

/// Why a streamed body ended early, kept for the engine to classify the failed upload.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Reading the source failed.
    Source(reqwest::Error),
    /// The source sent more or fewer bytes than the manifest says.
    Size {
        /// Bytes received (when more: as soon as the size was exceeded).
        received: u64,
    },
    /// The bytes hash to another digest.
    Digest {
        /// `sha256:` of what was received.
        computed: String,
    },
}

/// Where a stream's [`Fault`] is left.
pub(crate) type FaultSlot = Arc<Mutex<Option<Fault>>>;

/// Takes the fault a stream left, if any.
pub(crate) fn take_fault(slot: &FaultSlot) -> Option<Fault> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

struct State<S, F> {
    source: Pin<Box<S>>,
    expected_digest: String,
    expected_size: u64,
    hasher: Sha256,
    received: u64,
    reported: u64,
    on_bytes: F,
    fault: FaultSlot,
    done: bool,
}

impl<S, F> State<S, F> {
    fn fail(&mut self, fault: Fault) -> io::Error {
        self.done = true;
        let text = format!("{fault:?}");
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
        io::Error::other(text)
    }
}

/// `source` checked against `expected_digest` (`sha256:<hex>`) and `expected_size`;
/// `on_bytes(received)` is called every [`REPORT_EVERY`] bytes and at the end.
pub(crate) fn verified<S, F>(
    source: S,
    expected_digest: &str,
    expected_size: u64,
    on_bytes: F,
    fault: FaultSlot,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    F: Fn(u64) + Send + 'static,
{
    let state = State {
        source: Box::pin(source),
        expected_digest: expected_digest.to_owned(),
        expected_size,
        hasher: Sha256::new(),
        received: 0,
        reported: 0,
        on_bytes,
        fault,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        match s.source.next().await {
            Some(Ok(chunk)) => {
                s.received += chunk.len() as u64;
                if s.received > s.expected_size {
                    let received = s.received;
                    let e = s.fail(Fault::Size { received });
                    return Some((Err(e), s));
                }
                s.hasher.update(&chunk);
                if s.received - s.reported >= REPORT_EVERY {
                    s.reported = s.received;
                    (s.on_bytes)(s.received);
                }
                Some((Ok(chunk), s))
            }
            Some(Err(e)) => {
                let e = s.fail(Fault::Source(e));
                Some((Err(e), s))
            }
            None => {
                if s.received != s.expected_size {
                    let received = s.received;
                    let e = s.fail(Fault::Size { received });
                    return Some((Err(e), s));
                }
                let hasher = std::mem::take(&mut s.hasher);
                let computed = format!("sha256:{:x}", hasher.finalize());
                if computed != s.expected_digest {
                    let e = s.fail(Fault::Digest { computed });
                    return Some((Err(e), s));
                }
                if s.reported != s.received || s.received == 0 {
                    (s.on_bytes)(s.received);
                }
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn digest(data: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(data))
    }

    async fn run(
        chunks: Vec<&'static [u8]>,
        digest: &str,
        size: u64,
    ) -> (Vec<u8>, Option<Fault>, u64) {
        let source = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, reqwest::Error>(Bytes::from_static(c))),
        );
        let slot = FaultSlot::default();
        let last = Arc::new(AtomicU64::new(0));
        let seen = last.clone();
        let mut out = Vec::new();
        let mut stream = Box::pin(verified(
            source,
            digest,
            size,
            move |n| seen.store(n, Ordering::Relaxed),
            slot.clone(),
        ));
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
        (out, take_fault(&slot), last.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn passes_the_bytes_through_and_reports_the_total() {
        let d = digest(b"hello world");
        let (out, fault, reported) = run(vec![b"hello ", b"world"], &d, 11).await;
        assert_eq!(out, b"hello world");
        assert!(fault.is_none(), "{fault:?}");
        assert_eq!(reported, 11);
    }

    #[tokio::test]
    async fn wrong_digest_or_size_ends_the_stream_with_a_fault() {
        let d = digest(b"hello world");
        let (_, fault, _) = run(vec![b"hello ", b"WORLD"], &d, 11).await;
        assert!(matches!(fault, Some(Fault::Digest { .. })), "{fault:?}");
        let (_, fault, _) = run(vec![b"hello ", b"world"], &d, 12).await;
        assert!(
            matches!(fault, Some(Fault::Size { received: 11 })),
            "{fault:?}"
        );
        let (out, fault, _) = run(vec![b"hello ", b"world!"], &d, 11).await;
        assert!(
            matches!(fault, Some(Fault::Size { received: 12 })),
            "{fault:?}"
        );
        assert_eq!(out, b"hello ", "the chunk past the size is not passed on");
    }
}
