//! `--shard I/N`, `--resume` and `--merge-shards` of `smolcap caption` and `smolcap eval`
//! (docs/PYTHON.md, "Scaling out"): which inputs a run still has to do, the JSON Lines outputs,
//! and the merge of shard outputs.

use clap::Args;
use serde_json::json;

use super::{AnyResult, CaptionArgs, EvalArgs};

/// Splitting a job across processes (docs/PYTHON.md, "Scaling out").
#[derive(Args)]
pub struct ShardArgs {
    /// Process only shard I of N of the inputs (a contiguous, deterministic split: the shards'
    /// outputs concatenated in order equal the unsharded output).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Keep the records already in the output and process only the inputs missing there.
    #[arg(long)]
    pub resume: bool,
}

impl ShardArgs {
    pub fn get(&self) -> AnyResult<smolcap::shard::Shard> {
        Ok(match &self.shard {
            Some(s) => s.parse()?,
            None => smolcap::shard::Shard::ALL,
        })
    }
}

/// The input indices of `range` still to caption and the JSONL output (with `--resume`, the
/// records already written are checked against the inputs and skipped).
pub fn caption_output(
    a: &CaptionArgs,
    names: &[String],
    range: std::ops::Range<usize>,
) -> AnyResult<(Vec<usize>, Option<smolcap::shard::JsonlWriter>, usize)> {
    let Some(out) = &a.output else {
        if a.shard.resume {
            return Err("--resume needs --output".into());
        }
        return Ok((range.collect(), None, 0));
    };
    let mut done = std::collections::HashSet::new();
    if a.shard.resume {
        for r in smolcap::shard::read_resumable(out)? {
            let index = r["index"].as_u64().map(|i| i as usize);
            let ok = index.is_some_and(|i| {
                range.contains(&i) && r["image"].as_str() == Some(names[i].as_str())
            });
            match index {
                Some(i) if ok => {
                    done.insert(i);
                }
                _ => {
                    return Err(format!(
                        "{}: record {r} is not one of this run's inputs (same --image list \
                         and --shard?)",
                        out.display()
                    )
                    .into())
                }
            }
        }
    }
    let writer = smolcap::shard::JsonlWriter::open(out, a.shard.resume)?;
    let todo: Vec<usize> = range.filter(|i| !done.contains(i)).collect();
    Ok((todo, Some(writer), done.len()))
}

/// One line of `predictions.jsonl`: an evaluated image and its position in the selection.
pub fn jsonl_record(index: usize, im: &smolcap::eval::EvalImage) -> serde_json::Value {
    json!({
        "index": index,
        "image_id": im.id.to_json(),
        "name": im.name,
        "caption": im.prediction,
        "references": im.references,
    })
}

/// Reads a `predictions.jsonl` record back.
fn jsonl_image(
    r: &serde_json::Value,
    path: &std::path::Path,
) -> AnyResult<(usize, smolcap::eval::EvalImage)> {
    let bad = || format!("{}: malformed record {r}", path.display());
    let index = r["index"].as_u64().ok_or_else(bad)? as usize;
    let id = smolcap::data::ImageId::from_json(&r["image_id"]).ok_or_else(bad)?;
    let refs = r["references"].as_array().ok_or_else(bad)?;
    Ok((
        index,
        smolcap::eval::EvalImage {
            id,
            name: r["name"].as_str().ok_or_else(bad)?.to_string(),
            prediction: r["caption"].as_str().ok_or_else(bad)?.to_string(),
            references: refs
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            thumbnail: None,
        },
    ))
}

/// The selection indices this (shard of the) run still has to caption, the images already in
/// OUTPUT_DIR/predictions.jsonl (with --resume) and the JSONL writer.
#[allow(clippy::type_complexity)]
pub fn eval_output(
    a: &EvalArgs,
    shard: smolcap::shard::Shard,
    groups: &[smolcap::data::ImageGroup],
) -> AnyResult<(
    Vec<usize>,
    Vec<(usize, smolcap::eval::EvalImage)>,
    smolcap::shard::JsonlWriter,
)> {
    let range = shard.range(groups.len());
    let path = a.output_dir.join("predictions.jsonl");
    let mut done = Vec::new();
    if a.shard.resume {
        for r in smolcap::shard::read_resumable(&path)? {
            let (i, im) = jsonl_image(&r, &path)?;
            if !range.contains(&i) || groups[i].id != im.id {
                return Err(format!(
                    "{}: record {r} is not one of this run's images (same dataset, \
                     --max-images and --shard?)",
                    path.display()
                )
                .into());
            }
            done.push((i, im));
        }
    }
    let have: std::collections::HashSet<usize> = done.iter().map(|(i, _)| *i).collect();
    let todo = range.filter(|i| !have.contains(i)).collect();
    let writer = smolcap::shard::JsonlWriter::open(&path, a.shard.resume)?;
    Ok((todo, done, writer))
}

/// `smolcap eval --merge-shards DIR...`: the shards' predictions.jsonl in selection order,
/// scored once over the union and written as an unsharded run writes them.
pub fn eval_merge(a: &EvalArgs, suite: smolcap::metrics::Suite) -> AnyResult<()> {
    let mut all = Vec::new();
    for dir in &a.merge_shards {
        let path = dir.join("predictions.jsonl");
        if !path.is_file() {
            return Err(format!("{}: no such file", path.display()).into());
        }
        for r in smolcap::shard::read_resumable(&path)? {
            all.push(jsonl_image(&r, &path)?);
        }
    }
    all.sort_by_key(|(i, _)| *i);
    if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "image {} (index {}) is in more than one shard",
            w[0].1.id, w[0].0
        )
        .into());
    }
    let mut writer =
        smolcap::shard::JsonlWriter::open(&a.output_dir.join("predictions.jsonl"), false)?;
    let records: Vec<serde_json::Value> = all.iter().map(|(i, im)| jsonl_record(*i, im)).collect();
    writer.append(&records)?;
    let images: Vec<smolcap::eval::EvalImage> = all.into_iter().map(|(_, im)| im).collect();
    let result = smolcap::eval::score_images(
        images,
        Vec::new(),
        smolcap::eval::EvalTimings::default(),
        suite,
    )?;
    let run = json!({
        "dataset": a.dataset_id,
        "split": a.split,
        "suite": suite.name(),
        "merged_shards": a.merge_shards.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "images": result.images.len(),
        "smolcap_version": env!("CARGO_PKG_VERSION"),
    });
    smolcap::eval::write_outputs(&a.output_dir, &result, &run)?;
    print!("{}", smolcap::metrics::cli::scorecard(&result.scores));
    println!(
        "merged {} shards: wrote predictions.jsonl, predictions.json, references.json, \
         metrics.json, report.html to {}",
        a.merge_shards.len(),
        a.output_dir.display()
    );
    Ok(())
}
