//! Crash-safe file output: write to a temporary name, fsync, rename into place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Largest JSON file (config, index, adapter config) read into memory.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest `tokenizer.json` read into memory.
pub const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// Reads a UTF-8 text file of at most `max` bytes: a larger file is a `Limit` error and invalid
/// UTF-8 a `Format` error, both naming the file, checked before the contents are allocated.
pub fn read_text_limited(path: &Path, max: u64) -> Result<String> {
    let bytes = read_limited(path, max)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// What kind of non-regular file `meta` describes, or `None` for a regular file.
fn non_regular_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    Some(if t.is_file() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    })
}

/// The error for an input path that names something other than a regular file.
fn non_regular_error(path: &Path, kind: &str) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {kind}, not a regular file"),
        ),
    )
}

/// Opens `path` for reading if it is a regular file (symlinks followed).
///
/// A FIFO would block in `open` and a device (`/dev/zero`) reads without end while reporting a
/// length of 0, so every input file goes through here: the type is checked before opening,
/// the open does not block (`O_NONBLOCK` on Linux), and the opened file is checked again
/// (the path may have been swapped in between).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(kind) = non_regular_kind(&meta) {
        return Err(non_regular_error(path, kind));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // No effect on a regular file; keeps a FIFO swapped in after the check from blocking.
        opts.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let f = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if let Some(kind) = non_regular_kind(&meta) {
        return Err(non_regular_error(path, kind));
    }
    Ok(f)
}

/// Whether an optional input file is present: `Ok(false)` when nothing is at `path`, `Ok(true)`
/// for a regular file, an error naming it for anything else (a directory, FIFO or device
/// where a file belongs is a mistake to report, not a file to skip).
pub fn regular_file_exists(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) => match non_regular_kind(&meta) {
            None => Ok(true),
            Some(kind) => Err(non_regular_error(path, kind)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads a file of at most `max` bytes (a larger one is a `Limit` error naming it); only
/// regular files are read ([`open_regular`]).
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::Limit(format!(
            "{}: {len} bytes, more than the limit of {max}",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    // `take` also bounds a file that grows while it is read.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    if out.len() as u64 > max {
        return Err(Error::Limit(format!(
            "{}: more than the limit of {max} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces `path` with `bytes` crash-safely: writes a temporary sibling, fsyncs it, renames it
/// over `path` and fsyncs the directory. On failure `path` is untouched and the temporary removed.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", path.display())))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = write_file_synced(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(parent);
    Ok(())
}

/// Removes every `.NAME.tmp-PID[-N]` / `.NAME.old-PID-N` / `.NAME.link-PID` entry of `dir`
/// left by a save whose process died, whatever NAME: called when a run starts in an output
/// directory (and by [`publish_set`]), so the leftovers of saves that will never be repeated
/// (a killed run's checkpoint-N) go too.
pub fn remove_stale_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let f = file_name.to_string_lossy();
        let Some(rest) = f.strip_prefix('.') else {
            continue;
        };
        let tail = rest
            .rfind(".tmp-")
            .or_else(|| rest.rfind(".old-"))
            .map(|i| &rest[i + 5..])
            .or_else(|| rest.rfind(".link-").map(|i| &rest[i + 6..]));
        let Some(tail) = tail else { continue };
        let mut parts = tail.split('-');
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        // `.NAME.tmp-PID` (a file of write_file_atomic) or `.NAME.tmp-PID-N` (a directory).
        let seq_ok =
            parts.next().is_none_or(|n| n.parse::<u64>().is_ok()) && parts.next().is_none();
        if seq_ok && pid.is_some_and(|p| p != std::process::id() && !pid_alive(p)) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// fsyncs an existing file.
pub fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// fsyncs a directory so renames inside it are durable (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Distinguishes temporary directories of concurrent saves within one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether process `pid` is alive (on Linux; elsewhere every process counts as alive).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes `.NAME.tmp-PID-N` / `.NAME.old-PID-N` siblings left by saves whose process died
/// (killed mid-save): they are never the live copy, and nobody else will clean them up.
fn remove_stale(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let f = file_name.to_string_lossy();
        let Some(rest) = f
            .strip_prefix(&format!(".{name}.tmp-"))
            .or_else(|| f.strip_prefix(&format!(".{name}.old-")))
        else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !pid_alive(p)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Atomically swaps two existing paths (Linux `renameat2(RENAME_EXCHANGE)`); `Ok(false)` when
/// the filesystem or platform cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e)
            if e == rustix::io::Errno::INVAL
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::OPNOTSUPP =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Builds a directory with `fill` in a temporary sibling, then puts it in place of `dir`.
///
/// Crash safety: every file is fsynced before the switch; an existing `dir` is swapped with the
/// new one in one atomic `renameat2(RENAME_EXCHANGE)` (Linux), so at every instant `dir` is
/// either the complete old set or the complete new one, even if the process is killed. A failure
/// (including a full disk) removes the temporary directory and leaves `dir` untouched. Leftover
/// temporary directories of killed saves are removed by the next save of the same `dir`.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure_dir(parent)?;
    check_output_dir(dir)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a directory name", dir.display()))
        })?;
    remove_stale(parent, &name);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = parent.join(format!(".{name}.tmp-{tag}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    if std::fs::symlink_metadata(dir).is_ok() {
        match exchange(&tmp, dir) {
            Ok(true) => {
                // `tmp` now holds the old set.
                sync_dir(parent);
                let _ = std::fs::remove_dir_all(&tmp);
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::io(dir, e));
            }
        }
        // Without an atomic exchange: move the old set aside, then the new one in.
        let old = parent.join(format!(".{name}.old-{tag}"));
        let _ = std::fs::remove_dir_all(&old);
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, e));
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, e));
        }
        sync_dir(parent);
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    sync_dir(parent);
    Ok(())
}

