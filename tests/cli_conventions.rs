//! The CLI behaves like the tools people already use: Ctrl-C keeps a training run's work,
//! a closed stdout ends quietly, HF_ENDPOINT / HF_HOME are read as huggingface_hub reads them,
//! image lists come from a file or stdin and captions go out as JSON Lines as they are made.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::fixture;

fn smolcap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smolcap"));
    // Never reach a real hub or proxy from a test.
    for v in [
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-conv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_cmd(out: &Path, max_steps: u32) -> Command {
    let mut c = smolcap();
    c.args(["train", "--base_model_id"])
        .arg(fixture("tiny-idefics3"))
        .arg("--dataset_id")
        .arg(fixture("datasets/coco_captions"))
        .args(["--eval_split", "none", "--output_dir"])
        .arg(out)
        .args([
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_dropout",
            "0.1",
            "--batch_size",
            "2",
            "--grad_accum",
            "2",
            "--lr",
            "1e-2",
            "--seed",
            "7",
            "--max_steps",
        ])
        .arg(max_steps.to_string());
    c
}

#[cfg(unix)]
#[test]
fn sigint_during_train_saves_a_checkpoint_that_resumes_to_the_same_adapter() {
    const STEPS: u32 = 12;
    let full = scratch("full");
    let o = train_cmd(&full, STEPS).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Interrupted at the first progress line (step 1 or later), with no --save_steps.
    let cut = scratch("cut");
    let mut child = train_cmd(&cut, STEPS)
        .arg("--progress")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no progress line:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("training ") {
            break;
        }
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child's pid, which we have not waited for (it cannot be reused).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    let ckpts: Vec<u32> = std::fs::read_dir(&cut)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let n = ckpts[0];
    assert!(n < STEPS, "the run ended before the signal ({n} steps)");
    assert!(cut.join("adapter_model.safetensors").is_file());

    // Resuming finishes the run with the adapter of the uninterrupted one.
    let o = train_cmd(&cut, STEPS)
        .arg("--resume")
        .arg(cut.join(format!("checkpoint-{n}")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = std::fs::read(full.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "interrupted at {n} and resumed: the adapter differs"
    );
    for d in [full, cut] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn closed_stdout_ends_quietly() {
    let list = scratch("pipe").join("list.txt");
    let img = fixture("images/square_32x32.png");
    let lines: String = (0..30).map(|_| format!("{}\n", img.display())).collect();
    std::fs::write(&list, lines).unwrap();
    let mut child = smolcap()
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .arg("--images-from")
        .arg(&list)
        .args(["--max_new_tokens", "4", "--jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe as `head -c 1` does; 29 captions are still to come.
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.trim().is_empty(), "expected silence, got: {stderr}");
    assert_eq!(o.status.code(), Some(141), "{stderr}");
}

#[test]
fn images_from_stdin_stream_jsonl_in_order() {
    let imgs = ["square_32x32.png", "tiny_20x15.png", "gray_120x90.png"];
    let list: String = imgs
        .iter()
        .map(|i| {
            format!(
                "{}\n# a comment\n\n",
                fixture(&format!("images/{i}")).display()
            )
        })
        .collect();
    let mut child = smolcap()
        .args(["caption", "--model"])
        .arg(fixture("tiny-idefics3"))
        .args([
            "--images-from",
            "-",
            "--max_new_tokens",
            "6",
            "--batch-size",
            "2",
            "--jsonl",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    // Each line equals the --json object of the same image captioned on its own.
    for (g, i) in got.iter().zip(imgs) {
        assert!(g["image"].as_str().unwrap().ends_with(i));
        let o = smolcap()
            .args(["caption", "--model"])
            .arg(fixture("tiny-idefics3"))
            .arg("--image")
            .arg(fixture(&format!("images/{i}")))
            .args(["--max_new_tokens", "6", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(g["token_ids"], v["captions"][0]["token_ids"], "{i}");
        assert_eq!(g["text"], v["captions"][0]["text"], "{i}");
    }
}

/// A hub stand-in on 127.0.0.1: serves `dir`'s files at `/<repo>/resolve/main/<file>` the way
/// huggingface.co answers hf-hub (ETag, X-Repo-Commit, ranges) and records each request's
/// path and Authorization header.
/// The requests a test server saw: (path, Authorization header).
type RequestLog = Arc<Mutex<Vec<(String, String)>>>;

fn serve(dir: PathBuf, repo: &'static str) -> (String, RequestLog) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let (mut range, mut auth) = (None, String::new());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                match k.to_ascii_lowercase().as_str() {
                    "range" => range = v.trim().strip_prefix("bytes=").map(str::to_string),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            log2.lock().unwrap().push((path.clone(), auth));
            let prefix = format!("/{repo}/resolve/main/");
            let file = path
                .strip_prefix(&prefix)
                .filter(|f| !f.contains(".."))
                .map(|f| dir.join(f));
            let Some(data) = file.and_then(|f| std::fs::read(f).ok()) else {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let size = data.len();
            let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (
                    a.parse().unwrap_or(0),
                    b.parse().unwrap_or(size - 1).min(size - 1),
                ),
                None => (0, size - 1),
            };
            let body = &data[start..=end];
            let etag = format!("{:016x}", size * 31 + path.len());
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes \
                 {start}-{end}/{size}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: \
                 0123456789abcdef0123456789abcdef01234567\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    (url, log)
}

#[test]
fn hf_endpoint_home_token_and_offline_are_honoured() {
    const REPO: &str = "test-owner/tiny-idefics3";
    let (url, log) = serve(fixture("tiny-idefics3"), REPO);
    let home = scratch("hf-home");
    std::fs::write(home.join("token"), "hf_file_token\n").unwrap();
    let caption = |model: &str, extra: &[(&str, &str)]| {
        let mut c = smolcap();
        c.args(["caption", "--model", model, "--image"])
            .arg(fixture("images/square_32x32.png"))
            .args(["--max_new_tokens", "5", "--json"])
            .env("HF_HOME", &home);
        for (k, v) in extra {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["captions"][0]["token_ids"].clone()
    };
    let local = caption(fixture("tiny-idefics3").to_str().unwrap(), &[]);
    let hub = caption(REPO, &[("HF_ENDPOINT", &url)]);
    assert_eq!(hub, local);
    let requests = log.lock().unwrap().clone();
    let weights = format!("/{REPO}/resolve/main/model.safetensors");
    assert!(requests.iter().any(|(p, _)| *p == weights), "{requests:?}");
    // The token comes from HF_HOME/token.
    assert!(
        requests.iter().all(|(_, a)| a == "Bearer hf_file_token"),
        "{requests:?}"
    );
    // The files landed in HF_HOME's hub cache and are used offline, without a request.
    assert!(home.join("hub/models--test-owner--tiny-idefics3").is_dir());
    let n = requests.len();
    let offline = caption(REPO, &[("HF_ENDPOINT", &url), ("HF_HUB_OFFLINE", "1")]);
    assert_eq!(offline, local);
    assert_eq!(log.lock().unwrap().len(), n, "offline mode made a request");
    std::fs::remove_dir_all(&home).ok();
}
