//! A log shared by the nodes of a cluster in PostgreSQL (issue 13): the alert history, so that
//! every node knows every alert, a partition's new owner continues its alerts instead of
//! raising them again, and a node that lost a partition can no longer write for it.
//!
//! One table, `carewatch_alert_history(seq, key, part, body)`: `seq` numbers the entries from
//! 0 without gaps, in commit order (appends are serialised by an advisory lock held to the
//! commit, so a reader never sees an entry before an earlier one); `key` groups the entries
//! of one thing (an alert id); `part` is the alert partition the entry was written for (NULL
//! for entries a person made, which any node may write).
//!
//! An append names the position up to which the writer has read. Under the lock it first
//! reads what others appended since ([`Appended::foreign`]), then refuses when
//! - one of those entries has a key the writer is about to write ([`Refusal::Conflict`]: it
//!   decided from an outdated view; it applies what it missed and decides again), or
//! - the writer's node does not hold an unexpired lease on every partition it writes for
//!   ([`Refusal::NotOwner`]: the lease fences a node that lost it, even one that has not
//!   noticed yet).
//!
//! Beside it, `carewatch_webhook_positions(receiver, next_seq)`: how far each webhook
//! receiver was told. One node delivers at a time (the owner of partition 0); its position
//! updates are fenced by that lease, so a node that lost it cannot move a position back.

use postgres::Client;

use crate::pg_conn::PgConn;
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS carewatch_alert_history (
    seq BIGINT PRIMARY KEY,
    key TEXT NOT NULL,
    part INT,
    body BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS carewatch_webhook_positions (
    receiver TEXT PRIMARY KEY,
    next_seq BIGINT NOT NULL
);
";
/// The advisory lock that serialises appends ("cwalhist").
const APPEND_KEY: i64 = 0x6377_616c_6869_7374;

fn pg_err(e: postgres::Error) -> Error {
    crate::pg_error("alert history", e)
}

/// One entry to append: its key, the partition it is written for (`None`: a person's), and
/// its body.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Groups entries of one thing (an alert id).
    pub key: String,
    /// The alert partition the entry is written for; `None` when a person made it.
    pub part: Option<u16>,
    /// The bytes.
    pub body: Vec<u8>,
}

/// Why an append was refused (nothing of it was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another node wrote one of the keys since the writer's position.
    Conflict,
    /// The writer's node does not own a partition it wrote for.
    NotOwner,
    /// An entry another node appended does not read (the writer's `readable` says no): the
    /// writer cannot know what it decides from.
    Unreadable,
}

/// What an append found and did.
#[derive(Debug, Default)]
pub struct Appended {
    /// Entries other nodes appended since the writer's position, in order (`(seq, body)`),
    /// whether or not the append went through.
    pub foreign: Vec<(u64, Vec<u8>)>,
    /// `Some` when nothing was written, and why.
    pub refused: Option<Refusal>,
}

/// The shared log: one connection, used by one caller at a time.
#[derive(Debug)]
pub struct SharedLog {
    conn: PgConn,
}

impl SharedLog {
    /// Connects and creates the table if it is missing. Blocking.
    pub fn open(url: &str) -> Result<SharedLog> {
        Ok(SharedLog {
            conn: PgConn::open(url, "alert history", SCHEMA)?,
        })
    }

    /// Runs `f` on the connection (see [`PgConn::with`]).
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.conn.with(f)
    }

    /// Entries from `seq` on, in order, at most `limit`. Blocking.
    pub fn read_from(&self, seq: u64, limit: i64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.with(|c| read(c, seq, limit))
    }

    /// Appends `entries` at `from` (the writer has read everything before it) as node `node`
    /// (`None`: no fencing, a single writer). Blocking.
    pub fn append(
        &self,
        from: u64,
        entries: &[Entry],
        node: Option<&str>,
        readable: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Appended> {
        self.with(|c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_KEY])
                .map_err(pg_err)?;
            let foreign = read(&mut tx, from, i64::MAX)?;
            let mut out = Appended {
                foreign,
                refused: None,
            };
            out.refused = if out.foreign.iter().all(|(_, b)| readable(b)) {
                refusal(&mut tx, &out.foreign, entries, node)?
            } else {
                Some(Refusal::Unreadable)
            };
            if out.refused.is_some() || entries.is_empty() {
                return Ok(out);
            }
            let first = from + out.foreign.len() as u64;
            let st = tx
                .prepare("INSERT INTO carewatch_alert_history (seq, key, part, body) VALUES ($1, $2, $3, $4)")
                .map_err(pg_err)?;
            for (i, e) in entries.iter().enumerate() {
                let seq = (first + i as u64) as i64;
                let part = e.part.map(i32::from);
                tx.execute(&st, &[&seq, &e.key, &part, &e.body])
                    .map_err(pg_err)?;
            }
            // Delivered to the listeners at the commit ([`AppendWatch`]).
            tx.batch_execute(NOTIFY).map_err(pg_err)?;
            tx.commit().map_err(pg_err)?;
            Ok(out)
        })
    }

    /// A connection of its own that hears of every append any node commits (PostgreSQL's
    /// LISTEN / NOTIFY). Blocking.
    pub fn watch(url: &str) -> Result<AppendWatch> {
        let mut client = crate::engine::connect(url, "alert history")?;
        client.batch_execute(LISTEN).map_err(pg_err)?;
        Ok(AppendWatch { client })
    }
}

