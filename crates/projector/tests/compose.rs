//! docker-compose.yml must start the binaries this workspace builds: every service's
//! command line and environment are checked against the services' own flag parsers, and
//! the projector services must make one group of distinct instances.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("docker-compose.yml exists"))
        .expect("valid YAML")
}

/// A service's command line.
fn command_of(doc: &Value, service: &str) -> Vec<String> {
    doc["services"][service]["command"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{service} has a command list"))
        .iter()
        .map(|v| v.as_str().expect("every argument is a string").to_string())
        .collect()
}

/// The services that run the projector: the instances of its group.
fn projector_services(doc: &Value) -> Vec<String> {
    let services: Vec<String> = doc["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| k.as_str().expect("a service name").to_string())
        .filter(|s| doc["services"][s.as_str()]["command"][0].as_str() == Some("projector"))
        .collect();
    assert!(
        services.iter().any(|s| s == "projector"),
        "the service named projector runs the projector: {services:?}"
    );
    services
}

fn check(service: &str, binary: &str, cmd: clap::Command) {
    let doc = compose();
    let svc = &doc["services"][service];
    let args = command_of(&doc, service);
    assert_eq!(
        args[0], binary,
        "{service}: the command starts with the binary's name"
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
    check(
        "command-ingest",
        "command-ingest",
        command_ingest::Config::command(),
    );
}

#[test]
fn projector_command_lines_match_the_binary() {
    let doc = compose();
    for service in projector_services(&doc) {
        check(&service, "projector", projector::Config::command());
        let vols: Vec<&str> = doc["services"][service.as_str()]["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service} has volumes"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let volume = vols
            .iter()
            .find_map(|v| v.strip_suffix(":/data"))
            .unwrap_or_else(|| panic!("{service}'s data is on a volume at /data: {vols:?}"));
        assert!(
            doc["volumes"][volume].is_mapping() || doc["volumes"][volume].is_null(),
            "{service}'s volume {volume} is a named volume"
        );
        let args = format!("{:?}", doc["services"][service.as_str()]["command"]);
        assert!(
            args.contains("/data/projector"),
            "{service}: its data dir is on that volume: {args}"
        );
    }
}

/// The projector instances are one group: the same group id, and each with its own
/// instance id, volume and published port, and an advertised URL the others reach it at
/// (its service name on the compose network, on the port it listens on).
#[test]
fn the_projectors_are_one_group_of_distinct_instances() {
    let doc = compose();
    let services = projector_services(&doc);
    assert!(
        services.len() >= 2,
        "docker-compose.yml runs a group of projectors: {services:?}"
    );
    let mut groups = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for service in &services {
        let config = projector::Config::try_parse_from(command_of(&doc, service))
            .unwrap_or_else(|e| panic!("{service}: {e}"));
        groups.insert(config.group_id);
        let id = config
            .instance_id
            .unwrap_or_else(|| panic!("{service} has an --instance-id"));
        assert!(
            ids.insert(id.clone()),
            "{service}: instance id {id} is used twice"
        );
        let url = config
            .advertise_url
            .unwrap_or_else(|| panic!("{service} has an --advertise-url"));
        assert_eq!(
            url,
            format!("http://{service}:{}", config.listen.port()),
            "{service} advertises its own service name and the port it listens on"
        );
        let svc = &doc["services"][service.as_str()];
        let vols = format!("{:?}", svc["volumes"]);
        assert!(
            volumes.insert(vols.clone()),
            "{service}: volumes {vols} are shared"
        );
        let published = format!("{:?}", svc["ports"]);
        assert!(
            ports.insert(published.clone()),
            "{service}: ports {published} are published twice"
        );
    }
    assert_eq!(groups.len(), 1, "the projectors are one group: {groups:?}");
}
