//! Chat-template rendering and `<image>` expansion, as `Idefics3Processor` does them.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{Error, Result};

/// The special strings the expansion uses (from the tokenizer's added tokens).
#[derive(Debug, Clone)]
pub struct ImageTokens {
    /// `<image>`.
    pub image: String,
    /// `<fake_token_around_image>`.
    pub fake_around: String,
    /// `<global-img>`.
    pub global: String,
}

impl Default for ImageTokens {
    fn default() -> Self {
        Self {
            image: "<image>".into(),
            fake_around: "<fake_token_around_image>".into(),
            global: "<global-img>".into(),
        }
    }
}

/// Renders a single-turn user message `[image × n_images, text]` with the model's chat template
/// and the assistant generation prompt appended.
pub fn render_user_prompt(
    template: &str,
    text: &str,
    n_images: usize,
    special: &[(&str, &str)],
) -> Result<String> {
    let mut content: Vec<minijinja::Value> = (0..n_images)
        .map(|_| minijinja::Value::from_serialize(serde_json::json!({"type": "image"})))
        .collect();
    content.push(minijinja::Value::from_serialize(
        serde_json::json!({"type": "text", "text": text}),
    ));
    let messages = vec![context! { role => "user", content => content }];
    render_bounded(
        template,
        messages,
        true,
        special,
        output_room(text.len() + 64 * n_images + 256),
    )
}

/// The most bytes a template may render for messages of `text_bytes` bytes of content.
pub fn output_room(text_bytes: usize) -> usize {
    text_bytes
        .saturating_mul(4)
        .saturating_add(TEMPLATE_OUTPUT_SLACK)
}

/// Instructions one template rendering may execute (minijinja fuel). SmolVLM's template renders
/// a one-message chat in a few hundred; the bound stops templates that loop for ever.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// Largest chat template source accepted, in bytes (real templates are a few KiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Rendered output allowed beyond 4× the message text (see [`output_room`]), in bytes.
pub const TEMPLATE_OUTPUT_SLACK: usize = 1 << 20;

/// A writer that fails once more than `room` bytes were written: rendering stops there.
struct Bounded {
    out: Vec<u8>,
    room: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.room {
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `messages` (role + content list) with the template, Jinja2 semantics.
///
/// Bounded: the template source is at most [`MAX_TEMPLATE_BYTES`], rendering executes at most
/// [`TEMPLATE_FUEL`] instructions, and the output is at most 4× the messages' text plus
/// [`TEMPLATE_OUTPUT_SLACK`] bytes; past either bound the render fails with a `Limit` error.
pub fn render(
    template: &str,
    messages: Vec<minijinja::Value>,
    add_generation_prompt: bool,
    special: &[(&str, &str)],
) -> Result<String> {
    let text_bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
    render_bounded(
        template,
        messages,
        add_generation_prompt,
        special,
        output_room(text_bytes),
    )
}

/// [`render`] with an explicit output bound of `room` bytes.
fn render_bounded(
    template: &str,
    messages: Vec<minijinja::Value>,
    add_generation_prompt: bool,
    special: &[(&str, &str)],
    room: usize,
) -> Result<String> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::Limit(format!(
            "chat template of {} bytes exceeds the limit of {MAX_TEMPLATE_BYTES}",
            template.len()
        )));
    }
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::format("chat_template", format!("template does not parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::Internal(format!("chat template: {e}")))?;
    let mut ctx = std::collections::BTreeMap::new();
    ctx.insert("messages".to_string(), minijinja::Value::from(messages));
    ctx.insert(
        "add_generation_prompt".to_string(),
        minijinja::Value::from(add_generation_prompt),
    );
    for (k, v) in special {
        ctx.insert((*k).to_string(), minijinja::Value::from(*v));
    }
    let mut out = Bounded {
        out: Vec::new(),
        room,
    };
    let rendered = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
    match rendered {
        Ok(_) => String::from_utf8(out.out)
            .map_err(|_| Error::Internal("chat template rendered invalid UTF-8".into())),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::Limit(format!(
            "chat template ran past {TEMPLATE_FUEL} instructions (an endless or very long loop)"
        ))),
        Err(e) if e.kind() == ErrorKind::WriteFailure => Err(Error::Limit(format!(
            "chat template output exceeds {room} bytes (4x the message text + \
                 {TEMPLATE_OUTPUT_SLACK})"
        ))),
        Err(e) => Err(Error::InvalidArgument(format!(
            "chat template failed to render: {e}"
        ))),
    }
}

