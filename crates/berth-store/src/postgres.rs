//! The PostgreSQL backend of [`Store`], chosen by a `postgres://` database URL.
//!
//! The same semantics as [`SqliteStore`](crate::SqliteStore), statement for statement: every
//! trait method is a single SQL statement (a list page carries its total on the same snapshot),
//! so each is atomic without application-level locking. The schema has its own history in
//! `migrations-postgres/`, applied by [`PostgresStore::connect`].

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use berth_core::{
    ApiKeyRecord, Autoscaling, Deployment, KeyHash, NewDeployment, ReplicaRecord, Status, Timestamp,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Decode, Postgres, Row, Type};

use crate::sqlite::{saturating_i64, ALL_STATUSES};
use crate::{DesiredChange, ObservedStatus, Result, Store, StoreError};

/// The schema, embedded at build time from `migrations-postgres/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations-postgres");

/// Connections in the pool unless told otherwise: enough for the API's writes beside the
/// reconciler's, few enough for several processes on a server's default 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// How long getting a connection (the server included) may take before a statement fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `CASE status WHEN .. THEN ..` arms written out from [`Status::after_scale`], so the rule
/// stays in `berth-core` while a change remains one atomic statement.
fn after_scale_arms() -> String {
    ALL_STATUSES
        .iter()
        .map(|s| format!(" WHEN '{}' THEN '{}'", s.as_str(), s.after_scale().as_str()))
        .collect()
}

static SCALE_SQL: LazyLock<String> = LazyLock::new(|| {
    let arms = after_scale_arms();
    format!(
        "UPDATE deployments SET capacity = $1, status = CASE status{arms} ELSE status END, \
         fail_reason = NULL, generation = generation + 1, modifier = $2, gmt_modified = $3 \
         WHERE workspace_id = $4 AND deployed_model = $5 AND status <> 'DELETING' RETURNING {}",
        deployment_columns!()
    )
});

const GET_SQL: &str = concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments WHERE workspace_id = $1 AND deployed_model = $2"
);

const COUNT_SQL: &str = "SELECT COUNT(*) FROM deployments WHERE workspace_id = $1";
// The workspace's total rides along on every row (an uncorrelated scalar subquery, evaluated
// once), so a page is one statement on one snapshot.
const LIST_PAGE_SQL: &str = concat!(
    "SELECT (SELECT COUNT(*) FROM deployments WHERE workspace_id = $1) AS total, ",
    deployment_columns!(),
    " FROM deployments WHERE workspace_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"
);

/// The update (limits, autoscaling). `$7` says whether autoscaling is given (`$8`..`$12`, all
/// NULL to turn it off); when it is turned on, `capacity` is brought within its bounds in the
/// same statement, and a capacity that moves changes the status as a scale does.
static LIMITS_SQL: LazyLock<String> = LazyLock::new(|| {
    let arms = after_scale_arms();
    let clamped =
        "CASE WHEN $7 AND $8 IS NOT NULL THEN GREATEST($8, LEAST($9, capacity)) ELSE capacity END";
    format!(
        "UPDATE deployments SET rpm_limit = COALESCE($1, rpm_limit), \
         tpm_limit = COALESCE($2, tpm_limit), generation = generation + 1, modifier = $3, \
         gmt_modified = $4, \
         status = CASE WHEN ({clamped}) <> capacity THEN CASE status{arms} ELSE status END \
             ELSE status END, \
         capacity = {clamped}, \
         autoscale_min_capacity = CASE WHEN $7 THEN $8 ELSE autoscale_min_capacity END, \
         autoscale_max_capacity = CASE WHEN $7 THEN $9 ELSE autoscale_max_capacity END, \
         autoscale_target_inflight = CASE WHEN $7 THEN $10 ELSE autoscale_target_inflight END, \
         autoscale_down_delay_secs = CASE WHEN $7 THEN $11 ELSE autoscale_down_delay_secs END, \
         autoscale_zero_after_secs = CASE WHEN $7 THEN $12 ELSE autoscale_zero_after_secs END \
         WHERE workspace_id = $5 AND deployed_model = $6 \
         AND status <> 'DELETING' RETURNING {}",
        deployment_columns!()
    )
});

