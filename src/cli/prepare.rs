//! `l2d prepare` (being written).

use anyhow::Result;

/// Flags of `l2d prepare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArgs,
}

/// Tokenizes chat data into shards.
pub fn run(_args: Args) -> Result<()> {
    crate::bail_usage!("l2d prepare is not available in this build")
}
