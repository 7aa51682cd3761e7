//! Launcher variables: torchrun's, Slurm's as the fallback, and clear errors for bad ones.

use std::collections::HashMap;

use artist_dist::{DistEnv, EnvSource, Error};

fn parse(vars: &[(&str, &str)]) -> Result<DistEnv, Error> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    DistEnv::from_vars(|k| map.get(k).cloned())
}

fn err(vars: &[(&str, &str)]) -> (String, String) {
    match parse(vars).unwrap_err() {
        e @ Error::Env { var, .. } => (var.to_string(), e.to_string()),
        e => panic!("not an Env error: {e}"),
    }
}

#[test]
fn torchrun_variables() {
    let env = parse(&[
        ("RANK", "5"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node-a"),
        ("MASTER_PORT", "29400"),
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
    ])
    .unwrap();
    assert_eq!(
        env,
        DistEnv {
            rank: 5,
            world_size: 16,
            local_rank: 1,
            master_addr: "node-a".into(),
            master_port: 29400,
            source: EnvSource::Torchrun
        }
    );
}

#[test]
fn slurm_variables_as_fallback() {
    let env =
        parse(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "3"), ("MASTER_ADDR", "n1")]).unwrap();
    assert_eq!((env.rank, env.world_size, env.local_rank, env.source), (3, 8, 3, EnvSource::Slurm));
    assert_eq!((env.master_addr.as_str(), env.master_port), ("n1", 29500));
}

#[test]
fn no_launcher_is_one_process() {
    let env = parse(&[]).unwrap();
    assert_eq!((env.rank, env.world_size, env.local_rank, env.source), (0, 1, 0, EnvSource::Single));
    assert_eq!(parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().local_rank, 0);
}

#[test]
fn bad_values_name_the_variable() {
    // (variables, the variable blamed, words of the message)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("RANK", "1")], "WORLD_SIZE", "is not set, but RANK is"),
        (&[("WORLD_SIZE", "2")], "RANK", "is not set"),
        (&[("SLURM_PROCID", "1")], "SLURM_NTASKS", "is not set"),
        (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK", "\"x\" is not a non-negative integer"),
        (&[("RANK", "-1"), ("WORLD_SIZE", "2")], "RANK", "not a non-negative integer"),
        (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE", "at least 1"),
        (&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")], "RANK", "2 is not below WORLD_SIZE=2"),
        (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")], "LOCAL_RANK", "is not set"),
        (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "9"), ("MASTER_ADDR", "a")], "LOCAL_RANK", "9 is not"),
        (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")], "MASTER_ADDR", "is not set"),
        (
            &[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "70000")],
            "MASTER_PORT",
            "\"70000\" is not a port number",
        ),
        (&[("MASTER_PORT", "0")], "MASTER_PORT", "0 is not a port"),
    ];
    for (vars, var, text) in cases {
        let (v, msg) = err(vars);
        assert_eq!(&v, var, "{vars:?}: {msg}");
        assert!(msg.contains(text), "{vars:?}: {msg}");
        assert!(msg.starts_with(var), "{msg}");
    }
}
