//! The lock's holder metadata. The lock's key holds the owner token (release and extend
//! compare it; Go's Mutex layout leaves the value to us), so its metadata lives beside it at
//! `<prefix>\0meta/<name>/<lease id in hex>`, on the same lease, put in the transaction that
//! queues the key and deleted in the one that deletes it. A lock name holds no control
//! character, so no lock's queue prefix (`<prefix><name>/`) and no listing prefix covers those
//! keys. A lock key found without metadata on its lease (put by `etcdctl lock` or Go's Mutex)
//! has none. The other primitives keep their metadata in their own key (`grants.rs`).

use lock_core::{ExtendOutcome, Lease, Metadata, Result};

use crate::backend::{EtcdBackend, Held};
use crate::rpc::pb::{Compare, RangeRequest, RequestOp, TxnRequest};
use crate::rpc::KeyValue;

impl EtcdBackend {
    /// Where the metadata of the lock's queue key `queue_key` lives.
    pub(crate) fn meta_key(&self, queue_key: &str) -> String {
        let p = self.inner.opts.prefix.as_str();
        let rest = queue_key.strip_prefix(p).unwrap_or(queue_key);
        format!("{p}\0meta/{rest}")
    }

    /// The metadata of the lock holder whose key is `kv`, if it left any on its lease.
    pub(crate) async fn lock_metadata(&self, kv: &KeyValue) -> Result<Option<Metadata>> {
        let key = self.meta_key(&String::from_utf8_lossy(&kv.key));
        let r = self.call("get", || self.client().range(RangeRequest::key(key.as_str()))).await?;
        Ok(r.kvs
            .first()
            .filter(|m| m.lease == kv.lease)
            .and_then(|m| std::str::from_utf8(&m.value).ok())
            .and_then(Metadata::decode))
    }

    /// Replaces the metadata of our grant of the lock, in one transaction that compares the
    /// lock key's owner token.
    pub(crate) async fn rewrite_lock_metadata(
        &self,
        lease: &Lease,
        metadata: &Metadata,
    ) -> Result<ExtendOutcome> {
        let found = match lease.backend_data::<Held>() {
            Some(h) => Some((h.etcd_key.clone(), h.lease().0)),
            None => self.find_key(&self.etcd_prefix(lease.key()), lease.owner()).await?,
        };
        let Some((key, lease_id)) = found else { return Ok(ExtendOutcome::NotHeld) };
        let txn = TxnRequest::when([Compare::value_is(key.as_str(), lease.owner().to_string())])
            .and_then([RequestOp::put(self.meta_key(&key), metadata.encode(), lease_id)]);
        if self.call("txn", || self.client().txn(txn.clone())).await?.succeeded {
            Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() })
        } else {
            Ok(ExtendOutcome::NotHeld)
        }
    }
}
