//! Streaming a bundle section to its destination while it is checked, and checking what
//! the destination gives back.
//!
//! Hashing is the slow part of an install: on a small board (or under emulation) one core
//! hashes slower than the storage writes. So the signed manifest carries a BLAKE3 digest
//! of every 1 MiB chunk of a section, and the chunks are hashed on several threads at once,
//! beside the thread that reads them and the one that writes them: the copy goes as fast
//! as the storage or all cores hashing together, whichever is slower. The same pass
//! records a fast non-cryptographic checksum (XXH64) of every chunk, so the read-back after
//! the write compares each chunk against bytes that already passed their signed hash
//! without hashing the slot again.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Chunk size of the per-chunk hashes, the copies and the read-back check: large enough
/// for full-speed sequential writes, small enough that a few fit in a Raspberry Pi Zero's
/// memory. Fixed by the bundle format.
pub const CHUNK: usize = 1 << 20;

/// Chunks waiting in each queue, to the hashing threads and to the writing thread.
const IN_FLIGHT: usize = 4;

/// The most hashing threads: more cores than this are left to the node's workloads.
const MAX_HASHERS: usize = 4;

/// A chunk's 32-byte BLAKE3 digest.
pub type Digest = [u8; 32];

/// What a copy saw: the `read_back_check` of each `CHUNK` it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub chunk_checks: Vec<u64>,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("chunk {chunk} does not have its signed hash")]
    Mismatch { chunk: usize },
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

/// How many `CHUNK`s make `size` bytes (the last one may be short).
pub fn chunk_count(size: u64) -> usize {
    size.div_ceil(CHUNK as u64) as usize
}

/// The digest a manifest signs for each chunk: BLAKE3, a cryptographic hash that runs on
/// the vector unit every board has. Measured on the QEMU boards (one core, under
/// emulation), it hashed 1.3 times as fast as the fastest SHA-256 on the Cortex-A72 and 1.5
/// times on x86_64; on a Raspberry Pi 4, which has no SHA instructions, the gap is wider.
pub fn chunk_digest(bytes: &[u8]) -> Digest {
    blake3::hash(bytes).into()
}

/// What the read-back compares a chunk by: XXH64, which only has to catch storage that
/// returns other bytes than it was given (the signed digests already vouched for them).
/// It is taken twice over every byte of the slot, so it must cost next to nothing. XXH64 is
/// plain 64-bit integer arithmetic: under emulation it ran 4.5 times as fast as XXH3 (whose
/// vector code QEMU emulates instruction by instruction) on x86_64 and 2-3 times on
/// aarch64, about 3 GB/s on both; on hardware both are many times faster than any storage.
pub fn read_back_check(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// Hashing threads for this machine: one per core, at least one, at most `MAX_HASHERS`.
fn hashers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_HASHERS)
}

/// Copies sections of a stream while checking them (`copy`), keeping its chunk buffers
/// from one section to the next.
///
/// A fresh buffer costs a page fault for every 4 KiB the first time it is filled: cheap on
/// a board, but under emulation allocating and faulting in a dozen MiB took about as long
/// as hashing them, once for each section of a bundle.
#[derive(Default)]
pub struct Copier {
    spare: Vec<Vec<u8>>,
}

