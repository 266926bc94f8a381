//! The conformance suite every [`Store`] backend must pass, written once.
//!
//! Each case is a public `async fn case<S: Store>(store: &S)` that panics on failure, given a
//! fresh, empty store. [`store_conformance!`](crate::store_conformance) expands to one
//! `#[tokio::test]` per case for a backend, so a new backend is covered by one line:
//!
//! ```ignore
//! mod sqlite_in_memory {
//!     berth_store::store_conformance!(async { SqliteStore::open_in_memory().await.unwrap() });
//! }
//! ```
//!
//! The expression is awaited once per test and may yield the store itself or a
//! `(store, guard)` pair whose guard (a temporary directory, a container) lives as long as the
//! test; see [`Fixture`]. The crate using the macro needs `tokio` (with `macros`) as a
//! dependency.

mod autoscaling;
mod concurrency;
mod deployments;
mod keys;
mod status;

pub use autoscaling::*;
pub use concurrency::*;
pub use deployments::*;
pub use keys::*;
pub use status::*;

use berth_core::{Capacity, Deployment, NewDeployment, Status, Timestamp};

use crate::{Store, StoreError};

/// What a conformance constructor yields: a store, plus whatever must outlive it.
pub trait Fixture: Send + Sync + 'static {
    type Store: Store;
    fn store(&self) -> &Self::Store;
}

impl<S: Store> Fixture for S {
    type Store = S;
    fn store(&self) -> &S {
        self
    }
}

/// A store and a guard (e.g. a `tempfile::TempDir`) dropped after it.
impl<S: Store, G: Send + Sync + 'static> Fixture for (S, G) {
    type Store = S;
    fn store(&self) -> &S {
        &self.0
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh store from `$make`
/// (an expression evaluating to a future whose output implements
/// [`Fixture`](crate::conformance::Fixture)). Invoke it inside a module per backend.
///
/// `store_conformance!(optional $make)` is for a backend that needs a server: `$make` yields an
/// `Option` of a fixture, and each test returns early (having said why) on `None`.
#[macro_export]
macro_rules! store_conformance {
    (optional $make:expr) => {
        $crate::store_conformance!(@all ($make.await));
    };
    ($make:expr) => {
        $crate::store_conformance!(@all (::core::option::Option::Some($make.await)));
    };
    (@all ($get:expr)) => {
        $crate::store_conformance!(@cases ($get)
            create_starts_pending_with_every_field,
            create_conflicts_within_a_workspace,
            same_name_in_two_workspaces,
            get_is_scoped_to_the_workspace,
            list_is_newest_first_with_the_workspace_total,
            list_pages,
            list_order_is_creation_order_after_removals,
            all_deployments_spans_workspaces,
            scale_of_a_pending_deployment_stays_pending,
            scale_of_a_running_deployment_updates_and_clears_fail_reason,
            limits_change_only_what_is_given,
            delete_marks_deleting_and_is_idempotent,
            changes_are_scoped_to_the_workspace,
            record_status_writes_the_current_generation,
            record_status_keeps_status_for_a_stale_generation,
            record_status_never_overrides_deleting,
            record_status_moves_gmt_modified_only_on_visible_change,
            record_status_of_a_missing_deployment_is_false,
            remove_deployment_frees_the_name,
            deleting_is_terminal,
            remove_is_gated_on_deleting_and_generation,
            api_keys_insert_find_list_revoke,
            api_keys_are_unique_by_id_and_hash,
            replicas_put_list_remove,
            concurrent_creates_of_distinct_names_all_succeed,
            concurrent_creates_of_one_name_conflict_all_but_one,
            autoscaling_is_stored_updated_and_turned_off,
            autoscaled_capacity_is_gated,
        );
    };
    (@cases ($get:expr) $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let ::core::option::Option::Some(fixture) = $get else {
                    return;
                };
                $crate::conformance::$case($crate::conformance::Fixture::store(&fixture)).await;
            }
        )+
    };
}

/// Workspaces the cases use.
pub const WS_A: &str = "ws-a";
pub const WS_B: &str = "ws-b";
/// A fixed creation time (2025-06-17T11:00:38.680), well in the past.
pub const T0: Timestamp = Timestamp(1_750_158_038_680);

/// A minimal valid deployment: capacity 2 of base 1, no optional fields.
pub fn sample(workspace_id: &str, deployed_model: &str, now: Timestamp) -> NewDeployment {
    NewDeployment {
        deployed_model: deployed_model.to_owned(),
        workspace_id: workspace_id.to_owned(),
        model_name: "smollm2-135m-instruct".to_owned(),
        base_model: "smollm2-135m-instruct".to_owned(),
        name: None,
        plan: None,
        model_unit_spec: None,
        capacity: Capacity::new(2, 1).expect("valid capacity"),
        base_capacity: 1,
        max_context_length: None,
        enable_thinking: None,
        rpm_limit: None,
        tpm_limit: None,
        autoscaling: None,
        creator: "key-creator".to_owned(),
        now,
    }
}

/// The deployment a store must return for a freshly created `new`.
pub fn expected_created(new: &NewDeployment) -> Deployment {
    Deployment {
        deployed_model: new.deployed_model.clone(),
        workspace_id: new.workspace_id.clone(),
        model_name: new.model_name.clone(),
        base_model: new.base_model.clone(),
        name: new.name.clone(),
        plan: new.plan.clone(),
        model_unit_spec: new.model_unit_spec.clone(),
        status: Status::Pending,
        capacity: new.capacity.get(),
        base_capacity: new.base_capacity,
        ready_capacity: 0,
        max_context_length: new.max_context_length,
        enable_thinking: new.enable_thinking,
        rpm_limit: new.rpm_limit,
        tpm_limit: new.tpm_limit,
        fail_reason: None,
        status_message: None,
        autoscaling: None,
        creator: new.creator.clone(),
        modifier: new.creator.clone(),
        gmt_create: new.now,
        gmt_modified: new.now,
        generation: 1,
    }
}

/// Creates `sample(workspace, name, now)`, panicking on failure.
async fn create<S: Store>(store: &S, workspace_id: &str, name: &str, now: Timestamp) -> Deployment {
    store
        .create_deployment(sample(workspace_id, name, now))
        .await
        .unwrap_or_else(|e| panic!("create {workspace_id}/{name}: {e}"))
}

/// The stored deployment, panicking if it is missing.
async fn get<S: Store>(store: &S, workspace_id: &str, name: &str) -> Deployment {
    store
        .get_deployment(workspace_id, name)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{workspace_id}/{name} is missing"))
}

/// The `deployed_model`s of a list page, in order.
fn names(page: &[Deployment]) -> Vec<&str> {
    page.iter().map(|d| d.deployed_model.as_str()).collect()
}

fn assert_conflict<T: std::fmt::Debug>(result: crate::Result<T>, name: &str) {
    match result {
        Err(StoreError::Conflict(n)) => assert_eq!(n, name),
        other => panic!("expected Conflict({name}), got {other:?}"),
    }
}