/// The token string that stands for one image split into `rows × cols` tiles plus a global view
/// (`rows == cols == 0` means no split: only the global view).
pub fn image_prompt(rows: usize, cols: usize, seq_len: usize, t: &ImageTokens) -> String {
    let run = t.image.repeat(seq_len);
    if rows == 0 && cols == 0 {
        return format!("{}{}{run}{}", t.fake_around, t.global, t.fake_around);
    }
    let mut s = String::with_capacity((rows * cols + 1) * (run.len() + 32));
    for r in 0..rows {
        for c in 0..cols {
            s.push_str(&t.fake_around);
            s.push_str(&format!("<row_{}_col_{}>", r + 1, c + 1));
            s.push_str(&run);
        }
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&t.fake_around);
    s.push_str(&t.global);
    s.push_str(&run);
    s.push_str(&t.fake_around);
    s
}

/// Replaces the i-th `<image>` of `text` with the expansion of `grids[i]`.
pub fn expand_images(
    text: &str,
    grids: &[(usize, usize)],
    seq_len: usize,
    t: &ImageTokens,
) -> Result<String> {
    let parts: Vec<&str> = text.split(t.image.as_str()).collect();
    let n_tokens = parts.len() - 1;
    if n_tokens != grids.len() {
        return Err(Error::InvalidArgument(format!(
            "the prompt has {n_tokens} {} tokens but {} images were given",
            t.image,
            grids.len()
        )));
    }
    let mut out = String::from(parts[0]);
    for (i, &(r, c)) in grids.iter().enumerate() {
        out.push_str(&image_prompt(r, c, seq_len, t));
        out.push_str(parts[i + 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLVLM: &str = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

    #[test]
    fn renders_smolvlm_template() {
        let s = render_user_prompt(SMOLVLM, "Describe this image in detail.", 1, &[]).unwrap();
        assert_eq!(
            s,
            "<|im_start|>User:<image>Describe this image in detail.<end_of_utterance>\nAssistant:"
        );
    }

    #[test]
    fn expands_split_and_global() {
        let t = ImageTokens::default();
        let s = image_prompt(1, 2, 2, &t);
        assert_eq!(
            s,
            "<fake_token_around_image><row_1_col_1><image><image><fake_token_around_image><row_1_col_2><image><image>\n\n<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
        assert_eq!(
            image_prompt(0, 0, 1, &t),
            "<fake_token_around_image><global-img><image><fake_token_around_image>"
        );
    }

    #[test]
    fn image_count_mismatch_is_an_error() {
        let t = ImageTokens::default();
        assert!(expand_images("a <image> b <image>", &[(0, 0)], 4, &t).is_err());
        assert!(expand_images("no image", &[], 4, &t).is_ok());
    }

    #[test]
    fn endless_templates_stop_at_a_limit() {
        let cases = [
            // Loops nested past the fuel.
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            // Output past the bound (each piece small, many of them).
            "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            // One huge piece.
            "{{ 'x' * 90000000 }}",
            // Recursion through a macro.
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ];
        for t in cases {
            let start = std::time::Instant::now();
            let e = render_user_prompt(t, "x", 1, &[]).unwrap_err();
            assert!(
                matches!(e, Error::Limit(_) | Error::InvalidArgument(_)),
                "{t}: {e}"
            );
            assert!(
                start.elapsed().as_secs_f64() < 10.0,
                "{t}: {:?}",
                start.elapsed()
            );
        }
        let big = "{# #}".repeat(MAX_TEMPLATE_BYTES / 5 + 1);
        assert!(matches!(
            render_user_prompt(&big, "x", 1, &[]),
            Err(Error::Limit(_))
        ));
    }

    #[test]
    fn template_errors_are_reported() {
        assert!(render_user_prompt("{% if %}", "x", 1, &[]).is_err());
        let raising = "{{ raise_exception('nope') }}";
        let e = render_user_prompt(raising, "x", 1, &[]).unwrap_err();
        assert!(e.to_string().contains("nope"));
    }
}
