//! The self-contained HTML report of an evaluation: the corpus scorecard, the run's settings,
//! skipped images, and one row per image (thumbnail, prediction, references, scores) in a table
//! sortable by any score column. Inline CSS and JS, thumbnails as `data:` URIs, no network.

use std::fmt::Write as _;

use serde_json::Value;

use super::EvalResult;

/// The per-image columns of the report, in order.
const COLUMNS: [&str; 4] = ["CIDEr", "BLEU-4", "METEOR", "ROUGE-L"];

/// The scorecard rows, in order.
const SCORECARD: [&str; 7] = [
    "CIDEr", "BLEU-4", "METEOR", "ROUGE-L", "BLEU-1", "BLEU-2", "BLEU-3",
];

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1d1d1f;background:#fff}
h1{font-size:1.35rem;margin:0 0 .2rem}
.sub{color:#666;margin:0 0 1rem}
table{border-collapse:collapse}
.scorecard td,.scorecard th{border:1px solid #ddd;padding:.35rem .8rem;text-align:center}
.scorecard td{font-size:1.15rem;font-variant-numeric:tabular-nums}
.scorecard th{background:#f4f4f6}
details{margin:1rem 0}
.run th{text-align:left;padding:.15rem .8rem .15rem 0;color:#555;font-weight:600;vertical-align:top}
.run td{padding:.15rem 0;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.skipped li{font-family:ui-monospace,monospace;font-size:12px}
.hint{color:#666;font-size:12px}
#images{width:100%}
#images th{position:sticky;top:0;background:#f4f4f6;border-bottom:2px solid #ccc;padding:.4rem .5rem;text-align:left;white-space:nowrap}
#images th[data-type]{cursor:pointer;user-select:none}
#images th[data-type]:hover{background:#e8e8ee}
#images th.asc::after{content:" \25B2"}
#images th.desc::after{content:" \25BC"}
#images td{border-bottom:1px solid #eee;padding:.4rem .5rem;vertical-align:top}
#images td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#images td.pred{font-weight:600;max-width:28rem}
.refs{margin:0;padding-left:1.1rem;color:#333;max-width:34rem}
.name{color:#888;font-size:11px;word-break:break-all;max-width:12rem}
img.thumb{display:block;max-width:160px;max-height:160px;border-radius:3px}
"#;

const SCRIPT: &str = r#"
(function () {
  var table = document.getElementById("images");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function index(row) { return parseInt(row.cells[0].getAttribute("data-v"), 10); }
  function key(row, col, type) {
    var v = row.cells[col].getAttribute("data-v");
    if (type === "num") { var f = parseFloat(v); return isNaN(f) ? -Infinity : f; }
    return v || "";
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    var type = th.getAttribute("data-type");
    if (!type) return;
    th.addEventListener("click", function () {
      var first = th.getAttribute("data-first") || "asc";
      var dir = th.classList.contains("asc") ? "desc" : th.classList.contains("desc") ? "asc" : first;
      Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(dir);
      var sign = dir === "asc" ? 1 : -1;
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, col, type), y = key(b, col, type);
        var c = type === "num" ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
        // Ties keep the dataset order whichever the direction.
        return sign * c || index(a) - index(b);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
"#;

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values; control characters
/// (not allowed in HTML text; random-weight models produce them) become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [
            c[0],
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(char::from(A[(n >> (18 - 6 * k)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A metric as the seed prints it: CIDEr as is (3 decimals), the others ×100 (2 decimals).
pub fn shown(metric: &str, v: f64) -> String {
    if metric == "CIDEr" {
        format!("{v:.3}")
    } else {
        format!("{:.2}", v * 100.0)
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// The whole report as one HTML document. `run` (an object) is shown as the run's settings;
/// its `dataset` and `split` members title the page.
pub fn render(result: &EvalResult, run: &Value) -> String {
    let s = &result.scores;
    let dataset = run.get("dataset").map(value_text).unwrap_or_default();
    let split = run.get("split").map(value_text).unwrap_or_default();
    let mut h = String::with_capacity(4096 + result.images.len() * 8192);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>smolcap eval: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&dataset)
    );
    let _ = writeln!(
        h,
        "<h1>smolcap eval</h1>\n<p class=\"sub\">{} · split {} · {} images · {} suite{}</p>",
        escape(&dataset),
        escape(&split),
        result.images.len(),
        s.suite.name(),
        if result.skipped.is_empty() {
            String::new()
        } else {
            format!(" · {} skipped", result.skipped.len())
        }
    );
    h.push_str("<table class=\"scorecard\">\n<tr>");
    for m in SCORECARD {
        if s.get(m).is_some() {
            let _ = write!(h, "<th>{}</th>", escape(m));
        }
    }
    h.push_str("</tr>\n<tr>");
    for m in SCORECARD {
        if let Some(v) = s.get(m) {
            let _ = write!(h, "<td>{}</td>", shown(m, v));
        }
    }
    h.push_str("</tr>\n</table>\n");
    h.push_str("<p class=\"hint\">CIDEr as is; BLEU, METEOR and ROUGE-L ×100.</p>\n");

    if let Some(obj) = run.as_object() {
        h.push_str("<details><summary>Run settings</summary>\n<table class=\"run\">\n");
        for (k, v) in obj {
            let _ = writeln!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(k),
                escape(&value_text(v))
            );
        }
        h.push_str("</table>\n</details>\n");
    }
    if !result.skipped.is_empty() {
        let _ = writeln!(
            h,
            "<details open><summary>{} image(s) skipped</summary>\n<ul class=\"skipped\">",
            result.skipped.len()
        );
        for b in &result.skipped {
            let _ = writeln!(h, "<li>{}: {}</li>", escape(&b.location), escape(&b.reason));
        }
        h.push_str("</ul>\n</details>\n");
    }

    h.push_str("<p class=\"hint\">Click a column header to sort (scores: best first, click again to reverse).</p>\n");
    h.push_str("<table id=\"images\">\n<thead><tr><th data-type=\"num\">#</th><th>Image</th><th data-type=\"text\">Id</th><th>Prediction</th><th>References</th>");
    for m in COLUMNS {
        let _ = write!(
            h,
            "<th data-type=\"num\" data-first=\"desc\">{}</th>",
            escape(m)
        );
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (i, im) in result.images.iter().enumerate() {
        let id = im.id.to_string();
        let _ = write!(
            h,
            "<tr id=\"r{i}\"><td class=\"num\" data-v=\"{i}\">{}</td><td>",
            i + 1
        );
        if let Some(t) = &im.thumbnail {
            let _ = write!(
                h,
                "<img class=\"thumb\" alt=\"{}\" src=\"data:image/jpeg;base64,{}\">",
                escape(&im.name),
                base64(t)
            );
        }
        let _ = write!(
            h,
            "</td><td data-v=\"{}\">{}<div class=\"name\">{}</div></td><td class=\"pred\">{}</td><td><ul class=\"refs\">",
            escape(&id),
            escape(&id),
            escape(&im.name),
            escape(&im.prediction)
        );
        for r in &im.references {
            let _ = write!(h, "<li>{}</li>", escape(r));
        }
        h.push_str("</ul></td>");
        for m in COLUMNS {
            match s.per_image.get(m).and_then(|v| v.get(i)) {
                Some(v) => {
                    let _ = write!(h, "<td class=\"num\" data-v=\"{v}\">{}</td>", shown(m, *v));
                }
                None => h.push_str("<td class=\"num\" data-v=\"\">—</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{BadRow, ImageId};
    use crate::eval::{EvalImage, EvalTimings};
    use crate::metrics::{score, Suite};

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn report_escapes_user_text_and_lists_every_image() {
        let evil = "</script><script>alert('x')</script> & \"q\"\u{3}";
        let images = vec![
            EvalImage {
                id: ImageId::Num(7),
                name: "a<b>.png".into(),
                prediction: evil.into(),
                references: vec!["a dog & a <cat>".into(), "two 'pets'".into()],
                thumbnail: Some(vec![1, 2, 3]),
            },
            EvalImage {
                id: ImageId::Str("x\"y".into()),
                name: "b.png".into(),
                prediction: "a dog".into(),
                references: vec!["a dog".into()],
                thumbnail: None,
            },
        ];
        let preds: Vec<&str> = images.iter().map(|i| i.prediction.as_str()).collect();
        let refs: Vec<Vec<&str>> = images
            .iter()
            .map(|i| i.references.iter().map(String::as_str).collect())
            .collect();
        let result = EvalResult {
            scores: score(&preds, &refs, Suite::Seed).unwrap(),
            images,
            skipped: vec![BadRow {
                location: "data/t.parquet row 3".into(),
                reason: "image: <bad>".into(),
            }],
            timings: EvalTimings::default(),
            cancelled: false,
        };
        let run = serde_json::json!({"dataset": "d<1>", "split": "test", "n": 2});
        let h = render(&result, &run);
        assert!(!h.contains("alert('x')"), "unescaped prediction");
        assert!(h.contains("&lt;/script&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;\u{FFFD}"));
        assert!(h.contains("a dog &amp; a &lt;cat&gt;") && h.contains("two &#39;pets&#39;"));
        assert!(h.contains("alt=\"a&lt;b&gt;.png\"") && h.contains("data:image/jpeg;base64,AQID"));
        assert!(h.contains("data-v=\"x&quot;y\""));
        assert!(h.contains("image: &lt;bad&gt;") && h.contains("d&lt;1&gt;"));
        assert!(h.contains("<tr id=\"r0\">") && h.contains("<tr id=\"r1\">"));
        assert!(!h.contains("<tr id=\"r2\">"));
        // Only the report's own script, style and tags; no network references.
        assert_eq!(h.matches("<script>").count(), 1);
        assert_eq!(h.matches("<tr").count(), h.matches("</tr>").count());
        assert_eq!(h.matches("<td").count(), h.matches("</td>").count());
        assert!(!h.contains("http://") && !h.contains("https://"));
        for m in COLUMNS {
            assert!(h.contains(&format!("data-first=\"desc\">{m}</th>")), "{m}");
        }
    }
}
