//! Memory for the buffers an install streams through.

/// `MADV_POPULATE_WRITE` (Linux 5.14), the same number on every architecture.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Backs a freshly allocated buffer with memory now, in one call, instead of one page
/// fault at the first write to each of its pages. An install fills about two dozen MiB of
/// fresh buffers once; under emulation on qemu-aarch64, allocating and first writing 1 MiB
/// ran at 69 MB/s a page fault at a time and at 286 MB/s populated (x86_64: 395 and 454).
/// Where the kernel is older or refuses, the pages fault in as before.
pub fn populate(buf: &mut [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    // Only whole pages inside the buffer: the edges may share a page with other memory.
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(page);
    let end = (buf.as_mut_ptr() as usize + buf.len()) / page * page;
    if end > start {
        // SAFETY: the range lies inside `buf`, memory we own and may write; populating
        // it changes no byte of it.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
    }
}