impl Copier {
    /// Copies exactly `expected` bytes from `from` to `out` and checks chunk `i` against
    /// `chunk_blake3[i]`. `progress` hears the bytes read so far. Nothing past `expected` is
    /// read. A mismatch stops the copy, but chunks already handed to `out` stay written: the
    /// destination must not be trusted unless this returns `Ok`.
    ///
    /// One thread reads, several hash, one writes: waiting for the storage never holds up the
    /// reads that keep the hashing threads fed, and the hash, the slowest part, uses every core.
    pub fn copy(
        &mut self,
        from: &mut impl Read,
        out: &mut (impl Write + Send),
        expected: u64,
        chunk_blake3: &[Digest],
        mut progress: impl FnMut(u64),
    ) -> Result<Copied, CopyError> {
        let chunks = chunk_count(expected);
        if chunk_blake3.len() != chunks {
            return Err(CopyError::Read(std::io::Error::other(format!(
                "{} chunk hashes for {chunks} chunks",
                chunk_blake3.len()
            ))));
        }
        let hashers = hashers();
        let (to_hash, hash_queue) = mpsc::sync_channel::<(usize, Arc<Vec<u8>>)>(IN_FLIGHT);
        let hash_queue = Mutex::new(hash_queue);
        let (to_write, write_queue) = mpsc::sync_channel::<Arc<Vec<u8>>>(IN_FLIGHT);
        // Every worker hands each buffer back; it is free again once no worker holds it.
        let (give_back, returned) = mpsc::channel::<Arc<Vec<u8>>>();
        let chunk = CHUNK.min(expected.max(1) as usize);
        // Enough for both queues to be full, every worker busy, and the reader filling one
        // more; a short section needs no more than one per chunk.
        for _ in 0..(2 * IN_FLIGHT + hashers + 2).min(chunks.max(1)) {
            let buf = self.spare.pop().unwrap_or_else(|| {
                let mut fresh = vec![0u8; chunk];
                crate::memory::populate(&mut fresh);
                fresh
            });
            // The receiver is still here: the send cannot fail.
            let _ = give_back.send(Arc::new(buf));
        }
        // Set by a worker that failed, so the reader stops instead of reading on.
        let stop = AtomicBool::new(false);
        let first_mismatch = AtomicUsize::new(usize::MAX);
        let result = std::thread::scope(|s| {
            let (stop, first_mismatch, hash_queue, returned) =
                (&stop, &first_mismatch, &hash_queue, &returned);
            let mut hashing = Vec::with_capacity(hashers);
            for _ in 0..hashers {
                let give_back = give_back.clone();
                hashing.push(s.spawn(move || loop {
                    // A poisoned lock only means another hashing thread panicked: stop too.
                    let next = match hash_queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => break,
                    };
                    let Ok((index, buf)) = next else { break };
                    if chunk_blake3.get(index) != Some(&chunk_digest(&buf)) {
                        first_mismatch.fetch_min(index, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                    }
                    // The reading thread may have stopped early; the buffer is then not needed.
                    let _ = give_back.send(buf);
                }));
            }
            let writer = s.spawn(move || -> std::io::Result<()> {
                let mut result = Ok(());
                // After a failure the queue is still drained, so every buffer goes back and the
                // reading thread, told to stop, never waits for one that is held here.
                for buf in write_queue {
                    if result.is_ok() {
                        result = out.write_all(&buf);
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    let _ = give_back.send(buf);
                }
                // A buffering writer holds the last piece until told.
                result.and_then(|()| out.flush())
            });
            let mut done = 0u64;
            // The checksums are taken here: this thread waits on neither the hash nor the storage.
            let mut chunk_checks = Vec::with_capacity(chunks);
            let stopped = || CopyError::Read(std::io::Error::other("a copying thread stopped"));
            let read = (|| {
                for index in 0..chunks {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut buf = returned.recv().map_err(|_| stopped())?;
                    // A buffer comes back once from each worker that had it: the return that
                    // leaves it unshared is the one that frees it.
                    while Arc::get_mut(&mut buf).is_none() {
                        buf = returned.recv().map_err(|_| stopped())?;
                    }
                    let Some(bytes) = Arc::get_mut(&mut buf) else {
                        return Err(stopped());
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
                    chunk_checks.push(read_back_check(&buf));
                    to_hash.send((index, buf.clone())).map_err(|_| stopped())?;
                    to_write.send(buf).map_err(|_| stopped())?;
                    done += want as u64;
                    progress(done);
                }
                Ok(())
            })();
            drop(to_hash);
            drop(to_write);
            let written = writer.join().map_err(|_| {
                CopyError::Write(std::io::Error::other("the writing thread panicked"))
            })?;
            // The hashing threads end with their queue; every chunk is checked once they have.
            for h in hashing {
                h.join().map_err(|_| {
                    CopyError::Read(std::io::Error::other("a hashing thread panicked"))
                })?;
            }
            // A write failure explains anything the reading thread saw after it, and a bad
            // chunk explains a stop.
            written.map_err(CopyError::Write)?;
            match first_mismatch.load(Ordering::Relaxed) {
                usize::MAX => read.map(|()| Copied { chunk_checks }),
                chunk => Err(CopyError::Mismatch { chunk }),
            }
        });
        // Every thread has ended: each buffer is back, once from each worker that held it, and
        // the last of its handles to be unwrapped is the only one left.
        self.spare.extend(
            returned
                .try_iter()
                .filter_map(|buf| Arc::try_unwrap(buf).ok()),
        );
        result
    }
}

/// Reads `chunk_checks.len()` chunks (the last one short, to make `total` bytes) from `r` and
/// tells whether each has the `read_back_check` recorded when it was written. `progress` hears the
/// bytes checked so far.
pub fn matches_chunks(
    r: &mut impl Read,
    chunk_checks: &[u64],
    total: u64,
    mut progress: impl FnMut(u64),
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    crate::memory::populate(&mut buf);
    let mut done = 0u64;
    for check in chunk_checks {
        let want = (total - done).min(CHUNK as u64) as usize;
        if want == 0 || fill(r, &mut buf[..want])? < want || read_back_check(&buf[..want]) != *check
        {
            return Ok(false);
        }
        done += want as u64;
        progress(done);
    }
    Ok(done == total)
}

/// What a bundle's manifest says about a section: its size, its SHA-256 and the BLAKE3
/// digest of each `CHUNK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionDigests {
    pub size: u64,
    pub sha256: String,
    pub chunk_blake3: Vec<String>,
}

/// Hands `f` everything a reader yields, a `CHUNK` at a time (the last one short); returns
/// the bytes read.
fn each_chunk(r: &mut impl Read, mut f: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = fill(r, &mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        f(&buf[..n]);
        size += n as u64;
    }
}

/// The digests of everything a reader yields, for the manifest of a new bundle.
pub fn section_digests(r: &mut impl Read) -> std::io::Result<SectionDigests> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut chunk_blake3 = Vec::new();
    let size = each_chunk(r, |chunk| {
        sha.update(chunk);
        chunk_blake3.push(hex::encode(chunk_digest(chunk)));
    })?;
    Ok(SectionDigests {
        size,
        sha256: hex::encode(sha.finish()),
        chunk_blake3,
    })
}

