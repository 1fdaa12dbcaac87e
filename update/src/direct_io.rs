//! Writing a slot, reading it back, and reading a bundle file, past the page cache
//! (`O_DIRECT`).
//!
//! Through the page cache every MiB of a slot is copied into cache pages, tracked as dirty
//! and written back by the kernel. On a small board's CPU, and under emulation, that
//! bookkeeping costs more than the storage: a `dd` of a root image to its slot took about
//! three times as long through the cache as with `oflag=direct` on the QEMU boards. An
//! install writes the slot once and reads it back once, so caching it buys nothing. Reading
//! past the cache is also what makes the read-back honest: it returns what the storage
//! holds, not what the kernel remembers having written.
//!
//! Where `O_DIRECT` is refused (a filesystem without it, in tests) both fall back to plain
//! reads and writes on the same file, with the cache dropped before the read-back.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::mpsc;

/// Alignment of direct I/O offsets, lengths and buffers: the largest logical block size
/// in use (4 KiB sectors), which also satisfies 512-byte devices.
const ALIGN: usize = 4096;

/// Size of the buffer between the caller and the storage: one request per MiB.
const BUFFER: usize = 1 << 20;

/// A zeroed heap buffer aligned for direct I/O.
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory like a Vec<u8>; nothing else points into it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (`layout` makes it at least ALIGN).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        let mut buf = AlignedBuf {
            ptr,
            len: layout.size(),
        };
        crate::memory::populate(buf.bytes_mut());
        buf
    }

    fn layout(len: usize) -> std::alloc::Layout {
        let size = len.max(ALIGN).next_multiple_of(ALIGN);
        // Size and alignment are both non-zero multiples of a power of two: always valid.
        std::alloc::Layout::from_size_align(size, ALIGN).unwrap_or_else(|_| unreachable!())
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised (zeroed, then written) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// A slot (a partition, or a file in tests) opened for an install.
pub struct SlotFile {
    plain: File,
    /// The same file opened with `O_DIRECT`, where the kernel allows it.
    direct: Option<File>,
}

/// `path` opened with `options`, and once more with `O_DIRECT` where the kernel allows it.
fn open_with_direct(
    options: &mut std::fs::OpenOptions,
    path: &Path,
) -> std::io::Result<(File, Option<File>)> {
    let plain = options.open(path)?;
    let direct = options.custom_flags(libc::O_DIRECT).open(path).ok();
    Ok((plain, direct))
}

impl SlotFile {
    pub fn open(path: &Path) -> std::io::Result<SlotFile> {
        let (plain, direct) =
            open_with_direct(std::fs::OpenOptions::new().read(true).write(true), path)?;
        Ok(SlotFile { plain, direct })
    }

    /// The slot through the page cache, for its size and the final flush.
    pub fn file(&self) -> &File {
        &self.plain
    }

    /// Writes `bytes` at `offset`: directly where offset and length allow it, else through
    /// the cache (only a short last piece is ever left over for that).
    fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        match &self.direct {
            Some(direct) if offset % ALIGN as u64 == 0 => {
                let whole = bytes.len() / ALIGN * ALIGN;
                direct.write_all_at(&bytes[..whole], offset)?;
                self.plain
                    .write_all_at(&bytes[whole..], offset + whole as u64)
            }
            _ => self.plain.write_all_at(bytes, offset),
        }
    }

    /// A writer from the start of the slot. Its `flush` writes out what it still holds;
    /// only `File::sync_all` on [`SlotFile::file`] makes it durable.
    pub fn writer(&self) -> SlotWriter<'_> {
        SlotWriter {
            slot: self,
            buf: AlignedBuf::new(BUFFER),
            filled: 0,
            offset: 0,
        }
    }

    /// A reader of the slot's first `len` bytes that sees what the storage holds, reading
    /// ahead of its caller so the storage and the caller's checks overlap.
    pub fn reader(&self, len: u64) -> std::io::Result<ReadAhead> {
        if self.direct.is_none() {
            // SAFETY: advisory call on a descriptor we own. Clean pages go; what cannot
            // be dropped is re-read from the storage anyway once the caller has flushed.
            unsafe {
                libc::posix_fadvise(self.plain.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        let direct = self.direct.as_ref().map(File::try_clone).transpose()?;
        Ok(ReadAhead::start(self.plain.try_clone()?, direct, len))
    }
}

/// Sequential writes to a slot, gathered into aligned whole-MiB requests.
pub struct SlotWriter<'a> {
    slot: &'a SlotFile,
    buf: AlignedBuf,
    filled: usize,
    offset: u64,
}

impl SlotWriter<'_> {
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.filled > 0 {
            self.slot
                .write_at(&self.buf.bytes()[..self.filled], self.offset)?;
            self.offset += self.filled as u64;
            self.filled = 0;
        }
        Ok(())
    }
}

