//! The embedded SQLite backend of [`Store`], the default.
//!
//! One database file in WAL mode, a small connection pool, and every trait method as a single
//! SQL statement (or a read transaction for a page plus its total), so each is atomic without
//! application-level locking. Queries are checked at run time; the schema lives in
//! `migrations/` and is applied by [`SqliteStore::open`].

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::{
    ApiKeyRecord, Autoscaling, Deployment, KeyHash, NewDeployment, ReplicaRecord, Status, Timestamp,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Decode, Row, Sqlite, Type};

use crate::{DesiredChange, ObservedStatus, Result, Store, StoreError};

/// The schema, embedded at build time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!();

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in a file-backed pool. SQLite serialises writers anyway; a few connections let
/// reads (WAL readers never block) run beside a write.
const MAX_CONNECTIONS: u32 = 8;

/// The deployment columns, in one place for every `SELECT` and `RETURNING`.
macro_rules! deployment_columns {
    () => {
        "workspace_id, deployed_model, model_name, base_model, name, plan, model_unit_spec, \
         status, capacity, base_capacity, ready_capacity, max_context_length, enable_thinking, \
         rpm_limit, tpm_limit, fail_reason, status_message, creator, modifier, gmt_create, \
         gmt_modified, generation, autoscale_min_capacity, autoscale_max_capacity, \
         autoscale_target_inflight, autoscale_down_delay_secs, autoscale_zero_after_secs"
    };
}

/// Every status, so SQL can be generated from the domain's own rules.
pub(crate) const ALL_STATUSES: [Status; 6] = [
    Status::Pending,
    Status::Updating,
    Status::Running,
    Status::Stopped,
    Status::Deleting,
    Status::Failed,
];

// A new `Status` variant fails to compile here: add it to `ALL_STATUSES` (and the CHECK in the
// migration) too.
const _: fn(Status) = |s| match s {
    Status::Pending
    | Status::Updating
    | Status::Running
    | Status::Stopped
    | Status::Deleting
    | Status::Failed => {}
};

/// The scale update. Its status `CASE` is written out from [`Status::after_scale`], so the rule
/// stays in `berth-core` while the change remains one atomic statement.
static SCALE_SQL: LazyLock<String> = LazyLock::new(|| {
    let arms: String = ALL_STATUSES
        .iter()
        .map(|s| format!(" WHEN '{}' THEN '{}'", s.as_str(), s.after_scale().as_str()))
        .collect();
    format!(
        "UPDATE deployments SET capacity = ?1, status = CASE status{arms} ELSE status END, \
         fail_reason = NULL, generation = generation + 1, modifier = ?2, gmt_modified = ?3 \
         WHERE workspace_id = ?4 AND deployed_model = ?5 AND status <> 'DELETING' RETURNING {}",
        deployment_columns!()
    )
});

const GET_SQL: &str = concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments WHERE workspace_id = ?1 AND deployed_model = ?2"
);

// Both walk `deployments_by_workspace`: a range scan, backwards for newest first, no sort.
const COUNT_SQL: &str = "SELECT COUNT(*) FROM deployments WHERE workspace_id = ?1";
// The workspace's total rides along on every row (an uncorrelated scalar subquery, evaluated
// once), so a page is one statement on one snapshot, with no transaction round trips.
const LIST_PAGE_SQL: &str = concat!(
    "SELECT (SELECT COUNT(*) FROM deployments WHERE workspace_id = ?1) AS total, ",
    deployment_columns!(),
    " FROM deployments WHERE workspace_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3"
);

/// The update (limits, autoscaling). `?7` says whether autoscaling is given (`?8`..`?12`, all
/// NULL to turn it off); when it is turned on, `capacity` is brought within its bounds in the
/// same statement, and a capacity that moves changes the status as a scale does.
static LIMITS_SQL: LazyLock<String> = LazyLock::new(|| {
    let arms: String = ALL_STATUSES
        .iter()
        .map(|s| format!(" WHEN '{}' THEN '{}'", s.as_str(), s.after_scale().as_str()))
        .collect();
    let clamped =
        "CASE WHEN ?7 AND ?8 IS NOT NULL THEN MAX(?8, MIN(?9, capacity)) ELSE capacity END";
    format!(
        "UPDATE deployments SET rpm_limit = COALESCE(?1, rpm_limit), \
         tpm_limit = COALESCE(?2, tpm_limit), generation = generation + 1, modifier = ?3, \
         gmt_modified = ?4, \
         status = CASE WHEN ({clamped}) <> capacity THEN CASE status{arms} ELSE status END \
             ELSE status END, \
         capacity = {clamped}, \
         autoscale_min_capacity = CASE WHEN ?7 THEN ?8 ELSE autoscale_min_capacity END, \
         autoscale_max_capacity = CASE WHEN ?7 THEN ?9 ELSE autoscale_max_capacity END, \
         autoscale_target_inflight = CASE WHEN ?7 THEN ?10 ELSE autoscale_target_inflight END, \
         autoscale_down_delay_secs = CASE WHEN ?7 THEN ?11 ELSE autoscale_down_delay_secs END, \
         autoscale_zero_after_secs = CASE WHEN ?7 THEN ?12 ELSE autoscale_zero_after_secs END \
         WHERE workspace_id = ?5 AND deployed_model = ?6 \
         AND status <> 'DELETING' RETURNING {}",
        deployment_columns!()
    )
});

