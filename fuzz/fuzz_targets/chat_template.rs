//! Chat templates (issue 27): any template source with any message text must render or fail
//! with an error, within the fuel and output bounds (libFuzzer's -timeout catches a template
//! that runs on, -rss_limit_mb one that allocates without bound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smolcap::processor::prompt::{output_room, render_user_prompt};

fuzz_target!(|data: &[u8]| {
    // [n_images] template \0 message text
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (template, message) = text.split_once('\0').unwrap_or((&text, "a cat"));
    let special = [("bos_token", "<|im_start|>"), ("eos_token", "<end_of_utterance>")];
    let n_images = usize::from(n % 4);
    if let Ok(s) = render_user_prompt(template, message, n_images, &special) {
        // The output bound `render_user_prompt` promises.
        assert!(s.len() <= output_room(message.len() + 64 * n_images + 256));
    }
});
