//! Data parallelism over libtorch's own c10d: a TCPStore rendezvous and
//! ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA), reached through the C++
//! shim in `csrc/` (compiled by build.rs).
//!
//! The launcher's environment decides the shape (torchrun's RANK, WORLD_SIZE,
//! LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without it a process is alone and
//! nothing here talks to the network. Every collective is issued in the same
//! order on every rank; a failure comes back as an error naming the
//! collective and the ranks that stopped answering, never as an abort.

mod ffi;
mod launch;
mod shard;

pub use launch::Launch;

use anyhow::{Context, Result};
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// How collectives behave (`[dist]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bound on the rendezvous and on every collective.
    pub timeout: Duration,
    /// Largest flat buffer one gradient collective moves.
    pub bucket_bytes: usize,
}

impl From<&crate::config::DistConfig> for Settings {
    fn from(c: &crate::config::DistConfig) -> Self {
        Settings { timeout: Duration::from_secs_f64(c.timeout_s), bucket_bytes: (c.bucket_mb * (1 << 20) as f64) as usize }
    }
}

/// Joins the group a launcher (torchrun) described in the environment and
/// checks that every rank runs the same `cfg`; alone without a launcher.
/// Returns the group and this rank's `model.device` (a bare `cuda` is
/// `cuda:LOCAL_RANK`), used by training and sharded eval alike.
pub fn join_checked(cfg: &crate::config::Config) -> Result<(Dist, String)> {
    let Some(launch) = Launch::from_env()? else {
        return Ok((Dist::single(), cfg.model.device.clone()));
    };
    let device = launch.device_spec(&cfg.model.device);
    let dist = Dist::connect(&launch, Settings::from(&cfg.dist), crate::runtime::parse_device(&device)?)?;
    dist.check_same_config(&cfg.to_toml_string())?;
    Ok((dist, device))
}

/// Whether this build can make NCCL process groups.
pub fn has_nccl() -> bool {
    // SAFETY: a constant query.
    unsafe { ffi::l2d_dist_has_nccl() != 0 }
}

/// One process group (c10d backend plus its store connection).
pub struct ProcessGroup {
    raw: NonNull<ffi::L2dDist>,
    launch: Launch,
    settings: Settings,
    /// Collectives issued so far: the same count on every rank, so it tags
    /// the liveness probe after a failure.
    issued: Cell<u64>,
}