// The autoscaler's target: only for the generation it decided on, only while autoscaling is on,
// within its bounds, and not while the deployment is being deleted. No new generation.
const AUTOSCALED_SQL: &str = concat!(
    "UPDATE deployments SET capacity = $1, gmt_modified = $2 ",
    "WHERE workspace_id = $3 AND deployed_model = $4 AND generation = $5 ",
    "AND status <> 'DELETING' AND autoscale_max_capacity IS NOT NULL ",
    "AND $1 BETWEEN autoscale_min_capacity AND autoscale_max_capacity RETURNING ",
    deployment_columns!()
);

// Idempotent: a row already DELETING is returned as it is (no new generation, modifier or
// time). PostgreSQL evaluates every SET expression against the row as it was, so the CASEs all
// see the old status.
const DELETE_SQL: &str = concat!(
    "UPDATE deployments SET ",
    "generation = CASE WHEN status = 'DELETING' THEN generation ELSE generation + 1 END, ",
    "modifier = CASE WHEN status = 'DELETING' THEN modifier ELSE $1 END, ",
    "gmt_modified = CASE WHEN status = 'DELETING' THEN gmt_modified ELSE $2 END, ",
    "status = 'DELETING' WHERE workspace_id = $3 AND deployed_model = $4 RETURNING ",
    deployment_columns!()
);

// The status is taken only for the current generation of a live deployment; the observed
// numbers always are. `gmt_modified` moves only if a visible field differs from what is stored.
const RECORD_STATUS_SQL: &str = "\
UPDATE deployments SET
    status = CASE WHEN generation = $1 AND status <> 'DELETING' THEN $2 ELSE status END,
    ready_capacity = $3,
    fail_reason = $4,
    status_message = $5,
    gmt_modified = CASE
        WHEN (CASE WHEN generation = $1 AND status <> 'DELETING' THEN $2 ELSE status END)
                 IS DISTINCT FROM status
          OR ready_capacity IS DISTINCT FROM $3
          OR fail_reason IS DISTINCT FROM $4
        THEN $6 ELSE gmt_modified END
WHERE workspace_id = $7 AND deployed_model = $8";

