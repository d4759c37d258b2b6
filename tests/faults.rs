//! Faults during saves (issue #7): a save process killed with SIGKILL at random moments always
//! leaves the previous file set (or the complete new one) in place and loadable; a full disk
//! (RLIMIT_FSIZE in a child) gives an I/O error and leaves no partial file.
//!
//! The harness is generic over a [`SaveOp`]: a save that can run in a child process (this test
//! binary re-executed with `SMOLCAP_FAULT_OP` set) and a check that its output loads. Merge saves,
//! PEFT adapter saves and trainer checkpoint saves (adapter + optimizer state + trainer state in
//! nested directories) are covered.
//!
//! `SMOLCAP_FAULT_KILLS` sets the number of kills per operation (default 100, 200 in all).

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::fixture;
use smolcap::lora::peft::Adapter;
use smolcap::merge::{merge_save, MergeOptions};
use smolcap::model::weights::Weights;

/// A save operation the harness can run in a child and verify in the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SaveOp {
    /// `merge::merge_save` of the tiny model with an adapter (`--overwrite`).
    Merge,
    /// `Adapter::save` of a PEFT adapter.
    AdapterSave,
    /// `Trainer::save_checkpoint` (nested: adapter/, optimizer.safetensors, trainer_state.json).
    Checkpoint,
}

impl SaveOp {
    fn name(self) -> &'static str {
        match self {
            SaveOp::Merge => "merge",
            SaveOp::AdapterSave => "adapter-save",
            SaveOp::Checkpoint => "checkpoint",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "merge" => Some(SaveOp::Merge),
            "adapter-save" => Some(SaveOp::AdapterSave),
            "checkpoint" => Some(SaveOp::Checkpoint),
            _ => None,
        }
    }

    /// Writes version `v` (0 or 1: different contents) of the output to `out`.
    fn save(self, out: &Path, v: u32) -> smolcap::Result<()> {
        let base = fixture("tiny-idefics3");
        let adapter = smolcap::merge::load_adapter_for(&base, &fixture("adapters/text_r4_a8"))?;
        match self {
            SaveOp::Merge => {
                let scale = if v == 0 { 1.0 } else { 0.5 };
                let opts = MergeOptions {
                    overwrite: true,
                    ..MergeOptions::default()
                };
                merge_save(&base, &[(&adapter, scale)], out, &opts, &mut |_, _| {}).map(|_| ())
            }
            SaveOp::AdapterSave => {
                let mut a = adapter.clone();
                if v == 1 {
                    for m in &mut a.modules {
                        m.b = (&m.b * 2.0)?;
                    }
                }
                a.save(out)
            }
            SaveOp::Checkpoint => {
                let model = std::sync::Arc::new(smolcap::Model::load_dir(
                    &base,
                    &smolcap::LoadOptions::default(),
                )?);
                let lora = smolcap::train::LoraOptions {
                    r: 2,
                    ..Default::default()
                };
                let opts = smolcap::train::TrainOptions {
                    seed: u64::from(v),
                    ..Default::default()
                };
                let t = smolcap::train::Trainer::new(model, lora, opts, None)?;
                t.save_checkpoint(out, &serde_json::json!({ "version": v }))
            }
        }
    }

    /// Loads the output with the library (the check that it is usable, not only present).
    fn load(self, out: &Path, full: bool) -> smolcap::Result<()> {
        match self {
            SaveOp::Merge => {
                let w = Weights::open(out, DType::F32, &Device::Cpu)?;
                for n in w.names() {
                    w.get_any(n)?;
                }
                if full {
                    smolcap::Model::load_dir(out, &smolcap::LoadOptions::default())?;
                }
                Ok(())
            }
            SaveOp::AdapterSave => {
                let w = Weights::open(&fixture("tiny-idefics3"), DType::F32, &Device::Cpu)?;
                Adapter::load_with_shapes(out, &w.linear_shapes(), &Device::Cpu).map(|_| ())
            }
            SaveOp::Checkpoint => {
                let model = std::sync::Arc::new(smolcap::Model::load_dir(
                    &fixture("tiny-idefics3"),
                    &smolcap::LoadOptions::default(),
                )?);
                smolcap::train::Trainer::resume(model, out).map(|_| ())
            }
        }
    }
}

