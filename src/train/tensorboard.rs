//! TensorBoard event files (`events.out.tfevents.*`) with scalar summaries, and the same scalars
//! as JSON lines.
//!
//! A tfevents file is a sequence of TFRecords: `u64` length (little endian), masked CRC-32C of
//! those 8 bytes, the payload, masked CRC-32C of the payload. Each payload is a protobuf `Event`;
//! the first carries `file_version: "brain.Event:2"`, the rest a `Summary` of `simple_value`s.
//! The protobuf is encoded by hand (four fields), byte-identical to what TensorBoard's own
//! `event_pb2` serialises (`tools/reference/tensorboard_ref.py`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The `file_version` TensorBoard expects in the first record.
pub const FILE_VERSION: &str = "brain.Event:2";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for file names: `$HOSTNAME`, `/etc/hostname`, `%COMPUTERNAME%`, else "localhost".
fn hostname() -> String {
    let from_file = || std::fs::read_to_string("/etc/hostname").ok();
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(from_file)
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    // Keep the name a single safe path component.
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// The masked CRC-32C TFRecord uses (so that CRCs of CRCs stay well distributed).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from((field << 3) | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes `Event { wall_time, step, file_version }` (proto3: a zero step is omitted).
fn encode_event_header(wall_time: f64, step: i64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 20);
    if wall_time != 0.0 {
        out.push((1 << 3) | 1);
        out.extend_from_slice(&wall_time.to_le_bytes());
    }
    if step != 0 {
        out.push(2 << 3);
        // int64 varints carry the two's complement, so negative steps take ten bytes.
        put_varint(&mut out, step as u64);
    }
    out.extend_from_slice(body);
    out
}

/// Protobuf bytes of an `Event` holding the file version.
pub fn encode_file_version_event(wall_time: f64) -> Vec<u8> {
    let mut body = Vec::new();
    put_bytes_field(&mut body, 3, FILE_VERSION.as_bytes());
    encode_event_header(wall_time, 0, &body)
}

/// Protobuf bytes of an `Event` holding one scalar `Summary.Value { tag, simple_value }`.
pub fn encode_scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut val = Vec::with_capacity(tag.len() + 8);
    put_bytes_field(&mut val, 1, tag.as_bytes());
    // simple_value sits in a oneof, so it is written even when it is 0.0.
    val.push((2 << 3) | 5);
    val.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::with_capacity(val.len() + 4);
    put_bytes_field(&mut summary, 1, &val);
    let mut body = Vec::with_capacity(summary.len() + 4);
    put_bytes_field(&mut body, 5, &summary);
    encode_event_header(wall_time, step, &body)
}

/// Frames a payload as one TFRecord.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// Writes scalar summaries to a TensorBoard event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<unix secs>.<hostname>` in `dir` (created if missing).
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        crate::fsio::ensure_dir(dir)?;
        let wall_time = now();
        let base = format!(
            "events.out.tfevents.{}.{}",
            wall_time.floor() as u64,
            hostname()
        );
        // Two writers started in the same second get distinct names instead of clobbering.
        for n in 0..1000u32 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            match Self::create_new(&dir.join(name), wall_time) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => return other,
            }
        }
        Err(Error::Io {
            path: dir.join(base),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free file name"),
        })
    }

    /// Creates a new event file at exactly `path`, its version record stamped `wall_time`.
    pub fn create_new(path: &Path, wall_time: f64) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut w = EventWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        w.write_record(&encode_file_version_event(wall_time))?;
        w.flush()?;
        Ok(w)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        let rec = encode_record(payload);
        self.out
            .write_all(&rec)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Appends a scalar stamped with the current time.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.add_scalar_at(tag, value, step, now())
    }

    /// Appends a scalar with an explicit wall time (seconds since the Unix epoch).
    pub fn add_scalar_at(
        &mut self,
        tag: &str,
        value: f32,
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        self.write_record(&encode_scalar_event(wall_time, step, tag, value))
    }

    /// Pushes buffered records to the file so TensorBoard can read them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Best effort: a failed final flush cannot be reported from drop.
        let _ = self.out.flush();
    }
}

/// One scalar as a JSON line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalarRecord {
    /// Training step.
    pub step: i64,
    /// Series name, e.g. `train/loss`.
    pub tag: String,
    /// The value (non-finite values are written as `null`).
    pub value: Option<f32>,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
}

