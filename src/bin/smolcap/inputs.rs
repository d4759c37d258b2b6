//! `caption`'s image list (`--image`, `--images-from FILE|-`) and its JSON Lines output.

use std::io::{BufRead, Write};
use std::path::Path;

/// The images named by `--image` followed by those listed in `--images-from` (one path or URL
/// per line; blank lines and lines starting with `#` are skipped; `-` reads stdin).
pub fn image_specs(images: &[String], from: Option<&Path>) -> Result<Vec<String>, String> {
    let mut out = images.to_vec();
    let Some(from) = from else {
        return Ok(out);
    };
    let reader: Box<dyn BufRead> = if from == Path::new("-") {
        if images.iter().any(|i| i == "-") {
            return Err("--images-from - and --image - both want stdin".into());
        }
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{} line {}: {e}", from.display(), i + 1))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Writes one caption as a JSON object on its own line and flushes, so a reader sees each
/// caption as soon as it exists: `{"image", "index", "text", "token_ids"}`, `index` being the
/// image's position in the input list (the records `caption --output` writes for shards).
pub fn write_jsonl(
    out: &mut impl Write,
    image: &str,
    index: usize,
    text: &str,
    token_ids: &[u32],
) -> std::io::Result<()> {
    let v =
        serde_json::json!({"image": image, "index": index, "text": text, "token_ids": token_ids});
    writeln!(out, "{v}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_file_skips_blanks_and_comments_and_follows_image_flags() {
        let p = std::env::temp_dir().join(format!("smolcap-list-{}.txt", std::process::id()));
        std::fs::write(&p, "a.png\n\n  # comment\n https://x/y.jpg \r\nb.png").unwrap();
        let got = image_specs(&["first.png".into()], Some(&p)).unwrap();
        assert_eq!(got, ["first.png", "a.png", "https://x/y.jpg", "b.png"]);
        let _ = std::fs::remove_file(&p);
        let err = image_specs(&["-".into()], Some(Path::new("-"))).unwrap_err();
        assert!(err.contains("stdin"), "{err}");
        let missing = image_specs(&[], Some(Path::new("/nonexistent/list.txt"))).unwrap_err();
        assert!(missing.contains("/nonexistent/list.txt"), "{missing}");
    }

    #[test]
    fn jsonl_is_one_object_per_line() {
        let mut buf = Vec::new();
        write_jsonl(&mut buf, "a\nb.png", 0, "a cat\n", &[1, 2]).unwrap();
        write_jsonl(&mut buf, "c.png", 1, "", &[]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["image"], "a\nb.png");
        assert_eq!(v["text"], "a cat\n");
        assert_eq!(v["token_ids"], serde_json::json!([1, 2]));
        assert_eq!(v["index"], 0);
    }
}
