//! The `l2d` binary: parse flags, set up logging, dispatch to a subcommand.

use clap::Parser;
use l2d::cli::{self, Cli};
use l2d::error::{exit_code, one_line};

fn main() {
    cli::install_panic_hook();
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    if let Err(err) = cli::run(cli) {
        eprintln!("error: {}", one_line(&err));
        std::process::exit(exit_code(&err));
    }
}