/// SHA-256 and length of everything a reader yields.
pub fn hash_stream(r: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let size = each_chunk(r, |chunk| sha.update(chunk))?;
    Ok((hex::encode(sha.finish()), size))
}

/// A digest from the 64 hex digits a manifest carries.
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(text, &mut d).ok()?;
    Some(d)
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

    fn chunk_digests(bytes: &[u8]) -> Vec<Digest> {
        section_digests(&mut &bytes[..])
            .unwrap()
            .chunk_blake3
            .iter()
            .map(|h| digest_from_hex(h).unwrap())
            .collect()
    }

    #[test]
    fn copies_exactly_what_its_chunk_hashes_sign() {
        let src = data(3 * CHUNK + 12345);
        let expected = src.len() as u64;
        let mut with_tail = src.clone();
        with_tail.extend_from_slice(b"next section");
        let mut from = Trickle(&with_tail);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let digests = chunk_digests(&src);
        let c = Copier::default()
            .copy(&mut from, &mut out, expected, &digests, |d| seen.push(d))
            .unwrap();
        assert_eq!(out, src);
        assert_eq!(from.0, b"next section", "read past the section");
        assert_eq!(c.chunk_checks.len(), 4);
        assert_eq!(c.chunk_checks[3], read_back_check(&src[3 * CHUNK..]));
        assert_eq!(seen.last(), Some(&expected));
        assert!(matches_chunks(&mut &out[..], &c.chunk_checks, expected, |_| {}).unwrap());
    }

    #[test]
    fn one_copier_reuses_its_buffers_across_sections_of_any_size() {
        let mut copier = Copier::default();
        let long = data(5 * CHUNK + 7);
        let short = data(1000);
        // A long section, a short one that takes a used buffer, and a long one again, which
        // has to grow the buffers the short one shrank.
        for src in [&long, &short, &long] {
            let mut out = Vec::new();
            let c = copier
                .copy(
                    &mut &src[..],
                    &mut out,
                    src.len() as u64,
                    &chunk_digests(src),
                    |_| {},
                )
                .unwrap();
            assert_eq!(&out, src);
            assert!(
                matches_chunks(&mut &out[..], &c.chunk_checks, src.len() as u64, |_| {}).unwrap()
            );
            assert!(!copier.spare.is_empty(), "the buffers came back");
        }
        let pipeline = 2 * IN_FLIGHT + hashers() + 2;
        assert!(
            copier.spare.len() <= pipeline,
            "{} spare buffers",
            copier.spare.len()
        );
    }

    #[test]
    fn section_digests_cover_the_whole_and_each_chunk() {
        let src = data(2 * CHUNK + 1);
        let d = section_digests(&mut &src[..]).unwrap();
        assert_eq!(d.size, src.len() as u64);
        assert_eq!(d.sha256, hash_stream(&mut &src[..]).unwrap().0);
        assert_eq!(d.chunk_blake3.len(), 3);
        assert_eq!(
            d.chunk_blake3[2],
            hex::encode(chunk_digest(&src[2 * CHUNK..]))
        );
        let empty = section_digests(&mut &b""[..]).unwrap();
        assert_eq!(
            (empty.size, empty.chunk_blake3.len(), empty.sha256.as_str()),
            (
                0,
                0,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
        );
    }

    #[test]
    fn a_changed_byte_anywhere_is_a_mismatch_of_its_chunk() {
        let src = data(5 * CHUNK + 99);
        let digests = chunk_digests(&src);
        for (at, chunk) in [(7, 0), (3 * CHUNK + 1, 3), (5 * CHUNK + 98, 5)] {
            let mut bad = src.clone();
            bad[at] ^= 0x40;
            let err = Copier::default()
                .copy(
                    &mut &bad[..],
                    &mut Vec::new(),
                    bad.len() as u64,
                    &digests,
                    |_| {},
                )
                .unwrap_err();
            assert!(
                matches!(err, CopyError::Mismatch { chunk: c } if c == chunk),
                "{err}"
            );
        }
    }

    #[test]
    fn the_wrong_number_of_chunk_hashes_is_refused() {
        let src = data(CHUNK + 1);
        let digests = chunk_digests(&src[..CHUNK]);
        assert!(Copier::default()
            .copy(
                &mut &src[..],
                &mut Vec::new(),
                src.len() as u64,
                &digests,
                |_| {}
            )
            .is_err());
    }

    #[test]
    fn a_short_source_is_truncation_not_success() {
        let src = data(CHUNK + 10);
        let digests = chunk_digests(&data(2 * CHUNK));
        let err = Copier::default()
            .copy(
                &mut &src[..],
                &mut Vec::new(),
                2 * CHUNK as u64,
                &digests,
                |_| {},
            )
            .unwrap_err();
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
        let src = data(30 * CHUNK);
        let digests = chunk_digests(&src);
        let mut from = &src[..];
        let err = Copier::default()
            .copy(&mut from, &mut Full, src.len() as u64, &digests, |_| {})
            .unwrap_err();
        assert!(matches!(err, CopyError::Write(_)), "{err}");
        assert!(!from.is_empty(), "read on after the destination failed");
    }

    #[test]
    fn an_empty_section_copies_nothing() {
        let c = Copier::default()
            .copy(&mut &b""[..], &mut Vec::new(), 0, &[], |_| {})
            .unwrap();
        assert!(c.chunk_checks.is_empty());
    }

    #[test]
    fn the_read_back_check_catches_one_changed_byte() {
        let src = data(2 * CHUNK + 7);
        let total = src.len() as u64;
        let mut out = Vec::new();
        let c = Copier::default()
            .copy(&mut &src[..], &mut out, total, &chunk_digests(&src), |_| {})
            .unwrap();
        for at in [0, CHUNK + 3, 2 * CHUNK + 6] {
            let mut bad = out.clone();
            bad[at] ^= 1;
            assert!(!matches_chunks(&mut &bad[..], &c.chunk_checks, total, |_| {}).unwrap());
        }
        assert!(!matches_chunks(
            &mut &out[..total as usize - 1],
            &c.chunk_checks,
            total,
            |_| {}
        )
        .unwrap());
    }
}
