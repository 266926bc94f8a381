//! Cases for API keys and replica records.

use berth_core::{ApiKeyRecord, KeyHash, ReplicaRecord, Timestamp};

use super::{T0, WS_A, WS_B};
use crate::Store;

fn key(id: &str, workspace_id: &str, fill: u8, created: i64) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        workspace_id: workspace_id.to_owned(),
        hash: [fill; 32],
        created: Timestamp(created),
        revoked: false,
    }
}

fn replica(id: &str, deployed_model: &str, pid: u32, port: u16, started_at: i64) -> ReplicaRecord {
    ReplicaRecord {
        id: id.to_owned(),
        workspace_id: WS_A.to_owned(),
        deployed_model: deployed_model.to_owned(),
        pid,
        port,
        started_at: Timestamp(started_at),
        secret: format!("secret-of-{id}"),
        proc_start: u64::from(pid) * 7,
    }
}

/// Keys are found by hash while unrevoked, listed oldest first with revoked ones, and revoking
/// is true for any existing key (again included).
pub async fn api_keys_insert_find_list_revoke<S: Store>(store: &S) {
    assert!(store.list_api_keys().await.unwrap().is_empty());
    let k1 = key("key-1", WS_A, 1, T0.0);
    let k2 = key("key-2", WS_B, 2, T0.0);
    let k0 = key("key-0", WS_A, 3, T0.0 - 1);
    let mut gone = key("key-gone", WS_A, 4, T0.0 + 1);
    gone.revoked = true;
    for k in [&k1, &k2, &k0, &gone] {
        store.insert_api_key(k).await.unwrap();
    }

    assert_eq!(
        store.find_api_key(&k1.hash).await.unwrap(),
        Some(k1.clone())
    );
    assert_eq!(
        store.find_api_key(&k2.hash).await.unwrap(),
        Some(k2.clone())
    );
    assert_eq!(store.find_api_key(&[9; 32]).await.unwrap(), None);
    assert_eq!(
        store.find_api_key(&gone.hash).await.unwrap(),
        None,
        "inserted revoked"
    );
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        [k0.clone(), k1.clone(), k2.clone(), gone.clone()],
        "oldest first, ties in insertion order"
    );

    assert!(store.revoke_api_key("key-1").await.unwrap());
    assert_eq!(store.find_api_key(&k1.hash).await.unwrap(), None);
    assert!(
        store.revoke_api_key("key-1").await.unwrap(),
        "revoking again"
    );
    assert!(!store.revoke_api_key("key-missing").await.unwrap());
    assert_eq!(
        store.find_api_key(&k2.hash).await.unwrap(),
        Some(k2.clone())
    );
    let revoked = ApiKeyRecord {
        revoked: true,
        ..k1
    };
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        [k0, revoked, k2, gone]
    );
}

/// Neither an id nor a hash can be stored twice.
pub async fn api_keys_are_unique_by_id_and_hash<S: Store>(store: &S) {
    let k1 = key("key-1", WS_A, 1, T0.0);
    store.insert_api_key(&k1).await.unwrap();
    let same_id = key("key-1", WS_B, 2, T0.0);
    assert!(store.insert_api_key(&same_id).await.is_err());
    let same_hash: KeyHash = k1.hash;
    let mut other = key("key-2", WS_B, 0, T0.0);
    other.hash = same_hash;
    assert!(store.insert_api_key(&other).await.is_err());
    assert_eq!(
        store.find_api_key(&same_hash).await.unwrap().as_ref(),
        Some(&k1)
    );
    assert_eq!(store.list_api_keys().await.unwrap(), [k1]);
}

/// Replicas are put (insert or replace by id), listed, and removed once.
pub async fn replicas_put_list_remove<S: Store>(store: &S) {
    assert!(store.list_replicas().await.unwrap().is_empty());
    let r1 = replica("r-1", "m", 4242, 9001, T0.0);
    let r2 = replica("r-2", "n", u32::MAX, u16::MAX, T0.0 + 1);
    store.put_replica(&r1).await.unwrap();
    store.put_replica(&r2).await.unwrap();
    let sorted = |mut v: Vec<ReplicaRecord>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    assert_eq!(
        sorted(store.list_replicas().await.unwrap()),
        [r1.clone(), r2.clone()]
    );

    let mut r1b = replica("r-1", "m", 5151, 9002, T0.0 + 2);
    r1b.proc_start = u64::MAX >> 1;
    r1b.secret = "another".to_owned();
    store.put_replica(&r1b).await.unwrap();
    assert_eq!(
        sorted(store.list_replicas().await.unwrap()),
        [r1b, r2.clone()]
    );

    assert!(store.remove_replica("r-1").await.unwrap());
    assert!(!store.remove_replica("r-1").await.unwrap());
    assert!(!store.remove_replica("r-missing").await.unwrap());
    assert_eq!(store.list_replicas().await.unwrap(), [r2]);
}
