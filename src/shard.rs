//! Splitting a job across processes (`--shard I/N`) and resumable JSON Lines outputs.
//!
//! Shard `I` of `N` gets the contiguous index range `[len*I/N, len*(I+1)/N)`, so the shards'
//! outputs concatenated in shard order are the unsharded output. Outputs are JSON Lines written
//! one batch at a time (one `write` + flush per batch), so a killed run loses at most the batch
//! in flight; [`read_resumable`] keeps the complete lines and cuts a torn last one.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Error, Result};

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole job (shard 0 of 1).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// The indices of `len` inputs this shard takes.
    pub fn range(&self, len: usize) -> Range<usize> {
        let at = |i: usize| ((len as u128 * i as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// Parses `I/N`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("shard {s:?}: expected I/N with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Reads the records of a JSON Lines output to resume it: every complete line must be a JSON
/// object; an unterminated last line (a write cut short by a kill) is removed from the file.
/// A missing file is an empty output.
pub fn read_resumable(path: &Path) -> Result<Vec<Value>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(complete as u64).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    let text =
        std::str::from_utf8(&bytes[..complete]).map_err(|_| Error::format(path, "not UTF-8"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
            if !v.is_object() {
                return Err(Error::format(
                    path,
                    format!("line {}: not an object", i + 1),
                ));
            }
            Ok(v)
        })
        .collect()
}

/// An append-only JSON Lines output written a batch at a time.
pub struct JsonlWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlWriter {
    /// Opens `path` for appending (`resume`) or truncates it.
    pub fn open(path: &Path, resume: bool) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `records` (one line each) with a single write, then flushes to the disk.
    pub fn append(&mut self, records: &[Value]) -> Result<()> {
        let mut buf = String::new();
        for r in records {
            buf.push_str(&r.to_string());
            buf.push('\n');
        }
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_in_order() {
        for len in [0usize, 1, 2, 7, 10, 101] {
            for n in 1..=5 {
                let mut next = 0;
                for i in 0..n {
                    let r = Shard { index: i, count: n }.range(len);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(Shard { index: 1, count: 3 }.range(10), 3..6);
    }

    #[test]
    fn parse_rejects_bad_specs() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        for bad in ["4/4", "1/0", "x/2", "1", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_cuts_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("smolcap-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.jsonl");
        let mut w = JsonlWriter::open(&p, false).unwrap();
        w.append(&[
            serde_json::json!({"index": 0}),
            serde_json::json!({"index": 1}),
        ])
        .unwrap();
        drop(w);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"index\": 2, \"te").unwrap();
        drop(f);
        let v = read_resumable(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"index\":0}\n{\"index\":1}\n"
        );
        let mut w = JsonlWriter::open(&p, true).unwrap();
        w.append(&[serde_json::json!({"index": 2})]).unwrap();
        assert_eq!(read_resumable(&p).unwrap().len(), 3);
        std::fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        assert!(matches!(read_resumable(&p), Err(Error::Format { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
