//! `l2d train`'s TensorBoard event log, read back with TensorBoard's own reader:
//! the same scalars at the same steps as `metrics.jsonl`, also across a resume.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Tag -> (step, value) series; values as f32, what TensorBoard's `simple_value` holds.
type Series = BTreeMap<String, Vec<(i64, f32)>>;

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) {
    let cfg = format!("{}/configs/tiny-l2d-lora.toml", env!("CARGO_MANIFEST_DIR"));
    let (m, d) = (format!("model.path={}", model.display()), format!("data.out={}", data.display()));
    let mut args = vec!["train", "--config", &cfg, "--set", &m, "--set", &d, "--out", out.to_str().unwrap()];
    for set in ["l2d.flow_dim=32", "l2d.lora_rank=4", "train.max_steps=4", "train.warmup_steps=1", "train.batch_size=4", "train.micro_batch_size=2", "train.eval_every=2", "train.save_every=2", "train.keep_last=0"] {
        args.extend(["--set", set]);
    }
    args.extend_from_slice(extra);
    ok(l2d(&args));
}

/// Every number of every `metrics.jsonl` record under its key (nested ones as `outer/inner`).
fn metrics_series(out: &Path) -> Series {
    fn collect(prefix: &str, v: &serde_json::Value, step: i64, series: &mut Series) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let tag = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                    collect(&tag, v, step, series);
                }
            }
            serde_json::Value::Number(n) if prefix != "step" => {
                series.entry(prefix.to_string()).or_default().push((step, n.as_f64().unwrap() as f32));
            }
            _ => {}
        }
    }
    let mut series = Series::new();
    for line in std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        collect("", &rec, rec["step"].as_i64().unwrap(), &mut series);
    }
    series
}

/// The scalars of the event files in `dir`, as TensorBoard's `EventAccumulator` reads them.
fn tensorboard_series(dir: &Path) -> Series {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(python()).args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "EventAccumulator failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn event_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn event_log_matches_metrics_and_survives_a_resume() {
    let model = tiny_model("llama");
    let data = prepared("tb-data", &model);
    let out = scratch("tb-run").join("run");
    train(&model, &data, &out, &[]);

    let expected = metrics_series(&out);
    for tag in ["loss", "lr", "grad_norm", "tokens_per_s", "peak_rss_bytes", "valid_loss", "valid_loss_t/0.125", "valid_loss_t/0.875"] {
        assert!(expected.contains_key(tag), "metrics.jsonl lacks {tag}: {expected:?}");
    }
    assert_eq!(expected["loss"].iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(expected["valid_loss"].iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 4]);
    let tb = out.join("tb");
    assert_eq!(event_files(&tb).len(), 1);
    assert!(event_files(&tb)[0].starts_with("events.out.tfevents."));
    assert_eq!(tensorboard_series(&tb), expected);

    // As if killed after logging step 4 but before its checkpoint: the resumed
    // run redoes steps 3 and 4 into a second file, and readers keep only those.
    std::fs::remove_dir_all(out.join("checkpoints/step-00000004")).unwrap();
    train(&model, &data, &out, &["--resume"]);
    let resumed = metrics_series(&out);
    assert_ne!(resumed["tokens_per_s"], expected["tokens_per_s"], "steps 3-4 were not redone");
    assert_eq!(event_files(&tb).len(), 2);
    assert_eq!(tensorboard_series(&tb), resumed);
}
