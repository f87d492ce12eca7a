//! Command-line interface: one module per subcommand, each turning flags and
//! config into calls of the library.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub mod eval;
pub mod generate;
pub mod info;
pub mod init;
pub mod prepare;
pub mod report;
pub mod train;

/// l2d: give a pretrained chat LM a diffusion path (L2D, ICML 2025) and spend
/// more compute per token for more accuracy, without changing its weights.
#[derive(Debug, Parser)]
#[command(name = "l2d", version, about, long_about = None, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr (`RUST_LOG` sets the level, default `warn` plus progress lines).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds between progress lines when stderr is not a terminal (no bar); 0 prints none.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30)]
    pub progress_every: u64,
}

impl Cli {
    /// How long loops show their progress: a bar on a terminal, else log lines.
    pub fn progress(&self) -> crate::progress::ProgressMode {
        crate::progress::ProgressMode { terminal: stderr_is_terminal(), every: std::time::Duration::from_secs(self.progress_every) }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for sweeps.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the libtorch build, CUDA devices and CPU threads.
    Info(info::Args),
    /// Write a random-initialised Hugging Face model directory (`--arch`), or the demo's task data (`--task`).
    Init(init::Args),
    /// Tokenize chat data into training shards with the model's chat template.
    Prepare(prepare::Args),
    /// Finetune: L2D (l2d-lora, l2d-full) or the weight baselines (lora, full).
    Train(train::Args),
    /// Generate completions with a model (the base LM, or L2D with --l2d).
    Generate(generate::Args),
    /// Evaluate: score given completions on a benchmark (`--task --samples`), or `eval loss`.
    Eval(eval::Args),
    /// Read eval reports back: compare two item by item, or plot a metric against diffusion evaluations per token.
    Report(report::Args),
}

/// `--config FILE.toml` plus repeatable `--set section.key=value`, shared by every subcommand that reads a config.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML config (see configs/).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Override one config value, e.g. `--set generate.temperature=0.7` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The config file with the overrides applied.
    pub fn load(&self) -> Result<crate::config::Config> {
        crate::config::load(self.config.as_deref(), &self.set)
    }
}

/// The flags every model-loading subcommand shares, by the config key they set.
const MODEL_FLAG_KEYS: &[(&str, &str)] = &[("model.device", "--device"), ("model.dtype", "--dtype"), ("model.path", "--model")];

/// Prefixes a config error about `key` with the flag that sets it: "--flag (key): ...".
/// The whole chain is kept (as one line) and so is the exit code.
pub fn name_flags(err: anyhow::Error, flag_keys: &[(&str, &str)]) -> anyhow::Error {
    let msg = crate::error::one_line(&err);
    for (key, flag) in flag_keys {
        if let Some(rest) = msg.strip_prefix(&format!("{key}:")) {
            let named = format!("{flag} ({key}):{rest}");
            return match crate::error::exit_code(&err) {
                2 => crate::error::usage(named),
                _ => anyhow::anyhow!(named),
            };
        }
    }
    err
}

/// Parses a flag's text as the config value `key` it sets; an error names both: "--flag (key): ...".
pub(crate) fn parse_flag<T: std::str::FromStr<Err = String>>(flag: &str, key: &str, text: &str) -> Result<T> {
    text.parse().map_err(|e| crate::error::usage(format!("{flag} ({key}): {e}")))
}

/// `--model DIR --device D --dtype T`, shared by the subcommands that load a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16, f16 or auto (bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl ModelArgs {
    /// Puts the given flags into the config's `[model]` section; a model directory is required.
    pub fn apply(&self, m: &mut crate::config::ModelConfig) -> Result<()> {
        if let Some(p) = &self.model {
            m.path = p.display().to_string();
        }
        if let Some(d) = &self.device {
            m.device = d.clone();
        }
        if let Some(d) = &self.dtype {
            m.dtype = parse_flag("--dtype", "model.dtype", d)?;
        }
        if m.path.is_empty() {
            crate::bail_usage!("--model: no model directory given (flag or model.path in the config)");
        }
        Ok(())
    }
}

/// Parses the process's arguments; `--help` shows each config-backed flag's
/// built-in default.
pub fn parse_args() -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    for (sub, flag_keys) in [("generate", generate::FLAG_KEYS), ("eval", eval::SWEEP_FLAG_KEYS)] {
        cmd = cmd.mut_subcommand(sub, |c| show_config_defaults(c, flag_keys));
    }
    Cli::from_arg_matches(&cmd.try_get_matches()?)
}

/// Appends `[default: V]` to the help of every flag in `flag_keys` whose config
/// key has a built-in default: the flags are `Option`s (unset means "the
/// config's value"), so clap cannot show a default of its own.
fn show_config_defaults(mut cmd: clap::Command, flag_keys: &[(&str, &str)]) -> clap::Command {
    let defaults = toml::Value::try_from(crate::config::Config::default()).expect("the defaults serialise");
    for (key, flag) in flag_keys {
        // An empty list's meaning is the flag's own doc ("empty: ..."), not a value.
        let Some(value) = key.split('.').try_fold(&defaults, |v, part| v.get(part)).filter(|v| v.as_array().is_none_or(|a| !a.is_empty())) else {
            continue;
        };
        let long = flag.trim_start_matches("--");
        let Some(id) = cmd.get_arguments().find(|a| a.get_long() == Some(long)).map(|a| a.get_id().clone()) else {
            continue;
        };
        let shown = display_toml(value);
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            a.help(format!("{help} [default: {shown}]"))
        });
    }
    cmd
}

/// A config value as a user would type it on the command line.
fn display_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(display_toml).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let progress = cli.progress();
    let result = match cli.command {
        Command::Info(args) => info::run(args),
        Command::Init(args) => init::run(args),
        Command::Prepare(args) => prepare::run(args, progress),
        Command::Train(args) => train::run(args, progress),
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args, progress),
        Command::Report(args) => report::run(args),
    };
    result.map_err(|e| name_flags(e, MODEL_FLAG_KEYS))
}

/// Logs to stderr through tracing; `RUST_LOG` sets the filter.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Progress lines are info, shown by default (for runs under nohup or Slurm).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,{}=info", crate::progress::TARGET)));
    // No colour codes in log files.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(stderr_is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reports a panic as one line and exit code 1, never a backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        crate::io::yield_to_signal_exit();
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        // libtorch messages carry C++ frames after the first (possibly escaped) newline.
        let first = msg.lines().next().unwrap_or(msg);
        let first = first.split("\\n").next().unwrap_or(first);
        eprintln!("error: internal error: {first}");
        std::process::exit(1);
    }));
}

/// Whether progress bars and streaming should be shown.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
