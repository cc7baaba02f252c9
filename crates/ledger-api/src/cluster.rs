//! What a projector group looks like from any of its instances: `GET /v1/cluster`, the
//! role an instance plays for a partition, and the headers that mark forwarded queries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The header on every projector answer naming the instance that served it (the owner,
/// when the query was forwarded).
pub const SERVED_BY_HEADER: &str = "ledger-served-by";

/// The header an instance adds when it forwards a query to another instance, naming
/// itself. A forwarded query is answered where it lands, never forwarded again.
pub const FORWARDED_BY_HEADER: &str = "ledger-forwarded-by";

/// What an instance does with a partition.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PartitionRole {
    /// It consumes the partition in the group and serves it.
    Owner,
    /// It consumes the partition in the group and is catching up; it serves it only to a
    /// query whose consistency token it has reached.
    Warming,
    /// It has handed the partition over and still serves it, tailing it read-only outside
    /// the group, until the new owner has caught up.
    Draining,
}

impl PartitionRole {
    /// The role as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            PartitionRole::Owner => "owner",
            PartitionRole::Warming => "warming",
            PartitionRole::Draining => "draining",
        }
    }

    /// Whether the instance answers every query for the partition.
    pub const fn serves(self) -> bool {
        matches!(self, PartitionRole::Owner | PartitionRole::Draining)
    }
}

impl std::fmt::Display for PartitionRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One partition as one instance holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionRoleView {
    /// The partition.
    pub partition: i32,
    /// What the instance does with it.
    pub role: PartitionRole,
    /// The next offset to apply there: every event below it is applied.
    pub applied_offset: i64,
    /// Events in the log not applied there yet, as the instance last measured it;
    /// `null` before it has.
    pub lag: Option<i64>,
}

/// One instance of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    /// Its id: `--instance-id`, or the one generated on its first start and kept in its
    /// data directory. It is also its static group membership id.
    pub instance_id: String,
    /// Where the other instances reach it (`--advertise-url`).
    pub url: String,
    /// How long ago, in ms, the answering instance last heard from it (0 for itself).
    pub last_seen_ms: u64,
    /// The partitions it holds, in partition order.
    pub partitions: Vec<PartitionRoleView>,
}

/// `GET /v1/cluster`: every live instance of the group, as the answering one sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// The instance that answered.
    pub answered_by: String,
    /// The topic's partition count, once known.
    pub partition_count: Option<i32>,
    /// The live instances, in id order, the answering one included.
    pub instances: Vec<InstanceView>,
}