// SAFETY: the shim's state is used by one thread at a time (the group is not
// Sync); c10d synchronises its own worker threads.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group `launch` describes: Gloo on CPU, NCCL on CUDA device
    /// `launch.local_rank`. Fails once `settings.timeout` passes without every rank.
    pub fn connect(launch: &Launch, settings: Settings, cuda: bool) -> Result<Self> {
        let addr = CString::new(launch.master_addr.as_str()).context("MASTER_ADDR holds a NUL byte")?;
        // Under torchrun the agent's store outlives a restart; a fresh prefix
        // per restart keeps the new group's keys apart from the old one's.
        let prefix = CString::new(format!("l2d/{}", launch.restart)).expect("no NUL");
        let timeout_ms = i64::try_from(settings.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the shim copies the strings.
        let raw = unsafe {
            ffi::l2d_dist_new(
                addr.as_ptr(),
                c_int::from(launch.master_port),
                launch.rank as c_int,
                launch.world_size as c_int,
                c_int::from(launch.hosts_store()),
                if cuda { ffi::NCCL } else { ffi::GLOO },
                timeout_ms,
                prefix.as_ptr(),
                launch.local_rank as c_int,
                &mut err,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| {
            anyhow::anyhow!(
                "dist: rank {} of {} could not join the process group at {}:{} within {} s: {}",
                launch.rank,
                launch.world_size,
                launch.master_addr,
                launch.master_port,
                settings.timeout.as_secs_f64(),
                take_error(err)
            )
        })?;
        Ok(Self { raw, launch: launch.clone(), settings, issued: Cell::new(0) })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.launch.world_size
    }

    /// Sums `tensors` over ranks in place, in buckets of `bucket_bytes`;
    /// `what` names them in an error.
    pub fn all_reduce_sum(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        let ptrs = raw_tensors(tensors);
        let bucket = self.settings.bucket_bytes as i64;
        // SAFETY: `ptrs` are live `at::Tensor*` for the call's duration.
        self.call("all_reduce", what, |e| unsafe { ffi::l2d_dist_all_reduce_sum(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), bucket, e) })
    }

    /// Overwrites `tensors` with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize, what: &str) -> Result<()> {
        let ptrs = raw_tensors(tensors);
        let bucket = self.settings.bucket_bytes as i64;
        // SAFETY: as in all_reduce_sum.
        self.call("broadcast", what, |e| unsafe { ffi::l2d_dist_broadcast(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), root as c_int, bucket, e) })
    }

    /// Every rank's `input` (same shape everywhere), stacked in rank order.
    pub fn all_gather(&self, input: &Tensor, what: &str) -> Result<Tensor> {
        let input = input.contiguous();
        let mut shape = input.size();
        shape.insert(0, self.world_size() as i64);
        let out = Tensor::zeros(shape.as_slice(), (input.kind(), input.device()));
        // SAFETY: both are live, contiguous `at::Tensor*` for the call.
        self.call("all_gather", what, |e| unsafe {
            ffi::l2d_dist_all_gather(self.raw.as_ptr(), out.as_ptr() as *mut c_void, input.as_ptr() as *mut c_void, e)
        })?;
        Ok(out)
    }

    /// Sets `key` in the launcher's store outside this attempt's prefix, where
    /// torchrun's agent store keeps it across restarts of the group.
    fn job_set(&self, key: &str) -> Result<()> {
        let c_key = CString::new(key).context("a store key holds a NUL byte")?;
        // SAFETY: `c_key` is a valid string for the call; the shim copies it.
        self.store_call(&format!("write {key}"), |e| unsafe { ffi::l2d_dist_job_set(self.raw.as_ptr(), c_key.as_ptr(), e) })
    }

    /// Whether `key` was set by [`ProcessGroup::job_set`], in this attempt or an earlier one.
    fn job_has(&self, key: &str) -> Result<bool> {
        let c_key = CString::new(key).context("a store key holds a NUL byte")?;
        let mut present: c_int = 0;
        // SAFETY: `c_key` and `present` are valid for the call.
        self.store_call(&format!("read {key}"), |e| unsafe { ffi::l2d_dist_job_has(self.raw.as_ptr(), c_key.as_ptr(), &mut present, e) })?;
        Ok(present != 0)
    }

    /// Runs one store operation; a failure becomes one line naming it and the store.
    fn store_call(&self, what: &str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
        let mut err: *mut c_char = std::ptr::null_mut();
        if f(&mut err) != 0 {
            anyhow::bail!("dist: cannot {what} in the store at {}:{}: {}", self.launch.master_addr, self.launch.master_port, take_error(err));
        }
        Ok(())
    }

    /// This rank's block of the element-wise sum over ranks of `input`, a
    /// flat tensor of `world_size` equal blocks in rank order.
    pub fn reduce_scatter_sum(&self, input: &Tensor, what: &str) -> Result<Tensor> {
        let input = input.contiguous();
        let n = input.numel() as i64;
        let world = self.world_size() as i64;
        anyhow::ensure!(n % world == 0, "dist: reduce_scatter of {what}: {n} elements do not split into {world} equal blocks");
        let out = Tensor::zeros([n / world], (input.kind(), input.device()));
        // SAFETY: both are live, contiguous `at::Tensor*` for the call.
        self.call("reduce_scatter", what, |e| unsafe {
            ffi::l2d_dist_reduce_scatter_sum(self.raw.as_ptr(), out.as_ptr() as *mut c_void, input.as_ptr() as *mut c_void, e)
        })?;
        Ok(out)
    }

    /// Runs one collective; a failure becomes one line naming it and the ranks that stopped answering.
    fn call(&self, op: &str, what: &str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let mut err: *mut c_char = std::ptr::null_mut();
        if f(&mut err) == 0 {
            return Ok(());
        }
        let message = take_error(err);
        anyhow::bail!(
            "dist: {op} of {what} (collective {n}) failed on rank {} of {}: {}: {message}",
            self.rank(),
            self.world_size(),
            self.who_failed(n)
        )
    }

    /// Which ranks did not answer a liveness probe through the store after
    /// collective `n` failed (survivors all see the failure within moments).
    fn who_failed(&self, n: u64) -> String {
        let tag = CString::new(n.to_string()).expect("digits");
        let mut alive = vec![0u8; self.world_size()];
        let wait_ms = self.settings.timeout.as_millis().min(3000) as i64;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `alive` holds world_size entries, as the shim writes.
        let rc = unsafe { ffi::l2d_dist_probe_alive(self.raw.as_ptr(), tag.as_ptr(), wait_ms, alive.as_mut_ptr(), &mut err) };
        if rc != 0 {
            let _ = take_error(err);
            return if self.launch.hosts_store() || self.launch.agent_store {
                format!("the store at {}:{} is gone", self.launch.master_addr, self.launch.master_port)
            } else {
                format!("rank 0 (which hosts the store at {}:{}) is gone", self.launch.master_addr, self.launch.master_port)
            };
        }
        let missing: Vec<String> = alive.iter().enumerate().filter(|(_, &a)| a == 0).map(|(r, _)| r.to_string()).collect();
        match missing.len() {
            0 => "every rank still answers".into(),
            1 => format!("rank {} stopped answering", missing[0]),
            _ => format!("ranks {} stopped answering", missing.join(", ")),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from l2d_dist_new and is freed once.
        unsafe { ffi::l2d_dist_free(self.raw.as_ptr()) }
    }
}

