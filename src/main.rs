//! The `l2d` binary: parse flags, set up logging, dispatch to a subcommand.

use clap::Parser;
use l2d::cli::{self, Cli};
use l2d::error::{exit_code, one_line};

fn main() {
    cli::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // One line, like every other error; `--help` has the details.
            let text = err.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            std::process::exit(2);
        }
        Err(err) => err.exit(),
    };
    cli::init_logging(cli.log_format);
    if let Err(err) = cli::run(cli) {
        eprintln!("error: {}", one_line(&err));
        std::process::exit(exit_code(&err));
    }
}
