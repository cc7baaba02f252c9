//! docker-compose.yml must start the binaries this workspace builds: every service's
//! command line and environment are checked against the services' own flag parsers.

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("docker-compose.yml exists"))
        .expect("valid YAML")
}

fn check(service: &str, cmd: clap::Command) {
    let doc = compose();
    let svc = &doc["services"][service];
    let args: Vec<String> = svc["command"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{service} has a command list"))
        .iter()
        .map(|v| v.as_str().expect("every argument is a string").to_string())
        .collect();
    assert_eq!(
        args[0], service,
        "the command starts with the binary's name"
    );
    let envs: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for key in svc["environment"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str().unwrap())
    {
        assert!(
            envs.contains(key),
            "{service}: environment variable {key} is not read by the binary ({envs:?})"
        );
    }
    if let Err(e) = cmd.try_get_matches_from(&args) {
        panic!("{service}: docker-compose.yml's command line is not accepted by the binary:\n{e}");
    }
    assert!(
        svc["healthcheck"].is_mapping(),
        "{service} has a healthcheck"
    );
    let ports = format!("{:?}", svc["ports"]);
    assert!(
        ports.contains("127.0.0.1:"),
        "{service} publishes on loopback only: {ports}"
    );
}

#[test]
fn ingest_command_line_matches_the_binary() {
    check("command-ingest", command_ingest::Config::command());
}

#[test]
fn projector_command_line_matches_the_binary() {
    check("projector", projector::Config::command());
    let doc = compose();
    assert!(
        doc["volumes"]["projector-data"].is_mapping() || doc["volumes"]["projector-data"].is_null()
    );
    let vols = format!("{:?}", doc["services"]["projector"]["volumes"]);
    assert!(
        vols.contains("projector-data:/data"),
        "the projector's data is on a named volume: {vols}"
    );
    let args = format!("{:?}", doc["services"]["projector"]["command"]);
    assert!(
        args.contains("/data/projector"),
        "its data dir is on that volume: {args}"
    );
}
