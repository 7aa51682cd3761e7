//! Where this process sits in the job, from the launcher's environment variables.

use crate::{Error, Result};

/// Which launcher the variables came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// `RANK` / `WORLD_SIZE` / `LOCAL_RANK` (torchrun, or set by hand).
    Torchrun,
    /// `SLURM_PROCID` / `SLURM_NTASKS` / `SLURM_LOCALID` (`srun`, one task per GPU).
    Slurm,
    /// None set: one process alone.
    Single,
}

/// This process's place in the job: its global rank, the number of ranks, its rank on
/// this node (which GPU it drives) and where rank 0 listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub source: EnvSource,
}

impl DistEnv {
    /// A job of one process (no launcher).
    pub fn single() -> DistEnv {
        DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            source: EnvSource::Single,
        }
    }

    /// Reads the process environment (see [`DistEnv::from_vars`]).
    pub fn from_env() -> Result<DistEnv> {
        DistEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get`, as torchrun sets them, Slurm's where torchrun's
    /// are absent:
    ///
    /// * `RANK` (or `SLURM_PROCID`) and `WORLD_SIZE` (or `SLURM_NTASKS`) together, or
    ///   neither (then one process: rank 0 of 1);
    /// * `LOCAL_RANK` (or `SLURM_LOCALID`), needed when there is more than one rank;
    /// * `MASTER_ADDR` (default `127.0.0.1` for a single process) and `MASTER_PORT`
    ///   (default 29500, as torchrun's).
    ///
    /// Empty variables count as unset.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<DistEnv> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let torch = (get("RANK"), get("WORLD_SIZE"));
        let slurm = (get("SLURM_PROCID"), get("SLURM_NTASKS"));
        let (source, rank_var, world_var, local_var, rank, world) = match (torch, slurm) {
            ((Some(r), Some(w)), _) => (EnvSource::Torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK", r, w),
            ((Some(_), None), _) => return Err(env_err("WORLD_SIZE", "is not set, but RANK is")),
            ((None, Some(_)), _) => return Err(env_err("RANK", "is not set, but WORLD_SIZE is")),
            (_, (Some(r), Some(w))) => (EnvSource::Slurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", r, w),
            (_, (Some(_), None)) => return Err(env_err("SLURM_NTASKS", "is not set, but SLURM_PROCID is")),
            (_, (None, Some(_))) => return Err(env_err("SLURM_PROCID", "is not set, but SLURM_NTASKS is")),
            (_, (None, None)) => {
                let mut env = DistEnv::single();
                if let Some(a) = get("MASTER_ADDR") {
                    env.master_addr = a;
                }
                if let Some(p) = get("MASTER_PORT") {
                    env.master_port = parse_port(&p)?;
                }
                return Ok(env);
            }
        };
        let rank = parse_usize(rank_var, &rank)?;
        let world_size = parse_usize(world_var, &world)?;
        if world_size == 0 {
            return Err(env_err(world_var, "must be at least 1, not 0"));
        }
        if rank >= world_size {
            return Err(env_err(rank_var, format!("{rank} is not below {world_var}={world_size}")));
        }
        // torchrun names LOCAL_RANK; under srun a script may set either.
        let local = get(local_var).map(|v| (local_var, v)).or_else(|| {
            let other = if local_var == "LOCAL_RANK" { "SLURM_LOCALID" } else { "LOCAL_RANK" };
            get(other).map(|v| (other, v))
        });
        let local_rank = match local {
            Some((var, v)) => {
                let l = parse_usize(var, &v)?;
                if l >= world_size {
                    return Err(env_err(var, format!("{l} is not below {world_var}={world_size}")));
                }
                l
            }
            None if world_size == 1 => 0,
            None => return Err(env_err(local_var, format!("is not set ({world_size} ranks need a local rank)"))),
        };
        let master_addr = match get("MASTER_ADDR") {
            Some(a) => a,
            None if world_size == 1 => "127.0.0.1".into(),
            None => return Err(env_err("MASTER_ADDR", "is not set (the address rank 0 listens on)")),
        };
        let master_port = match get("MASTER_PORT") {
            Some(p) => parse_port(&p)?,
            None => 29500,
        };
        Ok(DistEnv { rank, world_size, local_rank, master_addr, master_port, source })
    }
}

fn env_err(var: &'static str, msg: impl Into<String>) -> Error {
    Error::Env { var, msg: msg.into() }
}

fn parse_usize(var: &'static str, v: &str) -> Result<usize> {
    v.parse().map_err(|_| env_err(var, format!("{v:?} is not a non-negative integer")))
}

fn parse_port(v: &str) -> Result<u16> {
    match v.parse::<u16>() {
        Ok(0) => Err(env_err("MASTER_PORT", "0 is not a port to connect to")),
        Ok(p) => Ok(p),
        Err(_) => Err(env_err("MASTER_PORT", format!("{v:?} is not a port number (1-65535)"))),
    }
}
