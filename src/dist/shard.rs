//! What a sharded job (`l2d eval --config` under torchrun) needs from the
//! group beyond training's collectives: joining with a config check, agreeing
//! on a step that may fail on one rank, and rank 0's text for everyone.

use anyhow::Result;

use super::{Dist, Launch, Settings};
use crate::config::Config;

/// Joins the group a launcher described in the environment and checks that
/// every rank runs the same `cfg`; alone without a launcher. Returns the group
/// and this rank's `model.device` (a bare `cuda` is `cuda:LOCAL_RANK`).
pub fn join_checked(cfg: &Config) -> Result<(Dist, String)> {
    let Some(launch) = Launch::from_env()? else {
        return Ok((Dist::single(), cfg.model.device.clone()));
    };
    let device = launch.device_spec(&cfg.model.device);
    let dist = Dist::connect(&launch, Settings::from(&cfg.dist), crate::runtime::parse_device(&device)?)?;
    dist.check_same_config(&cfg.to_toml_string())?;
    Ok((dist, device))
}

impl Dist {
    /// Every rank's `outcome` of a step that can fail on some ranks only (rank
    /// 0 alone reads the journal): on a rank that failed its own error, on the
    /// others one naming the first rank that failed, so that no rank waits in a
    /// later collective for one that has stopped.
    pub fn agree<T>(&self, outcome: Result<T>, what: &str) -> Result<T> {
        if self.world_size() == 1 {
            return outcome;
        }
        let message = outcome.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
        let all = self.all_gather_text(&message, what)?;
        match all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            Some(_) if outcome.is_err() => outcome,
            Some((rank, m)) => anyhow::bail!("dist: rank {rank} failed {what}: {}", m.lines().next().unwrap_or_default()),
            None => outcome,
        }
    }

    /// Rank 0's `text` on every rank (the others' own is ignored).
    pub fn text_from_main(&self, text: &str, what: &str) -> Result<String> {
        if self.world_size() == 1 {
            return Ok(text.to_string());
        }
        let own = if self.is_main() { text } else { "" };
        Ok(self.all_gather_text(own, what)?.swap_remove(0))
    }
}
