//! Durable server state beside the log: subscription settings, positions (queue floors, cursor
//! commits, DLQ redrive cursors) and per-event delivery state for queue subscriptions.
//!
//! It lives in one redb file (`state.redb`), a copy-on-write B-tree with checksummed commit
//! slots. Every [`Store::apply`] is one transaction committed with `Durability::Immediate`,
//! i.e. fsynced before it returns, so an ack or commit is durable before it is answered.
//!
//! Source checkpoints (a pipeline's cursor or watermark) live in their own table, keyed by
//! pipeline name, each written in its own durable transaction.
//!
//! Keys are byte strings `topic 0x00 name 0x00 [partition u32 BE [offset u64 BE]]`, so one
//! subscription's rows form one contiguous range.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const SUBSCRIPTIONS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("subscriptions");
const POSITIONS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("positions");
const SLOTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("slots");
const CHECKPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checkpoints");
const REGISTRY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registry");

/// Largest source checkpoint (a cursor or watermark) stored.
pub const CHECKPOINT_BYTES_MAX: usize = 64 * 1024;

/// Longest error text kept with a delivery.
pub const ERROR_BYTES_MAX: usize = 1024;

/// A state-store failure (I/O, or a damaged file).
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// What is remembered about one delivered event of a queue subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// Deliveries so far.
    pub attempts: u32,
    /// 0 delivered or waiting, 1 acked, 2 dead-lettered.
    pub state: u8,
    /// Not to be redelivered before this time (ms since the epoch).
    pub not_before: i64,
    /// The last error a consumer gave, if any.
    pub last_error: Option<String>,
}

impl SlotRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.push(self.state);
        out.extend_from_slice(&self.not_before.to_be_bytes());
        if let Some(e) = &self.last_error {
            let mut end = e.len().min(ERROR_BYTES_MAX);
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&e.as_bytes()[..end]);
        }
        out
    }

    fn decode(b: &[u8]) -> Option<SlotRecord> {
        if b.len() < 13 {
            return None;
        }
        Some(SlotRecord {
            attempts: u32::from_be_bytes(b[0..4].try_into().ok()?),
            state: b[4],
            not_before: i64::from_be_bytes(b[5..13].try_into().ok()?),
            last_error: (b.len() > 13).then(|| String::from_utf8_lossy(&b[13..]).into_owned()),
        })
    }
}

/// One change to the state; a list of them is applied atomically.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create or replace a subscription's settings.
    PutSubscription {
        /// `topic 0 name` key from [`sub_key`].
        key: Vec<u8>,
        /// Encoded settings.
        settings: Vec<u8>,
    },
    /// Delete a subscription and every row under it.
    DeleteSubscription {
        /// `topic 0 name` key.
        key: Vec<u8>,
    },
    /// Set a position (floor or commit) for a partition.
    SetPosition {
        /// From [`partition_key`].
        key: Vec<u8>,
        /// The offset.
        offset: u64,
    },
    /// Create or replace a delivery slot.
    PutSlot {
        /// From [`slot_key`].
        key: Vec<u8>,
        /// The slot.
        slot: SlotRecord,
    },
    /// Remove a delivery slot.
    DeleteSlot {
        /// From [`slot_key`].
        key: Vec<u8>,
    },
}

