//! What both services answer on their operations routes, which stay open without a
//! token: liveness and readiness.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz`: the process is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

impl Health {
    /// The one answer.
    pub fn ok() -> Self {
        Self {
            status: "ok".into(),
        }
    }
}

/// `GET /readyz` when ready (otherwise `503 not_ready`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// The topic the service writes or reads.
    pub topic: String,
    /// The projector's assigned partitions; absent on the ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_partitions: Option<Vec<i32>>,
}

impl Readiness {
    /// Ready for this topic.
    pub fn ready(topic: impl Into<String>, assigned_partitions: Option<Vec<i32>>) -> Self {
        Self {
            status: "ready".into(),
            topic: topic.into(),
            assigned_partitions,
        }
    }
}
