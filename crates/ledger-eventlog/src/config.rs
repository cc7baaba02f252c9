//! Connection settings shared by every Kafka client the project makes, and the flags
//! that set them in every service.

use rdkafka::ClientConfig;

/// Where the brokers are, and any librdkafka properties the operator passes through
/// (`--kafka-config key=value`), so SASL/SSL clusters work without code changes.
#[derive(Clone, Debug, Default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka properties, applied in order after the project's defaults.
    pub properties: Vec<(String, String)>,
}

/// The Kafka flags every binary that talks to Kafka takes: `#[command(flatten)]` them.
#[derive(Clone, Debug, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The event topic.
    #[arg(long, env = "LEDGER_TOPIC", default_value = "ledger.events")]
    pub topic: String,
    /// Any librdkafka property, as key=value (repeatable), e.g. for SASL/SSL.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_config: Vec<(String, String)>,
}

impl KafkaArgs {
    /// The connection settings these flags name.
    pub fn client(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            properties: self.kafka_config.clone(),
        }
    }
}

/// A property the project must set to keep its guarantees, given a conflicting value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--kafka-config {key}={given} conflicts with {key}={required}, which this service needs: {why}"
)]
pub struct ConflictingProperty {
    /// The property.
    pub key: String,
    /// What the operator gave.
    pub given: String,
    /// What the service needs.
    pub required: String,
    /// Why.
    pub why: &'static str,
}

impl KafkaConfig {
    /// A config for these brokers with no extra properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// A librdkafka config with `defaults` first, then the operator's properties (which
    /// may override defaults), then `required`, which nobody may weaken.
    pub fn client_config(
        &self,
        defaults: &[(&str, &str)],
        required: &[(&str, &str, &'static str)],
    ) -> Result<ClientConfig, ConflictingProperty> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        for (key, value, why) in required {
            if let Some((_, given)) = self.properties.iter().rev().find(|(k, _)| k == key) {
                if !same_value(given, value) {
                    return Err(ConflictingProperty {
                        key: key.to_string(),
                        given: given.clone(),
                        required: value.to_string(),
                        why,
                    });
                }
            }
            cfg.set(*key, *value);
        }
        Ok(cfg)
    }
}

fn same_value(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "-1" | "all" => "all".to_string(),
        other => other.to_string(),
    };
    norm(a) == norm(b)
}

/// Parses one `key=value` librdkafka property, for clap.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("empty property name in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse() {
        assert_eq!(
            parse_property("sasl.mechanism=SCRAM-SHA-512").unwrap(),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into())
        );
        assert_eq!(parse_property("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }

    #[test]
    fn operator_overrides_defaults_but_not_requirements() {
        let mut k = KafkaConfig::new("b:9092");
        k.properties.push(("linger.ms".into(), "20".into()));
        k.properties.push(("acks".into(), "-1".into()));
        let cfg = k
            .client_config(&[("linger.ms", "5")], &[("acks", "all", "durability")])
            .unwrap();
        assert_eq!(cfg.get("linger.ms"), Some("20"));
        assert_eq!(cfg.get("acks"), Some("all"));
        k.properties.push(("acks".into(), "1".into()));
        let err = k
            .client_config(&[], &[("acks", "all", "durability")])
            .unwrap_err();
        assert_eq!(err.given, "1");
    }
}