/// `topic 0 name`.
#[must_use]
pub fn sub_key(topic: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + name.len() + 1);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `topic 0 name 0 partition`.
#[must_use]
pub fn partition_key(topic: &str, name: &str, partition: u32) -> Vec<u8> {
    let mut k = sub_key(topic, name);
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `topic 0 name 0 partition offset`.
#[must_use]
pub fn slot_key(topic: &str, name: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = partition_key(topic, name, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The range of keys under `prefix 0`.
fn under(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = prefix.to_vec();
    lo.push(0);
    let mut hi = prefix.to_vec();
    hi.push(1);
    (lo, hi)
}

/// A stored subscription: its `topic 0 name` key and encoded settings.
pub type StoredSubscription = (Vec<u8>, Vec<u8>);

/// The state store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens or creates the store at `path`.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be opened or is damaged.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SUBSCRIPTIONS).map_err(err)?;
        txn.open_table(POSITIONS).map_err(err)?;
        txn.open_table(SLOTS).map_err(err)?;
        txn.open_table(CHECKPOINTS).map_err(err)?;
        txn.open_table(REGISTRY).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Applies `writes` atomically and durably (fsynced before returning).
    ///
    /// # Errors
    /// [`StoreError`]; then nothing was applied.
    pub fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut subs = txn.open_table(SUBSCRIPTIONS).map_err(err)?;
            let mut positions = txn.open_table(POSITIONS).map_err(err)?;
            let mut slots = txn.open_table(SLOTS).map_err(err)?;
            for w in writes {
                match w {
                    Write::PutSubscription { key, settings } => {
                        subs.insert(key.as_slice(), settings.as_slice())
                            .map_err(err)?;
                    }
                    Write::DeleteSubscription { key } => {
                        subs.remove(key.as_slice()).map_err(err)?;
                        let (lo, hi) = under(key);
                        positions
                            .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                            .map_err(err)?;
                        slots
                            .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                            .map_err(err)?;
                    }
                    Write::SetPosition { key, offset } => {
                        positions.insert(key.as_slice(), offset).map_err(err)?;
                    }
                    Write::PutSlot { key, slot } => {
                        slots
                            .insert(key.as_slice(), slot.encode().as_slice())
                            .map_err(err)?;
                    }
                    Write::DeleteSlot { key } => {
                        slots.remove(key.as_slice()).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// Every subscription: `(key, settings)`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SUBSCRIPTIONS).map_err(err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A source's checkpoint, if one was stored.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CHECKPOINTS).map_err(err)?;
        Ok(table.get(name).map_err(err)?.map(|v| v.value().to_vec()))
    }

    /// Stores a source's checkpoint durably (fsynced before returning).
    ///
    /// # Errors
    /// [`StoreError`], also for a value over [`CHECKPOINT_BYTES_MAX`]; then nothing changed.
    pub fn put_checkpoint(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > CHECKPOINT_BYTES_MAX {
            return Err(StoreError(format!(
                "checkpoint of {name:?} is {} bytes, over the limit of {CHECKPOINT_BYTES_MAX}",
                value.len()
            )));
        }
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(CHECKPOINTS)
            .map_err(err)?
            .insert(name, value)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Every row of the schema registry's table (the registry keeps its own key scheme).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn registry_rows(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(REGISTRY).map_err(err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes (`Some`) and deletes (`None`) registry rows in one durable transaction.
    ///
    /// # Errors
    /// [`StoreError`]; then nothing was applied.
    pub fn registry_apply(&self, rows: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(REGISTRY).map_err(err)?;
            for (key, value) in rows {
                match value {
                    Some(v) => {
                        table.insert(key.as_str(), v.as_slice()).map_err(err)?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// A position, if set.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn position(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(POSITIONS).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value()))
    }

    /// Every slot of one partition of a subscription, by offset.
    ///
    /// # Errors
    /// [`StoreError`], also for a slot that does not decode.
    pub fn slots(&self, partition_key: &[u8]) -> Result<Vec<(u64, SlotRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SLOTS).map_err(err)?;
        let lo = partition_key.to_vec();
        let mut hi = partition_key.to_vec();
        hi.extend_from_slice(&[0xff; 9]);
        let mut out = Vec::new();
        for item in table.range(lo.as_slice()..hi.as_slice()).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let k = k.value();
            let offset = k
                .get(partition_key.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError(format!("bad slot key of {} bytes", k.len())))?;
            let slot = SlotRecord::decode(v.value())
                .ok_or_else(|| StoreError("bad slot record".into()))?;
            out.push((offset, slot));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen_and_deleting_a_subscription_removes_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let slot = SlotRecord {
            attempts: 2,
            state: 0,
            not_before: 5,
            last_error: Some("boom".into()),
        };
        {
            let s = Store::open(&path).unwrap();
            s.apply(&[
                Write::PutSubscription {
                    key: sub_key("t", "a"),
                    settings: b"{}".to_vec(),
                },
                Write::PutSubscription {
                    key: sub_key("t", "ab"),
                    settings: b"{}".to_vec(),
                },
                Write::SetPosition {
                    key: partition_key("t", "a", 1),
                    offset: 7,
                },
                Write::SetPosition {
                    key: partition_key("t", "ab", 1),
                    offset: 9,
                },
                Write::PutSlot {
                    key: slot_key("t", "a", 1, 8),
                    slot: slot.clone(),
                },
                Write::PutSlot {
                    key: slot_key("t", "ab", 1, 9),
                    slot: slot.clone(),
                },
            ])
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.subscriptions().unwrap().len(), 2);
        assert_eq!(s.position(&partition_key("t", "a", 1)).unwrap(), Some(7));
        assert_eq!(
            s.slots(&partition_key("t", "a", 1)).unwrap(),
            [(8, slot.clone())]
        );
        s.apply(&[Write::DeleteSubscription {
            key: sub_key("t", "a"),
        }])
        .unwrap();
        assert_eq!(s.position(&partition_key("t", "a", 1)).unwrap(), None);
        assert!(s.slots(&partition_key("t", "a", 1)).unwrap().is_empty());
        // The neighbour whose name shares a prefix is untouched.
        assert_eq!(s.position(&partition_key("t", "ab", 1)).unwrap(), Some(9));
        assert_eq!(s.slots(&partition_key("t", "ab", 1)).unwrap().len(), 1);
    }

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let slot = SlotRecord {
            attempts: 1,
            state: 0,
            not_before: 0,
            last_error: Some("é".repeat(ERROR_BYTES_MAX)),
        };
        let back = SlotRecord::decode(&slot.encode()).unwrap();
        assert!(back.last_error.unwrap().len() <= ERROR_BYTES_MAX);
    }
}