/// `at::Tensor*` handles (what the shim takes) of `tensors`.
fn raw_tensors(tensors: &[Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// The shim's message (freed), on one line.
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated string the shim malloc'd; freed once, here.
    let message = unsafe {
        let m = CStr::from_ptr(err).to_string_lossy().into_owned();
        ffi::l2d_dist_free_error(err);
        m
    };
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// This process's place among data-parallel workers: alone, or one rank of a group.
pub struct Dist {
    group: Option<ProcessGroup>,
    /// The device collectives move data on (NCCL needs CUDA tensors).
    device: Device,
}

impl Dist {
    /// A single process.
    pub fn single() -> Self {
        Self { group: None, device: Device::Cpu }
    }

    /// The group the environment describes ([`Launch::from_env`]), on
    /// `device` (CUDA means NCCL), or a single process when no launcher set it up.
    pub fn from_env(settings: Settings, device: Device) -> Result<Self> {
        match Launch::from_env()? {
            None => Ok(Self::single()),
            Some(launch) => Self::connect(&launch, settings, device),
        }
    }

    /// Joins the group `launch` describes, on `device`.
    pub fn connect(launch: &Launch, settings: Settings, device: Device) -> Result<Self> {
        let group = ProcessGroup::connect(launch, settings, device.is_cuda())?;
        Ok(Self { group: Some(group), device })
    }

    /// This worker's rank (0 alone).
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, ProcessGroup::rank)
    }

    /// Number of workers (1 alone).
    pub fn world_size(&self) -> usize {
        self.group.as_ref().map_or(1, ProcessGroup::world_size)
    }

    /// Whether this worker writes checkpoints, logs and outputs.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Sums `tensors` over workers in place (nothing to do alone).
    pub fn sum(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        match &self.group {
            Some(g) => g.all_reduce_sum(tensors, what),
            None => Ok(()),
        }
    }

    /// `values` summed over workers, in f64.
    pub fn sum_f64(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        if self.group.is_none() {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values).to_device(self.device);
        self.sum(&[t.shallow_clone()], what)?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu))?)
    }

    /// Overwrites `tensors` with rank 0's.
    pub fn broadcast_from_main(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        match &self.group {
            Some(g) => g.broadcast(tensors, 0, what),
            None => Ok(()),
        }
    }

    /// Notes in the launcher's store that this job's run has started (its
    /// output directory is this job's own), for [`Dist::restarts_a_started_run`].
    pub fn mark_run_started(&self) -> Result<()> {
        match &self.group {
            Some(g) => g.job_set(RUN_STARTED),
            None => Ok(()),
        }
    }

    /// Whether this process belongs to a group torchrun restarted
    /// (`TORCHELASTIC_RESTART_COUNT` > 0) after an earlier attempt had
    /// started the run. Only torchrun's agent store outlives the attempts; a
    /// store rank 0 hosted died with it, so the answer is then no.
    pub fn restarts_a_started_run(&self) -> Result<bool> {
        match &self.group {
            Some(g) if g.launch.is_restart() => g.job_has(RUN_STARTED),
            _ => Ok(false),
        }
    }

    /// This worker's block of the sum over workers of `input` (flat, one equal
    /// block per worker in rank order); alone, `input` itself.
    pub fn reduce_scatter_sum(&self, input: &Tensor, what: &str) -> Result<Tensor> {
        match &self.group {
            Some(g) => g.reduce_scatter_sum(input, what),
            None => Ok(input.shallow_clone()),
        }
    }

    /// Every worker's flat `input` (same length everywhere), concatenated in rank order.
    pub fn all_gather_flat(&self, input: &Tensor, what: &str) -> Result<Tensor> {
        match &self.group {
            Some(g) => Ok(g.all_gather(input, what)?.reshape([-1])),
            None => Ok(input.shallow_clone()),
        }
    }

    /// Every worker's `text`, in rank order.
    pub fn all_gather_text(&self, text: &str, what: &str) -> Result<Vec<String>> {
        let Some(g) = &self.group else {
            return Ok(vec![text.to_string()]);
        };
        let len = Tensor::from_slice(&[text.len() as i64]).to_device(self.device);
        let lens = Vec::<i64>::try_from(g.all_gather(&len, what)?.to_device(Device::Cpu).reshape([-1]))?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            return Ok(vec![String::new(); lens.len()]);
        }
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(longest as usize, 0);
        let all = g.all_gather(&Tensor::from_slice(&bytes).to_kind(Kind::Uint8).to_device(self.device), what)?;
        let all = Vec::<u8>::try_from(all.to_device(Device::Cpu).reshape([-1]))?;
        Ok(all
            .chunks(longest as usize)
            .zip(&lens)
            .map(|(chunk, &n)| String::from_utf8_lossy(&chunk[..n as usize]).into_owned())
            .collect())
    }

    /// Refuses to go on unless every worker holds the same `config` (TOML):
    /// one line naming the keys that differ from rank 0's, on every rank.
    pub fn check_same_config(&self, config: &str) -> Result<()> {
        let all = self.all_gather_text(config, "the configs")?;
        let mut differences = Vec::new();
        for (rank, other) in all.iter().enumerate().skip(1) {
            let keys = differing_keys(&all[0], other);
            if !keys.is_empty() {
                differences.push(format!("rank {rank} differs from rank 0 in {}", keys.join(", ")));
            }
        }
        if !differences.is_empty() {
            crate::bail_usage!("dist: the ranks were started with different configs: {}", differences.join("; "));
        }
        Ok(())
    }
}

/// The store key of [`Dist::mark_run_started`].
const RUN_STARTED: &str = "l2d/run-started";

/// The dotted keys whose values differ between two TOML documents (either
/// missing counts as differing), sorted.
pub fn differing_keys(a: &str, b: &str) -> Vec<String> {
    let leaves = |text: &str| {
        let table = text.parse::<toml::Table>().unwrap_or_default();
        crate::config::dotted_leaves(&serde_json::to_value(table).expect("a TOML table serialises"))
    };
    let (fa, fb) = (leaves(a), leaves(b));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter().filter(|k| fa.get(*k) != fb.get(*k)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_names_changed_added_and_removed_leaves() {
        let a = "[train]\nlr = 1e-4\nseed = 1\n[model]\npath = \"m\"\n";
        let b = "[train]\nlr = 2e-4\nseed = 1\nsteps = 3\n";
        assert_eq!(differing_keys(a, b), ["model.path", "train.lr", "train.steps"]);
        assert!(differing_keys(a, a).is_empty());
    }
}
