//! The group's shape as the launcher (torchrun, srun wrappers, or a hand-set
//! environment) describes it.

use anyhow::Result;

/// Where this process sits in the group and where the group meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of ranks (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this node (`LOCAL_RANK`, else `RANK`): the CUDA device index.
    pub local_rank: usize,
    /// Host of the TCPStore (`MASTER_ADDR`).
    pub master_addr: String,
    /// Its port (`MASTER_PORT`).
    pub master_port: u16,
    /// torchrun's agent already hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`):
    /// every rank connects as a client.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`), "0" outside torchrun.
    pub restart: String,
}

/// Variables whose presence means "launched as part of a group".
const GROUP_VARS: [&str; 3] = ["RANK", "WORLD_SIZE", "LOCAL_RANK"];

impl Launch {
    /// The process's environment; `None` when no launcher set a group up.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], from any lookup (empty values count as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        if GROUP_VARS.iter().all(|k| var(k).is_none()) {
            return Ok(None);
        }
        let required = |k: &str| {
            var(k).ok_or_else(|| {
                crate::error::usage(format!(
                    "dist: {k} is not set, but {} is: launch with torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT",
                    GROUP_VARS.iter().filter(|g| var(g).is_some()).copied().collect::<Vec<_>>().join(", ")
                ))
            })
        };
        let number = |k: &str, text: String| -> Result<usize> {
            text.trim().parse().map_err(|_| crate::error::usage(format!("dist: {k}={text:?} is not a non-negative integer")))
        };
        let world_size = number("WORLD_SIZE", required("WORLD_SIZE")?)?;
        let rank = number("RANK", required("RANK")?)?;
        if world_size == 0 || rank >= world_size {
            crate::bail_usage!("dist: RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", v)?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        let port = number("MASTER_PORT", required("MASTER_PORT")?)?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| crate::error::usage(format!("dist: MASTER_PORT={port} is not a port (1-65535)")))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            restart: var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into()),
        }))
    }

    /// Whether this process hosts the TCPStore: rank 0, unless torchrun's agent does.
    pub fn hosts_store(&self) -> bool {
        !self.agent_store && self.rank == 0
    }

    /// Whether torchrun started this process to restart a failed group.
    pub fn is_restart(&self) -> bool {
        self.restart.trim().parse::<u64>().is_ok_and(|n| n > 0)
    }

    /// `device` for this rank: a bare `cuda` (or `auto` where CUDA is
    /// available) is `cuda:LOCAL_RANK`.
    pub fn device_spec(&self, device: &str) -> String {
        match device {
            "cuda" => format!("cuda:{}", self.local_rank),
            "auto" if tch::Cuda::is_available() => format!("cuda:{}", self.local_rank),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn no_group_variables_is_a_single_process() {
        assert_eq!(launch(&[("MASTER_ADDR", "h")]).unwrap(), None);
    }

    #[test]
    fn torchrun_environment_connects_as_a_client() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world_size, l.local_rank, l.master_port), (3, 4, 1, 29500));
        assert!(!l.hosts_store());
        assert_eq!(l.restart, "2");
        assert!(l.is_restart());
        assert_eq!(l.device_spec("cuda"), "cuda:1");
        assert_eq!(l.device_spec("cuda:0"), "cuda:0");
        assert_eq!(l.device_spec("cpu"), "cpu");
    }

    #[test]
    fn a_hand_set_rank_0_hosts_the_store_and_local_rank_defaults_to_rank() {
        let l = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1234")]).unwrap().unwrap();
        assert!(l.hosts_store());
        assert_eq!(l.local_rank, 0);
        assert!(!l.is_restart());
    }

    #[test]
    fn missing_or_bad_variables_are_usage_errors_naming_them() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "MASTER_ADDR is not set"),
            (&[("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")], "WORLD_SIZE is not set"),
            (&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")], "RANK=2 is not below WORLD_SIZE=2"),
            (&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")], "MASTER_PORT=70000"),
        ];
        for (vars, expected) in cases {
            let err = launch(vars).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(crate::error::exit_code(&err), 2);
        }
    }
}