/// Relative path → contents of every file under a directory (checkpoints nest an adapter/).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.unwrap();
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), format!("{name}/")));
            } else {
                out.insert(name, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-faults-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Entries of `parent` other than `keep` (temporary directories of saves).
fn leftovers(parent: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

/// A command that re-runs this test binary as a child performing `op` on `out`.
fn child(op: SaveOp, out: &Path, once: bool) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
        .env("SMOLCAP_FAULT_OP", op.name())
        .env("SMOLCAP_FAULT_OUT", out)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if once {
        c.env("SMOLCAP_FAULT_ONCE", "1");
    }
    c
}

/// The child side: saves alternating versions until killed (or once, reporting the outcome).
#[test]
fn fault_child() {
    let (Ok(op), Ok(out)) = (
        std::env::var("SMOLCAP_FAULT_OP"),
        std::env::var("SMOLCAP_FAULT_OUT"),
    ) else {
        return; // not a child run
    };
    let op = SaveOp::from_name(&op).expect("SMOLCAP_FAULT_OP");
    let out = PathBuf::from(out);
    if std::env::var("SMOLCAP_FAULT_ONCE").is_ok() {
        match op.save(&out, 1) {
            Ok(()) => println!("FAULT-RESULT ok"),
            Err(e) => {
                let kind = match &e {
                    smolcap::Error::Io { .. } => "io",
                    _ => "other",
                };
                println!("FAULT-RESULT {kind} {e}");
            }
        }
        return;
    }
    let mut v = 1;
    loop {
        op.save(&out, v).expect("save");
        v ^= 1;
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Kills a saving child `kills` times at random moments; after each kill the output is exactly
/// one of the two complete versions and loads. Returns the kills survived.
fn kill_harness(op: SaveOp, kills: usize, seed: u64) -> usize {
    let root = scratch(op.name());
    let out = root.join("out");
    // The two complete versions, saved cleanly.
    op.save(&out, 1).unwrap();
    let v1 = snapshot(&out);
    op.save(&out, 0).unwrap();
    let v0 = snapshot(&out);
    assert_ne!(v0, v1, "{op:?}: the two versions must differ");
    // How long one save takes, to spread the kills over it.
    let t = Instant::now();
    let mut c = child(op, &out, true).spawn().unwrap();
    c.wait().unwrap();
    let one = t.elapsed().as_millis() as u64;
    op.save(&out, 0).unwrap();
    let mut rng = Rng(seed);
    let (mut saw_v0, mut saw_v1, mut mid_save) = (0, 0, 0);
    for k in 0..kills {
        let mut c = child(op, &out, false).spawn().unwrap();
        // Kill anywhere from process start to a few saves in.
        std::thread::sleep(Duration::from_millis(rng.below(one * 3 + 20)));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        let snap = snapshot(&out);
        if snap == v0 {
            saw_v0 += 1;
        } else if snap == v1 {
            saw_v1 += 1;
        } else {
            panic!(
                "{op:?} kill #{k}: {} holds neither complete version: {:?}",
                out.display(),
                snap.keys().collect::<Vec<_>>()
            );
        }
        if !leftovers(&root, "out").is_empty() {
            mid_save += 1;
        }
        op.load(&out, k % 25 == 0)
            .unwrap_or_else(|e| panic!("{op:?} kill #{k}: the output does not load: {e}"));
    }
    // The next save removes what killed saves left behind.
    op.save(&out, 0).unwrap();
    assert_eq!(snapshot(&out), v0);
    assert_eq!(
        leftovers(&root, "out"),
        Vec::<String>::new(),
        "{op:?}: temp dirs left"
    );
    println!(
        "faults: {op:?}: {kills} kills survived ({saw_v0} left the previous set, {saw_v1} the new \
         one; {mid_save} killed mid-save with a temp dir left; one save ≈ {one} ms)"
    );
    let _ = std::fs::remove_dir_all(&root);
    kills
}

fn kills_per_op() -> usize {
    std::env::var("SMOLCAP_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn killed_merge_saves_leave_a_complete_set() {
    let n = kill_harness(SaveOp::Merge, kills_per_op(), 0x9e37_79b9_7f4a_7c15);
    assert!(n >= 1);
}

#[test]
fn killed_checkpoint_saves_leave_a_complete_set() {
    let n = kill_harness(SaveOp::Checkpoint, kills_per_op(), 0x94d0_49bb_1331_11eb);
    assert!(n >= 1);
}

#[test]
fn killed_adapter_saves_leave_a_complete_set() {
    let n = kill_harness(SaveOp::AdapterSave, kills_per_op(), 0xd1b5_4a32_d192_ed03);
    assert!(n >= 1);
}

/// Runs one save in a child whose files may not grow beyond `limit` bytes (RLIMIT_FSIZE, with
/// SIGXFSZ ignored so a write fails with EFBIG as on a full disk).
fn full_disk(op: SaveOp, limit: u64) {
    let root = scratch(&format!("{}-full", op.name()));
    let out = root.join("out");
    op.save(&out, 0).unwrap();
    let before = snapshot(&out);
    let mut c = child(op, &out, true);
    // SAFETY: pre_exec runs between fork and exec; setrlimit and signal are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find("FAULT-RESULT").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("{op:?}: child printed no result: {stdout}"));
    assert!(
        line.starts_with("FAULT-RESULT io "),
        "{op:?}: expected an I/O error, got {line}"
    );
    assert!(
        line.contains("File too large") || line.contains("os error 27"),
        "{op:?}: {line}"
    );
    assert_eq!(snapshot(&out), before, "{op:?}: the previous set changed");
    assert_eq!(
        leftovers(&root, "out"),
        Vec::<String>::new(),
        "{op:?}: partial files left"
    );
    println!(
        "faults: {op:?} with a {limit}-byte file limit: {}",
        &line[13..]
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn full_disk_merge_is_an_io_error() {
    full_disk(SaveOp::Merge, 64 * 1024);
}

#[test]
fn full_disk_adapter_save_is_an_io_error() {
    full_disk(SaveOp::AdapterSave, 512);
}

#[test]
fn full_disk_checkpoint_save_is_an_io_error() {
    full_disk(SaveOp::Checkpoint, 4096);
}
