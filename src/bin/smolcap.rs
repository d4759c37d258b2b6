//! `smolcap` command-line tool: caption, inspect, score, merge, bench, eval, train.
//!
//! Conventions (docs/CLI.md): stdout carries results, stderr progress and messages; Ctrl-C or
//! SIGTERM stops at the next safe point, keeps what is finished and exits 130 (a second one
//! exits at once); a closed stdout ends the command quietly.

// The binary's own modules (a crate root looks for modules beside itself, hence the paths).
#[path = "smolcap/inputs.rs"]
mod inputs;
#[path = "smolcap/progress.rs"]
mod progress;
#[path = "smolcap/signals.rs"]
mod signals;

use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use smolcap::generate::{BeamParams, EarlyStopping, GenerateParams, SampleParams, Strategy};
use smolcap::hub::DEFAULT_MODEL;
use smolcap::model::text::Logits;
use smolcap::processor::image::{DecodeLimits, SourceImage};
use smolcap::processor::PromptMode;
use smolcap::{CaptionOptions, LoadOptions, Model};

#[path = "smolcap/shards.rs"]
mod shards;
use shards::ShardArgs;

use progress::{Mode, Progress};
use signals::Interrupted;

/// `println!` on stdout that returns the write error (a closed pipe ends the command quietly).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?;
    }};
}

/// `print!` on stdout that returns the write error.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)?;
    }};
}

#[derive(Parser)]
#[command(
    name = "smolcap",
    version,
    about = "Caption, fine-tune, merge and score SmolVLM models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// No progress display and no informational messages on stderr (errors still go there).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Show progress even when stderr is not a terminal (plain lines, at most one a second).
    #[arg(long, global = true, conflicts_with = "quiet")]
    progress: bool,
}

/// What every command reads besides its arguments.
struct Ctx {
    /// How progress is shown.
    mode: Mode,
    /// Set by the first Ctrl-C / SIGTERM.
    cancel: std::sync::Arc<AtomicBool>,
    /// `--quiet`.
    quiet: bool,
}

static CTX: std::sync::OnceLock<Ctx> = std::sync::OnceLock::new();

/// The run's context (set once in `main`; defaults if a test path never set it).
fn ctx() -> &'static Ctx {
    CTX.get_or_init(|| Ctx {
        mode: Mode::Off,
        cancel: std::sync::Arc::new(AtomicBool::new(false)),
        quiet: false,
    })
}

/// An informational message on stderr, unless `--quiet`.
macro_rules! info {
    ($($t:tt)*) => {
        if !ctx().quiet {
            eprintln!($($t)*);
        }
    };
}