// The autoscaler's target: only for the generation it decided on (an API change since wins),
// only while autoscaling is on, within its bounds, and not while the deployment is being
// deleted. No new generation: the reconciler plans the new capacity in the same pass.
const AUTOSCALED_SQL: &str = concat!(
    "UPDATE deployments SET capacity = ?1, gmt_modified = ?2 ",
    "WHERE workspace_id = ?3 AND deployed_model = ?4 AND generation = ?5 ",
    "AND status <> 'DELETING' AND autoscale_max_capacity IS NOT NULL ",
    "AND ?1 BETWEEN autoscale_min_capacity AND autoscale_max_capacity RETURNING ",
    deployment_columns!()
);

// Idempotent: a row already DELETING is returned as it is (no new generation, modifier or
// time), so a repeated or racing delete answers with the same object. SQLite evaluates every
// SET expression against the row as it was, so the CASEs all see the old status.
const DELETE_SQL: &str = concat!(
    "UPDATE deployments SET ",
    "generation = CASE WHEN status = 'DELETING' THEN generation ELSE generation + 1 END, ",
    "modifier = CASE WHEN status = 'DELETING' THEN modifier ELSE ?1 END, ",
    "gmt_modified = CASE WHEN status = 'DELETING' THEN gmt_modified ELSE ?2 END, ",
    "status = 'DELETING' WHERE workspace_id = ?3 AND deployed_model = ?4 RETURNING ",
    deployment_columns!()
);

// The status is taken only for the current generation of a live deployment; the observed
// numbers always are. `gmt_modified` moves only if a visible field differs from what is stored
// (`IS NOT` compares NULLs as values).
const RECORD_STATUS_SQL: &str = "\
UPDATE deployments SET
    status = CASE WHEN generation = ?1 AND status <> 'DELETING' THEN ?2 ELSE status END,
    ready_capacity = ?3,
    fail_reason = ?4,
    status_message = ?5,
    gmt_modified = CASE
        WHEN (CASE WHEN generation = ?1 AND status <> 'DELETING' THEN ?2 ELSE status END)
                 IS NOT status
          OR ready_capacity IS NOT ?3
          OR fail_reason IS NOT ?4
        THEN ?6 ELSE gmt_modified END
WHERE workspace_id = ?7 AND deployed_model = ?8";

/// [`Store`] on SQLite. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if missing) the database at `path`,
    /// switches it to WAL with `synchronous=NORMAL`, foreign keys on and a 5 s busy timeout,
    /// and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        tracing::debug!(path = %path.display(), "opened SQLite store");
        Self::migrated(pool).await
    }

    /// A private in-memory database, for tests. It lives exactly as long as the store: the pool
    /// holds its single connection forever (each in-memory connection is its own database).
    pub async fn open_in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Self::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The row a change returned, or why there is none.
    async fn changed_or_refused(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        row: Option<SqliteRow>,
        refused_when_deleting: bool,
    ) -> Result<Option<Deployment>> {
        match row {
            Some(row) => Ok(Some(deployment_from_row(&row)?)),
            // `DELETING` is terminal: the statement itself refuses to change such a row. Tell
            // that apart from a missing one (the row can only go away after DELETING, so what
            // this read sees is consistent with the refusal).
            None if refused_when_deleting => {
                let exists = sqlx::query(
                    "SELECT 1 FROM deployments WHERE workspace_id = ?1 AND deployed_model = ?2",
                )
                .bind(workspace_id)
                .bind(deployed_model)
                .fetch_optional(&self.pool)
                .await?;
                match exists {
                    Some(_) => Err(StoreError::Deleting(deployed_model.to_owned())),
                    None => Ok(None),
                }
            }
            None => Ok(None),
        }
    }

    /// The underlying pool (diagnostics, query plans in tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// The statements of the methods not above; the methods themselves are shared with the other