/// Appends scalars to a JSON-lines file: `{"step","tag","value","wall_time"}` per line.
#[derive(Debug)]
pub struct ScalarLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ScalarLog {
    /// Opens `path` for appending (creating it and its directory if missing).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsio::ensure_dir(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(ScalarLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a scalar stamped with the current time.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.add_scalar_at(tag, value, step, now())
    }

    /// Appends a scalar with an explicit wall time.
    pub fn add_scalar_at(
        &mut self,
        tag: &str,
        value: f32,
        step: i64,
        wall_time: f64,
    ) -> Result<()> {
        let rec = ScalarRecord {
            step,
            tag: tag.to_string(),
            value: value.is_finite().then_some(value),
            wall_time,
        };
        let mut line = serde_json::to_vec(&rec)
            .map_err(|e| Error::Internal(format!("scalar log record: {e}")))?;
        line.push(b'\n');
        self.out
            .write_all(&line)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for ScalarLog {
    fn drop(&mut self) {
        // Best effort: a failed final flush cannot be reported from drop.
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tensorboard");
    const GOLDEN: &str = "events.out.tfevents.1700000000.golden";
    const T0: f64 = 1_700_000_000.25;

    /// The scalars of the golden file: (tag, value, step, wall_time).
    fn golden_scalars() -> Vec<(&'static str, f32, i64, f64)> {
        vec![
            ("train/loss", 2.5, 0, T0 + 1.0),
            ("train/lr", 1.0e-4, 0, T0 + 1.0),
            ("train/loss", 1.875, 1, T0 + 2.125),
            ("train/grad_norm", 0.0, 1, T0 + 2.125),
            ("train/loss", -0.3, 2, T0 + 3.5),
            ("eval/cider", 0.56, 1 << 40, T0 + 4.0),
        ]
    }

    fn write_golden(path: &Path) {
        let mut w = EventWriter::create_new(path, T0).unwrap();
        for (tag, value, step, wall) in golden_scalars() {
            w.add_scalar_at(tag, value, step, wall).unwrap();
        }
        w.flush().unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let d =
            std::env::temp_dir().join(format!("smolcap-tb-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn expected() -> Value {
        let text = std::fs::read_to_string(format!("{FIX}/expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    /// A minimal protobuf reader: (field number, wire type, raw value bytes or varint).
    fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < b.len() {
            let key = varint(b, &mut pos);
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => {
                    let v = varint(b, &mut pos);
                    out.push((field, wire, Vec::new(), v));
                }
                1 => {
                    out.push((field, wire, b[pos..pos + 8].to_vec(), 0));
                    pos += 8;
                }
                2 => {
                    let n = varint(b, &mut pos) as usize;
                    out.push((field, wire, b[pos..pos + n].to_vec(), 0));
                    pos += n;
                }
                5 => {
                    out.push((field, wire, b[pos..pos + 4].to_vec(), 0));
                    pos += 4;
                }
                _ => panic!("unexpected wire type {wire}"),
            }
        }
        out
    }

    /// Splits a tfevents file into payloads, checking lengths and both CRCs of every record.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let len_bytes = &bytes[pos..pos + 8];
            let n = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(len_bytes));
            let payload = &bytes[pos + 12..pos + 12 + n];
            let crc = u32::from_le_bytes(bytes[pos + 12 + n..pos + 16 + n].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(payload));
            out.push(payload.to_vec());
            pos += 16 + n;
        }
        assert_eq!(pos, bytes.len());
        out
    }

    /// Rewrites the golden file when SMOLCAP_WRITE_TB_FIXTURE=1 (then run tensorboard_ref.py).
    #[test]
    fn write_golden_fixture_on_request() {
        if std::env::var("SMOLCAP_WRITE_TB_FIXTURE").as_deref() == Ok("1") {
            let path = Path::new(FIX).join(GOLDEN);
            let _ = std::fs::remove_file(&path);
            std::fs::create_dir_all(FIX).unwrap();
            write_golden(&path);
        }
    }

    #[test]
    fn writer_output_equals_golden_bytes() {
        let dir = temp_dir("golden");
        let path = dir.join(GOLDEN);
        write_golden(&path);
        let ours = std::fs::read(&path).unwrap();
        let golden = std::fs::read(Path::new(FIX).join(GOLDEN)).unwrap();
        assert_eq!(hex(&ours), hex(&golden));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The golden file parses back (lengths, CRCs, protobuf) to the scalars TensorBoard's
    /// EventAccumulator read from it.
    #[test]
    fn golden_parses_back_to_what_tensorboard_read() {
        let golden = std::fs::read(Path::new(FIX).join(GOLDEN)).unwrap();
        let recs = records(&golden);
        let exp = expected();
        assert_eq!(
            hex(&golden[..16 + recs[0].len()]),
            exp["version_record_hex"]
        );
        let head = fields(&recs[0]);
        assert_eq!(head[0].0, 1);
        assert_eq!(
            f64::from_le_bytes(head[0].2.clone().try_into().unwrap()),
            T0
        );
        assert_eq!(
            (head[1].0, head[1].2.as_slice()),
            (3, FILE_VERSION.as_bytes())
        );
        let mut parsed = Vec::new();
        for rec in &recs[1..] {
            let mut wall = 0.0;
            let mut step = 0i64;
            let mut scalar = None;
            for (field, _, raw, v) in fields(rec) {
                match field {
                    1 => wall = f64::from_le_bytes(raw.try_into().unwrap()),
                    2 => step = v as i64,
                    5 => {
                        let (_, _, value, _) = fields(&raw).remove(0);
                        let vf = fields(&value);
                        let tag = String::from_utf8(vf[0].2.clone()).unwrap();
                        let x = f32::from_le_bytes(vf[1].2.clone().try_into().unwrap());
                        scalar = Some((tag, x));
                    }
                    _ => panic!("unexpected Event field {field}"),
                }
            }
            let (tag, x) = scalar.unwrap();
            parsed.push((tag, x.to_bits(), step, wall.to_bits()));
        }
        let want: Vec<_> = golden_scalars()
            .into_iter()
            .map(|(t, v, s, w)| (t.to_string(), v.to_bits(), s, w.to_bits()))
            .collect();
        assert_eq!(parsed, want);
        // TensorBoard lists scalars sorted by tag, in file order within a tag.
        let mut by_tag = want.clone();
        by_tag.sort_by(|a, b| a.0.cmp(&b.0));
        let tb: Vec<_> = exp["scalars"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["tag"].as_str().unwrap().to_string(),
                    s["value_bits"].as_u64().unwrap() as u32,
                    s["step"].as_i64().unwrap(),
                    s["wall_time_bits"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(tb, by_tag);
    }

    #[test]
    fn edge_case_events_match_tensorboard_protobuf() {
        let exp = expected();
        for e in exp["edge_events"].as_array().unwrap() {
            let wall = f64::from_bits(e["wall_time_bits"].as_u64().unwrap());
            let value = f32::from_bits(e["value_bits"].as_u64().unwrap() as u32);
            let step = e["step"].as_i64().unwrap();
            let tag = e["tag"].as_str().unwrap();
            let ours = encode_scalar_event(wall, step, tag, value);
            assert_eq!(hex(&ours), e["payload_hex"].as_str().unwrap(), "{e}");
        }
    }

    #[test]
    fn create_names_files_and_scalar_log_writes_jsonl() {
        let dir = temp_dir("create");
        let mut a = EventWriter::create(dir.join("run")).unwrap();
        let b = EventWriter::create(dir.join("run")).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        a.add_scalar("train/loss", 1.0, 3).unwrap();
        drop(a);
        let bytes = std::fs::read(dir.join("run").join(&name)).unwrap();
        assert_eq!(records(&bytes).len(), 2);

        let log_path = dir.join("logs/scalars.jsonl");
        let mut log = ScalarLog::create(&log_path).unwrap();
        log.add_scalar_at("train/loss", 2.5, 7, 1.5).unwrap();
        log.add_scalar_at("train/loss", f32::NAN, 8, 2.0).unwrap();
        log.add_scalar("train/lr", 1e-4, 9).unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            r#"{"step":7,"tag":"train/loss","value":2.5,"wall_time":1.5}"#
        );
        assert_eq!(
            lines[1],
            r#"{"step":8,"tag":"train/loss","value":null,"wall_time":2.0}"#
        );
        let r: ScalarRecord = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(
            (r.step, r.tag.as_str(), r.value),
            (9, "train/lr", Some(1e-4))
        );
        assert!(EventWriter::create_new(&dir.join("run").join(&name), 0.0).is_err());
        assert!(ScalarLog::create(dir.join("run").join(&name).join("x")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
