//! Replicas: what the runtime records about each process, and the routing table the reconciler
//! publishes for the gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::deployment::Status;
use crate::time::Timestamp;

/// A replica process as recorded in the store, so a restarted berth can find it again and
/// prove it is the same process.
///
/// Written ahead: the record exists (with `pid` 0) before the process is spawned, and gets its
/// pid and process start time right after, so no replica can run that berth does not know of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: String,
    pub workspace_id: String,
    pub deployed_model: String,
    /// 0 until the process is spawned.
    pub pid: u32,
    pub port: u16,
    pub started_at: Timestamp,
    /// The per-replica secret the replica was given at spawn: berth sends it with every call
    /// (`Authorization: Bearer ...`); `berth engine` refuses calls without it.
    pub secret: String,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat`, field 22); with
    /// the pid it names one process for the life of the machine. 0 until spawned.
    pub proc_start: u64,
}

/// A ready replica the gateway may send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub replica_id: String,
    pub addr: SocketAddr,
    /// The replica's secret (see [`ReplicaRecord::secret`]); empty when it has none.
    pub secret: String,
}

/// Everything the gateway needs to route calls to one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingEntry {
    pub workspace_id: String,
    pub deployed_model: String,
    pub model_name: String,
    pub status: Status,
    /// Replicas that passed readiness, in a stable order.
    pub endpoints: Vec<Endpoint>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    /// When the deployment was created, in Unix seconds (OpenAI's `created` of a model).
    pub created: i64,
    /// How long a replica of this model took to start here, seconds (measured by the
    /// reconciler); the `Retry-After` of a call held without a replica. `None`: not measured.
    pub start_secs: Option<u64>,
}

/// The routing table: every live deployment by (workspace, deployed_model).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingTable {
    pub entries: HashMap<(String, String), Arc<RoutingEntry>>,
}

impl RoutingTable {
    /// The entry for a deployment in a workspace.
    pub fn get(&self, workspace_id: &str, deployed_model: &str) -> Option<&Arc<RoutingEntry>> {
        // A tuple key needs owned strings to look up; deployments per node are few, so the
        // allocation is cheap next to a proxied request.
        self.entries
            .get(&(workspace_id.to_owned(), deployed_model.to_owned()))
    }
}