// SQL backend (`crate::sql_impl`).
const INSERT_DEPLOYMENT_SQL: &str = concat!(
    "INSERT INTO deployments (workspace_id, deployed_model, model_name, base_model, ",
    "name, plan, model_unit_spec, status, capacity, base_capacity, ready_capacity, ",
    "max_context_length, enable_thinking, rpm_limit, tpm_limit, creator, modifier, ",
    "gmt_create, gmt_modified, generation, autoscale_min_capacity, ",
    "autoscale_max_capacity, autoscale_target_inflight, autoscale_down_delay_secs, ",
    "autoscale_zero_after_secs) ",
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?14, ?15, ?15, ",
    "?16, ?16, 1, ?17, ?18, ?19, ?20, ?21) RETURNING ",
    deployment_columns!()
);
const REMOVE_DEPLOYMENT_SQL: &str =
    "DELETE FROM deployments WHERE workspace_id = ?1 AND deployed_model = ?2 \
             AND status = 'DELETING' AND generation = ?3";
const INSERT_KEY_SQL: &str =
    "INSERT INTO api_keys (id, workspace_id, hash, created, revoked) VALUES (?1, ?2, ?3, ?4, ?5)";
const FIND_KEY_SQL: &str =
    "SELECT id, workspace_id, hash, created, revoked FROM api_keys WHERE hash = ?1 AND revoked = 0";
const LIST_KEYS_SQL: &str =
    "SELECT id, workspace_id, hash, created, revoked FROM api_keys ORDER BY created, rowid";
const REVOKE_KEY_SQL: &str = "UPDATE api_keys SET revoked = 1 WHERE id = ?1";
const PUT_REPLICA_SQL: &str = "INSERT INTO replicas \
             (id, workspace_id, deployed_model, pid, port, started_at, secret, proc_start) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET \
             workspace_id = excluded.workspace_id, deployed_model = excluded.deployed_model, \
             pid = excluded.pid, port = excluded.port, started_at = excluded.started_at, \
             secret = excluded.secret, proc_start = excluded.proc_start";
const REMOVE_REPLICA_SQL: &str = "DELETE FROM replicas WHERE id = ?1";
const LIST_REPLICAS_SQL: &str =
    "SELECT id, workspace_id, deployed_model, pid, port, started_at, secret, proc_start \
             FROM replicas ORDER BY started_at, id";

crate::sql_impl::sql_store_impl!(SqliteStore);

fn deployment_from_row(row: &SqliteRow) -> Result<Deployment> {
    let status: String = column(row, "status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
    Ok(Deployment {
        deployed_model: column(row, "deployed_model")?,
        workspace_id: column(row, "workspace_id")?,
        model_name: column(row, "model_name")?,
        base_model: column(row, "base_model")?,
        name: column(row, "name")?,
        plan: column(row, "plan")?,
        model_unit_spec: column(row, "model_unit_spec")?,
        status,
        capacity: unsigned(row, "capacity")?,
        base_capacity: unsigned(row, "base_capacity")?,
        ready_capacity: unsigned(row, "ready_capacity")?,
        max_context_length: optional_unsigned(row, "max_context_length")?,
        enable_thinking: column(row, "enable_thinking")?,
        rpm_limit: optional_unsigned(row, "rpm_limit")?,
        tpm_limit: optional_unsigned(row, "tpm_limit")?,
        fail_reason: column(row, "fail_reason")?,
        status_message: column(row, "status_message")?,
        creator: column(row, "creator")?,
        modifier: column(row, "modifier")?,
        gmt_create: Timestamp(column(row, "gmt_create")?),
        gmt_modified: Timestamp(column(row, "gmt_modified")?),
        generation: column(row, "generation")?,
        autoscaling: autoscaling_from_row(row)?,
    })
}

fn autoscaling_from_row(row: &SqliteRow) -> Result<Option<Autoscaling>> {
    let Some(max_capacity) = optional_unsigned(row, "autoscale_max_capacity")? else {
        return Ok(None);
    };
    let need = |name: &str| -> Result<u32> {
        optional_unsigned(row, name)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {name}: NULL with autoscaling on")))
    };
    Ok(Some(Autoscaling {
        min_capacity: need("autoscale_min_capacity")?,
        max_capacity,
        target_inflight_per_replica: need("autoscale_target_inflight")?,
        scale_down_delay_secs: need("autoscale_down_delay_secs")?,
        scale_to_zero_after_secs: need("autoscale_zero_after_secs")?,
    }))
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the five autoscaling columns (all NULL for none), in their order.
fn bind_autoscaling<'q>(q: SqliteQuery<'q>, a: Option<&Autoscaling>) -> SqliteQuery<'q> {
    q.bind(a.map(|a| i64::from(a.min_capacity)))
        .bind(a.map(|a| i64::from(a.max_capacity)))
        .bind(a.map(|a| i64::from(a.target_inflight_per_replica)))
        .bind(a.map(|a| i64::from(a.scale_down_delay_secs)))
        .bind(a.map(|a| i64::from(a.scale_to_zero_after_secs)))
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    let hash: Vec<u8> = column(row, "hash")?;
    let hash = KeyHash::try_from(hash.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("api key hash of {} bytes", hash.len())))?;
    Ok(ApiKeyRecord {
        id: column(row, "id")?,
        workspace_id: column(row, "workspace_id")?,
        hash,
        created: Timestamp(column(row, "created")?),
        revoked: column(row, "revoked")?,
    })
}

