//! Sharded `l2d eval --config`: two Gloo ranks on loopback against one process
//! (sampled base LM and sampled, guided L2D), batch-size independence of the
//! per-row seeding, resume of a killed sharded run at another world size, and
//! ranks started with different configs.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The first `n` lines of a real GSM8K split.
fn gsm8k_subset(dir: &Path, split: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(format!("../shared/data/gsm8k/{split}.jsonl")).unwrap();
    let path = dir.join(format!("gsm8k-{split}.jsonl"));
    std::fs::write(&path, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

/// The tiny llama on `items` GSM8K items (1 shot), clean protocol: tokens
/// sampled at temperature 1, L2D with sampled x1_hat, its noise and classifier-free
/// guidance (class 1, w = 2) from a perturbed 2-class checkpoint. Base LM and midpoint at `steps`.
struct Setup {
    dir: PathBuf,
    cfg: PathBuf,
    ckpt: PathBuf,
    steps: &'static str,
}

impl Setup {
    fn new(name: &str, items: usize, steps: &'static str) -> Setup {
        let dir = scratch(name);
        let test = gsm8k_subset(&dir, "test", items);
        let train = gsm8k_subset(&dir, "train", 3);
        let cfg = dir.join("eval.toml");
        let text = format!(
            "[model]\npath = {model:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n\n[generate]\ntemperature = 1.0\nseed = 5\n\n\
             [l2d]\nguidance_weight = 2.0\n\n[dist]\ntimeout_s = 60\n\n\
             [eval]\nprotocol = \"clean\"\nbatch_size = 3\nnum_shots = 1\nmax_new_tokens = 8\n\n\
             [eval.class_map]\ngsm8k = 1\n\n[eval.tasks.gsm8k]\ndata = {test:?}\nshots = {train:?}\n",
            model = tiny_model("llama"),
            test = test,
            train = train,
        );
        std::fs::write(&cfg, text).unwrap();
        let ckpt = checkpoint_for(&format!("{name}-ckpt"), 2, true, false);
        Setup { dir, cfg, ckpt, steps }
    }

    /// `l2d eval` arguments writing into `out`, then `extra`.
    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["eval", "--config", s(&self.cfg), "--l2d", s(&self.ckpt), "--steps", self.steps, "--out", s(out)]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One process, on one thread as each rank is (so that only the sharding differs).
fn single(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l2d"));
    cmd.args(args).env_remove("RUST_LOG").env("OMP_NUM_THREADS", "1");
    cmd
}

fn spawn_ranks(world: usize, args: &[String]) -> Vec<Child> {
    let port = free_port();
    (0..world).map(|r| spawn_rank(r, world, port, args)).collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn all_ok(outs: &[Output]) {
    for (rank, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "rank {rank} failed: {}", stderr(out));
    }
}

/// report.json without the timings (wall clock, tokens/s), which differ between any two runs.
fn report(dir: &Path) -> Value {
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for x in r["results"].as_array_mut().unwrap() {
        for k in ["wall_s", "tokens_per_s"] {
            x["generation"].as_object_mut().unwrap().remove(k).expect("a timing");
        }
    }
    r
}

/// examples.jsonl in its order, without each row's share of its batch's decoding time.
fn examples(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("examples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("decode_s").expect("a timing");
            v
        })
        .collect()
}

/// report.md without its tokens/s column.
fn table(dir: &Path) -> String {
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    md.lines().map(|l| if l.starts_with('|') { l.rsplitn(3, '|').nth(2).unwrap() } else { l }).collect::<Vec<_>>().join("\n")
}

fn assert_same_outputs(a: &Path, b: &Path, what: &str) {
    assert_eq!(report(a), report(b), "{what}: report.json");
    assert_eq!(examples(a), examples(b), "{what}: examples.jsonl");
    assert_eq!(table(a), table(b), "{what}: report.md");
}

/// The settings' completions, sorted: (setting, task_id, completion).
fn completions(dir: &Path) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = examples(dir)
        .iter()
        .map(|e| (e["setting"].as_str().unwrap().into(), e["task_id"].as_str().unwrap().into(), e["completion"].as_str().unwrap().into()))
        .collect();
    out.sort();
    out
}

#[test]
fn sharded_eval_equals_one_process_at_any_batch_size() {
    let setup = Setup::new("dist-eval-equal", 7, "0,4");
    let one = setup.dir.join("one");
    ok(single(&setup.args(&one, &[])).output().unwrap());
    let examples_one = examples(&one);
    assert_eq!(examples_one.len(), 14);
    // Sampled: two samples of one prompt differ (seeded per sample), so the check below has teeth.
    let again = setup.dir.join("two-samples");
    ok(single(&setup.args(&again, &["--limit", "1", "--set", "eval.samples=2"])).output().unwrap());
    let c = completions(&again);
    assert_ne!(c[0].2, c[1].2, "two samples drew the same completion: {c:?}");

    let two = setup.dir.join("two");
    let outs = wait_all(spawn_ranks(2, &setup.args(&two, &[])));
    all_ok(&outs);
    assert!(stdout(&outs[0]).contains("midpoint-4"), "rank 0 prints the table: {}", stdout(&outs[0]));
    assert!(stdout(&outs[1]).is_empty(), "rank 1 prints nothing: {}", stdout(&outs[1]));
    assert_same_outputs(&one, &two, "two ranks");

    // An adaptive solver steps on the whole batch: the ranks make the batches one process makes,
    // so completions and the measured evaluations per token are the same too.
    let adaptive = ["--solvers", "bosh3", "--set", "l2d.x1_estimate=\"average\"", "--set", "l2d.atol=1e-3", "--set", "l2d.rtol=1e-3"];
    let (bosh3_one, bosh3_two) = (setup.dir.join("bosh3-one"), setup.dir.join("bosh3-two"));
    ok(single(&setup.args(&bosh3_one, &adaptive)).output().unwrap());
    all_ok(&wait_all(spawn_ranks(2, &setup.args(&bosh3_two, &adaptive))));
    assert_same_outputs(&bosh3_one, &bosh3_two, "bosh3 on two ranks");

    // Each row's draws are its own: batches of 1 or 2 (and so other padding) change no completion.
    for batch_size in ["1", "2"] {
        let out = setup.dir.join(format!("batch-{batch_size}"));
        ok(single(&setup.args(&out, &["--set", &format!("eval.batch_size={batch_size}")])).output().unwrap());
        assert_eq!(completions(&out), completions(&one), "batch size {batch_size}");
    }
}

/// An uninterrupted single-process run of the resume tests' setup.
fn whole() -> &'static (Setup, PathBuf) {
    static WHOLE: OnceLock<(Setup, PathBuf)> = OnceLock::new();
    WHOLE.get_or_init(|| {
        let setup = Setup::new("dist-eval-resume", 9, "0,4,8,16");
        let out = setup.dir.join("whole");
        ok(single(&setup.args(&out, &[])).output().unwrap());
        (setup, out)
    })
}