impl Write for SlotWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let space = &mut self.buf.bytes_mut()[self.filled..];
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == self.buf.len {
            self.write_out()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_out()
    }
}

/// MiB a [`ReadAhead`] reads before its reader asks for them.
const READ_AHEAD: usize = 4;

/// A file read once from the start, past the page cache, by a thread that keeps a few MiB
/// ahead of the reader: a local bundle, or a slot's read-back. Through the cache, the
/// install's reading thread spent more time in `read` than any other thread spent on
/// anything (the kernel copies and tracks every page, and reads ahead only 128 KiB at a
/// time on a virtio disk); reading directly, in whole MiB, several requests ahead, the
/// reads wait on neither. The read-back's checks, likewise, no longer wait on the storage.
///
/// Where `O_DIRECT` is refused (tmpfs, some FUSE mounts) the same thread reads through
/// the cache.
pub struct ReadAhead {
    filled: mpsc::Receiver<std::io::Result<(AlignedBuf, usize)>>,
    free: mpsc::Sender<AlignedBuf>,
    current: Option<(AlignedBuf, usize)>,
    start: usize,
}

impl ReadAhead {
    pub fn open(path: &Path) -> std::io::Result<ReadAhead> {
        let (plain, direct) = open_with_direct(std::fs::OpenOptions::new().read(true), path)?;
        Ok(ReadAhead::start(plain, direct, u64::MAX))
    }

    /// Reads `plain` (through `direct` where it can) up to its end or `limit` bytes; a few
    /// bytes past `limit` may come too, where the end of the last aligned read falls.
    fn start(plain: File, direct: Option<File>, limit: u64) -> ReadAhead {
        let (to_reader, filled) = mpsc::sync_channel(READ_AHEAD);
        let (free, free_bufs) = mpsc::channel();
        for _ in 0..READ_AHEAD + 1 {
            // The receiver is alive: the send cannot fail.
            let _ = free.send(AlignedBuf::new(BUFFER));
        }
        std::thread::spawn(move || read_ahead(plain, direct, limit, free_bufs, to_reader));
        ReadAhead {
            filled,
            free,
            current: None,
            start: 0,
        }
    }
}