/// The channel appends notify at their commit, so followers read at once rather than at
/// their next poll.
const NOTIFY: &str = "NOTIFY carewatch_alert_history";
const LISTEN: &str = "LISTEN carewatch_alert_history";

/// Hears of appends ([`SharedLog::watch`]).
pub struct AppendWatch {
    client: Client,
}

impl std::fmt::Debug for AppendWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendWatch").finish_non_exhaustive()
    }
}

impl AppendWatch {
    /// Waits until some node commits an append or `timeout` passes, whichever is first
    /// (`Ok(true)`: an append); notifications already queued are taken together. An error
    /// means the connection is lost: watch again. Blocking.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Result<bool> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let mut n = self.client.notifications();
        let heard = n.timeout_iter(timeout).next().map_err(pg_err)?.is_some();
        while n.iter().next().map_err(pg_err)?.is_some() {}
        Ok(heard)
    }
}

impl SharedLog {
    /// A receiver's position, and whether any receiver has one (a receiver added to a running
    /// cluster starts at the end, as on a single node). Blocking.
    pub fn position(&self, receiver: &str) -> Result<(Option<u64>, bool)> {
        self.with(|c| {
            let own = c
                .query_opt(
                    "SELECT next_seq FROM carewatch_webhook_positions WHERE receiver = $1",
                    &[&receiver],
                )
                .map_err(pg_err)?
                .map(|r| r.get::<_, i64>(0) as u64);
            let any: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM carewatch_webhook_positions)",
                    &[],
                )
                .map_err(pg_err)?
                .get(0);
            Ok((own, any))
        })
    }

    /// Saves a receiver's position while `node` holds partition `part`'s lease: `false` when
    /// it does not (nothing saved). Blocking.
    pub fn save_position(&self, receiver: &str, next: u64, node: &str, part: u16) -> Result<bool> {
        self.with(|c| {
            let n = c
                .execute(
                    "INSERT INTO carewatch_webhook_positions (receiver, next_seq)
                     SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM carewatch_alert_leases
                         WHERE part = $4 AND owner = $3 AND expires_at > now())
                     ON CONFLICT (receiver) DO UPDATE SET next_seq = EXCLUDED.next_seq",
                    &[&receiver, &(next as i64), &node, &i32::from(part)],
                )
                .map_err(pg_err)?;
            Ok(n == 1)
        })
    }
}

fn read<C: postgres::GenericClient>(
    c: &mut C,
    seq: u64,
    limit: i64,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let rows = c
        .query(
            "SELECT seq, body FROM carewatch_alert_history WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&(seq as i64), &limit],
        )
        .map_err(pg_err)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut next = seq;
    for r in rows {
        let s: i64 = r.get(0);
        if s as u64 != next {
            // Never expected (appends are serialised and numbered without gaps).
            return Err(Error::Io("alert history: a gap in the shared log".into()));
        }
        next += 1;
        out.push((s as u64, r.get(1)));
    }
    Ok(out)
}

/// Why `entries` may not be appended after `foreign`, if they may not.
fn refusal(
    tx: &mut postgres::Transaction<'_>,
    foreign: &[(u64, Vec<u8>)],
    entries: &[Entry],
    node: Option<&str>,
) -> Result<Option<Refusal>> {
    if !foreign.is_empty() {
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let from = foreign[0].0 as i64;
        let hit: i64 = tx
            .query_one(
                "SELECT count(*) FROM carewatch_alert_history WHERE seq >= $1 AND key = ANY($2)",
                &[&from, &keys],
            )
            .map_err(pg_err)?
            .get(0);
        if hit > 0 {
            return Ok(Some(Refusal::Conflict));
        }
    }
    let Some(node) = node else { return Ok(None) };
    let mut parts: Vec<i32> = entries
        .iter()
        .filter_map(|e| e.part.map(i32::from))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    if parts.is_empty() {
        return Ok(None);
    }
    let held: i64 = tx
        .query_one(
            "SELECT count(*) FROM carewatch_alert_leases
             WHERE part = ANY($1) AND owner = $2 AND expires_at > now()",
            &[&parts, &node],
        )
        .map_err(pg_err)?
        .get(0);
    Ok((held != parts.len() as i64).then_some(Refusal::NotOwner))
}