/// [`Store`] on PostgreSQL. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with
    /// [`DEFAULT_MAX_CONNECTIONS`] and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`connect`](Self::connect) with a pool of at most `max_connections`.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        tracing::debug!(url = %redacted_url(url), "opened PostgreSQL store");
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The row a change returned, or why there is none.
    async fn changed_or_refused(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        row: Option<PgRow>,
        refused_when_deleting: bool,
    ) -> Result<Option<Deployment>> {
        match row {
            Some(row) => Ok(Some(deployment_from_row(&row)?)),
            // `DELETING` is terminal: the statement itself refuses to change such a row. Tell
            // that apart from a missing one (the row can only go away after DELETING).
            None if refused_when_deleting => {
                let exists = sqlx::query(
                    "SELECT 1 FROM deployments WHERE workspace_id = $1 AND deployed_model = $2",
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

/// `url` with its password (if any) replaced by `***`, for logs and error messages. A URL that
/// cannot be taken apart is not shown at all.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<database url>".to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; userinfo is what precedes its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Query parameters may carry a password too (`?password=`): never shown.
    let tail = tail
        .split_once('?')
        .map_or_else(|| tail.to_owned(), |(path, _)| format!("{path}?…"));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return format!("{scheme}://{authority}{tail}");
    };
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{shown}@{host}{tail}")
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
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $13, $14, $15, $15, ",
    "$16, $16, 1, $17, $18, $19, $20, $21) RETURNING ",
    deployment_columns!()
);
const REMOVE_DEPLOYMENT_SQL: &str =
    "DELETE FROM deployments WHERE workspace_id = $1 AND deployed_model = $2 \
             AND status = 'DELETING' AND generation = $3";
const INSERT_KEY_SQL: &str = "INSERT INTO api_keys (id, workspace_id, hash, created, revoked) \
             VALUES ($1, $2, $3, $4, $5)";
const FIND_KEY_SQL: &str = "SELECT id, workspace_id, hash, created, revoked FROM api_keys \
             WHERE hash = $1 AND NOT revoked";
const LIST_KEYS_SQL: &str =
    "SELECT id, workspace_id, hash, created, revoked FROM api_keys ORDER BY created, seq";
const REVOKE_KEY_SQL: &str = "UPDATE api_keys SET revoked = TRUE WHERE id = $1";
const PUT_REPLICA_SQL: &str = "INSERT INTO replicas \
             (id, workspace_id, deployed_model, pid, port, started_at, secret, proc_start) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
             workspace_id = excluded.workspace_id, deployed_model = excluded.deployed_model, \
             pid = excluded.pid, port = excluded.port, started_at = excluded.started_at, \
             secret = excluded.secret, proc_start = excluded.proc_start";
const REMOVE_REPLICA_SQL: &str = "DELETE FROM replicas WHERE id = $1";
const LIST_REPLICAS_SQL: &str =
    "SELECT id, workspace_id, deployed_model, pid, port, started_at, secret, proc_start \
             FROM replicas ORDER BY started_at, id";

crate::sql_impl::sql_store_impl!(PostgresStore);

fn deployment_from_row(row: &PgRow) -> Result<Deployment> {
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

fn autoscaling_from_row(row: &PgRow) -> Result<Option<Autoscaling>> {
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

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the five autoscaling columns (all NULL for none), in their order.
fn bind_autoscaling<'q>(q: PgQuery<'q>, a: Option<&Autoscaling>) -> PgQuery<'q> {
    q.bind(a.map(|a| i64::from(a.min_capacity)))
        .bind(a.map(|a| i64::from(a.max_capacity)))
        .bind(a.map(|a| i64::from(a.target_inflight_per_replica)))
        .bind(a.map(|a| i64::from(a.scale_down_delay_secs)))
        .bind(a.map(|a| i64::from(a.scale_to_zero_after_secs)))
}

fn api_key_from_row(row: &PgRow) -> Result<ApiKeyRecord> {
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

fn replica_from_row(row: &PgRow) -> Result<ReplicaRecord> {
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
fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// A BIGINT column holding an unsigned domain value.
fn unsigned<T: TryFrom<i64>>(row: &PgRow, name: &str) -> Result<T> {
    let value: i64 = column(row, name)?;
    T::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("column {name}: {value} is out of range")))
}

/// A nullable BIGINT column holding an unsigned domain value.
fn optional_unsigned<T: TryFrom<i64>>(row: &PgRow, name: &str) -> Result<Option<T>> {
    let value: Option<i64> = column(row, name)?;
    value
        .map(|v| {
            T::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("column {name}: {v} is out of range")))
        })
        .transpose()
}

/// A rate limit as a BIGINT (signed 64-bit); larger values are refused, not wrapped.
fn limit_to_sql(limit: Option<u64>, name: &str) -> Result<Option<i64>> {
    limit
        .map(|v| {
            i64::try_from(v).map_err(|_| {
                StoreError::Database(sqlx::Error::Encode(
                    format!("{name} {v} is larger than a BIGINT holds").into(),
                ))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_are_recognised() {
        for url in [
            "postgres://h/db",
            "postgresql://u:p@h:5432/db",
            "POSTGRES://h",
        ] {
            assert!(is_postgres_url(url), "{url}");
        }
        for url in ["sqlite://x.db", "/var/lib/berth.db", "postgres:/h", ""] {
            assert!(!is_postgres_url(url), "{url}");
        }
    }

    #[test]
    fn redaction_hides_every_password() {
        let cases = [
            (
                "postgres://berth:s3cret@127.0.0.1:5432/postgres",
                "postgres://berth:***@127.0.0.1:5432/postgres",
            ),
            ("postgres://berth@db/x", "postgres://berth@db/x"),
            ("postgres://db:5432/x", "postgres://db:5432/x"),
            ("postgres://u:p@w@db/x", "postgres://u:***@db/x"),
            ("postgres://db/x?password=s3cret", "postgres://db/x?…"),
            (
                "postgres://u:s3cret@db?sslmode=require",
                "postgres://u:***@db?…",
            ),
            ("no url s3cret", "<database url>"),
        ];
        for (url, want) in cases {
            let shown = redacted_url(url);
            assert_eq!(shown, want, "{url}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn scale_sql_follows_after_scale() {
        for status in ALL_STATUSES {
            let arm = format!("WHEN '{status}' THEN '{}'", status.after_scale());
            assert!(SCALE_SQL.contains(&arm), "{arm}");
            assert!(LIMITS_SQL.contains(&arm), "{arm}");
        }
    }
}
