//! Generates, from `include/smolcap.h`, a C program that calls every exported function once per
//! pointer parameter with that parameter NULL (the others valid), and checks the status, that the
//! message names the parameter, and that every out-param is untouched.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One C function of the header.
#[derive(Debug, Clone)]
pub struct CFn {
    /// Return type, e.g. `smolcap_status`.
    pub ret: String,
    /// Function name.
    pub name: String,
    /// (type, name) of each parameter.
    pub params: Vec<(String, String)>,
}

/// Every function declared in the header (`void` parameter lists give no params).
pub fn parse_header(text: &str) -> Vec<CFn> {
    // Strip comments first.
    let mut clean = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("/*") {
        clean.push_str(&rest[..i]);
        match rest[i..].find("*/") {
            Some(j) => rest = &rest[i + j + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    clean.push_str(rest);
    let mut out = Vec::new();
    for stmt in clean.split(';') {
        let stmt = stmt.trim();
        if stmt.starts_with("typedef") || stmt.starts_with('#') || !stmt.contains('(') {
            continue;
        }
        // Drop preprocessor lines that precede the declaration.
        let stmt: String = stmt
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.contains("extern \"C\""))
            .collect::<Vec<_>>()
            .join(" ");
        let stmt = stmt.trim().trim_start_matches('}').trim();
        let Some(open) = stmt.find('(') else { continue };
        let Some(close) = stmt.rfind(')') else {
            continue;
        };
        let head = stmt[..open].trim();
        let Some(name_at) = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_')) else {
            continue;
        };
        let name = head[name_at + 1..].to_string();
        if !name.starts_with("smolcap_") {
            continue;
        }
        let ret = head[..=name_at].trim().to_string();
        let args = stmt[open + 1..close].trim();
        let mut params = Vec::new();
        if args != "void" && !args.is_empty() {
            for a in args.split(',') {
                let a = a.split_whitespace().collect::<Vec<_>>().join(" ");
                let at = a
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(0);
                let pname = a[at + 1..].to_string();
                let ty = a[..=at].trim().to_string();
                params.push((ty, pname));
            }
        }
        out.push(CFn { ret, name, params });
    }
    out
}

/// Whether a parameter type is a pointer (data or function).
pub fn is_pointer(ty: &str) -> bool {
    ty.contains('*') || ty.ends_with("_callback")
}

/// Parameters documented as accepting NULL (`params` = defaults, callbacks, user data, `scales`
/// = all 1.0, optional lengths, merge_save's optional report).
fn nullable(f: &str, p: &str) -> bool {
    matches!(
        p,
        "params"
            | "callback"
            | "user"
            | "scales"
            | "len"
            | "init_adapter_dir"
            | "data_state"
            | "stats"
            | "mean_loss"
            | "tokens"
    ) || (f == "smolcap_merge_save" && p == "out")
}

/// A valid C expression for a non-NULL argument, or `None` for an out-param (handled apart).
fn valid_arg(f: &str, ty: &str, name: &str) -> Option<String> {
    let t = ty.replace("struct ", "");
    let v = match (t.as_str(), name) {
        ("const smolcap_model *", _) | ("smolcap_model *", _) => "g_model".to_string(),
        ("smolcap_session *", _) => "g_session".into(),
        ("const smolcap_adapter *", _) => "g_adapter".into(),
        ("const smolcap_adapter *const *", _) => "g_adapters".into(),
        ("const float *", _) => "g_scales".into(),
        ("const smolcap_image *", _) => "&g_image".into(),
        ("const smolcap_generate_params *", _) => "&g_gparams".into(),
        ("const smolcap_merge_params *", _) => "&g_mparams".into(),
        ("const smolcap_load_params *", _) => "&g_lparams".into(),
        ("const smolcap_adapter_spec *", _) => "g_specs".into(),
        ("const smolcap_captions *", _) => "g_captions".into(),
        ("const smolcap_scores *", _) => "g_scores".into(),
        ("smolcap_stream *", _) => "g_stream".into(),
        ("smolcap_trainer *", _) | ("const smolcap_trainer *", _) => "g_trainer".into(),
        ("const smolcap_train_params *", _) => "&g_tparams".into(),
        ("const smolcap_train_example *", _) => "&g_example".into(),
        ("const char *", "checkpoint_dir") => "g_ck_dir".into(),
        ("const char *", "init_adapter_dir") => "g_adapter_dir".into(),
        ("const char *", "data_state") => "\"{\\\"epoch\\\":0}\"".into(),
        ("const char *const *", "cands") => "g_cands".into(),
        ("const char *const *", "refs") => "g_refs".into(),
        ("const size_t *", "ref_offsets") => "g_offsets".into(),
        ("const char *", "dir_or_repo") | ("const char *", "base_model_dir_or_repo") => {
            "g_model_dir".into()
        }
        // Trainer saves get a scratch directory: never a fixture.
        ("const char *", "dir") if f.starts_with("smolcap_trainer_") => "g_save_dir".into(),
        ("const char *", "dir") => "g_adapter_dir".into(),
        ("const char *", "out_dir") => "g_out_dir".into(),
        ("const char *", "caption") => "\"a dog on a couch\"".into(),
        ("const char *", "metric") => "\"CIDEr\"".into(),
        ("smolcap_token_callback", _) => "cb_token".into(),
        ("smolcap_log_callback", _) => "cb_log".into(),
        ("void *", "user") => "NULL".into(),
        ("size_t", "struct_size") => {
            let p = f.strip_suffix("_init").unwrap_or(f);
            format!("sizeof(struct {p})")
        }
        ("size_t", _) if name.starts_with('n') => "1".into(),
        ("size_t", _) => "0".into(),
        ("uint32_t", "max_level") => "4".into(),
        ("uint32_t", _) | ("smolcap_status", _) => "0".into(),
        _ => return None,
    };
    Some(v)
}

/// Out-params: pointers to caller storage that the function writes on success.
fn is_out(ty: &str) -> bool {
    let t = ty.replace("struct ", "");
    if t.starts_with("const ") && !t.ends_with("**") {
        return false;
    }
    t.ends_with("**")
        || t == "size_t *"
        || t == "double *"
        || t == "uint64_t *"
        || out_struct(&t).is_some()
}

/// The `_free` function of a handle returned through an out-param of type `ty`.
fn free_fn(ty: &str) -> Option<String> {
    let t = ty.replace("struct ", "");
    let base = t.strip_suffix(" **")?;
    base.starts_with("smolcap_").then(|| format!("{base}_free"))
}

/// Versioned output structs whose `struct_size` the caller sets.
fn out_struct(ty: &str) -> Option<String> {
    let t = ty.replace("struct ", "");
    let base = t.trim_end_matches('*').trim();
    if base.starts_with("smolcap_")
        && (base.ends_with("_info")
            || base.ends_with("_stats")
            || base.ends_with("_report")
            || base.ends_with("_params")
            || base == "smolcap_nll")
    {
        Some(base.to_string())
    } else {
        None
    }
}

/// The generated C program and the number of cases per function.
pub fn generate(fns: &[CFn]) -> (String, BTreeMap<String, usize>) {
    let mut counts = BTreeMap::new();
    let mut body = String::new();
    for f in fns {
        let ptrs: Vec<usize> = f
            .params
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| is_pointer(t))
            .map(|(i, _)| i)
            .collect();
        for &i in &ptrs {
            *counts.entry(f.name.clone()).or_insert(0) += 1;
            let pname = &f.params[i].1;
            let _ = writeln!(body, "    {{ /* {} with {} = NULL */", f.name, pname);
            let mut args = Vec::new();
            let mut outs = Vec::new();
            for (j, (ty, name)) in f.params.iter().enumerate() {
                if j == i {
                    args.push("NULL".to_string());
                    continue;
                }
                if is_pointer(ty) && is_out(ty) && !ty.ends_with("_callback") && name != "user" {
                    // Caller storage filled with 0xAB (struct_size set for versioned structs).
                    let var = format!("o{j}");
                    let _ = writeln!(
                        body,
                        "        unsigned long long {var}[64], {var}_copy[64];"
                    );
                    let _ = writeln!(body, "        memset({var}, 0xAB, sizeof {var});");
                    if let Some(st) = out_struct(ty) {
                        if st != "smolcap_nll" {
                            let _ = writeln!(
                                body,
                                "        {{ uint32_t sz = (uint32_t)sizeof(struct {st}); memcpy({var}, &sz, 4); }}"
                            );
                        }
                    }
                    let _ = writeln!(body, "        memcpy({var}_copy, {var}, sizeof {var});");
                    args.push(format!("({ty}){var}"));
                    outs.push((var, free_fn(ty)));
                    continue;
                }
                match valid_arg(&f.name, ty, name) {
                    Some(v) => args.push(v),
                    None => {
                        let _ = writeln!(
                            body,
                            "        fprintf(stderr, \"GEN: no value for {} {} of {}\\n\"); g_failed++;",
                            ty, name, f.name
                        );
                        args.push("0".into());
                    }
                }
            }
            let call = format!("{}({})", f.name, args.join(", "));
            let void_like = f.ret != "smolcap_status";
            if void_like {
                let _ = writeln!(body, "        {call};");
                let _ = writeln!(body, "        g_passed++;");
            } else {
                let _ = writeln!(body, "        smolcap_status st = {call};");
                if nullable(&f.name, pname) {
                    let _ = writeln!(
                        body,
                        "        CHECK(st != SMOLCAP_STATUS_PANIC && st != SMOLCAP_STATUS_POISONED && st != SMOLCAP_STATUS_INTERNAL, \"{}: NULL {} (allowed): status %d %s\", (int)st, smolcap_last_error());",
                        f.name, pname
                    );
                    // A call that succeeded returned a handle: free it.
                    for (o, free) in &outs {
                        if let Some(free) = free {
                            let ty = &f.params[o[1..].parse::<usize>().unwrap_or(0)].0;
                            let _ = writeln!(
                                body,
                                "        if (st == SMOLCAP_STATUS_OK) {free}(*({ty}){o});"
                            );
                        }
                    }
                } else {
                    let _ = writeln!(
                        body,
                        "        CHECK(st == SMOLCAP_STATUS_INVALID_ARGUMENT, \"{}: NULL {}: status %d (%s)\", (int)st, smolcap_last_error());",
                        f.name, pname
                    );
                    let _ = writeln!(
                        body,
                        "        CHECK(strstr(smolcap_last_error(), \"{pname}\") != NULL && strstr(smolcap_last_error(), \"{}\") != NULL, \"{}: NULL {}: message '%s' does not name the parameter and the function\", smolcap_last_error());",
                        f.name, f.name, pname
                    );
                    for (o, _) in &outs {
                        let _ = writeln!(
                            body,
                            "        CHECK(memcmp({o}, {o}_copy, sizeof {o}) == 0, \"{}: NULL {}: out-param {o} was written\");",
                            f.name, pname
                        );
                    }
                }
            }
            let _ = writeln!(body, "    }}");
        }
    }
    let counts_c: String = counts
        .iter()
        .map(|(k, v)| format!("    printf(\"cases {k} {v}\\n\");\n"))
        .collect();
    let prog = format!(
        r#"/* Generated by tests/hostile.rs from include/smolcap.h: do not edit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <smolcap.h>

static int g_passed = 0, g_failed = 0;
#define CHECK(cond, ...) do {{ if (cond) g_passed++; else {{ g_failed++; fprintf(stderr, "FAIL: "); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); }} }} while (0)

static struct smolcap_model *g_model;
static struct smolcap_session *g_session;
static struct smolcap_adapter *g_adapter;
static const struct smolcap_adapter *g_adapters[1];
static const float g_scales[1] = {{1.0f}};
static struct smolcap_image g_image;
static struct smolcap_generate_params g_gparams;
static struct smolcap_merge_params g_mparams;
static struct smolcap_load_params g_lparams;
static struct smolcap_adapter_spec g_specs[1];
static struct smolcap_captions *g_captions;
static struct smolcap_scores *g_scores;
static struct smolcap_stream *g_stream;
static struct smolcap_trainer *g_trainer;
static struct smolcap_train_params g_tparams;
static struct smolcap_train_example g_example;
static char g_ck_dir[4096], g_save_dir[4096];
static const char *g_cands[1] = {{"a dog on a couch"}};
static const char *g_refs[1] = {{"a dog sleeping on a couch"}};
static const size_t g_offsets[2] = {{0, 1}};
static const char *g_model_dir, *g_adapter_dir;
static char g_out_dir[4096];

static int32_t cb_token(size_t i, const char *p, size_t n, void *u) {{ (void)i; (void)p; (void)n; (void)u; return 0; }}
static void cb_log(uint32_t l, const char *m, void *u) {{ (void)l; (void)m; (void)u; }}

#define SETUP(expr) do {{ smolcap_status s_ = (expr); if (s_) {{ fprintf(stderr, "setup %s: %d %s\n", #expr, (int)s_, smolcap_last_error()); return 2; }} }} while (0)

int main(int argc, char **argv) {{
    FILE *fp;
    static unsigned char img[1 << 20];
    size_t img_len;
    struct stat sb;
    if (argc != 5) {{ fprintf(stderr, "usage: MODEL ADAPTER IMAGE SCRATCH\n"); return 2; }}
    g_model_dir = argv[1];
    g_adapter_dir = argv[2];
    /* The model directory itself: a merge that gets that far fails before writing anything. */
    snprintf(g_out_dir, sizeof g_out_dir, "%s", argv[1]);
    snprintf(g_ck_dir, sizeof g_ck_dir, "%s/null_args_checkpoint", argv[4]);
    snprintf(g_save_dir, sizeof g_save_dir, "%s/null_args_saved", argv[4]);
    fp = fopen(argv[3], "rb");
    if (!fp) return 2;
    img_len = fread(img, 1, sizeof img, fp);
    fclose(fp);
    memset(&g_image, 0, sizeof g_image);
    g_image.kind = SMOLCAP_IMAGE_ENCODED;
    g_image.data = img;
    g_image.len = img_len;
    SETUP(smolcap_generate_params_init(&g_gparams, sizeof g_gparams));
    g_gparams.max_new_tokens = 2;
    SETUP(smolcap_merge_params_init(&g_mparams, sizeof g_mparams));
    SETUP(smolcap_load_params_init(&g_lparams, sizeof g_lparams));
    g_specs[0].dir = g_adapter_dir;
    g_specs[0].scale = 1.0f;
    SETUP(smolcap_model_load(g_model_dir, NULL, &g_model));
    SETUP(smolcap_session_new(g_model, &g_session));
    SETUP(smolcap_adapter_load(g_model, g_adapter_dir, &g_adapter));
    g_adapters[0] = g_adapter;
    SETUP(smolcap_caption(g_session, &g_image, 1, &g_gparams, NULL, NULL, &g_captions));
    SETUP(smolcap_score_captions(g_cands, 1, g_refs, g_offsets, 0, &g_scores));
    {{
        struct smolcap_session *s2;
        SETUP(smolcap_session_new(g_model, &s2));
        SETUP(smolcap_stream_begin(s2, &g_image, &g_gparams, &g_stream));
        smolcap_session_free(s2);
    }}
    SETUP(smolcap_train_params_init(&g_tparams, sizeof g_tparams));
    g_tparams.lora_r = 2;
    g_example.image = g_image;
    g_example.caption = "a dog on a couch";
    SETUP(smolcap_trainer_new(g_model, &g_tparams, NULL, &g_trainer));
    SETUP(smolcap_trainer_save_checkpoint(g_trainer, g_ck_dir, NULL));

{body}
    (void)sb;
    smolcap_stream_free(g_stream);
    smolcap_trainer_free(g_trainer);
    smolcap_scores_free(g_scores);
    smolcap_captions_free(g_captions);
    smolcap_adapter_free(g_adapter);
    smolcap_session_free(g_session);
    smolcap_model_free(g_model);
    CHECK(smolcap_debug_live_objects() == 0, "live objects left: %zu", smolcap_debug_live_objects());
{counts_c}    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed != 0;
}}
"#
    );
    (prog, counts)
}

/// Writes the program to `dir/null_args.c`.
pub fn write(dir: &Path, prog: &str) -> std::path::PathBuf {
    let p = dir.join("null_args.c");
    std::fs::write(&p, prog).unwrap();
    p
}
