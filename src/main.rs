//! The `l2d` binary: parse flags, set up logging, dispatch to a subcommand.

use l2d::cli;
use l2d::error::{exit_code, one_line};

fn main() {
    cli::install_panic_hook();
    // clap's own messages in full (the missing argument, "did you mean"), exit code 2.
    let cli = cli::parse_args().unwrap_or_else(|err| err.exit());
    cli::init_logging(cli.log_format);
    let result = cli::run(cli);
    l2d::io::yield_to_signal_exit();
    if let Err(err) = result {
        // A reader that stopped early (`| head`) is not a failure of ours.
        if l2d::error::is_broken_pipe(&err) {
            std::process::exit(0);
        }
        eprintln!("error: {}", one_line(&err));
        std::process::exit(exit_code(&err));
    }
}