fn replica_from_row(row: &SqliteRow) -> Result<ReplicaRecord> {
    Ok(ReplicaRecord {
        id: column(row, "id")?,
        workspace_id: column(row, "workspace_id")?,
        deployed_model: column(row, "deployed_model")?,
        pid: unsigned(row, "pid")?,
        port: unsigned(row, "port")?,
        started_at: Timestamp(column(row, "started_at")?),
        secret: column(row, "secret")?,
        proc_start: unsigned(row, "proc_start")?,
    })
}

/// One column, a decoding failure reported as a corrupt row.
fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// An INTEGER column holding an unsigned domain value.
fn unsigned<T: TryFrom<i64>>(row: &SqliteRow, name: &str) -> Result<T> {
    let value: i64 = column(row, name)?;
    T::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("column {name}: {value} is out of range")))
}

/// A nullable INTEGER column holding an unsigned domain value.
fn optional_unsigned<T: TryFrom<i64>>(row: &SqliteRow, name: &str) -> Result<Option<T>> {
    let value: Option<i64> = column(row, name)?;
    value
        .map(|v| {
            T::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("column {name}: {v} is out of range")))
        })
        .transpose()
}

/// A rate limit as a SQLite INTEGER (signed 64-bit); larger values are refused, not wrapped.
fn limit_to_sql(limit: Option<u64>, name: &str) -> Result<Option<i64>> {
    limit
        .map(|v| {
            i64::try_from(v).map_err(|_| {
                StoreError::Database(sqlx::Error::Encode(
                    format!("{name} {v} is larger than a SQLite INTEGER holds").into(),
                ))
            })
        })
        .transpose()
}

/// Paging bounds beyond `i64::MAX` mean "all of them".
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{sample, T0, WS_A};

    /// The query plan's detail lines for `sql`.
    async fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .bind(WS_A)
            .bind("m")
            .bind(0_i64)
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<String, _>("detail")).collect()
    }

    #[tokio::test]
    async fn reads_use_indexes_and_never_sort() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let list = plan(&store, LIST_PAGE_SQL).await;
        assert_eq!(
            list,
            [
                "SEARCH deployments USING INDEX deployments_by_workspace (workspace_id=?)",
                "SCALAR SUBQUERY 1",
                "SEARCH deployments USING COVERING INDEX deployments_by_workspace (workspace_id=?)"
            ]
        );
        let count = plan(&store, COUNT_SQL).await;
        assert_eq!(
            count,
            ["SEARCH deployments USING COVERING INDEX deployments_by_workspace (workspace_id=?)"]
        );
        let get = plan(&store, GET_SQL).await;
        assert_eq!(get.len(), 1, "{get:?}");
        assert!(
            get[0].starts_with("SEARCH deployments USING INDEX sqlite_autoindex_deployments_"),
            "{get:?}"
        );
        assert!(
            get[0].ends_with("(workspace_id=? AND deployed_model=?)"),
            "{get:?}"
        );
    }

    #[test]
    fn scale_sql_follows_after_scale() {
        for status in ALL_STATUSES {
            let arm = format!("WHEN '{status}' THEN '{}'", status.after_scale());
            assert!(SCALE_SQL.contains(&arm), "{arm}");
        }
        assert!(SCALE_SQL.contains("WHEN 'PENDING' THEN 'PENDING'"));
        assert!(SCALE_SQL.contains("WHEN 'RUNNING' THEN 'UPDATING'"));
    }

    #[tokio::test]
    async fn a_row_that_breaks_the_domain_is_corrupt_not_a_panic() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store
            .create_deployment(sample(WS_A, "m", T0))
            .await
            .unwrap();
        // Only a hand-edited database gets here: the schema's CHECKs forbid both.
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(store.pool())
            .await
            .unwrap();
        for (edit, want) in [
            ("status = 'running'", "unknown status"),
            ("status = 'PENDING', capacity = -1", "capacity"),
        ] {
            sqlx::query(&format!("UPDATE deployments SET {edit}"))
                .execute(store.pool())
                .await
                .unwrap();
            match store.get_deployment(WS_A, "m").await {
                Err(StoreError::Corrupt(message)) => assert!(message.contains(want), "{message}"),
                other => panic!("{edit}: expected Corrupt, got {other:?}"),
            }
        }
    }
}