#[derive(Subcommand)]
enum Cmd {
    /// Caption one or more images.
    Caption(CaptionArgs),
    /// Show what the processor and the model did with an image (for debugging preprocessing).
    Inspect(InspectArgs),
    /// Score candidate captions against references (COCO annotation / results JSON).
    Score(ScoreArgs),
    /// Merge LoRA adapters into the base weights and write a complete model directory.
    Merge(MergeArgs),
    /// Write a model directory as the GGUF pair llama.cpp loads (text model + mmproj), quantised.
    Quantize(QuantizeArgs),
    /// Time each captioning stage (optionally beside tools/reference/bench_torch.py's JSON).
    Bench(BenchArgs),
    /// Caption a dataset's images, score them against their references, write predictions,
    /// metrics and an HTML report (the seed's eval script).
    Eval(EvalArgs),
    /// Fine-tune LoRA / QLoRA adapters on an image-caption dataset (the seed's train script).
    Train(TrainArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Base model directory or hub repo id.
    #[arg(long, alias = "base_model_id", alias = "model", default_value = DEFAULT_MODEL)]
    base_model_id: String,
    /// Hub revision of the base model.
    #[arg(long)]
    revision: Option<String>,
    /// PEFT LoRA adapter directory, optionally `DIR:SCALE`; repeat to apply several at once.
    #[arg(long, alias = "adapter_dir", alias = "adapter")]
    adapter_dir: Vec<String>,
    /// Dataset: a parquet file or directory, a COCO captions or Karpathy JSON, a JSONL manifest,
    /// or a hub dataset id.
    #[arg(long, alias = "dataset_id", default_value = "jxie/coco_captions")]
    dataset_id: String,
    /// Hub revision of a hub dataset.
    #[arg(long, alias = "dataset_revision")]
    dataset_revision: Option<String>,
    /// Image directory of a COCO captions JSON / image root of a Karpathy JSON (default: the
    /// JSON file's directory).
    #[arg(long, alias = "image_dir")]
    image_dir: Option<PathBuf>,
    /// Dataset split.
    #[arg(long, default_value = "test")]
    split: String,
    /// The user message (rendered with the model's chat template).
    #[arg(long, default_value = smolcap::session::DEFAULT_PROMPT)]
    prompt: String,
    /// Unique images evaluated, the first ones in dataset order (0 = all).
    #[arg(long, alias = "max_images", default_value_t = 1000)]
    max_images: usize,
    /// Images captioned together in one batch.
    #[arg(long, alias = "batch_size", default_value_t = 4)]
    batch_size: usize,
    /// Most new tokens per caption.
    #[arg(long, alias = "max_new_tokens", default_value_t = 48)]
    max_new_tokens: usize,
    /// Sample with this temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long, alias = "top_p", default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Metric suite: `seed` (the seed's eval script) or `coco` (pycocoevalcap).
    #[arg(long, default_value = "seed")]
    suite: String,
    /// Override the processor's longest edge.
    #[arg(long, alias = "image_longest_edge")]
    image_longest_edge: Option<u32>,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Weight storage, quantised as the model loads: FORMAT (q8_0, q6_k, q5_0, q4_k, q4_0, f16,
    /// bf16, nf4) for every part, then optional PART=FORMAT overrides (parts: vision, connector,
    /// text, embed, lm_head; f32 keeps a part dense), e.g. `q4_0,vision=q8_0`.
    #[arg(long, default_value = "")]
    quantize: String,
    /// The GGUF vision projector when the base model is a GGUF text model.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Device: cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory for predictions.json, references.json, metrics.json and report.html.
    #[arg(long, alias = "output_dir", default_value = "eval_output")]
    output_dir: PathBuf,
    /// Longest edge of the report's thumbnails in pixels (0 = none).
    #[arg(long, alias = "thumbnail_size", default_value_t = 160)]
    thumbnail_size: usize,
    /// Largest accepted image, in pixels.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_image_pixels: u64,
    /// Largest accepted encoded image, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_image_bytes: u64,
    /// Longest accepted prompt in tokens.
    #[arg(long, default_value_t = 16_384)]
    max_prompt_tokens: usize,
    /// Longest accepted prompt text, in bytes (checked before rendering or tokenizing).
    #[arg(long, default_value_t = smolcap::session::DEFAULT_MAX_PROMPT_BYTES)]
    max_prompt_bytes: usize,
    /// Longest reference caption kept, in bytes (longer dataset rows are skipped and listed).
    #[arg(long, default_value_t = smolcap::data::DEFAULT_MAX_CAPTION_BYTES)]
    max_caption_bytes: usize,
    /// Predictions are also written to OUTPUT_DIR/predictions.jsonl a batch at a time; with
    /// --shard I/N (N > 1) only that file is written (score the union with --merge-shards).
    #[command(flatten)]
    shard: ShardArgs,
    /// Combine the predictions.jsonl of these shard output directories and score the union
    /// (writes the unsharded run's files to --output-dir; nothing is captioned).
    #[arg(long = "merge-shards", num_args = 1.., value_name = "DIR")]
    merge_shards: Vec<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// Base model directory or hub repo id.
    #[arg(long = "base-model-id", alias = "base_model_id", alias = "model", default_value = DEFAULT_MODEL)]
    base_model_id: String,
    /// Dataset: a parquet file/dir (jxie/coco_captions schema), a hub dataset id, a COCO
    /// captions JSON, a Karpathy dataset_coco.json, or a JSONL manifest {"image","caption"}.
    #[arg(long = "dataset-id", alias = "dataset_id")]
    dataset_id: String,
    /// Image directory (COCO annotation file) or image root (Karpathy JSON).
    #[arg(long = "image-dir", alias = "image_dir")]
    image_dir: Option<PathBuf>,
    /// Training split.
    #[arg(long = "train-split", alias = "train_split", default_value = "train")]
    train_split: String,
    /// Evaluation split ("none" = no evaluation).
    #[arg(
        long = "eval-split",
        alias = "eval_split",
        default_value = "validation"
    )]
    eval_split: String,
    /// Rows of the eval split used for eval/loss.
    #[arg(
        long = "eval-max-samples",
        alias = "eval_max_samples",
        default_value_t = 64
    )]
    eval_max_samples: usize,
    /// Output directory: the adapter, checkpoint-N/ directories, logs/ (TensorBoard + JSONL).
    #[arg(long = "output-dir", alias = "output_dir")]
    output_dir: PathBuf,
    /// Use at most this many training rows.
    #[arg(long = "max-samples", alias = "max_samples")]
    max_samples: Option<usize>,
    /// Overrides the processor's longest image edge.
    #[arg(long = "image-longest-edge", alias = "image_longest_edge")]
    image_longest_edge: Option<u32>,
    /// Passes over the data.
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Examples per forward pass.
    #[arg(long = "batch-size", alias = "batch_size", default_value_t = 1)]
    batch_size: usize,
    /// Forward passes accumulated per optimizer step.
    #[arg(long = "grad-accum", alias = "grad_accum", default_value_t = 8)]
    grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long = "weight-decay", alias = "weight_decay", default_value_t = 0.0)]
    weight_decay: f64,
    /// Linear warm-up as a fraction of all steps.
    #[arg(long = "warmup-ratio", alias = "warmup_ratio", default_value_t = 0.03)]
    warmup_ratio: f64,
    /// Gradient clipping norm (0 = off).
    #[arg(long = "max-grad-norm", alias = "max_grad_norm", default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Longest sample in tokens (image tokens included); longer captions are shortened.
    #[arg(long = "max-seq-len", alias = "max_seq_len", default_value_t = 2048)]
    max_seq_len: usize,
    /// QLoRA: frozen decoder weights stored as NF4 (block 64, double quantisation).
    #[arg(long = "use-qlora", alias = "use_qlora")]
    use_qlora: bool,
    /// LoRA rank [default: 16; with --resume: the checkpoint's].
    #[arg(long = "lora-r", alias = "lora_r")]
    lora_r: Option<usize>,
    /// LoRA alpha [default: 32; with --resume: the checkpoint's].
    #[arg(long = "lora-alpha", alias = "lora_alpha")]
    lora_alpha: Option<f64>,
    /// LoRA dropout [default: 0.05; with --resume: the checkpoint's].
    #[arg(long = "lora-dropout", alias = "lora_dropout")]
    lora_dropout: Option<f32>,
    /// Comma-separated module names that get LoRA [default:
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; with --resume: the checkpoint's].
    #[arg(long = "lora-targets", alias = "lora_targets")]
    lora_targets: Option<String>,
    /// Keep the vision tower frozen (the default; accepted for the seed's command lines).
    #[arg(long = "freeze-vision", alias = "freeze_vision")]
    freeze_vision: bool,
    /// Also put LoRA on the matching vision-tower modules.
    #[arg(
        long = "train-vision",
        alias = "train_vision",
        conflicts_with = "freeze_vision"
    )]
    train_vision: bool,
    /// Train the connector projection in full (saved as modules_to_save).
    #[arg(long = "tune-projector", alias = "tune_projector")]
    tune_projector: bool,
    /// Use rsLoRA scaling (alpha/sqrt(r)).
    #[arg(long = "use-rslora", alias = "use_rslora")]
    use_rslora: bool,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long = "max-steps", alias = "max_steps")]
    max_steps: Option<u64>,
    /// Seed of shuffling, LoRA initialisation and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Resume from a checkpoint directory (e.g. OUTPUT_DIR/checkpoint-100).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Evaluate every N steps (and at the end); 0 = only at the end.
    #[arg(long = "eval-steps", alias = "eval_steps", default_value_t = 0)]
    eval_steps: u64,
    /// Write a checkpoint every N steps; 0 = only at the end.
    #[arg(long = "save-steps", alias = "save_steps", default_value_t = 0)]
    save_steps: u64,
    /// Keep the dataset order.
    #[arg(long = "no-shuffle", alias = "no_shuffle")]
    no_shuffle: bool,
    /// Order each epoch by image (images shuffled, an image's captions consecutive) so each
    /// image is decoded and encoded once per epoch (with the vision tower frozen: much faster).
    #[arg(long = "group-by-image", alias = "group_by_image")]
    group_by_image: bool,
    /// Memory for cached image features (MiB) when the vision tower and connector are frozen.
    #[arg(
        long = "feature-cache-mb",
        alias = "feature_cache_mb",
        default_value_t = 1024
    )]
    feature_cache_mb: usize,
    /// Start from an existing PEFT adapter (its config decides targets, rank and alpha).
    #[arg(long = "adapter-init", alias = "adapter_init")]
    adapter_init: Option<PathBuf>,
    /// Recompute activations in the backward pass (less memory, slower).
    #[arg(long = "gradient-checkpointing", alias = "gradient_checkpointing")]
    gradient_checkpointing: bool,
    /// The instruction that goes with each image.
    #[arg(long, default_value = smolcap::session::DEFAULT_PROMPT)]
    prompt: String,
    /// Longest caption accepted, in bytes (checked before tokenizing; longer rows are skipped).
    #[arg(
        long = "max-caption-bytes",
        alias = "max_caption_bytes",
        default_value_t = smolcap::train::DEFAULT_MAX_CAPTION_BYTES
    )]
    max_caption_bytes: usize,
}

#[derive(Args)]
struct ScoreArgs {
    /// References in COCO captions annotation format ({"annotations":[{"image_id","caption"}]}).
    #[arg(long)]
    refs: PathBuf,
    /// Candidates in COCO results format ([{"image_id","caption"}]) or JSON Lines of such
    /// objects; repeat (or list several) to score the union of shard outputs.
    #[arg(long, required = true, num_args = 1..)]
    cands: Vec<PathBuf>,
    /// Metric suite: `seed` (the seed's eval script) or `coco` (pycocoevalcap).
    #[arg(long, default_value = "seed")]
    suite: String,
    /// Print all corpus and per-image scores as JSON.
    #[arg(long)]
    json: bool,
    /// Longest caption (candidate or reference) scored, in bytes; a longer one is an error.
    #[arg(
        long = "max-caption-bytes",
        default_value_t = smolcap::metrics::DEFAULT_MAX_CAPTION_BYTES
    )]
    max_caption_bytes: usize,
}

