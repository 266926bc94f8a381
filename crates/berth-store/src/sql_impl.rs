//! The [`Store`](crate::Store) methods of the SQL backends, written once. SQLite and
//! PostgreSQL differ in their statements (placeholders, booleans, how ties are ordered), not in
//! what a method does with them: each backend module defines the same-named statements
//! (`GET_SQL`, `INSERT_KEY_SQL`, ...) and row helpers (`deployment_from_row`, ...) and invokes
//! [`sql_store_impl!`] for its store type, whose names resolve in that module.

macro_rules! sql_store_impl {
    ($store:ty) => {
        #[async_trait]
        impl Store for $store {
            async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
                let inserted = sqlx::query(INSERT_DEPLOYMENT_SQL)
                    .bind(&new.workspace_id)
                    .bind(&new.deployed_model)
                    .bind(&new.model_name)
                    .bind(&new.base_model)
                    .bind(&new.name)
                    .bind(&new.plan)
                    .bind(&new.model_unit_spec)
                    .bind(Status::Pending.as_str())
                    .bind(i64::from(new.capacity.get()))
                    .bind(i64::from(new.base_capacity))
                    .bind(new.max_context_length.map(i64::from))
                    .bind(new.enable_thinking)
                    .bind(limit_to_sql(new.rpm_limit, "rpm_limit")?)
                    .bind(limit_to_sql(new.tpm_limit, "tpm_limit")?)
                    .bind(&new.creator)
                    .bind(new.now.millis());
                let inserted = bind_autoscaling(inserted, new.autoscaling.as_ref())
                    .fetch_one(&self.pool)
                    .await;
                match inserted {
                    Ok(row) => deployment_from_row(&row),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        Err(StoreError::Conflict(new.deployed_model))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_deployment(
                &self,
                workspace_id: &str,
                deployed_model: &str,
            ) -> Result<Option<Deployment>> {
                let row = sqlx::query(GET_SQL)
                    .bind(workspace_id)
                    .bind(deployed_model)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(deployment_from_row).transpose()
            }

            async fn list_deployments(
                &self,
                workspace_id: &str,
                offset: u64,
                limit: u64,
            ) -> Result<(Vec<Deployment>, u64)> {
                let rows = sqlx::query(LIST_PAGE_SQL)
                    .bind(workspace_id)
                    .bind(saturating_i64(limit))
                    .bind(saturating_i64(offset))
                    .fetch_all(&self.pool)
                    .await?;
                let total: i64 = match rows.first() {
                    Some(row) => column(row, "total")?,
                    // A page past the end carries no rows to read the total from.
                    None => {
                        sqlx::query_scalar(COUNT_SQL)
                            .bind(workspace_id)
                            .fetch_one(&self.pool)
                            .await?
                    }
                };
                let page = rows
                    .iter()
                    .map(deployment_from_row)
                    .collect::<Result<Vec<_>>>()?;
                let total = u64::try_from(total)
                    .map_err(|_| StoreError::Corrupt(format!("negative count {total}")))?;
                Ok((page, total))
            }

            async fn all_deployments(&self) -> Result<Vec<Deployment>> {
                let sql = concat!(
                    "SELECT ",
                    deployment_columns!(),
                    " FROM deployments ORDER BY seq"
                );
                let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
                rows.iter().map(deployment_from_row).collect()
            }

            async fn change_deployment(
                &self,
                workspace_id: &str,
                deployed_model: &str,
                change: DesiredChange,
                modifier: &str,
                now: Timestamp,
            ) -> Result<Option<Deployment>> {
                let refused_when_deleting = !matches!(change, DesiredChange::Delete);
                let query = match change {
                    DesiredChange::Scale { capacity } => sqlx::query(SCALE_SQL.as_str())
                        .bind(i64::from(capacity))
                        .bind(modifier)
                        .bind(now.millis()),
                    DesiredChange::Limits {
                        rpm_limit,
                        tpm_limit,
                        autoscaling,
                    } => {
                        let q = sqlx::query(LIMITS_SQL.as_str())
                            .bind(limit_to_sql(rpm_limit, "rpm_limit")?)
                            .bind(limit_to_sql(tpm_limit, "tpm_limit")?)
                            .bind(modifier)
                            .bind(now.millis())
                            .bind(workspace_id)
                            .bind(deployed_model)
                            .bind(autoscaling.is_some());
                        let row = bind_autoscaling(q, autoscaling.flatten().as_ref())
                            .fetch_optional(&self.pool)
                            .await?;
                        return self
                            .changed_or_refused(workspace_id, deployed_model, row, true)
                            .await;
                    }
                    DesiredChange::Delete => {
                        sqlx::query(DELETE_SQL).bind(modifier).bind(now.millis())
                    }
                };
                let row = query
                    .bind(workspace_id)
                    .bind(deployed_model)
                    .fetch_optional(&self.pool)
                    .await?;
                self.changed_or_refused(workspace_id, deployed_model, row, refused_when_deleting)
                    .await
            }

            async fn set_autoscaled_capacity(
                &self,
                workspace_id: &str,
                deployed_model: &str,
                generation: i64,
                capacity: u32,
            ) -> Result<Option<Deployment>> {
                let row = sqlx::query(AUTOSCALED_SQL)
                    .bind(i64::from(capacity))
                    .bind(Timestamp::now().millis())
                    .bind(workspace_id)
                    .bind(deployed_model)
                    .bind(generation)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(deployment_from_row).transpose()
            }

            async fn record_status(
                &self,
                workspace_id: &str,
                deployed_model: &str,
                observed: &ObservedStatus,
            ) -> Result<bool> {
                let done = sqlx::query(RECORD_STATUS_SQL)
                    .bind(observed.generation)
                    .bind(observed.status.as_str())
                    .bind(i64::from(observed.ready_capacity))
                    .bind(&observed.fail_reason)
                    .bind(&observed.status_message)
                    .bind(Timestamp::now().millis())
                    .bind(workspace_id)
                    .bind(deployed_model)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn remove_deployment(
                &self,
                workspace_id: &str,
                deployed_model: &str,
                generation: i64,
            ) -> Result<bool> {
                let done = sqlx::query(REMOVE_DEPLOYMENT_SQL)
                    .bind(workspace_id)
                    .bind(deployed_model)
                    .bind(generation)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
                sqlx::query(INSERT_KEY_SQL)
                    .bind(&key.id)
                    .bind(&key.workspace_id)
                    .bind(&key.hash[..])
                    .bind(key.created.millis())
                    .bind(key.revoked)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
                let row = sqlx::query(FIND_KEY_SQL)
                    .bind(&hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(api_key_from_row).transpose()
            }

            async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
                // Ties between keys created in the same millisecond: insertion order (in the statement).
                let rows = sqlx::query(LIST_KEYS_SQL).fetch_all(&self.pool).await?;
                rows.iter().map(api_key_from_row).collect()
            }

            async fn revoke_api_key(&self, id: &str) -> Result<bool> {
                let done = sqlx::query(REVOKE_KEY_SQL)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn put_replica(&self, replica: &ReplicaRecord) -> Result<()> {
                sqlx::query(PUT_REPLICA_SQL)
                    .bind(&replica.id)
                    .bind(&replica.workspace_id)
                    .bind(&replica.deployed_model)
                    .bind(i64::from(replica.pid))
                    .bind(i64::from(replica.port))
                    .bind(replica.started_at.millis())
                    .bind(&replica.secret)
                    .bind(i64::try_from(replica.proc_start).map_err(|_| {
                        StoreError::Corrupt(format!(
                            "proc_start {} out of range",
                            replica.proc_start
                        ))
                    })?)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn remove_replica(&self, id: &str) -> Result<bool> {
                let done = sqlx::query(REMOVE_REPLICA_SQL)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
                let rows = sqlx::query(LIST_REPLICAS_SQL).fetch_all(&self.pool).await?;
                rows.iter().map(replica_from_row).collect()
            }
        }
    };
}

pub(crate) use sql_store_impl;
