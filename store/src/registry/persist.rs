//! How the registry is kept durable, separated from what it means.
//!
//! The registry's state lives in memory (`Data`, read under a brief lock by every
//! authentication); a [`Backend`] is the durable truth beside it and the way changes made by
//! other writers (another process on the same data directory today; other cluster nodes
//! through PostgreSQL later, issue 13) arrive. Changes travel as [`Tx`]s: each is a list of
//! [`Op`]s that are applied all together or not at all, and each op carries the *whole* new
//! state of one entity (an upsert), so applying a transaction twice changes nothing.
//!
//! A PostgreSQL backend maps this one to one: `begin` takes an advisory lock and reads the
//! rows changed since the last sequence number it saw, `commit` upserts the ops' rows in one
//! SQL transaction per [`Tx`] and releases the lock, `poll` reads rows past the last sequence
//! number, `compact` does nothing.

use serde::{Deserialize, Serialize};

use super::{Credential, Device};
use crate::Result;

/// One change to one entity, carrying its whole new state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    /// A device, as it is now (assignments, revocation, current secret's hash).
    Device(Device),
    /// A credential, keyed by the SHA-256 of its token.
    Credential {
        /// SHA-256 of the token, hex.
        hash: String,
        /// The credential as it is now.
        credential: Credential,
    },
    /// A patient's care team.
    CareTeam {
        /// Patient.
        patient_id: String,
        /// Team.
        team: String,
    },
    /// A credential's last successful use (by credential id); only ever moves forward.
    LastUsed {
        /// Credential id.
        id: String,
        /// UTC micros.
        at_us: i64,
    },
    /// When a device's readings were last stored; only ever moves forward.
    Seen {
        /// Device id.
        device_id: String,
        /// UTC micros.
        at_us: i64,
    },
}

/// Ops applied all together or not at all (one enrolment, one revocation, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Tx {
    /// The ops, in order.
    pub ops: Vec<Op>,
}

impl Tx {
    /// A transaction of these ops.
    pub fn of(ops: Vec<Op>) -> Tx {
        Tx { ops }
    }
}

/// What other writers committed since this backend last looked.
#[derive(Debug)]
pub(crate) enum Changes {
    /// Nothing new.
    None,
    /// Transactions to apply on top of the current state, in commit order.
    Append(Vec<Tx>),
    /// The history was rewritten (compacted) elsewhere: this is the whole state; start over.
    Reload(Vec<Tx>),
}

/// The durable side of the registry.
///
/// Writers are serialised: `begin` waits for every other writer (threads of this process are
/// serialised by the registry's own mutex around the backend) and answers what they did;
/// `commit` or `abort` ends the write. Nothing here is ever called with the in-memory state's
/// lock held, so authentication never waits on a disk.
pub(crate) trait Backend: Send + std::fmt::Debug {
    /// Starts a write: waits for other writers, returns their changes since the last look.
    fn begin(&mut self) -> Result<Changes>;
    /// Makes the transactions durable (each all or nothing) and ends the write. On an error
    /// nothing of them may be applied.
    fn commit(&mut self, txs: &[Tx]) -> Result<()>;
    /// Ends a write without changing anything.
    fn abort(&mut self);
    /// Other writers' changes since the last look, without waiting for anyone.
    fn poll(&mut self) -> Result<Changes>;
    /// Whether the history has grown enough that [`Backend::compact`] should run.
    fn wants_compaction(&self) -> bool;
    /// Replaces the history by `state` (the whole registry as transactions, with every change
    /// `begin` answered applied) and ends the write begun by `begin`.
    fn compact(&mut self, state: &[Tx]) -> Result<()>;
}
