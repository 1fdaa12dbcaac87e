//! Streaming a bundle section to its destination while it is hashed, and checking what
//! the destination gives back.
//!
//! SHA-256 is the slow part of an install: on a small board (or under emulation) it runs
//! slower than the storage writes. So the hash runs on a second thread, beside the reads
//! and writes, over the same chunk buffers; the copy then goes as fast as the slower of
//! the two instead of their sum. The same pass records a CRC32 of every chunk, so the
//! read-back after the write compares each chunk against bytes that already passed the
//! SHA-256 check without hashing the whole slot a second time.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Chunk size of copies and of the read-back check: large enough for full-speed
/// sequential writes, small enough that a few fit in a Raspberry Pi Zero's memory.
pub const CHUNK: usize = 1 << 20;

/// Chunks in flight between the copying thread and the hashing thread.
const IN_FLIGHT: usize = 4;

/// What a copy saw: the SHA-256 of every byte and a CRC32 of each `CHUNK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub sha256: String,
    pub chunk_crcs: Vec<u32>,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("reading: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing: {0}")]
    Write(#[source] std::io::Error),
}

/// Fills `buf` from `r` unless the source ends first; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies exactly `expected` bytes from `from` to `out`, hashing them on a second thread
/// and writing them on a third. `progress` hears the bytes read so far. Nothing past
/// `expected` is read.
///
/// The writes have a thread of their own so that waiting for the storage never holds up
/// the reads that keep the hashing thread fed; the hash is the slowest of the three.
pub fn hashed_copy(
    from: &mut impl Read,
    out: &mut (impl Write + Send),
    expected: u64,
    mut progress: impl FnMut(u64),
) -> Result<Copied, CopyError> {
    let (to_hash, hash_queue) = mpsc::sync_channel::<Arc<Vec<u8>>>(IN_FLIGHT);
    let (to_write, write_queue) = mpsc::sync_channel::<Arc<Vec<u8>>>(IN_FLIGHT);
    // Both workers hand every buffer back; it is free again once neither holds it.
    let (give_back, returned) = mpsc::channel::<Arc<Vec<u8>>>();
    let chunk = CHUNK.min(expected.max(1) as usize);
    // Enough for both queues to be full while the reading thread fills one more.
    for _ in 0..2 * IN_FLIGHT + 1 {
        // The receiver is still here: the send cannot fail.
        let _ = give_back.send(Arc::new(vec![0u8; chunk]));
    }
    let write_failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let hash_give_back = give_back.clone();
        let hasher = s.spawn(move || {
            let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
            for buf in hash_queue {
                sha.update(&buf);
                // The reading thread may have stopped early; the buffer is then not needed.
                let _ = hash_give_back.send(buf);
            }
            hex::encode(sha.finish())
        });
        let write_failed = &write_failed;
        let writer = s.spawn(move || -> std::io::Result<()> {
            let mut result = Ok(());
            // After a failure the queue is still drained, so every buffer goes back and the
            // reading thread, told by the flag, never waits for one that is held here.
            for buf in write_queue {
                if result.is_ok() {
                    result = out.write_all(&buf);
                    if result.is_err() {
                        write_failed.store(true, Ordering::Relaxed);
                    }
                }
                let _ = give_back.send(buf);
            }
            // A buffering writer holds the last piece until told.
            result.and_then(|()| out.flush())
        });
        let mut done = 0u64;
        // The CRCs are taken here: this thread waits on neither the hash nor the storage.
        let mut chunk_crcs = Vec::new();
        let stopped =
            |who: &str| CopyError::Read(std::io::Error::other(format!("the {who} thread stopped")));
        let read = (|| {
            while done < expected && !write_failed.load(Ordering::Relaxed) {
                let mut buf = returned.recv().map_err(|_| stopped("hashing"))?;
                // A buffer comes back once from each worker: the second return is the one
                // that leaves it unshared.
                let Some(bytes) = Arc::get_mut(&mut buf) else {
                    continue;
                };
                let want = (expected - done).min(chunk as u64) as usize;
                bytes.resize(want, 0);
                let n = fill(from, bytes).map_err(CopyError::Read)?;
                if n < want {
                    return Err(CopyError::Truncated {
                        got: done + n as u64,
                        expected,
                    });
                }
                chunk_crcs.push(crc32fast::hash(&buf));
                to_hash.send(buf.clone()).map_err(|_| stopped("hashing"))?;
                to_write.send(buf).map_err(|_| stopped("writing"))?;
                done += want as u64;
                progress(done);
            }
            Ok(())
        })();
        drop(to_hash);
        drop(to_write);
        let written = writer
            .join()
            .map_err(|_| CopyError::Write(std::io::Error::other("the writing thread panicked")))?;
        let sha256 = hasher
            .join()
            .map_err(|_| CopyError::Read(std::io::Error::other("the hashing thread panicked")))?;
        // The writer's failure explains anything the reading thread saw after it.
        written.map_err(CopyError::Write)?;
        read?;
        Ok(Copied { sha256, chunk_crcs })
    })
}