#[derive(Args)]
struct MergeArgs {
    /// Base model directory or hub repo id.
    #[arg(long, alias = "base_model_id", alias = "base-model-id", alias = "model", default_value = DEFAULT_MODEL)]
    base_model: String,
    /// Hub revision of the base model.
    #[arg(long)]
    revision: Option<String>,
    /// PEFT adapter directory, optionally `DIR:SCALE`; repeat to merge several.
    #[arg(
        long = "adapter-dir",
        alias = "adapter_dir",
        alias = "adapter",
        required = true
    )]
    adapter_dir: Vec<String>,
    /// Output directory.
    #[arg(long = "save-dir", alias = "save_dir", alias = "output-dir")]
    save_dir: PathBuf,
    /// Largest safetensors shard in bytes (larger checkpoints are sharded with an index).
    #[arg(long, default_value_t = 5 * 1024 * 1024 * 1024)]
    max_shard_bytes: u64,
    /// Replace an existing output directory.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image to caption.
    #[arg(long)]
    image: String,
    /// Tokens generated (stop tokens suppressed so every run generates exactly this many).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Repetitions per stage (the best is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// JSON written by tools/reference/bench_torch.py on the same model and image.
    #[arg(long)]
    torch_json: Option<PathBuf>,
    /// JSON written by tools/reference/bench_llama_cpp.sh on the same model (as GGUF) and image;
    /// shown instead of PyTorch's.
    #[arg(long, conflicts_with = "torch_json")]
    llama_json: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Time one LoRA training step over this many copies of the image instead (r=16, alpha
    /// 32 on the decoder's seven projections, as tools/reference/bench_train_torch.py does).
    #[arg(long = "train-batch")]
    train_batch: Option<usize>,
    /// With --train-batch: QLoRA (the decoder loaded straight to NF4, 4-bit codes only).
    #[arg(long)]
    qlora: bool,
    /// With --train-batch: resize images so the longest edge is this (the trainer's
    /// --image-longest-edge; default: the model's own).
    #[arg(long = "train-longest-edge")]
    train_longest_edge: Option<u32>,
    /// With --train-batch: gradient checkpointing (each decoder layer's forward redone during
    /// the backward pass instead of keeping its activations).
    #[arg(long = "gradient-checkpointing")]
    gradient_checkpointing: bool,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Model directory (HF layout) or hub repo id.
    #[arg(long, alias = "base_model_id", default_value = DEFAULT_MODEL)]
    model: String,
    /// Hub revision.
    #[arg(long)]
    revision: Option<String>,
    /// Output directory for `NAME-TYPE.gguf` and `mmproj-NAME-TYPE.gguf`.
    #[arg(long)]
    out: PathBuf,
    /// Weight format: FORMAT (q8_0, q6_k, q5_0, q4_k, q4_0, f16, bf16, f32) for every part, then
    /// optional PART=FORMAT overrides (vision, connector, text, embed, lm_head), as --quantize.
    #[arg(long = "type", default_value = "q8_0")]
    ty: String,
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory, hub repo id, GGUF text model (`FILE.gguf`, with --mmproj or the one
    /// `mmproj*.gguf` beside it) or a directory holding such a pair.
    #[arg(long, alias = "base_model_id", alias = "base-model-id", default_value = DEFAULT_MODEL)]
    model: String,
    /// The GGUF vision projector of a GGUF text model.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Weight storage, quantised as the model loads: FORMAT (q8_0, q6_k, q5_0, q4_k, q4_0, f16,
    /// bf16, nf4) for every part, then optional PART=FORMAT overrides (parts: vision, connector,
    /// text, embed, lm_head; f32 keeps a part dense), e.g. `q4_0,vision=q8_0`.
    #[arg(long, default_value = "")]
    quantize: String,
    /// Device: cpu, cuda[:N] or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Load-time limits (README "Hostile input"): what a model or adapter directory may declare.
#[derive(Args)]
struct LimitArgs {
    /// Largest safetensors JSON header, in bytes.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: u64,
    /// Most layers in config.json (vision or text).
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_LAYERS)]
    max_layers: usize,
    /// Largest hidden size in config.json (intermediate sizes may be 8x this).
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_HIDDEN)]
    max_hidden_size: usize,
    /// Most attention heads in config.json.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_HEADS)]
    max_heads: usize,
    /// Largest vocabulary in config.json.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_VOCAB)]
    max_vocab: usize,
    /// Largest text_config.max_position_embeddings.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_POSITIONS)]
    max_positions: usize,
    /// Largest vision_config.image_size, in pixels.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_IMAGE_SIZE)]
    max_vision_image_size: usize,
    /// Largest LoRA rank of a loaded adapter.
    #[arg(long, default_value_t = smolcap::config::DEFAULT_MAX_ADAPTER_RANK)]
    max_adapter_rank: usize,
}

impl Default for LimitArgs {
    fn default() -> Self {
        use smolcap::config as c;
        Self {
            max_header_bytes: c::DEFAULT_MAX_HEADER_BYTES,
            max_layers: c::DEFAULT_MAX_LAYERS,
            max_hidden_size: c::DEFAULT_MAX_HIDDEN,
            max_heads: c::DEFAULT_MAX_HEADS,
            max_vocab: c::DEFAULT_MAX_VOCAB,
            max_positions: c::DEFAULT_MAX_POSITIONS,
            max_vision_image_size: c::DEFAULT_MAX_IMAGE_SIZE,
            max_adapter_rank: c::DEFAULT_MAX_ADAPTER_RANK,
        }
    }
}

impl LimitArgs {
    fn to_limits(&self) -> smolcap::config::ConfigLimits {
        smolcap::config::ConfigLimits {
            max_hidden: self.max_hidden_size,
            max_layers: self.max_layers,
            max_vocab: self.max_vocab,
            max_heads: self.max_heads,
            max_positions: self.max_positions,
            max_image_size: self.max_vision_image_size,
            max_header_bytes: self.max_header_bytes,
            max_adapter_rank: self.max_adapter_rank,
        }
    }
}

#[derive(Args)]
struct PromptArgs {
    /// Image file, `-` for stdin, or an http(s) URL; repeat for several captions.
    #[arg(long)]
    image: Vec<String>,
    /// The user message (rendered with the model's chat template).
    #[arg(long, default_value = smolcap::session::DEFAULT_PROMPT)]
    prompt: String,
    /// Use --prompt verbatim as the full prompt (it must contain one <image> per image).
    #[arg(long)]
    raw_prompt: bool,
    /// Override the processor's longest edge.
    #[arg(long, alias = "image_longest_edge")]
    image_longest_edge: Option<u32>,
    /// Largest accepted image, in pixels.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_image_pixels: u64,
    /// Largest accepted encoded image, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_image_bytes: u64,
    /// Longest accepted prompt in tokens (image tokens included; checked before the image
    /// tiles are allocated).
    #[arg(long, default_value_t = smolcap::session::DEFAULT_MAX_PROMPT_TOKENS)]
    max_prompt_tokens: usize,
    /// Longest accepted prompt text, in bytes (checked before rendering or tokenizing).
    #[arg(long, default_value_t = smolcap::session::DEFAULT_MAX_PROMPT_BYTES)]
    max_prompt_bytes: usize,
    /// Largest key/value cache allocated for one batch, in bytes.
    #[arg(long, default_value_t = smolcap::session::DEFAULT_MAX_KV_CACHE_BYTES)]
    max_kv_cache_bytes: u64,
    /// Most images captioned in one batch (--batch-size is checked against it).
    #[arg(long, default_value_t = smolcap::session::DEFAULT_MAX_BATCH)]
    max_batch: usize,
}