/// Kills `children` (SIGKILL) once the journal in `out` holds a few lines.
fn kill_part_way(mut children: Vec<Child>, out: &Path) {
    let journal = out.join("examples.jsonl");
    let lines = || std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count());
    let start = Instant::now();
    while lines() < 6 {
        assert!(start.elapsed() < Duration::from_secs(120), "no journal lines appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert!(!out.join("report.json").exists(), "the run finished before it could be killed");
    assert!(lines() < 36, "the journal was complete");
}

#[test]
fn killed_sharded_eval_resumes_in_one_process() {
    let (setup, whole) = whole();
    let cut = setup.dir.join("two-then-one");
    kill_part_way(spawn_ranks(2, &setup.args(&cut, &[])), &cut);
    ok(single(&setup.args(&cut, &[])).output().unwrap());
    assert_eq!(completions(&cut), completions(whole));
    assert_eq!(report(&cut)["results"].as_array().unwrap().len(), 4);
    let scores = |d: &Path| report(d)["results"].as_array().unwrap().iter().map(|x| x["per_item"].clone()).collect::<Vec<_>>();
    assert_eq!(scores(&cut), scores(whole));
}

/// The resumed run goes through torchrun (its agent hosts the store).
#[test]
fn killed_single_eval_resumes_on_two_ranks_under_torchrun() {
    let (setup, whole) = whole();
    let cut = setup.dir.join("one-then-two");
    kill_part_way(vec![single(&setup.args(&cut, &[])).spawn().unwrap()], &cut);
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} missing: run scripts/setup.sh", torchrun.display());
    let out = Command::new(torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", &free_port().to_string()])
        .arg(env!("CARGO_BIN_EXE_l2d"))
        .args(setup.args(&cut, &[]))
        .env_remove("RUST_LOG")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "torchrun: {}", stderr(&out));
    assert_eq!(completions(&cut), completions(whole));
}

#[test]
fn ranks_with_different_eval_configs_refuse_naming_the_keys() {
    let setup = Setup::new("dist-eval-configs", 2, "0");
    let out = setup.dir.join("out");
    let port = free_port();
    let children = vec![
        spawn_rank(0, 2, port, &setup.args(&out, &[])),
        spawn_rank(1, 2, port, &setup.args(&out, &["--limit", "1", "--set", "generate.temperature=0.5"])),
    ];
    for o in wait_all(children) {
        assert_error(&o, 2, &["different configs", "rank 1 differs from rank 0 in eval.limit, generate.temperature"]);
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

/// Rank 0 refusing `--out` (a journal of another run) stops rank 1 too, naming rank 0 and its reason.
#[test]
fn rank_0_refusing_the_run_directory_stops_every_rank() {
    let setup = Setup::new("dist-eval-refused", 2, "0");
    let out = setup.dir.join("out");
    ok(single(&setup.args(&out, &["--limit", "1"])).output().unwrap());
    let journal = std::fs::read(out.join("examples.jsonl")).unwrap();
    let outs = wait_all(spawn_ranks(2, &setup.args(&out, &["--limit", "2"])));
    assert_error(&outs[0], 2, &["eval.limit"]);
    assert_error(&outs[1], 1, &["dist: rank 0 failed opening the run directory", "eval.limit"]);
    assert_eq!(std::fs::read(out.join("examples.jsonl")).unwrap(), journal, "the refused run touched the journal");
}
