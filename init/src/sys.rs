//! Thin, typed wrappers over the Linux calls init needs (mount, module loading, reboot).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SysError {
    pub what: String,
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, SysError>;

fn cstr(p: &Path) -> CString {
    // Paths built by init never contain NUL; a NUL would only shorten the path.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if ret < 0 {
        Err(SysError {
            what: what(),
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let src = CString::new(source).unwrap_or_default();
    let tgt = cstr(target);
    let fs = CString::new(fstype).unwrap_or_default();
    let data_c = data.map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
        )
    };
    check(ret, || {
        format!("mount {source} on {} ({fstype})", target.display())
    })
}

pub fn move_mount(from: &Path, to: &Path) -> Result<()> {
    let f = cstr(from);
    let t = cstr(to);
    // SAFETY: valid C strings; MS_MOVE takes no fstype or data.
    let ret = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    check(ret, || {
        format!("move mount {} to {}", from.display(), to.display())
    })
}

pub fn umount(target: &Path, flags: libc::c_int) -> Result<()> {
    let t = cstr(target);
    // SAFETY: valid C string.
    let ret = unsafe { libc::umount2(t.as_ptr(), flags) };
    check(ret, || format!("unmount {}", target.display()))
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

/// Loads one kernel module file with `params` (e.g. `async_probe=1`); `.ko.xz`/`.ko.zst`
/// files are decompressed by the kernel. Returns Ok(false) if it was already loaded.
pub fn load_module(path: &Path, params: &std::ffi::CStr) -> Result<bool> {
    const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;
    let file = std::fs::File::open(path).map_err(|source| SysError {
        what: format!("open module {}", path.display()),
        source,
    })?;
    let name = path.to_string_lossy();
    let flags = if name.ends_with(".ko") {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    use std::os::fd::AsRawFd;
    // SAFETY: finit_module reads from the open fd and the NUL-terminated parameter string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Ok(false);
        }
        return Err(SysError {
            what: format!("load module {}", path.display()),
            source: err,
        });
    }
    Ok(true)
}

pub fn sethostname(name: &str) -> Result<()> {
    // SAFETY: pointer and length describe the name's bytes.
    let ret = unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) };
    check(ret, || format!("set hostname {name}"))
}

pub fn chroot(path: &Path) -> Result<()> {
    let p = cstr(path);
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(p.as_ptr()) }, || {
        format!("chroot {}", path.display())
    })
}

pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
}

/// Ends the system; never returns when it works.
pub fn reboot(cmd: libc::c_int) -> SysError {
    sync();
    // SAFETY: reboot with a valid command; only PID 1 (CAP_SYS_BOOT) reaches here.
    unsafe { libc::reboot(cmd) };
    SysError {
        what: "reboot".into(),
        source: io::Error::last_os_error(),
    }
}

/// Restarts with an argument for the firmware (`0 tryboot` on a Raspberry Pi); never returns
/// when it works.
pub fn reboot_with_argument(arg: &str) -> SysError {
    sync();
    let Ok(c) = std::ffi::CString::new(arg) else {
        return SysError {
            what: format!("reboot argument {arg:?}"),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        };
    };
    // SAFETY: the raw syscall with the documented magic numbers and a valid C string.
    unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_RESTART2,
            c.as_ptr(),
        )
    };
    SysError {
        what: "reboot".into(),
        source: io::Error::last_os_error(),
    }
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn ctrl_alt_del_to_signal() {
    // SAFETY: LINUX_REBOOT_CMD_CAD_OFF only changes what the key combination does.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };
}

/// Mounts the basic kernel filesystems; already-mounted ones are left as they are.
pub fn mount_kernel_filesystems(root: &Path) -> Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (src, dir, fs, flags, data) in [
        ("proc", "proc", "proc", nosuid, None),
        ("sysfs", "sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
    ] {
        let target = root.join(dir);
        let _ = std::fs::create_dir_all(&target);
        if !is_mountpoint(&target) {
            mount(src, &target, fs, flags, data)?;
        }
    }
    Ok(())
}