/// The read-ahead thread: fills free buffers in file order until the end of the file or
/// `limit`, an error, or the reader going away.
fn read_ahead(
    plain: File,
    mut direct: Option<File>,
    limit: u64,
    free: mpsc::Receiver<AlignedBuf>,
    to_reader: mpsc::SyncSender<std::io::Result<(AlignedBuf, usize)>>,
) {
    let mut offset = 0u64;
    while let Ok(mut buf) = free.recv() {
        // Whole aligned blocks up to the limit, as direct reads need.
        let want = (limit.saturating_sub(offset))
            .min(buf.len as u64)
            .next_multiple_of(ALIGN as u64) as usize;
        let mut n = 0;
        let result = loop {
            if n == want {
                break Ok(());
            }
            let at = offset + n as u64;
            let read = match &direct {
                Some(d) if at % ALIGN as u64 == 0 => d.read_at(&mut buf.bytes_mut()[n..want], at),
                _ => plain.read_at(&mut buf.bytes_mut()[n..want], at),
            };
            match read {
                Ok(0) => break Ok(()),
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A filesystem that opened the file with O_DIRECT but will not read it so.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct.is_some() => {
                    direct = None
                }
                Err(e) => break Err(e),
            }
        };
        offset += n as u64;
        let end = n == 0 || result.is_err();
        if to_reader.send(result.map(|()| (buf, n))).is_err() || end {
            return;
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((buf, len)) = &self.current {
                if self.start < *len {
                    let n = out.len().min(len - self.start);
                    out[..n].copy_from_slice(&buf.bytes()[self.start..self.start + n]);
                    self.start += n;
                    return Ok(n);
                }
                if *len == 0 {
                    return Ok(0);
                }
            }
            if let Some((buf, _)) = self.current.take() {
                // The thread is gone once the file has ended; the buffer is not needed then.
                let _ = self.free.send(buf);
            }
            match self.filled.recv() {
                Ok(Ok(next)) => {
                    self.current = Some(next);
                    self.start = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ends after handing over the end of the file or an error, and
                // the reader stops asking at either.
                Err(_) => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// A slot file filled with 0xEE, opened as the install opens it (direct where this
    /// filesystem allows it) or through the cache only, as where `O_DIRECT` is refused.
    fn slot_file(len: usize, direct: bool) -> (tempfile::TempDir, SlotFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0xEEu8; len]).unwrap();
        let mut slot = SlotFile::open(&path).unwrap();
        if !direct {
            slot.direct = None;
        }
        (dir, slot)
    }

    #[test]
    fn writes_and_reads_back_exactly_including_an_unaligned_tail() {
        for direct in [true, false] {
            let (dir, slot) = slot_file(4 * BUFFER, direct);
            let src = data(2 * BUFFER + 5000);
            let mut w = slot.writer();
            // Pieces of odd sizes, as a network stream hands them out.
            for piece in src.chunks(77_777) {
                w.write_all(piece).unwrap();
            }
            w.flush().unwrap();
            slot.file().sync_all().unwrap();
            let on_disk = std::fs::read(dir.path().join("slot")).unwrap();
            assert_eq!(&on_disk[..src.len()], &src[..], "direct: {direct}");
            assert!(
                on_disk[src.len()..].iter().all(|&b| b == 0xEE),
                "wrote past the end of the data (direct: {direct})"
            );
            let mut back = vec![0u8; src.len()];
            slot.reader(src.len() as u64)
                .unwrap()
                .read_exact(&mut back)
                .unwrap();
            assert_eq!(back, src, "direct: {direct}");
        }
    }

    #[test]
    fn the_reader_sees_the_storage_not_what_it_read_before() {
        for direct in [true, false] {
            let (dir, slot) = slot_file(2 * BUFFER, direct);
            let mut first = vec![0u8; 4096];
            slot.reader(4096).unwrap().read_exact(&mut first).unwrap();
            // Changed behind the slot's back, through another descriptor.
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("slot"))
                .unwrap()
                .write_all_at(b"changed", 0)
                .unwrap();
            let mut again = vec![0u8; 7];
            slot.reader(7).unwrap().read_exact(&mut again).unwrap();
            assert_eq!(&again, b"changed", "direct: {direct}");
        }
    }

    #[test]
    fn read_ahead_yields_the_file_exactly_in_pieces_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, ALIGN + 3, 3 * BUFFER, READ_AHEAD * BUFFER * 2 + 12345] {
            let path = dir.path().join(format!("bundle-{len}"));
            let src = data(len);
            std::fs::write(&path, &src).unwrap();
            let mut r = ReadAhead::open(&path).unwrap();
            let mut got = Vec::new();
            // Odd-sized reads, as the bundle's header, manifest and sections make them.
            let mut piece = vec![0u8; 77_777];
            loop {
                let n = r.read(&mut piece).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&piece[..n]);
            }
            assert_eq!(got.len(), src.len());
            assert!(got == src, "{len} bytes read back differ");
            assert_eq!(r.read(&mut piece).unwrap(), 0, "reads on after the end");
        }
    }

    #[test]
    fn a_slot_reader_stops_at_its_limit_rounded_to_a_block() {
        let (_dir, slot) = slot_file(4 * BUFFER, true);
        let mut all = Vec::new();
        slot.reader(BUFFER as u64 + 10)
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all.len(), BUFFER + ALIGN);
    }

    #[test]
    fn read_ahead_reports_a_missing_file_and_can_be_dropped_early() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ReadAhead::open(&dir.path().join("absent")).is_err());
        let path = dir.path().join("big");
        std::fs::write(&path, data(8 * BUFFER)).unwrap();
        let mut r = ReadAhead::open(&path).unwrap();
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        assert_eq!(&first[..], &data(10)[..]);
        drop(r);
    }

    #[test]
    fn an_aligned_buffer_is_aligned_and_zeroed() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.bytes().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.len, 8192);
        assert!(b.bytes().iter().all(|&x| x == 0));
    }
}
