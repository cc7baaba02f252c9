//! The few fields of librdkafka's statistics (`statistics.interval.ms`) that tell a
//! working client from a wedged one. One definition for the producer's and the
//! consumer's contexts.

/// The part of librdkafka's statistics JSON this crate reads.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Stats {
    /// Present for an idempotent producer.
    pub eos: Option<Idempotence>,
    /// Present for a consumer in a group.
    pub cgrp: Option<Group>,
}

/// `eos`: the idempotent producer's state.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Idempotence {
    /// `Assigned` once it has a producer id and can produce.
    pub idemp_state: String,
}

/// `cgrp`: the consumer group membership.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Group {
    /// The coordinator state: `up` once the coordinator is known and connected.
    pub state: String,
    /// The membership: `steady` between rebalances.
    pub join_state: String,
}

impl Stats {
    /// Parses the fields above, ignoring everything else; `None` for anything that is
    /// not librdkafka's statistics JSON.
    pub(crate) fn parse(json: &[u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_producer_and_group_states_and_ignores_the_rest() {
        let json = br#"{"name":"rdkafka#producer-1","ts":1,"brokers":{},
            "eos":{"idemp_state":"Assigned","idemp_stateage":12,"producer_id":4},
            "cgrp":{"state":"up","stateage":3,"join_state":"steady","rebalance_cnt":1}}"#;
        let s = Stats::parse(json).unwrap();
        assert_eq!(s.eos.unwrap().idemp_state, "Assigned");
        let g = s.cgrp.unwrap();
        assert_eq!((g.state.as_str(), g.join_state.as_str()), ("up", "steady"));
        let s = Stats::parse(br#"{"name":"x"}"#).unwrap();
        assert!(s.eos.is_none() && s.cgrp.is_none());
        assert!(Stats::parse(b"not json").is_none());
    }
}
