//! Crash-safe file output: write to a temporary name, fsync, rename into place.

use std::fs::File;
use std::io::Write;
use std::path::Path;
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

/// Reads a file of at most `max` bytes (a larger one is a `Limit` error naming it).
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
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
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
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
