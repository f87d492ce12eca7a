//! What a sharded job (`l2d eval --config` under torchrun) needs from the
//! group beyond training's collectives: agreeing on a step that may fail on
//! one rank, and rank 0's text for everyone.

use anyhow::Result;

use super::Dist;

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