/// Reads `chunk_crcs.len()` chunks (the last one short, to make `total` bytes) from `r` and
/// tells whether each has the CRC32 recorded when it was written. `progress` hears the
/// bytes checked so far.
pub fn matches_chunks(
    r: &mut impl Read,
    chunk_crcs: &[u32],
    total: u64,
    mut progress: impl FnMut(u64),
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for crc in chunk_crcs {
        let want = (total - done).min(CHUNK as u64) as usize;
        if want == 0 || fill(r, &mut buf[..want])? < want || crc32fast::hash(&buf[..want]) != *crc {
            return Ok(false);
        }
        done += want as u64;
        progress(done);
    }
    Ok(done == total)
}

/// SHA-256 and length of everything a reader yields.
pub fn hash_stream(r: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = fill(r, &mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(sha.finish()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 1000 bytes per call, as a network stream does.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn copies_exactly_and_hashes_what_it_copied() {
        let src = data(3 * CHUNK + 12345);
        let expected = src.len() as u64;
        let mut with_tail = src.clone();
        with_tail.extend_from_slice(b"next section");
        let mut from = Trickle(&with_tail);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let c = hashed_copy(&mut from, &mut out, expected, |d| seen.push(d)).unwrap();
        assert_eq!(out, src);
        assert_eq!(from.0, b"next section", "read past the section");
        assert_eq!(c.sha256, hash_stream(&mut &src[..]).unwrap().0);
        assert_eq!(
            c.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &src))
        );
        assert_eq!(c.chunk_crcs.len(), 4);
        assert_eq!(c.chunk_crcs[3], crc32fast::hash(&src[3 * CHUNK..]));
        assert_eq!(seen.last(), Some(&expected));
        assert!(matches_chunks(&mut &out[..], &c.chunk_crcs, expected, |_| {}).unwrap());
    }

    #[test]
    fn a_short_source_is_truncation_not_success() {
        let src = data(CHUNK + 10);
        let err =
            hashed_copy(&mut &src[..], &mut Vec::new(), 2 * CHUNK as u64, |_| {}).unwrap_err();
        assert!(
            matches!(err, CopyError::Truncated { got, .. } if got == src.len() as u64),
            "{err}"
        );
    }

    #[test]
    fn a_failing_destination_stops_the_copy() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("no space left"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let src = data(3 * CHUNK);
        let err = hashed_copy(&mut &src[..], &mut Full, src.len() as u64, |_| {}).unwrap_err();
        assert!(matches!(err, CopyError::Write(_)), "{err}");
    }

    #[test]
    fn an_empty_section_hashes_to_the_empty_digest() {
        let c = hashed_copy(&mut &b""[..], &mut Vec::new(), 0, |_| {}).unwrap();
        assert_eq!(
            c.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(c.chunk_crcs.is_empty());
    }

    #[test]
    fn the_read_back_check_catches_one_changed_byte() {
        let src = data(2 * CHUNK + 7);
        let total = src.len() as u64;
        let mut out = Vec::new();
        let c = hashed_copy(&mut &src[..], &mut out, total, |_| {}).unwrap();
        for at in [0, CHUNK + 3, 2 * CHUNK + 6] {
            let mut bad = out.clone();
            bad[at] ^= 1;
            assert!(!matches_chunks(&mut &bad[..], &c.chunk_crcs, total, |_| {}).unwrap());
        }
        assert!(!matches_chunks(
            &mut &out[..total as usize - 1],
            &c.chunk_crcs,
            total,
            |_| {}
        )
        .unwrap());
    }
}