#[derive(Args)]
struct CaptionArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Most new tokens per caption.
    #[arg(long, alias = "max_new_tokens", default_value_t = 48)]
    max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens were generated.
    #[arg(long, alias = "min_new_tokens", default_value_t = 0)]
    min_new_tokens: usize,
    /// Beam search with this many beams (1 = off).
    #[arg(long, alias = "num_beams", default_value_t = 1)]
    num_beams: usize,
    /// Beam-search length penalty.
    #[arg(long, alias = "length_penalty", default_value_t = 1.0)]
    length_penalty: f32,
    /// Beam search stops once num_beams hypotheses are finished.
    #[arg(long, alias = "early_stopping")]
    early_stopping: bool,
    /// Sample with this temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, alias = "top_p", default_value_t = 1.0)]
    top_p: f32,
    /// Top-k sampling (0 = off).
    #[arg(long, alias = "top_k", default_value_t = 0)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Repetition penalty (1 = off).
    #[arg(long, alias = "repetition_penalty", default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Images captioned together in one batch.
    #[arg(long, alias = "batch_size", default_value_t = 1)]
    batch_size: usize,
    /// PEFT LoRA adapter directory, optionally `DIR:SCALE`; repeat to apply several at once.
    #[arg(long, alias = "adapter_dir", alias = "adapter-dir")]
    adapter: Vec<String>,
    /// Print {"captions":[...]} as JSON (once, at the end).
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// Print one JSON object {"image","index","text","token_ids"} per line as each caption is
    /// done (index: the position in the input list).
    #[arg(long)]
    jsonl: bool,
    /// Read more images from FILE (`-` = stdin): one path or URL per line; blank lines and
    /// lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    images_from: Option<PathBuf>,
    /// Stream tokens to stdout as they are generated (single image, greedy/sampling).
    #[arg(long)]
    stream: bool,
    #[command(flatten)]
    shard: ShardArgs,
    /// Write one JSON line per image ({"image","index","text","token_ids"}) to this file, a
    /// batch at a time (a killed run loses at most the batch in flight).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Print JSON (the only format).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = Mode::from_flags(cli.quiet, cli.progress);
    smolcap::hub::set_download_progress(mode == Mode::Bar);
    // Only commands that poll the flag catch the first signal; the others stop at once as usual.
    let polls = matches!(cli.cmd, Cmd::Caption(_) | Cmd::Eval(_) | Cmd::Train(_));
    let _ = CTX.set(Ctx {
        mode,
        cancel: if polls {
            signals::install()
        } else {
            std::sync::Arc::new(AtomicBool::new(false))
        },
        quiet: cli.quiet,
    });
    let r = match cli.cmd {
        Cmd::Caption(a) => caption(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Quantize(a) => quantize(a),
        Cmd::Score(a) => score(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Train(a) => train(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            info!("interrupted");
            ExitCode::from(signals::EXIT_INTERRUPTED)
        }
        Err(e) if is_closed_pipe(&*e) => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(e)
            if matches!(
                e.downcast_ref::<smolcap::Error>(),
                Some(smolcap::Error::Cancelled)
            ) =>
        {
            info!("interrupted");
            ExitCode::from(signals::EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status when stdout was closed by the reader (128 + SIGPIPE, as a shell reports a
/// command killed by it).
const EXIT_CLOSED_PIPE: u8 = 141;

/// Whether `e` is a write to a closed stdout (`smolcap caption ... | head -1`).
fn is_closed_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn load_model(a: &ModelArgs) -> AnyResult<Model> {
    load_model_with(a, false)
}

/// [`load_model`], with the decoder's linear weights as NF4 only when `nf4_decoder` (QLoRA).
fn load_model_with(a: &ModelArgs, nf4_decoder: bool) -> AnyResult<Model> {
    let opts = LoadOptions {
        nf4_decoder,
        dtype: Some(smolcap::device::parse_dtype(&a.dtype)?),
        device: smolcap::device::parse_device(&a.device)?,
        revision: a.revision.clone(),
        config_limits: a.limits.to_limits(),
        quantize: smolcap::quant::QuantSpec::parse(&a.quantize)?,
        mmproj: a.mmproj.clone(),
    };
    with_spinner("loading model", || Ok(Model::load(&a.model, &opts)?))
}

/// Runs `f` under a spinner named `label` (model loading and downloads have no count).
fn with_spinner<T>(label: &str, f: impl FnOnce() -> AnyResult<T>) -> AnyResult<T> {
    let p = Progress::new(ctx().mode, label, None, "");
    let r = f();
    if r.is_ok() {
        p.finish("done");
    }
    r
}

fn read_image(spec: &str, limits: &DecodeLimits) -> AnyResult<SourceImage> {
    let bytes = if spec == "-" {
        let mut v = Vec::new();
        std::io::stdin()
            .take(limits.max_encoded_bytes + 1)
            .read_to_end(&mut v)?;
        v
    } else if spec.starts_with("http://") || spec.starts_with("https://") {
        let resp = ureq::get(spec)
            .timeout(std::time::Duration::from_secs(30))
            .call()
            .map_err(|e| format!("{spec}: {e}"))?;
        let mut v = Vec::new();
        resp.into_reader()
            .take(limits.max_encoded_bytes + 1)
            .read_to_end(&mut v)?;
        v
    } else {
        let p = PathBuf::from(spec);
        smolcap::fsio::read_limited(&p, limits.max_encoded_bytes).map_err(|e| match e {
            smolcap::Error::Limit(m) => format!("{m} (--max-image-bytes)"),
            e => e.to_string(),
        })?
    };
    if bytes.len() as u64 > limits.max_encoded_bytes {
        return Err(format!(
            "{spec}: image exceeds {} bytes (--max-image-bytes)",
            limits.max_encoded_bytes
        )
        .into());
    }
    SourceImage::decode(&bytes, limits).map_err(|e| format!("{spec}: {e}").into())
}

fn caption_options(p: &PromptArgs) -> CaptionOptions {
    CaptionOptions {
        prompt: p.prompt.clone(),
        mode: if p.raw_prompt {
            PromptMode::Raw
        } else {
            PromptMode::Chat
        },
        longest_edge: p.image_longest_edge,
        max_prompt_tokens: p.max_prompt_tokens,
        max_prompt_bytes: p.max_prompt_bytes,
        max_kv_cache_bytes: p.max_kv_cache_bytes,
        max_batch: p.max_batch,
        ..Default::default()
    }
}

fn limits(p: &PromptArgs) -> DecodeLimits {
    DecodeLimits {
        max_pixels: p.max_image_pixels,
        max_encoded_bytes: p.max_image_bytes,
    }
}

fn caption(a: CaptionArgs) -> AnyResult<()> {
    let strategy = if a.num_beams > 1 {
        Strategy::Beam(BeamParams {
            num_beams: a.num_beams,
            length_penalty: a.length_penalty,
            early_stopping: if a.early_stopping {
                EarlyStopping::True
            } else {
                EarlyStopping::Heuristic
            },
        })
    } else if a.temperature > 0.0 {
        Strategy::Sample {
            params: SampleParams {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
            },
            seed: a.seed,
        }
    } else {
        Strategy::Greedy
    };
    let mut opts = caption_options(&a.prompt);
    opts.params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        strategy,
        repetition_penalty: a.repetition_penalty,
        min_new_tokens: a.min_new_tokens,
    };
    opts.params.validate()?;
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if opts.prompt.len() > opts.max_prompt_bytes {
        return Err(format!(
            "--prompt of {} bytes exceeds --max-prompt-bytes {}",
            opts.prompt.len(),
            opts.max_prompt_bytes
        )
        .into());
    }
    let specs = inputs::image_specs(&a.prompt.image, a.images_from.as_deref())?;
    if specs.is_empty() {
        return Err("no image given (--image or --images-from)".into());
    }
    let lim = limits(&a.prompt);
    let range = a.shard.get()?.range(specs.len());
    let (todo, mut writer, resumed) = shards::caption_output(&a, &specs, range)?;
    // A short list is read before the model loads, so a bad path fails fast; a long one is
    // read batch by batch as it is captioned.
    let early: Vec<SourceImage> = if todo.len() <= a.batch_size.max(8) {
        todo.iter()
            .map(|&i| read_image(&specs[i], &lim))
            .collect::<AnyResult<_>>()?
    } else {
        Vec::new()
    };
    let model = load_model(&a.model)?;
    for spec in &a.adapter {
        let (dir, weight) = adapter_spec(spec)?;
        let adapter = model
            .load_adapter(&dir)
            .map_err(|e| format!("adapter {}: {e}", dir.display()))?;
        opts.adapters.push(smolcap::ActiveAdapter {
            adapter: std::sync::Arc::new(adapter),
            weight,
        });
    }
    let cancel = &*ctx().cancel;
    let stream = a.stream && !a.json && !a.jsonl;
    let bar = Progress::new(ctx().mode, "captioning", Some(specs.len() as u64), "images");
    let t0 = std::time::Instant::now();
    let mut results = Vec::new();
    let quiet = writer.is_some();
    let mut done = 0usize;
    let mut interrupted = false;
    for (chunk_i, idx) in todo.chunks(a.batch_size).enumerate() {
        if signals::requested(cancel) {
            interrupted = true;
            break;
        }
        let read: Vec<SourceImage>;
        let chunk: &[SourceImage] = if early.is_empty() {
            read = idx
                .iter()
                .map(|&i| read_image(&specs[i], &lim))
                .collect::<AnyResult<_>>()?;
            &read
        } else {
            &early[chunk_i * a.batch_size..chunk_i * a.batch_size + idx.len()]
        };
        let inputs: Vec<Vec<&SourceImage>> = chunk.iter().map(|i| vec![i]).collect();
        let mut write_err: Option<std::io::Error> = None;
        let mut on_piece = |_: usize, piece: &str| {
            if stream {
                use std::io::Write;
                let mut o = std::io::stdout().lock();
                if let Err(e) = o.write_all(piece.as_bytes()).and_then(|()| o.flush()) {
                    write_err = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        };
        let caps = match model.caption(&inputs, &opts, cancel, &mut on_piece) {
            Err(smolcap::Error::Cancelled) => {
                if let Some(e) = write_err {
                    return Err(e.into());
                }
                interrupted = true;
                break;
            }
            r => r?,
        };
        if let Some(e) = write_err {
            return Err(e.into());
        }
        let mut records = Vec::with_capacity(caps.len());
        for (j, c) in caps.into_iter().enumerate() {
            let index = idx[j];
            let name = &specs[index];
            if a.jsonl {
                let mut o = std::io::stdout().lock();
                inputs::write_jsonl(&mut o, name, index, &c.text, &c.token_ids)?;
            } else if stream {
                outln!();
            } else if !a.json && !quiet {
                if specs.len() > 1 {
                    outln!("{name}: {}", c.text.trim());
                } else {
                    outln!("{}", c.text.trim());
                }
            }
            records.push(
                json!({"image": name, "index": index, "text": c.text, "token_ids": c.token_ids}),
            );
        }
        if let Some(w) = writer.as_mut() {
            w.append(&records)?;
        }
        if a.json {
            results.extend(records);
        }
        done += idx.len();
        bar.set(
            done as u64,
            &format!(
                "{:.2} img/s",
                done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            ),
        );
    }
    if interrupted {
        bar.note(&format!(
            "interrupted after {done} of {} images",
            todo.len()
        ));
    } else {
        bar.finish("done");
    }
    if let Some(out) = &a.output {
        eprintln!(
            "wrote {done} captions to {} ({resumed} already there; shard {})",
            out.display(),
            a.shard.get()?
        );
    }
    if a.json {
        // What is finished is printed, interrupted or not.
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "captions": results }))?
        );
    }
    if interrupted {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> AnyResult<()> {
    if a.prompt.image.is_empty() {
        return Err("inspect needs at least one --image".into());
    }
    let lim = limits(&a.prompt);
    let images: Vec<SourceImage> = a
        .prompt
        .image
        .iter()
        .map(|s| read_image(s, &lim))
        .collect::<AnyResult<_>>()?;
    let model = load_model(&a.model)?;
    let opts = caption_options(&a.prompt);
    let refs: Vec<&SourceImage> = images.iter().collect();
    let p = model.prepare(&refs, &opts)?;
    let sum: f64 = p.pixel_values.iter().map(|&v| v as f64).sum();
    let abs_sum: f64 = p.pixel_values.iter().map(|&v| (v as f64).abs()).sum();
    let logits = model
        .prompt_logits(&p, Logits::Last, opts.vision_chunk)?
        .to_vec1::<f32>()?;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
    idx.truncate(20);
    let out = json!({
        "input_ids": p.input_ids,
        "num_tiles": p.num_tiles,
        "grids": p.grids,
        "pixel_values": {"shape": [p.num_tiles, 3, p.tile_size, p.tile_size], "sum": sum, "abs_sum": abs_sum},
        "logits_last": {"ids": idx, "values": idx.iter().map(|&i| logits[i]).collect::<Vec<_>>()},
    });
    let _ = a.json;
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now in MiB (Linux `VmRSS`).
fn current_rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A `/proc/self/status` size field in MiB (0 where there is none).
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> AnyResult<T>) -> AnyResult<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..n.max(1) {
        let t = std::time::Instant::now();
        let r = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    let out = out.ok_or("no run")?;
    Ok((best, out))
}

/// Memory read bandwidth in GB/s: a parallel sum over a 512 MiB buffer (best of 5), allocated
/// like the model's weights (huge pages where the kernel grants them) or with plain pages.
fn read_bandwidth_gbs(like_weights: bool) -> AnyResult<f64> {
    use rayon::prelude::*;
    let len = 128 * 1024 * 1024;
    let mut v = if like_weights {
        smolcap::kernels::cpu::streamed_buffer(len)
    } else {
        Vec::with_capacity(len)
    };
    v.resize(len, 1.0f32);
    // 16 independent accumulators per chunk so the adds vectorise and memory is the limit.
    let chunk_sum = |c: &[f32]| {
        let mut acc = [0f32; 16];
        for p in c.chunks_exact(16) {
            if let Ok(p) = <&[f32; 16]>::try_from(p) {
                for j in 0..16 {
                    acc[j] += p[j];
                }
            }
        }
        acc.iter().sum::<f32>()
    };
    let (t, s) = best_of(5, || Ok(v.par_chunks(1 << 16).map(chunk_sum).sum::<f32>()))?;
    if s <= 0.0 {
        return Err("bandwidth probe failed".into());
    }
    Ok((v.len() * 4) as f64 / t / 1e9)
}

fn bench(a: BenchArgs) -> AnyResult<()> {
    if let Some(b) = a.train_batch {
        return bench_train(&a, b);
    }
    let t = std::time::Instant::now();
    let model = load_model(&a.model)?;
    let load_s = t.elapsed().as_secs_f64();
    let lim = DecodeLimits::default();
    let bytes = smolcap::fsio::read_limited(
        Path::new(&a.image),
        smolcap::processor::image::DecodeLimits::default().max_encoded_bytes,
    )?;
    let opts = CaptionOptions {
        params: GenerateParams {
            max_new_tokens: a.new_tokens,
            min_new_tokens: a.new_tokens,
            ..Default::default()
        },
        ..Default::default()
    };
    let (pre_s, (img, prep)) = best_of(a.repeat.max(3), || {
        let img = SourceImage::decode(&bytes, &lim)?;
        let p = model.prepare(&[&img], &opts)?;
        Ok((img, p))
    })?;
    let (vis_s, feats) = best_of(a.repeat, || {
        Ok(model.image_features(&[&prep], opts.vision_chunk)?)
    })?;
    let net = model.network();
    let dev = net.device();
    let ids = candle_core::Tensor::new(prep.input_ids.as_slice(), dev)?.unsqueeze(0)?;
    let emb = net.embed_with_images(&ids, feats[0].as_ref())?;
    let l = prep.input_ids.len();
    let (pf_s, _) = best_of(a.repeat, || {
        let mut cache =
            smolcap::model::text::KvCache::new(&net.config().text, 1, l, net.dtype(), dev)?;
        let pos = candle_core::Tensor::arange(0u32, l as u32, dev)?.unsqueeze(0)?;
        let none = smolcap::lora::LoraSet::empty();
        Ok(net
            .text
            .forward(&emb, &pos, None, &mut cache, Logits::Last, &none)?)
    })?;
    let cancel = AtomicBool::new(false);
    let (e2e_s, caps) = best_of(a.repeat, || {
        let img = SourceImage::decode(&bytes, &lim)?;
        Ok(model.caption(&[vec![&img]], &opts, &cancel, &mut |_, _| {
            ControlFlow::Continue(())
        })?)
    })?;
    drop(img);
    let tm = caps.first().map(|c| c.timings).unwrap_or_default();
    let decode_ms = tm.decode_s / tm.decode_steps.max(1) as f64 * 1000.0;
    // What a decode step reads: the decoder's linear weights and the head, as stored.
    let text_weight_bytes = net
        .text
        .linears()
        .iter()
        .map(|l| l.weight.resident_bytes())
        .sum::<usize>() as f64;
    let spec = smolcap::quant::QuantSpec::parse(&a.model.quantize)?;
    let weights = if spec == smolcap::quant::QuantSpec::default()
        && smolcap::gguf::is_gguf_path(model.dir())
    {
        "as stored in the GGUF files".to_string()
    } else {
        spec.describe()
    };
    // Peak RSS before the probes' 512 MiB buffers.
    let rss = peak_rss_mb();
    // The floor takes the faster of the two probes: the stricter bound.
    let (bw_weights, bw_plain) = (read_bandwidth_gbs(true)?, read_bandwidth_gbs(false)?);
    let bw = bw_weights.max(bw_plain);
    let floor_ms = text_weight_bytes / (bw * 1e9) * 1000.0;
    let ours = json!({
        "impl": "smolcap",
        "weights": weights,
        "stored": net.stored_formats(),
        "weight_mb": net.resident_weight_bytes() as f64 / (1 << 20) as f64,
        "load_s": load_s,
        "tiles": prep.num_tiles,
        "prompt_tokens": l,
        "new_tokens": caps.first().map_or(0, |c| c.token_ids.len()),
        "preprocess_s": pre_s,
        "vision_s": vis_s,
        "prefill_s": pf_s,
        "decode_ms_per_token": decode_ms,
        "end_to_end_s": e2e_s,
        "peak_rss_mb": rss,
        "read_gb_per_s": bw,
        "read_gb_per_s_weights_pages": bw_weights,
        "read_gb_per_s_plain_pages": bw_plain,
        "decode_floor_ms_per_token": floor_ms,
    });
    let (ref_name, ref_key, ref_path) = match (&a.torch_json, &a.llama_json) {
        (_, Some(p)) => ("llama.cpp", "llama_cpp", Some(p)),
        (p, None) => ("pytorch", "torch", p.as_ref()),
    };
    let torch: Option<serde_json::Value> = match ref_path {
        Some(p) => Some(serde_json::from_str(&smolcap::fsio::read_text_limited(
            p,
            smolcap::fsio::MAX_JSON_BYTES,
        )?)?),
        None => None,
    };
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"smolcap": ours, ref_key: torch}))?
        );
        return Ok(());
    }
    outln!(
        "model {} | weights {} ({:.1} MiB) | {} tiles, {} prompt tokens, {} new tokens | {} threads",
        a.model.model,
        ours["weights"].as_str().unwrap_or(""),
        ours["weight_mb"].as_f64().unwrap_or(f64::NAN),
        prep.num_tiles,
        l,
        ours["new_tokens"],
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    outln!(
        "weights as stored: {} (the embedding and every linear layer)",
        ours["stored"].as_str().unwrap_or("")
    );
    outln!(
        "{:<26} {:>12} {:>12} {:>10}",
        "stage",
        "smolcap",
        ref_name,
        "ratio"
    );
    let rows = [
        ("preprocess (s)", "preprocess_s"),
        ("vision+connector (s)", "vision_s"),
        ("prefill (s)", "prefill_s"),
        ("decode (ms/token)", "decode_ms_per_token"),
        ("end-to-end caption (s)", "end_to_end_s"),
        ("peak RSS (MiB)", "peak_rss_mb"),
    ];
    for (label, key) in rows {
        let o = ours[key].as_f64().unwrap_or(f64::NAN);
        match torch.as_ref().and_then(|t| t[key].as_f64()) {
            Some(p) => outln!("{label:<26} {o:>12.3} {p:>12.3} {:>9.2}x", p / o),
            None => outln!("{label:<26} {o:>12.3} {:>12} {:>10}", "-", "-"),
        }
    }
    outln!(
        "memory read probe: {bw_weights:.1} GB/s allocated like the weights (huge pages where \
         granted), {bw_plain:.1} GB/s plain pages"
    );
    outln!(
        "decode floor: {:.1} MB of text weights / {:.1} GB/s = {:.1} ms/token; decode is {:.2}x the floor",
        text_weight_bytes / 1e6,
        bw,
        floor_ms,
        decode_ms / floor_ms
    );
    outln!("(ratio = {ref_name} / smolcap: above 1 means smolcap is faster or smaller)");
    Ok(())
}

/// `DIR` or `DIR:SCALE`.
fn adapter_spec(spec: &str) -> AnyResult<(PathBuf, f32)> {
    if let Some((dir, scale)) = spec.rsplit_once(':') {
        if let Ok(s) = scale.parse::<f32>() {
            if !s.is_finite() {
                return Err(format!("adapter {spec}: scale must be finite").into());
            }
            return Ok((PathBuf::from(dir), s));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

fn quantize(a: QuantizeArgs) -> AnyResult<()> {
    let dir = smolcap::hub::resolve(&a.model, a.revision.as_deref())?;
    let spec = smolcap::quant::QuantSpec::parse(&a.ty)?;
    let label: String =
        a.ty.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
    let label = if label.is_empty() {
        "f32".to_string()
    } else {
        label
    };
    let report = with_spinner("writing GGUF", || {
        Ok(smolcap::gguf::export::export_pair(
            &dir, &a.out, &spec, &label,
        )?)
    })?;
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    outln!(
        "wrote {} and {} ({})",
        report.text.display(),
        report.mmproj.display(),
        types.join(", ")
    );
    Ok(())
}

fn merge(a: MergeArgs) -> AnyResult<()> {
    let base = smolcap::hub::resolve(&a.base_model, a.revision.as_deref())?;
    let mut adapters = Vec::new();
    for spec in &a.adapter_dir {
        let (dir, w) = adapter_spec(spec)?;
        let ad = smolcap::merge::load_adapter_for(&base, &dir)
            .map_err(|e| format!("adapter {}: {e}", dir.display()))?;
        adapters.push((ad, w as f64));
    }
    let refs: Vec<(&smolcap::lora::peft::Adapter, f64)> =
        adapters.iter().map(|(a, w)| (a, *w)).collect();
    let opts = smolcap::merge::MergeOptions {
        max_shard_bytes: a.max_shard_bytes,
        overwrite: a.overwrite,
    };
    let mut bar: Option<Progress> = None;
    let mut progress = |done: usize, total: usize| {
        let b = bar.get_or_insert_with(|| {
            Progress::new(ctx().mode, "merging", Some(total as u64), "tensors")
        });
        b.set(done as u64, "");
        if done == total {
            b.finish("done");
        }
    };
    let report = smolcap::merge::merge_save(&base, &refs, &a.save_dir, &opts, &mut progress)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    outln!(
        "merged {} LoRA modules, replaced {} modules; wrote {} tensors in {} file(s) to {}",
        report.merged_modules,
        report.replaced_modules,
        report.tensors,
        report.shards,
        a.save_dir.display()
    );
    Ok(())
}

fn score(a: ScoreArgs) -> AnyResult<()> {
    let suite: smolcap::metrics::Suite = a.suite.parse().map_err(smolcap::Error::from)?;
    let cands: Vec<&std::path::Path> = a.cands.iter().map(PathBuf::as_path).collect();
    let out = smolcap::metrics::cli::score_files_many(
        &a.refs,
        &cands,
        suite,
        a.json,
        a.max_caption_bytes,
    )
    .map_err(smolcap::Error::from)?;
    out!("{out}");
    if !out.ends_with('\n') {
        outln!();
    }
    Ok(())
}

fn eval(a: EvalArgs) -> AnyResult<()> {
    use smolcap::data::{Dataset, DatasetSpec, Select};
    use smolcap::eval::EvalOptions;

    let t_start = std::time::Instant::now();
    let suite: smolcap::metrics::Suite = a.suite.parse().map_err(smolcap::Error::from)?;
    if !a.merge_shards.is_empty() {
        return shards::eval_merge(&a, suite);
    }
    let shard = a.shard.get()?;
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let strategy = if a.temperature > 0.0 {
        Strategy::Sample {
            params: SampleParams {
                temperature: a.temperature,
                top_k: 0,
                top_p: a.top_p,
            },
            seed: a.seed,
        }
    } else {
        Strategy::Greedy
    };
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        strategy,
        ..Default::default()
    };
    params.validate()?;

    let t = std::time::Instant::now();
    let spec = DatasetSpec {
        image_dir: a.image_dir.clone(),
        revision: a.dataset_revision.clone(),
        max_caption_bytes: a.max_caption_bytes,
        ..DatasetSpec::new(a.dataset_id.clone(), a.split.clone())
    };
    if a.prompt.len() > a.max_prompt_bytes {
        return Err(format!(
            "--prompt of {} bytes exceeds --max-prompt-bytes {}",
            a.prompt.len(),
            a.max_prompt_bytes
        )
        .into());
    }
    smolcap::fsio::check_output_dir(&a.output_dir)?;
    let ds = Dataset::open(&spec)?;
    let groups = ds.grouped(&Select {
        max_images: (a.max_images > 0).then_some(a.max_images),
        ..Default::default()
    });
    let dataset_s = t.elapsed().as_secs_f64();
    info!(
        "{}: {} rows; evaluating {} unique images",
        ds.description(),
        ds.samples().len(),
        groups.len()
    );
    if !ds.bad_rows().is_empty() {
        eprintln!("warning: {} bad rows skipped, e.g.", ds.bad_rows().len());
        for b in ds.bad_rows().iter().take(5) {
            eprintln!("  {b}");
        }
    }
    if groups.is_empty() {
        return Err(format!("{}: no images to evaluate", a.dataset_id).into());
    }

    let t = std::time::Instant::now();
    let model = load_model(&ModelArgs {
        model: a.base_model_id.clone(),
        revision: a.revision.clone(),
        dtype: a.dtype.clone(),
        quantize: a.quantize.clone(),
        mmproj: a.mmproj.clone(),
        device: a.device.clone(),
        limits: LimitArgs::default(),
    })?;
    let mut opts = EvalOptions {
        batch_size: a.batch_size,
        suite,
        limits: DecodeLimits {
            max_pixels: a.max_image_pixels,
            max_encoded_bytes: a.max_image_bytes,
        },
        thumbnail_px: a.thumbnail_size,
        ..Default::default()
    };
    opts.caption.prompt = a.prompt.clone();
    opts.caption.longest_edge = a.image_longest_edge;
    opts.caption.max_prompt_tokens = a.max_prompt_tokens;
    opts.caption.max_prompt_bytes = a.max_prompt_bytes;
    opts.caption.params = params;
    let mut adapters_json = Vec::new();
    for spec in &a.adapter_dir {
        let (dir, weight) = adapter_spec(spec)?;
        let adapter = model
            .load_adapter(&dir)
            .map_err(|e| format!("adapter {}: {e}", dir.display()))?;
        opts.caption.adapters.push(smolcap::ActiveAdapter {
            adapter: std::sync::Arc::new(adapter),
            weight,
        });
        adapters_json.push(json!({"dir": dir.display().to_string(), "scale": weight}));
    }
    let model_load_s = t.elapsed().as_secs_f64();

    let bar = Progress::new(
        ctx().mode,
        "captioning",
        Some(groups.len() as u64),
        "images",
    );
    let t_caption = std::time::Instant::now();
    let mut progress = |p: &smolcap::eval::Progress| {
        let seen = p.done + p.skipped;
        let rate = p.done as f64 / t_caption.elapsed().as_secs_f64().max(1e-9);
        let skipped = if p.skipped > 0 {
            format!(", {} skipped", p.skipped)
        } else {
            String::new()
        };
        bar.set(seen as u64, &format!("{rate:.2} img/s{skipped}"));
    };
    let cancel = &*ctx().cancel;
    let (todo, done, mut writer) = shards::eval_output(&a, shard, &groups)?;
    let todo_groups: Vec<smolcap::data::ImageGroup> =
        todo.iter().map(|&i| groups[i].clone()).collect();
    let mut sink = |idx: &[usize], imgs: &[smolcap::eval::EvalImage]| {
        let records: Vec<serde_json::Value> = idx
            .iter()
            .zip(imgs)
            .map(|(&k, im)| shards::jsonl_record(todo[k], im))
            .collect();
        writer.append(&records)
    };
    let mut captioned = smolcap::eval::caption_groups(
        &model,
        &ds,
        &todo_groups,
        &opts,
        cancel,
        &mut progress,
        &mut sink,
    )?;
    if captioned.cancelled {
        bar.note(&format!(
            "interrupted: scoring and writing the {} images captioned so far",
            captioned.images.len()
        ));
    } else {
        bar.finish("done");
    }
    for b in &captioned.skipped {
        eprintln!("warning: skipped {b}");
    }
    let jsonl = a.output_dir.join("predictions.jsonl");
    if shard.count > 1 {
        println!(
            "shard {shard}: captioned {} images ({} already there, {} skipped) into {}; score \
             the union with: smolcap eval --merge-shards DIR... --output-dir OUT",
            captioned.images.len(),
            done.len(),
            captioned.skipped.len(),
            jsonl.display()
        );
        return Ok(());
    }
    // Resumed images first, then the new ones, in selection order.
    let mut all: Vec<(usize, smolcap::eval::EvalImage)> = done;
    all.extend(
        captioned
            .indices
            .iter()
            .map(|&k| todo[k])
            .zip(std::mem::take(&mut captioned.images)),
    );
    all.sort_by_key(|(i, _)| *i);
    let mut result = smolcap::eval::score_images(
        all.into_iter().map(|(_, im)| im).collect(),
        captioned.skipped,
        captioned.timings,
        suite,
    )?;
    result.cancelled = captioned.cancelled;

    let tm = &result.timings;
    let total_s = t_start.elapsed().as_secs_f64();
    let run = json!({
        "dataset": a.dataset_id,
        "split": a.split,
        "source": ds.description(),
        "model": a.base_model_id,
        "model_dir": model.dir().display().to_string(),
        "revision": a.revision,
        "adapters": adapters_json,
        "prompt": a.prompt,
        "strategy": if a.temperature > 0.0 { "sample" } else { "greedy" },
        "max_new_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "top_p": a.top_p,
        "seed": a.seed,
        "batch_size": a.batch_size,
        "suite": suite.name(),
        "dtype": a.dtype,
        "device": a.device,
        "image_longest_edge": a.image_longest_edge,
        "max_images": a.max_images,
        "images": result.images.len(),
        "images_selected": groups.len(),
        "interrupted": result.cancelled,
        "images_skipped": result.skipped,
        "dataset_rows": ds.samples().len(),
        "dataset_bad_rows": ds.bad_rows().len(),
        "dataset_bad_rows_first": ds.bad_rows().iter().take(20).collect::<Vec<_>>(),
        "timings": {
            "dataset_s": dataset_s,
            "model_load_s": model_load_s,
            "caption_s": tm.caption_s,
            "preprocess_s": tm.preprocess_s,
            "vision_s": tm.vision_s,
            "prefill_s": tm.prefill_s,
            "decode_s": tm.decode_s,
            "generated_tokens": tm.generated_tokens,
            "images_per_s": result.images.len() as f64 / tm.caption_s.max(1e-9),
            "score_s": tm.score_s,
            "total_s": total_s,
        },
        "smolcap_version": env!("CARGO_PKG_VERSION"),
    });
    smolcap::eval::write_outputs(&a.output_dir, &result, &run)?;
    out!("{}", smolcap::metrics::cli::scorecard(&result.scores));
    outln!(
        "wrote predictions.json, references.json, metrics.json, report.html to {}",
        a.output_dir.display()
    );
    let report = a.output_dir.join("report.html");
    let abs = std::fs::canonicalize(&report).unwrap_or(report);
    outln!("report: file://{}", abs.display());
    if result.cancelled {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn train(a: TrainArgs) -> AnyResult<()> {
    use smolcap::data::DatasetSpec;
    use smolcap::train::run::{run_with, RunEvent, RunOptions};
    use smolcap::train::{CollateOptions, LoraOptions, TrainOptions};
    // Options are checked before the model is loaded: a bad flag fails at once.
    let saved = match &a.resume {
        Some(dir) => Some(smolcap::train::checkpoint_options(dir)?.0),
        None => None,
    };
    let defaults = LoraOptions {
        r: 16,
        alpha: 32.0,
        ..LoraOptions::default()
    };
    let base = saved.clone().unwrap_or(defaults);
    let lora = LoraOptions {
        r: a.lora_r.unwrap_or(base.r),
        alpha: a.lora_alpha.unwrap_or(base.alpha),
        dropout: a.lora_dropout.unwrap_or(base.dropout),
        use_rslora: a.use_rslora || (saved.is_some() && base.use_rslora),
        targets: match &a.lora_targets {
            Some(t) => t
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => base.targets.clone(),
        },
        train_vision: a.train_vision || (saved.is_some() && base.train_vision),
        train_connector: a.tune_projector || (saved.is_some() && base.train_connector),
    };
    lora.validate()?;
    let train = TrainOptions {
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_ratio: a.warmup_ratio,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        recompute: a.gradient_checkpointing,
        qlora: a.use_qlora,
        feature_cache_mb: a.feature_cache_mb,
        max_caption_bytes: a.max_caption_bytes,
        collate: CollateOptions {
            prompt: a.prompt.clone(),
            longest_edge: a.image_longest_edge,
            max_seq_len: a.max_seq_len,
        },
        ..TrainOptions::default()
    };
    train.validate()?;
    if a.batch_size == 0 || a.grad_accum == 0 {
        return Err("--batch-size and --grad-accum must be at least 1".into());
    }
    if a.max_steps.is_none() && !(a.epochs.is_finite() && a.epochs > 0.0) {
        return Err(format!("--epochs {} must be a positive number", a.epochs).into());
    }
    smolcap::fsio::ensure_dir(&a.output_dir)?;
    // QLoRA loads the decoder straight to NF4: its f32 weights are never held.
    let load = LoadOptions {
        nf4_decoder: a.use_qlora,
        ..LoadOptions::default()
    };
    let model = std::sync::Arc::new(Model::load(&a.base_model_id, &load)?);
    let mut spec = DatasetSpec::new(a.dataset_id.clone(), a.train_split.clone());
    spec.image_dir = a.image_dir.clone();
    spec.max_caption_bytes = a.max_caption_bytes;
    let opts = RunOptions {
        train: spec,
        eval_split: (a.eval_split != "none").then(|| a.eval_split.clone()),
        output_dir: a.output_dir.clone(),
        max_samples: a.max_samples,
        eval_max_samples: a.eval_max_samples,
        epochs: a.epochs,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_steps: a.max_steps,
        eval_steps: a.eval_steps,
        save_steps: a.save_steps,
        shuffle: !a.no_shuffle,
        group_by_image: a.group_by_image,
        resume: a.resume.clone(),
        adapter_init: a.adapter_init.clone(),
        progress: false,
    };
    let mut bar: Option<Progress> = None;
    let mut on_event = |ev: RunEvent| match ev {
        RunEvent::Started { start, total } => {
            let b = Progress::new(ctx().mode, "training", Some(total), "steps");
            if start > 0 {
                b.set(start, "resumed");
            }
            bar = Some(b);
        }
        RunEvent::Step {
            stats,
            tokens_per_s,
            ..
        } => {
            if let Some(b) = &bar {
                let skipped = if stats.skipped { " (skipped)" } else { "" };
                b.set(
                    stats.step,
                    &format!(
                        "loss {:.4} lr {:.2e} {tokens_per_s:.0} tok/s{skipped}",
                        stats.loss, stats.lr
                    ),
                );
            }
        }
        RunEvent::Eval { step, loss } => {
            if let Some(b) = &bar {
                b.note(&format!("step {step}: eval loss {loss:.4}"));
            }
        }
        RunEvent::Cancelling { step } => {
            if let Some(b) = &bar {
                b.note(&format!(
                    "interrupted: saving the adapter and checkpoint-{step} (a step in \
                     flight is dropped)"
                ));
            }
        }
        RunEvent::Finished { .. } => {
            if let Some(b) = &bar {
                b.finish("saving");
            }
        }
    };
    let cancel = ctx().cancel.clone();
    let r = run_with(model, &opts, lora, train, Some(cancel), &mut on_event)?;
    if r.cancelled {
        outln!(
            "interrupted after {} steps: adapter in {}, resume with --resume {}",
            r.steps,
            r.adapter_dir.display(),
            r.adapter_dir
                .join(format!("checkpoint-{}", r.steps))
                .display()
        );
        return Err(Interrupted.into());
    }
    outln!(
        "trained {} steps in {:.1} s: last loss {:.4}{}; adapter in {}",
        r.steps,
        r.seconds,
        r.last_loss,
        r.eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        r.adapter_dir.display()
    );
    outln!(
        "trainable parameters {}, frozen decoder weights resident {:.1} MiB",
        r.trainable_parameters,
        r.resident_weight_bytes as f64 / (1024.0 * 1024.0)
    );
    if r.bad_rows + r.rejected + r.truncated > 0 || r.skipped_steps > 0 {
        outln!(
            "skipped rows {}, rejected (too long) {}, captions shortened {}, non-finite steps skipped {}",
            r.bad_rows, r.rejected, r.truncated, r.skipped_steps
        );
    }
    Ok(())
}

/// The caption `tools/reference/bench_train_torch.py` trains on.
const BENCH_CAPTION: &str =
    "A man riding a bicycle down a city street next to parked cars and a red bus.";

fn bench_train(a: &BenchArgs, batch: usize) -> AnyResult<()> {
    use smolcap::train::{Example, LoraOptions, TrainOptions, Trainer};
    let model = std::sync::Arc::new(load_model_with(&a.model, a.qlora)?);
    let loaded_rss = current_rss_mb();
    let bytes = smolcap::fsio::read_limited(
        Path::new(&a.image),
        smolcap::processor::image::DecodeLimits::default().max_encoded_bytes,
    )?;
    let img = SourceImage::decode(&bytes, &DecodeLimits::default())?;
    let ex: Vec<Example> = (0..batch.max(1))
        .map(|_| Example {
            image: img.clone(),
            caption: BENCH_CAPTION.into(),
            key: None,
        })
        .collect();
    let lora = LoraOptions {
        r: 16,
        alpha: 32.0,
        dropout: 0.05,
        ..LoraOptions::default()
    };
    let mut opts = TrainOptions {
        micro_batch: batch.max(1),
        total_steps: 100,
        qlora: a.qlora,
        recompute: a.gradient_checkpointing,
        ..TrainOptions::default()
    };
    opts.collate.longest_edge = a.train_longest_edge;
    let mut t = Trainer::new(model, lora, opts, None)?;
    t.step(&ex)?;
    let (step_s, st) = best_of(a.repeat.max(2), || Ok(t.step(&ex)?))?;
    let ours = json!({
        "impl": "smolcap",
        "train_step_s": step_s,
        "batch": batch,
        "tokens": st.tokens,
        "trainable_parameters": t.trainable_parameters(),
        "qlora": a.qlora,
        "gradient_checkpointing": a.gradient_checkpointing,
        "resident_weight_mb": t.resident_weight_bytes() as f64 / (1024.0 * 1024.0),
        "rss_after_load_mb": loaded_rss,
        "peak_rss_mb": peak_rss_mb(),
    });
    let torch: Option<serde_json::Value> = match &a.torch_json {
        Some(p) => Some(serde_json::from_str(&smolcap::fsio::read_text_limited(
            p,
            smolcap::fsio::MAX_JSON_BYTES,
        )?)?),
        None => None,
    };
    if a.json {
        outln!("{}", json!({"smolcap": ours, "torch": torch}));
        return Ok(());
    }
    outln!(
        "LoRA train step, batch {batch} ({} label tokens)",
        st.tokens
    );
    match &torch {
        Some(tj) => {
            let ts = tj["train_step_s"].as_f64().unwrap_or(f64::NAN);
            let tr = tj["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
            outln!("{:<22}{:>12}{:>12}{:>10}", "", "smolcap", "torch", "ratio");
            outln!(
                "{:<22}{:>12.2}{:>12.2}{:>9.2}x",
                "step (s)",
                step_s,
                ts,
                ts / step_s
            );
            outln!(
                "{:<22}{:>12.0}{:>12.0}{:>9.2}x",
                "peak RSS (MiB)",
                peak_rss_mb(),
                tr,
                tr / peak_rss_mb()
            );
        }
        None => outln!(
            "step {step_s:.2} s, peak RSS {:.0} MiB (after load {loaded_rss:.0} MiB), frozen weights resident {:.0} MiB",
            peak_rss_mb(),
            t.resident_weight_bytes() as f64 / (1024.0 * 1024.0)
        ),
    }
    Ok(())
}