/// Publishes a set of files into `dir` as one unit, for outputs that must sit at the top of a
/// directory shared with other things (a training run's final adapter beside its logs and
/// checkpoints, an eval's predictions, metrics and report).
///
/// The set is built in `dir/sub` by [`write_dir_atomic`] — one directory swap, so a kill or a
/// full disk leaves either the complete old set or the complete new one — and each file `F`
/// of it appears as `dir/F`, a relative symlink to `sub/F` that never changes once made.
/// Symlinks of the previous set's files that the new set lacks are removed; a regular file of
/// an older layout at `dir/F` is replaced by the symlink. Returns the `dir/F` paths.
pub fn publish_set(
    dir: &Path,
    sub: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    ensure_dir(dir)?;
    remove_stale_all(dir);
    let set_dir = dir.join(sub);
    write_dir_atomic(&set_dir, fill)?;
    let mut names: Vec<String> = std::fs::read_dir(&set_dir)
        .map_err(|e| Error::io(&set_dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in &names {
        let link = dir.join(name);
        let target = Path::new(sub).join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m)
                if m.file_type().is_symlink()
                    && std::fs::read_link(&link).is_ok_and(|t| t == target) =>
            {
                out.push(link);
                continue;
            }
            Ok(m) if m.is_dir() => {
                return Err(Error::io(
                    &link,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!("is a directory; {name} of the output set cannot go there"),
                    ),
                ))
            }
            _ => {}
        }
        let tmp = dir.join(format!(".{name}.link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Err(e) = std::fs::rename(&tmp, &link) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&link, e));
        }
        out.push(link);
    }
    // Links of the previous set that now dangle.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let into_set = std::fs::read_link(&p).is_ok_and(|t| t.starts_with(sub));
            if into_set && !p.exists() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    sync_dir(dir);
    Ok(out)
}

/// Checks that an output directory path is usable before any work: nothing there yet, or a
/// directory; a regular file (or FIFO, device...) there is an error saying so.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            let kind = non_regular_kind(&m).unwrap_or("a regular file");
            Err(Error::InvalidArgument(format!(
                "{}: the output directory is {kind}, not a directory; remove it or choose \
                 another path",
                dir.display()
            )))
        }
        _ => Ok(()),
    }
}

/// Creates `dir` (and its parents) if needed; an existing non-directory there is an error that
/// says so, instead of the OS's bare "File exists".
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => check_output_dir(dir),
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| {
            // A parent that is a file gives ENOTDIR / EEXIST: name the culprit.
            let culprit = dir
                .ancestors()
                .skip(1)
                .find(|a| a.is_file())
                .map(|a| format!(" ({} is a regular file)", a.display()))
                .unwrap_or_default();
            Error::io(dir, std::io::Error::new(e.kind(), format!("{e}{culprit}")))
        }),
    }
}
