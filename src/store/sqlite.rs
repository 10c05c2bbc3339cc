//! The embedded default's store: one SQLite database (`herald.db` under `storage.data_dir`, or a
//! database in memory for tests).
//!
//! Why: without Redis, Herald runs as a single instance, and restarting it (a deploy, a crash, a
//! `kill -9`) must lose nothing it promised to keep: the notifications waiting for users who are
//! away, their seen marks, sessions, read state, the rooms their tokens granted and the
//! idempotency keys of producers. Why SQLite: it is bundled into the binary (nothing to install
//! or run beside Herald), its WAL journal makes each call one short sequential write, and it is
//! one of the best-tested storage engines there is: no hand-written file format, recovery or
//! compaction to get wrong.
//!
//! Durability: WAL journal with `synchronous=NORMAL`. Every call that returned has committed its
//! transaction to the WAL file (in the OS's hands), so a process crash or `kill -9` loses
//! nothing; a power loss or an OS crash may lose the last transactions (those since the WAL was
//! last synced, at a checkpoint), never the consistency of the file. The database is opened in
//! exclusive locking mode: a second process (another Herald on the same `data_dir`) cannot open
//! it, since only one process can keep ids increasing. At open, `PRAGMA quick_check` reads the
//! whole file, so that a damaged one is refused at startup rather than failing calls later.
//!
//! Group commit: appends (the hot path: every stored notification) are queued to one writer
//! thread, which takes every append waiting, runs them in one transaction (when one fails, the
//! transaction is rolled back and the group run again with a savepoint each, so that the failing
//! append fails alone), commits, and only then answers each: an `Ok` still
//! means committed, but concurrent requests (and the recipients of one request, which
//! `outbox::submit` stages at once) share the commit's WAL write and the pages it rewrites (an
//! append changes about ten pages of the WAL when alone, many fewer in a group: the same stream
//! tails, key pages and b-tree interior pages). No runtime thread waits for a commit, nor for a
//! checkpoint (every [`WAL_AUTOCHECKPOINT`] pages, which syncs the files and takes milliseconds).
//! The other calls (reads, sessions, marks, claims) still run on the caller's thread under the
//! one mutex that the writer thread takes for each group: each takes microseconds.
//!
//! Cost per append: what a commit writes to the WAL is whole pages, so an append is made to
//! change as few as it can. The store keeps in memory, per stream, its row id, its number of
//! entries and the ms of its oldest and newest entry (loaded at open); an append is then one
//! `INSERT` into `entries`, a table without row ids whose key starts with the stream, so that it
//! changes one page: the last of its stream. Trimming is deferred and done in batches: a stream
//! holds up to [`len_slack`] entries past the length cap, and entries up to [`age_slack`] past
//! the age cap, before an append deletes the excess at once; reads return only the newest
//! `max_len` entries within the age cap, as if each append had trimmed. Streams idle for longer
//! than the age cap are found in memory (at most once every [`SCAN_EVERY_MS`]) and deleted by the
//! next appends, [`PURGE_BATCH`] streams or [`PURGE_ENTRIES`] entries at a time.
//!
//! Tables (schema version [`SCHEMA_VERSION`], in `PRAGMA user_version`; `PRAGMA application_id`
//! is [`APPLICATION_ID`]):
//! - `streams (id, namespace, room)`: one row per persisted room's stream (a stream idle for
//!   longer than the age cap holds only expired entries, and goes entirely).
//! - `entries (stream, ms, seq, nid, event, args)`: the entry id `<ms>-<seq>` as two integers,
//!   the notification id as text, `args` as [`stored::encode`] JSON. The largest entry id is the
//!   last one handed out: after a restart, ids go on above it, even when the clock went back (a
//!   stream's newest entry is never trimmed).
//! - `meta (key, value)`: `last_id`, written by the appends that store nothing (no room), whose
//!   id no entry keeps.
//! - `idempotency_keys (key, value, expires_ms)`: producers' keys ([`Stored::idempotency`] maps
//!   a key to the notification id; [`Store::claim_key`] to any value: one key space, as in Redis).
//! - `seen (user, id)`, `sessions (user, node, sockets, since)`, `node_marks (node, delivered)`,
//!   `user_rooms (user, rooms)` (a JSON list), `read_marks (user, up_to)` and
//!   `read_ids (user, id)`.
//!
//! Every table but `streams` is `WITHOUT ROWID`: keyed by its primary key alone, so that a write
//! changes one b-tree, not a table and its key's index.
//!
//! Marks (`seen`, `since`, `delivered`, read ids) are kept as text `<ms>-<seq>` and compared in
//! Rust: callers pass marks such as `<ms>-18446744073709551615` ("all of that millisecond"),
//! which SQLite's signed integers cannot hold. Entry ids are made here and always fit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Appended, Entry, NodeMark, NodeSession, ReadState, SessionWrite, Sessions, Store, StoreError, Stored, StreamId};
use crate::notification::now_ms;
use crate::payload::stored;

/// The schema this code reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Marks a Herald database (`PRAGMA application_id`): "HRLD".
pub const APPLICATION_ID: i64 = 0x4852_4c44;

/// How long a call waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many idle streams or expired idempotency keys one call deletes at most, so that catching
/// up after a long pause never makes one call slow.
const PURGE_BATCH: usize = 64;

/// How many entries of idle streams one call deletes at most (unless the first stream holds
/// more).
const PURGE_ENTRIES: u64 = 4096;

/// How often at most the streams in memory are looked through for idle ones (unix ms).
const SCAN_EVERY_MS: u64 = 1000;

/// WAL pages between checkpoints (SQLite's default is 1,000): each checkpoint syncs the WAL and
/// the database file, which takes milliseconds on most disks.
const WAL_AUTOCHECKPOINT: i64 = 4000;

/// SQLite's page cache, in KiB (its default is 2,000). (64 MiB was tried for appends to many
/// users' streams, which read pages back from the file: no difference in the writer thread's CPU
/// time, BENCHMARKS.md, session 6.)
const CACHE_KIB: i64 = 16 * 1024;

/// How many users' rooms are remembered as last written, so that a connect that grants the same
/// rooms again writes nothing.
const USER_ROOMS_CACHE: usize = 8192;

/// The largest sequence number an entry id is given: ids are stored as SQLite integers (i64).
const MAX_SEQ: u64 = i64::MAX as u64;

// A `LIMIT` is written into the statement, never bound: SQLite plans with a `LIMIT`'s value, so
// a statement with `LIMIT ?` is compiled again at each run.

/// Forgets [`PURGE_BATCH`] expired idempotency keys.
const PURGE_KEYS: &str = "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys WHERE expires_ms <= ?1 LIMIT 64)";

const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";
const SAVEPOINT: &str = "SAVEPOINT one";
const RELEASE: &str = "RELEASE one";
const ROLLBACK_TO: &str = "ROLLBACK TO one";
const INSERT_ENTRY: &str = "INSERT INTO entries (stream, ms, seq, nid, event, args) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/// The id of a stream's oldest entry that a trim keeps (`?2` older ones go).
const FIRST_KEPT: &str = "SELECT ms, seq FROM entries WHERE stream = ?1 ORDER BY ms, seq LIMIT 1 OFFSET ?2";
const TRIM: &str = "DELETE FROM entries WHERE stream = ?1 AND (ms, seq) < (?2, ?3)";
const OLDEST: &str = "SELECT ms FROM entries WHERE stream = ?1 ORDER BY ms, seq LIMIT 1";
const LIVE_KEY: &str = "SELECT value FROM idempotency_keys WHERE key = ?1 AND expires_ms > ?2";
const PUT_KEY: &str = "INSERT INTO idempotency_keys (key, value, expires_ms) VALUES (?1, ?2, ?3)
                       ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms";
const SEEN: &str = "SELECT id FROM seen WHERE user = ?1";
const SESSIONS: &str = "SELECT node, sockets, since FROM sessions WHERE user = ?1 ORDER BY node";
const SET_SESSIONS: &str = "INSERT INTO sessions (user, node, sockets, since) VALUES (?1, ?2, ?3, ?4)
                            ON CONFLICT (user, node) DO UPDATE SET sockets = excluded.sockets";
const END_SESSION: &str = "DELETE FROM sessions WHERE user = ?1 AND node = ?2 RETURNING since";
const SET_SEEN: &str = "INSERT INTO seen (user, id) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET id = excluded.id";

/// A stream's entries after an id, newest first: `{limit}` is `max_len`.
const RANGE: &str = "SELECT ms, seq, nid, event, args FROM entries WHERE stream = ?1 AND (ms, seq) > (?2, ?3)
                     ORDER BY ms DESC, seq DESC LIMIT {limit}";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    UNIQUE (namespace, room)
);
CREATE TABLE IF NOT EXISTS entries (
    stream INTEGER NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    nid TEXT NOT NULL,
    event TEXT NOT NULL,
    args TEXT NOT NULL,
    PRIMARY KEY (stream, ms, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_ms);
CREATE TABLE IF NOT EXISTS seen (
    user TEXT PRIMARY KEY,
    id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    user TEXT NOT NULL,
    node TEXT NOT NULL,
    sockets INTEGER NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (user, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_marks (
    node TEXT PRIMARY KEY,
    delivered TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_rooms (
    user TEXT PRIMARY KEY,
    rooms TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_marks (
    user TEXT PRIMARY KEY,
    up_to TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_ids (
    user TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
";

/// The store: its [`Core`] (shared with the writer thread) and the writer thread that commits
/// appends in groups (see [`write_appends`]).
pub struct SqliteStore {
    core: Arc<Core>,
    writer: Option<Writer>,
}

/// The writer thread and its queue of appends.
struct Writer {
    appends: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// One append waiting for the writer thread: [`Stored`] made owned (the args already encoded, by
/// the caller's task), and where its answer goes.
struct Job {
    namespace: String,
    rooms: Vec<String>,
    event: String,
    args: String,
    nid: Option<StreamId>,
    idempotency: Option<(String, Duration)>,
    answer: oneshot::Sender<Result<Appended, StoreError>>,
}

/// At most this many appends share one transaction.
const MAX_GROUP: usize = 4096;

impl std::ops::Deref for SqliteStore {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it answered what was queued; joined, so that the
        // connection (and the file's exclusive lock) is gone when the store is.
        if let Some(Writer { appends, thread }) = self.writer.take() {
            drop(appends);
            let _ = thread.join();
        }
    }
}

pub struct Core {
    /// This instance: the only node this store reports alive.
    node_id: String,
    max_age: Duration,
    /// A trim leaves this many entries (the newest is always kept: its id is the last one).
    keep: u64,
    /// A stream with more entries than this is trimmed by the append.
    trim_at: u64,
    /// A stream whose oldest entry is this much past the age cap (ms) is trimmed by the append.
    age_slack: u64,
    /// [`RANGE`] with its limit: reads return at most `max_len` entries of a stream, the newest.
    range_sql: String,
    inner: Mutex<Inner>,
    /// Groups of appends committed (each in one transaction) so far.
    groups: AtomicU64,
}

struct Inner {
    conn: Connection,
    /// The largest id handed out (once its append committed, the newest entry of a stream, or
    /// `meta.last_id`).
    last_id: StreamId,
    streams: Streams,
    /// Rooms (as stored JSON) of users whose row is known to hold them.
    user_rooms: HashMap<String, String>,
}

/// The streams one append changed in memory (the index of the room, and the stream before), to
/// put back when its transaction does not commit.
type Changed = Vec<(usize, Option<Stream>)>;

/// What the store knows of a stream without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// `streams.id`.
    id: i64,
    /// Its entries, trimmed or not.
    len: u64,
    /// The ms of its oldest entry (of its newest when it has none).
    oldest_ms: i64,
    /// The ms of its newest entry (0 when it has none).
    newest_ms: i64,
}

/// Every stream in the database, by namespace and room.
#[derive(Default)]
struct Streams {
    rooms: HashMap<String, HashMap<String, Stream>>,
    /// No stream has a newest entry older than this (unix ms), but those in `idle`.
    floor_ms: i64,
    /// Streams found idle, to be deleted (unless an append came since).
    idle: Vec<(String, String)>,
    /// When the streams may be looked through for idle ones again.
    next_scan_ms: u64,
}

impl Streams {
    fn get(&self, namespace: &str, room: &str) -> Option<Stream> {
        self.rooms.get(namespace)?.get(room).copied()
    }

    fn set(&mut self, namespace: &str, room: &str, stream: Stream) {
        let rooms = match self.rooms.get_mut(namespace) {
            Some(rooms) => rooms,
            None => self.rooms.entry(namespace.to_string()).or_default(),
        };
        match rooms.get_mut(room) {
            Some(current) => *current = stream,
            None => {
                rooms.insert(room.to_string(), stream);
                self.floor_ms = self.floor_ms.min(stream.newest_ms);
            }
        }
    }

    fn remove(&mut self, namespace: &str, room: &str) {
        if let Some(rooms) = self.rooms.get_mut(namespace) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.rooms.remove(namespace);
            }
        }
    }

    /// Puts back what a failed write changed: `(room, stream before)`, in the order changed.
    fn restore(&mut self, namespace: &str, rooms: &[String], undo: Vec<(usize, Option<Stream>)>) {
        for (room, before) in undo.into_iter().rev() {
            match before {
                Some(stream) => self.set(namespace, &rooms[room], stream),
                None => self.remove(namespace, &rooms[room]),
            }
        }
    }

    /// Puts back what a group's appends changed, the last first.
    fn undo(&mut self, appends: Vec<(&Job, Changed)>) {
        for (job, changed) in appends.into_iter().rev() {
            self.restore(&job.namespace, &job.rooms, changed);
        }
    }

    /// Queues the streams whose newest entry is older than `oldest_kept`, when some may be and
    /// none are queued, at most once every [`SCAN_EVERY_MS`].
    fn scan(&mut self, oldest_kept: i64, now: u64) {
        if !self.idle.is_empty() || self.floor_ms >= oldest_kept || now < self.next_scan_ms {
            return;
        }
        self.next_scan_ms = now.saturating_add(SCAN_EVERY_MS);
        let mut floor = i64::MAX;
        for (namespace, rooms) in &self.rooms {
            for (room, stream) in rooms {
                if stream.newest_ms < oldest_kept {
                    self.idle.push((namespace.clone(), room.clone()));
                } else {
                    floor = floor.min(stream.newest_ms);
                }
            }
        }
        self.floor_ms = floor;
    }

    /// The next batch of queued streams to delete: from the end of the queue, at most
    /// [`PURGE_BATCH`] streams and (past the first) [`PURGE_ENTRIES`] entries. Answers where the
    /// batch starts in the queue, and the row ids of those still idle, with their queue index.
    fn purgeable(&self, oldest_kept: i64) -> (usize, Vec<(usize, i64)>) {
        let mut from = self.idle.len();
        let mut entries = 0;
        let mut idle = Vec::new();
        while from > 0 && self.idle.len() - from < PURGE_BATCH && (entries < PURGE_ENTRIES || idle.is_empty()) {
            from -= 1;
            let (namespace, room) = &self.idle[from];
            if let Some(stream) = self.get(namespace, room).filter(|s| s.newest_ms < oldest_kept) {
                entries += stream.len;
                idle.push((from, stream.id));
            }
        }
        (from, idle)
    }

    /// The queued streams from `from` on were dealt with: those `purged` (queue index, row id)
    /// are deleted.
    fn purged(&mut self, from: usize, purged: &[(usize, i64)]) {
        for (i, (namespace, room)) in self.idle.split_off(from).into_iter().enumerate() {
            if purged.iter().any(|(queued, _)| *queued == from + i) {
                self.remove(&namespace, &room);
            } else if let Some(stream) = self.get(&namespace, &room) {
                // An append came since it was found idle.
                self.floor_ms = self.floor_ms.min(stream.newest_ms);
            }
        }
    }
}

/// Entries a stream may hold past the length cap `keep` before an append trims it.
fn len_slack(keep: u64) -> u64 {
    (keep / 8).clamp(1, 128)
}

/// How far past the age cap (ms) a stream's oldest entry may be before an append trims it.
fn age_slack(max_age: Duration) -> u64 {
    millis(max_age / 16).min(60_000)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, or one in memory when `None`. The directory
    /// must exist. Fails, with the reason, when the file cannot be opened or written, is not a
    /// Herald database, was written by a newer Herald, is damaged, or is in use by another process.
    pub fn open(path: Option<&Path>, node_id: &str, max_len: usize, max_age: Duration) -> Result<SqliteStore, StoreError> {
        let name = path.map_or_else(|| ":memory:".to_string(), |p| p.display().to_string());
        let conn = match path {
            Some(path) => Connection::open(path),
            None => Connection::open_in_memory(),
        }
        .map_err(|e| open_error(&name, Failure::Sql(e)))?;
        let (streams, last_id) = prepare(&conn, path.is_some()).map_err(|e| open_error(&name, e))?;
        let keep = u64::try_from(max_len).unwrap_or(u64::MAX).max(1);
        let core = Arc::new(Core {
            node_id: node_id.to_string(),
            max_age,
            keep,
            trim_at: keep.saturating_add(len_slack(keep)),
            age_slack: age_slack(max_age),
            range_sql: RANGE.replace("{limit}", &max_len.min(i64::MAX as usize).to_string()),
            inner: Mutex::new(Inner { conn, last_id, streams, user_rooms: HashMap::new() }),
            groups: AtomicU64::new(0),
        });
        let (appends, queue) = mpsc::channel();
        let writer = Arc::clone(&core);
        let thread = std::thread::Builder::new()
            .name("herald-sqlite".into())
            .spawn(move || write_appends(&writer, queue))
            .map_err(|e| StoreError(format!("{name}: cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { core, writer: Some(Writer { appends, thread }) })
    }
}

/// The writer thread: takes every append queued (up to [`MAX_GROUP`]), commits them in one
/// transaction, then answers each, in order; meanwhile the next appends queue up. One commit
/// (its WAL write, and the checkpoint when one is due) then serves all the appends of concurrent
/// requests, and no runtime thread waits for it.
fn write_appends(core: &Core, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let answers = core.append_group(&group);
        for (job, answer) in group.into_iter().zip(answers) {
            // The caller may have gone (its request was dropped): what was stored stays.
            let _ = job.answer.send(answer);
        }
    }
}

impl SqliteStore {
    fn queue_append(
        &self,
        namespace: &str,
        rooms: &[String],
        emit: Stored<'_>,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError> {
        // One instance receives each message once: `dedup` has nothing to deduplicate, and the
        // caller delivers locally: `relay` has no one to reach.
        let Stored { event, args, nid, idempotency, .. } = emit;
        let (answer, answered) = oneshot::channel();
        let job = Job {
            namespace: namespace.to_string(),
            rooms: rooms.to_vec(),
            event: event.to_string(),
            args: stored::encode(args),
            nid,
            idempotency: idempotency.map(|i| (i.key.to_string(), i.window)),
            answer,
        };
        let writer = self.writer.as_ref().ok_or_else(|| StoreError("the store is closed".into()))?;
        writer.appends.send(job).map_err(|_| StoreError("the store's writer thread stopped".into()))?;
        Ok(answered)
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries older than this (unix ms) are past the age cap.
    fn oldest_kept(&self, now: u64) -> i64 {
        sql_int(now.saturating_sub(millis(self.max_age)))
    }

    /// Appends a group of jobs in one transaction, in order, and answers each: every append in
    /// a savepoint of its own, so that one that fails (and is answered its error) leaves the
    /// others; the answers are given after the commit, so an `Ok` means committed. Ids are
    /// handed out in the group's order, and an idempotency key stored by an earlier job of the
    /// group makes a later one with the same key a duplicate, as in separate transactions.
    ///
    /// The group is first written without savepoints (a savepoint and its release for every
    /// append cost an eighth of the CPU time of a notification to 100 users): when every append
    /// succeeds, as nearly always, that is the result. When one fails, the whole transaction is
    /// rolled back, the memory put back as it was, and the group written again `careful`ly, each
    /// append in its savepoint, so that only the failing one fails.
    fn append_group(&self, jobs: &[Job]) -> Vec<Result<Appended, StoreError>> {
        match self.write_group(jobs, false) {
            Some(answers) => answers,
            None => self.write_group(jobs, true).expect("a careful group always answers"),
        }
    }

    /// [`append_group`](Self::append_group)'s two ways: `careful`, each append in a savepoint;
    /// otherwise `None` when an append failed (nothing was kept).
    fn write_group(&self, jobs: &[Job], careful: bool) -> Option<Vec<Result<Appended, StoreError>>> {
        let now = now_ms();
        let oldest_kept = self.oldest_kept(now);
        let mut guard = self.lock();
        let Inner { conn, last_id, streams, .. } = &mut *guard;
        let conn = &*conn;
        streams.scan(oldest_kept, now);
        let all_failed = |e: &StoreError| Some(jobs.iter().map(|_| Err(StoreError(e.0.clone()))).collect());
        let write = match Write::begin(conn) {
            Ok(write) => write,
            Err(e) => return all_failed(&e),
        };
        let mut answers = Vec::with_capacity(jobs.len());
        // What each append changed in memory, to put back if the commit fails.
        let mut undo: Vec<(&Job, Changed)> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut changed = Vec::with_capacity(job.rooms.len());
            let mut append = || self.append_one(conn, last_id, streams, job, now, oldest_kept, &mut changed);
            let appended = if careful { savepoint(conn, append) } else { append() };
            if appended.is_err() && !careful {
                // Undone with the transaction (`write` rolls back when dropped); the ids handed
                // out meanwhile are skipped, which keeps them increasing.
                streams.restore(&job.namespace, &job.rooms, changed);
                streams.undo(undo);
                return None;
            }
            if appended.is_err() {
                streams.restore(&job.namespace, &job.rooms, std::mem::take(&mut changed));
                if conn.is_autocommit() {
                    // The error ended the whole transaction (SQLite does so for a full disk or an
                    // I/O error): what the group wrote so far is gone too.
                    let e = appended.err().unwrap_or_else(|| StoreError("transaction rolled back".into()));
                    streams.undo(undo);
                    return all_failed(&e);
                }
            }
            answers.push(appended);
            undo.push((job, changed));
        }
        // Idle streams go in the same transaction, as in the appends' own.
        let (from, purged) = streams.purgeable(oldest_kept);
        let purged = if purged.is_empty() {
            Some(purged)
        } else {
            savepoint(conn, || {
                for (_, stream) in &purged {
                    conn.prepare_cached("DELETE FROM entries WHERE stream = ?1")
                        .and_then(|mut s| s.execute(params![stream]))
                        .map_err(failed)?;
                    conn.prepare_cached("DELETE FROM streams WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![stream]))
                        .map_err(failed)?;
                }
                Ok(())
            })
            .ok()
            .map(|()| purged)
        };
        match write.commit() {
            Ok(()) => {
                self.groups.fetch_add(1, AtomicOrdering::Relaxed);
                if let Some(purged) = purged.filter(|_| !streams.idle.is_empty()) {
                    streams.purged(from, &purged);
                }
                Some(answers)
            }
            Err(e) => {
                streams.undo(undo);
                all_failed(&e)
            }
        }
    }

    /// One append of a group, inside its transaction. `changed` gets the streams it changed in
    /// memory, as they were before.
    #[allow(clippy::too_many_arguments)]
    fn append_one(
        &self,
        conn: &Connection,
        last_id: &mut StreamId,
        streams: &mut Streams,
        job: &Job,
        now: u64,
        oldest_kept: i64,
        changed: &mut Changed,
    ) -> Result<Appended, StoreError> {
        let Job { namespace, rooms, event, args, nid, idempotency, .. } = job;
        if let Some((key, _)) = idempotency {
            if let Some(first) = live_key(conn, key, now)? {
                return Ok(Appended { nid: parse_id(&first)?, fresh: false });
            }
        }
        let first_id = next_id(*last_id, now);
        *last_id = first_id;
        let nid = nid.unwrap_or(first_id);
        let nid_text = nid.to_string();
        for (i, room) in rooms.iter().enumerate() {
            let id = if i == 0 { first_id } else { next_id(*last_id, now) };
            *last_id = id;
            let before = streams.get(namespace, room);
            changed.push((i, before));
            let (ms, seq) = (sql_int(id.ms), sql_int(id.seq));
            let mut stream = match before {
                Some(stream) => stream,
                None => Stream { id: create_stream(conn, namespace, room)?, len: 0, oldest_ms: ms, newest_ms: ms },
            };
            conn.prepare_cached(INSERT_ENTRY)
                .and_then(|mut s| s.execute(params![stream.id, ms, seq, nid_text, event, args]))
                .map_err(failed)?;
            if stream.len == 0 {
                stream.oldest_ms = ms;
            }
            stream.len += 1;
            stream.newest_ms = ms;
            let expired = stream.oldest_ms < oldest_kept.saturating_sub(sql_int(self.age_slack));
            if stream.len > self.trim_at || expired {
                trim(conn, &mut stream, self.keep, oldest_kept)?;
            }
            streams.set(namespace, room, stream);
        }
        if let Some((key, window)) = idempotency {
            put_key(conn, key, &nid_text, now, *window)?;
        }
        if rooms.is_empty() {
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('last_id', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![last_id.to_string()]))
            .map_err(failed)?;
        }
        Ok(Appended { nid, fresh: true })
    }

    fn range_now(&self, namespace: &str, room: &str, after: Option<StreamId>) -> Result<Vec<Entry>, StoreError> {
        let Some(after) = lower_bound(after) else { return Ok(vec![]) };
        // Entries past the caps may still be there (trimming is deferred); they are not
        // returned: only the newest `max_len` within the age cap.
        let after = after.max((self.oldest_kept(now_ms()), -1));
        let mut rows: Vec<(i64, i64, String, String, String)> = {
            let guard = self.lock();
            let Some(stream) = guard.streams.get(namespace, room) else { return Ok(vec![]) };
            let mut statement = guard.conn.prepare_cached(&self.range_sql).map_err(failed)?;
            let rows = statement
                .query_map(params![stream.id, after.0, after.1], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                })
                .map_err(failed)?;
            rows.collect::<Result<_, _>>().map_err(failed)?
        };
        rows.reverse();
        // Decoded after the lock is released: other calls need not wait for it.
        let mut entries = Vec::with_capacity(rows.len());
        for (ms, seq, nid, event, args) in rows {
            let id = format!("{ms}-{seq}");
            match (parse_id(&nid), stored::decode(&args)) {
                (Ok(nid), Ok(args)) => entries.push(Entry { nid, event, args }),
                (Err(e), _) => tracing::warn!(namespace, room, %id, error = %e, "unreadable stream entry skipped"),
                (_, Err(e)) => tracing::warn!(namespace, room, %id, error = %e, "unreadable stream entry skipped"),
            }
        }
        Ok(entries)
    }

    fn claim_key_now(&self, key: &str, value: &str, window: Duration) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let guard = self.lock();
        let write = Write::begin(&guard.conn)?;
        if let Some(first) = live_key(&guard.conn, key, now)? {
            return Ok(Some(first));
        }
        put_key(&guard.conn, key, value, now, window)?;
        write.commit()?;
        Ok(None)
    }

    fn sessions_now(&self, user: &str) -> Result<Sessions, StoreError> {
        let guard = self.lock();
        let seen = seen_mark(&guard.conn, user)?;
        let mut statement = guard.conn.prepare_cached(SESSIONS).map_err(failed)?;
        let rows = statement
            .query_map(params![user], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?)))
            .map_err(failed)?;
        let mut nodes = Vec::new();
        for row in rows {
            let (node, sockets, since) = row.map_err(failed)?;
            nodes.push(NodeSession { node, sockets: sockets.max(0) as u64, since: parse_id(&since)? });
        }
        Ok(Sessions { seen, nodes })
    }

    /// One `Set` session write (tests use it to set up a user's sessions).
    #[cfg(test)]
    pub async fn set_sessions(&self, user: &str, node: &str, sockets: u64, since: StreamId) -> Result<(), StoreError> {
        self.set_sessions_now(user, node, sockets, since)
    }

    /// `End` session writes for several nodes of one user (tests).
    #[cfg(test)]
    pub async fn end_sessions(&self, user: &str, nodes: &[(String, StreamId)]) -> Result<(), StoreError> {
        self.end_sessions_now(user, nodes)
    }

    fn set_sessions_now(&self, user: &str, node: &str, sockets: u64, since: StreamId) -> Result<(), StoreError> {
        let guard = self.lock();
        guard
            .conn
            .prepare_cached(SET_SESSIONS)
            .and_then(|mut s| s.execute(params![user, node, sql_int(sockets), since.to_string()]))
            .map_err(failed)?;
        Ok(())
    }

    fn end_sessions_now(&self, user: &str, nodes: &[(String, StreamId)]) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let guard = self.lock();
        let conn = &guard.conn;
        let write = Write::begin(conn)?;
        let current = seen_mark(conn, user)?;
        let mut seen = current;
        for (node, mark) in nodes {
            let since = conn
                .prepare_cached(END_SESSION)
                .and_then(|mut s| s.query_row(params![user, node], |row| row.get::<_, String>(0)).optional())
                .map_err(failed)?;
            if let Some(since) = since {
                seen = seen.max(Some(parse_id(&since)?));
            }
            seen = seen.max(Some(*mark));
        }
        if let Some(seen) = seen.filter(|seen| Some(*seen) != current) {
            conn.prepare_cached(SET_SEEN).and_then(|mut s| s.execute(params![user, seen.to_string()])).map_err(failed)?;
        }
        write.commit()
    }

    fn node_marks_now(&self, nodes: &[String]) -> Result<Vec<NodeMark>, StoreError> {
        let guard = self.lock();
        let mut marks = Vec::with_capacity(nodes.len());
        for node in nodes {
            marks.push(NodeMark { alive: *node == self.node_id, delivered: node_mark(&guard.conn, node)? });
        }
        Ok(marks)
    }

    fn write_node_mark_now(&self, node: &str, delivered: StreamId) -> Result<(), StoreError> {
        let guard = self.lock();
        let conn = &guard.conn;
        let write = Write::begin(conn)?;
        if node_mark(conn, node)?.is_some_and(|current| current >= delivered) {
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO node_marks (node, delivered) VALUES (?1, ?2) ON CONFLICT (node) DO UPDATE SET delivered = excluded.delivered",
        )
        .and_then(|mut s| s.execute(params![node, delivered.to_string()]))
        .map_err(failed)?;
        write.commit()
    }

    fn set_user_rooms_now(&self, user: &str, rooms: &[String]) -> Result<(), StoreError> {
        let rooms = serde_json::to_string(rooms).map_err(|e| StoreError(e.to_string()))?;
        let mut guard = self.lock();
        let Inner { conn, user_rooms, .. } = &mut *guard;
        if user_rooms.get(user) == Some(&rooms) {
            return Ok(());
        }
        let written = conn
            .prepare_cached("INSERT INTO user_rooms (user, rooms) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET rooms = excluded.rooms")
            .and_then(|mut s| s.execute(params![user, rooms]));
        if let Err(e) = written {
            user_rooms.remove(user);
            return Err(failed(e));
        }
        match user_rooms.get_mut(user) {
            Some(cached) => *cached = rooms,
            None => {
                if user_rooms.len() >= USER_ROOMS_CACHE {
                    // Any one goes: its next write costs one row write.
                    if let Some(other) = user_rooms.keys().next().cloned() {
                        user_rooms.remove(&other);
                    }
                }
                user_rooms.insert(user.to_string(), rooms);
            }
        }
        Ok(())
    }

    fn user_rooms_now(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let guard = self.lock();
        let rooms = guard
            .conn
            .prepare_cached("SELECT rooms FROM user_rooms WHERE user = ?1")
            .and_then(|mut s| s.query_row(params![user], |row| row.get::<_, String>(0)).optional())
            .map_err(failed)?;
        Ok(match rooms {
            None => vec![],
            Some(rooms) => serde_json::from_str(&rooms).unwrap_or_else(|e| {
                tracing::warn!(user, error = %e, "unreadable user rooms ignored");
                vec![]
            }),
        })
    }

    fn read_state_now(&self, user: &str) -> Result<ReadState, StoreError> {
        let guard = self.lock();
        let up_to = read_mark(&guard.conn, user)?;
        let mut ids = read_ids(&guard.conn, user)?;
        ids.retain(|id| up_to.is_none_or(|up_to| *id > up_to));
        ids.sort();
        Ok(ReadState { up_to, ids })
    }

    fn mark_read_now(&self, user: &str, ids: &[StreamId], up_to: Option<StreamId>) -> Result<(), StoreError> {
        let guard = self.lock();
        let conn = &guard.conn;
        let write = Write::begin(conn)?;
        let current = read_mark(conn, user)?;
        // `None` sorts first: the mark only moves forward.
        let mark = current.max(up_to);
        if let Some(mark) = mark.filter(|mark| Some(*mark) != current) {
            conn.prepare_cached(
                "INSERT INTO read_marks (user, up_to) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET up_to = excluded.up_to",
            )
            .and_then(|mut s| s.execute(params![user, mark.to_string()]))
            .map_err(failed)?;
            // Ids read one by one that the mark now covers.
            let mut delete = conn.prepare_cached("DELETE FROM read_ids WHERE user = ?1 AND id = ?2").map_err(failed)?;
            for id in read_ids(conn, user)?.into_iter().filter(|id| *id <= mark) {
                delete.execute(params![user, id.to_string()]).map_err(failed)?;
            }
        }
        let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO read_ids (user, id) VALUES (?1, ?2)").map_err(failed)?;
        for id in ids.iter().filter(|id| mark.is_none_or(|mark| **id > mark)) {
            insert.execute(params![user, id.to_string()]).map_err(failed)?;
        }
        drop(insert);
        write.commit()
    }
}

/// A write transaction (`BEGIN IMMEDIATE`, from the statement cache: cheaper than rusqlite's
/// `Transaction`, which parses it each time), rolled back unless committed.
struct Write<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Write<'c> {
    fn begin(conn: &'c Connection) -> Result<Write<'c>, StoreError> {
        conn.prepare_cached(BEGIN).and_then(|mut s| s.execute([])).map_err(failed)?;
        Ok(Write { conn, open: true })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn.prepare_cached(COMMIT).and_then(|mut s| s.execute([])).map_err(failed)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        // A failed statement or commit may have ended the transaction already.
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.prepare_cached(ROLLBACK).and_then(|mut s| s.execute([])) {
                tracing::warn!(error = %e, "rollback failed");
            }
        }
    }
}

/// Runs `f` in a savepoint of the open transaction: kept when it succeeds, undone when it fails.
fn savepoint<T>(conn: &Connection, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(failed);
    run(SAVEPOINT)?;
    let result = f();
    // A failed statement may have ended the transaction already (then there is nothing to undo).
    if !conn.is_autocommit() {
        if result.is_err() {
            run(ROLLBACK_TO)?;
        }
        run(RELEASE)?;
    }
    result
}

/// Why opening failed, before it is worded for the operator.
enum Failure {
    Sql(rusqlite::Error),
    /// The file opened and reads, but is not (or no longer) a database this Herald can use.
    Unusable(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

fn open_error(name: &str, failure: Failure) -> StoreError {
    let e = match failure {
        Failure::Unusable(reason) => return StoreError(format!("{name} is not a usable Herald database: {reason}")),
        Failure::Sql(e) => e,
    };
    StoreError(match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("{name} is in use by another process (another Herald with the same storage.data_dir?): {e}")
        }
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            format!("cannot open {name} for writing (does its directory exist, and may Herald write there?): {e}")
        }
        _ => format!("{name} is not a usable Herald database: {e}"),
    })
}

/// Sets the connection up, checks the file and creates the schema when missing. Answers the
/// streams and the largest id handed out so far.
fn prepare(conn: &Connection, on_disk: bool) -> Result<(Streams, StreamId), Failure> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    if on_disk {
        // Before the first read, so that WAL keeps its index in process memory and the lock
        // taken by the first write below is held until the store is dropped.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    }
    // The first read of the file: a file that is not a database fails here.
    let application_id: i64 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        let line: String = row.get(0)?;
        if line != "ok" && problems.len() < 5 {
            problems.push(line);
        }
        Ok(())
    })?;
    if !problems.is_empty() {
        return Err(Failure::Unusable(format!("damaged ({})", problems.join("; "))));
    }
    let tables: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", [], |row| row.get(0))?;
    if application_id != APPLICATION_ID && (application_id != 0 || version != 0 || tables > 0) {
        return Err(Failure::Unusable(format!(
            "it is a SQLite database of something else (application_id {application_id:#x}, user_version {version}, {tables} tables)"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Failure::Unusable(format!(
            "it was written by a newer Herald (schema version {version}; this one knows up to {SCHEMA_VERSION})"
        )));
    }
    if on_disk {
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "SQLite refused the WAL journal; writes will be slower");
        }
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The schema and its version in one transaction: a file has both or neither.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    let (streams, newest) = load_streams(conn)?;
    let meta: Option<String> = conn.query_row("SELECT value FROM meta WHERE key = 'last_id'", [], |row| row.get(0)).optional()?;
    let meta = meta.map(|text| text.parse::<StreamId>()).transpose().map_err(|e| Failure::Unusable(format!("meta.last_id: {e}")))?;
    Ok((streams, newest.max(meta.unwrap_or_default())))
}

/// Reads every stream's row id, length and oldest and newest ms (one pass over `entries`), and
/// the largest entry id.
fn load_streams(conn: &Connection) -> Result<(Streams, StreamId), Failure> {
    let mut names: HashMap<i64, (String, String)> = HashMap::new();
    let mut statement = conn.prepare("SELECT id, namespace, room FROM streams")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        names.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
    }
    drop(rows);
    let mut counts: HashMap<i64, (u64, i64, i64)> = HashMap::with_capacity(names.len());
    let mut statement = conn.prepare("SELECT stream, count(*), min(ms), max(ms) FROM entries GROUP BY stream")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        counts.insert(row.get(0)?, (row.get::<_, i64>(1)?.max(0) as u64, row.get(2)?, row.get(3)?));
    }
    drop(rows);
    let mut streams = Streams { floor_ms: i64::MAX, ..Streams::default() };
    let mut newest_ms = None;
    for (id, (namespace, room)) in names {
        // A stream without entries (none is left so by appends) counts as idle: it goes.
        let (len, oldest_ms, newest) = counts.get(&id).copied().unwrap_or((0, 0, 0));
        streams.set(&namespace, &room, Stream { id, len, oldest_ms, newest_ms: newest });
        if len > 0 && newest_ms.is_none_or(|(ms, _)| newest > ms) {
            newest_ms = Some((newest, id));
        }
    }
    // The newest ms may be in several streams (one append to several rooms): its largest seq is
    // in the last of them written, which has the largest seq.
    let mut last = StreamId::default();
    if let Some((ms, _)) = newest_ms {
        let mut statement = conn.prepare("SELECT max(seq) FROM entries WHERE stream = ?1 AND ms = ?2")?;
        for rooms in streams.rooms.values() {
            for stream in rooms.values().filter(|s| s.len > 0 && s.newest_ms == ms) {
                let seq: i64 = statement.query_row(params![stream.id, ms], |row| row.get(0))?;
                last = last.max(StreamId::new(ms.max(0) as u64, seq.max(0) as u64));
            }
        }
    }
    Ok((streams, last))
}

/// A new stream's row id.
fn create_stream(conn: &Connection, namespace: &str, room: &str) -> Result<i64, StoreError> {
    conn.prepare_cached("INSERT INTO streams (namespace, room) VALUES (?1, ?2) RETURNING id")
        .and_then(|mut s| s.query_row(params![namespace, room], |row| row.get(0)))
        .map_err(failed)
}

/// Deletes the entries of `stream` past the age cap and the oldest past `keep`, and updates its
/// length and oldest ms. The newest entry stays (its ms is at least now, after `oldest_kept`).
fn trim(conn: &Connection, stream: &mut Stream, keep: u64, oldest_kept: i64) -> Result<(), StoreError> {
    // Entries below this id go.
    let mut bound = (oldest_kept, 0);
    if stream.len > keep {
        let first_kept: Option<(i64, i64)> = conn
            .prepare_cached(FIRST_KEPT)
            .and_then(|mut s| s.query_row(params![stream.id, sql_int(stream.len - keep)], |row| Ok((row.get(0)?, row.get(1)?))).optional())
            .map_err(failed)?;
        bound = bound.max(first_kept.unwrap_or_default());
    }
    let deleted = conn.prepare_cached(TRIM).and_then(|mut s| s.execute(params![stream.id, bound.0, bound.1])).map_err(failed)?;
    stream.len = stream.len.saturating_sub(deleted as u64);
    let oldest: Option<i64> =
        conn.prepare_cached(OLDEST).and_then(|mut s| s.query_row(params![stream.id], |row| row.get(0)).optional()).map_err(failed)?;
    stream.oldest_ms = oldest.unwrap_or(stream.newest_ms);
    Ok(())
}

/// The id after `last`: now, or the next sequence number of `last`'s millisecond when the clock
/// has not moved past it (or went back).
fn next_id(last: StreamId, now: u64) -> StreamId {
    if now > last.ms {
        StreamId::new(now, 0)
    } else if last.seq < MAX_SEQ {
        StreamId::new(last.ms, last.seq + 1)
    } else {
        StreamId::new(last.ms + 1, 0)
    }
}

/// `after` as the exclusive lower bound of stored entry ids, or `None` when no stored id can be
/// above it. Stored ids fit in i64: a larger `seq` means "after all of that millisecond".
fn lower_bound(after: Option<StreamId>) -> Option<(i64, i64)> {
    match after {
        None => Some((-1, -1)),
        Some(after) => Some((i64::try_from(after.ms).ok()?, i64::try_from(after.seq).unwrap_or(i64::MAX))),
    }
}

/// Unix ms, socket counts and entry ids as SQLite integers (those past i64, which no clock
/// makes, saturate).
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

fn parse_id(text: &str) -> Result<StreamId, StoreError> {
    text.parse().map_err(StoreError)
}

/// The value under an idempotency key, unless it expired.
fn live_key(conn: &Connection, key: &str, now: u64) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(LIVE_KEY).and_then(|mut s| s.query_row(params![key, sql_int(now)], |row| row.get(0)).optional()).map_err(failed)
}

/// Remembers `value` under `key` until `now + window`, and forgets a batch of expired keys.
fn put_key(conn: &Connection, key: &str, value: &str, now: u64, window: Duration) -> Result<(), StoreError> {
    conn.prepare_cached(PURGE_KEYS).and_then(|mut s| s.execute(params![sql_int(now)])).map_err(failed)?;
    let expires = sql_int(now.saturating_add(millis(window)));
    conn.prepare_cached(PUT_KEY).and_then(|mut s| s.execute(params![key, value, expires])).map_err(failed)?;
    Ok(())
}

fn seen_mark(conn: &Connection, user: &str) -> Result<Option<StreamId>, StoreError> {
    conn.prepare_cached(SEEN)
        .and_then(|mut s| s.query_row(params![user], |row| row.get::<_, String>(0)).optional())
        .map_err(failed)?
        .as_deref()
        .map(parse_id)
        .transpose()
}

fn node_mark(conn: &Connection, node: &str) -> Result<Option<StreamId>, StoreError> {
    conn.prepare_cached("SELECT delivered FROM node_marks WHERE node = ?1")
        .and_then(|mut s| s.query_row(params![node], |row| row.get::<_, String>(0)).optional())
        .map_err(failed)?
        .as_deref()
        .map(parse_id)
        .transpose()
}

fn read_mark(conn: &Connection, user: &str) -> Result<Option<StreamId>, StoreError> {
    conn.prepare_cached("SELECT up_to FROM read_marks WHERE user = ?1")
        .and_then(|mut s| s.query_row(params![user], |row| row.get::<_, String>(0)).optional())
        .map_err(failed)?
        .as_deref()
        .map(parse_id)
        .transpose()
}

fn read_ids(conn: &Connection, user: &str) -> Result<Vec<StreamId>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT id FROM read_ids WHERE user = ?1").map_err(failed)?;
    let rows = statement.query_map(params![user], |row| row.get::<_, String>(0)).map_err(failed)?;
    let mut ids = Vec::new();
    for row in rows {
        ids.push(parse_id(&row.map_err(failed)?)?);
    }
    Ok(ids)
}

impl Store for SqliteStore {
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<Appended, StoreError>> {
        let queued = self.queue_append(namespace, rooms, emit);
        Box::pin(async move {
            match queued?.await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError("the store's writer thread stopped".into())),
            }
        })
    }

    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move { self.range_now(namespace, room, after) })
    }

    fn claim_key<'a>(&'a self, key: &'a str, value: &'a str, window: Duration) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { self.claim_key_now(key, value, window) })
    }

    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(async move { self.sessions_now(user) })
    }

    fn write_sessions<'a>(&'a self, writes: &'a [SessionWrite]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for write in writes {
                match write {
                    SessionWrite::Set { user, node, sockets, since } => self.set_sessions_now(user, node, *sockets, *since)?,
                    SessionWrite::End { user, node, mark } => self.end_sessions_now(user, &[(node.clone(), *mark)])?,
                }
            }
            Ok(())
        })
    }

    fn node_marks<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<NodeMark>, StoreError>> {
        Box::pin(async move { self.node_marks_now(nodes) })
    }

    fn write_node_mark<'a>(&'a self, node: &'a str, delivered: StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.write_node_mark_now(node, delivered) })
    }

    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.set_user_rooms_now(user, rooms) })
    }

    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { self.user_rooms_now(user) })
    }

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>> {
        Box::pin(async move { self.read_state_now(user) })
    }

    fn mark_read<'a>(&'a self, user: &'a str, ids: &'a [StreamId], up_to: Option<StreamId>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.mark_read_now(user, ids, up_to) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::payload::{Args, Value};
    use crate::store::{merged_range, Idempotency};

    const NODE: &str = "node-a";
    const MINUTE: Duration = Duration::from_secs(60);

    fn args(n: i64) -> Args {
        Args::one(Value::Object(vec![("n".into(), Value::Int(n))]))
    }

    fn emit(args: &Args) -> Stored<'_> {
        Stored { event: "notification", args, dedup: None, nid: None, idempotency: None, relay: None }
    }

    fn keyed<'a>(args: &'a Args, key: &'a str, window: Duration) -> Stored<'a> {
        Stored { idempotency: Some(Idempotency { key, window }), ..emit(args) }
    }

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId::new(ms, seq)
    }

    fn memory(max_len: usize, max_age: Duration) -> SqliteStore {
        match SqliteStore::open(None, NODE, max_len, max_age) {
            Ok(store) => store,
            Err(e) => panic!("{e}"),
        }
    }

    fn on_disk(path: &Path, node: &str) -> SqliteStore {
        match SqliteStore::open(Some(path), node, 10, MINUTE) {
            Ok(store) => store,
            Err(e) => panic!("{e}"),
        }
    }

    fn refused(result: Result<SqliteStore, StoreError>) -> String {
        match result {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    /// The entry ids of a room's stream, oldest first, and whether the length in memory counts
    /// them.
    fn stored_ids(store: &SqliteStore, room: &str) -> (Vec<StreamId>, bool) {
        let guard = store.lock();
        let mut statement = guard
            .conn
            .prepare("SELECT e.ms, e.seq FROM entries e JOIN streams s ON s.id = e.stream WHERE s.room = ?1 ORDER BY e.ms, e.seq")
            .unwrap();
        let ids: Vec<StreamId> = statement
            .query_map([room], |row| Ok(id(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let len = guard.streams.rooms.values().filter_map(|rooms| rooms.get(room)).map(|s| s.len).sum::<u64>();
        let counted = len == ids.len() as u64;
        (ids, counted)
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("herald-sqlite-{}-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed), now_ms());
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn db(&self) -> PathBuf {
            self.0.join("herald.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn one_emit_to_several_rooms_reads_back_once() {
        let store = memory(10, MINUTE);
        let rooms = rooms(&["user_1", "role_a"]);
        let Appended { nid, fresh } = store.append("/", &rooms, emit(&args(1))).await.unwrap();
        assert!(fresh);
        let merged = merged_range(&store, "/", &rooms, None).await.unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0], Entry { nid, event: "notification".into(), args: args(1) });
        assert_eq!(merged_range(&store, "/", &rooms, Some(nid)).await.unwrap(), vec![]);
        assert_eq!(store.range("/other", "user_1", None).await.unwrap(), vec![]);
        assert_eq!(store.range("/", "user_2", None).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn caps_hold() {
        let store = memory(3, MINUTE);
        let rooms = rooms(&["user_1"]);
        for n in 1..10 {
            store.append("/", &rooms, emit(&args(n))).await.unwrap();
        }
        let kept: BTreeMap<StreamId, Entry> = store.range("/", "user_1", None).await.unwrap().into_iter().map(|e| (e.nid, e)).collect();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.values().map(|e| e.args.clone()).collect::<Vec<_>>(), vec![args(7), args(8), args(9)]);
        let (ids, counted) = stored_ids(&store, "user_1");
        // Trimming waits for a batch: up to `len_slack` more stay, unread.
        assert!((3..=3 + len_slack(3) as usize).contains(&ids.len()), "{}", ids.len());
        assert!(counted);
    }

    #[tokio::test]
    async fn a_lower_length_cap_trims_at_the_next_append() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        for n in 0..10 {
            store.append("/", &rooms(&["r"]), emit(&args(n))).await.unwrap();
        }
        drop(store);
        let store = match SqliteStore::open(Some(&dir.db()), NODE, 4, MINUTE) {
            Ok(store) => store,
            Err(e) => panic!("{e}"),
        };
        store.append("/", &rooms(&["r"]), emit(&args(10))).await.unwrap();
        let kept: Vec<Args> = store.range("/", "r", None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(kept, vec![args(7), args(8), args(9), args(10)]);
        assert!(stored_ids(&store, "r").1);
    }

    #[tokio::test]
    async fn caps_by_age() {
        let store = memory(100, Duration::from_millis(500));
        store.append("/", &rooms(&["busy", "idle"]), emit(&args(1))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Past the cap, an entry is not read back even before anything deletes it.
        assert_eq!(store.range("/", "idle", None).await.unwrap(), vec![]);
        assert_eq!(stored_ids(&store, "idle").0.len(), 1);
        store.append("/", &rooms(&["busy"]), emit(&args(2))).await.unwrap();
        let busy: Vec<Args> = store.range("/", "busy", None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(busy, vec![args(2)]);
        let (ids, counted) = stored_ids(&store, "busy");
        assert_eq!(ids.len(), 1);
        assert!(counted);
        // The append deleted the idle stream too: all it held was past the cap.
        assert_eq!(stored_ids(&store, "idle").0, vec![]);
        let streams: i64 = store.lock().conn.query_row("SELECT count(*) FROM streams WHERE room = 'idle'", [], |row| row.get(0)).unwrap();
        assert_eq!(streams, 0);
        // A stream deleted that way starts over.
        store.append("/", &rooms(&["idle"]), emit(&args(3))).await.unwrap();
        assert_eq!(store.range("/", "idle", None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn trimming_waits_for_a_batch_and_reads_see_the_caps() {
        let store = memory(8, MINUTE);
        let slack = len_slack(8) as usize;
        let mut nids = Vec::new();
        for n in 0..40 {
            nids.push(store.append("/", &rooms(&["r"]), emit(&args(n))).await.unwrap().nid);
            let (ids, counted) = stored_ids(&store, "r");
            assert!(counted);
            assert!(ids.len() <= 8 + slack, "{}", ids.len());
            assert_eq!(ids.last(), nids.last(), "the newest entry is never trimmed");
            // Whatever is stored, a read sees the newest 8, after any mark.
            let newest: Vec<StreamId> = nids.iter().rev().take(8).rev().copied().collect();
            let read = |after| {
                let store = &store;
                async move { store.range("/", "r", after).await.unwrap().into_iter().map(|e| e.nid).collect::<Vec<_>>() }
            };
            assert_eq!(read(None).await, newest);
            let mark = nids[nids.len().saturating_sub(3)];
            assert_eq!(read(Some(mark)).await, newest.iter().copied().filter(|id| *id > mark).collect::<Vec<_>>());
        }
        // A trim leaves exactly the cap, at once.
        assert!(stored_ids(&store, "r").0.len() < 8 + slack);
    }

    #[test]
    fn slack_is_bounded() {
        assert_eq!((len_slack(1), len_slack(8), len_slack(1000), len_slack(1 << 20)), (1, 1, 125, 128));
        assert_eq!(age_slack(Duration::from_millis(500)), 31);
        assert_eq!(age_slack(Duration::from_secs(7 * 24 * 3600)), 60_000);
    }

    #[tokio::test]
    async fn idle_streams_go_a_batch_at_a_time_and_memory_follows() {
        let store = memory(10, Duration::from_millis(300));
        let idle: Vec<String> = (0..PURGE_BATCH + 10).map(|n| format!("idle_{n}")).collect();
        store.append("/", &idle, emit(&args(0))).await.unwrap();
        store.append("/other", &rooms(&["idle_0"]), emit(&args(0))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let streams = |store: &SqliteStore| {
            let guard = store.lock();
            let rows: i64 = guard.conn.query_row("SELECT count(*) FROM streams", [], |row| row.get(0)).unwrap();
            let known: usize = guard.streams.rooms.values().map(|rooms| rooms.len()).sum();
            assert_eq!(rows as usize, known, "memory knows every stream");
            known
        };
        assert_eq!(streams(&store), PURGE_BATCH + 11);
        // An append found them idle, and deleted a batch; the next one the rest.
        store.append("/", &rooms(&["busy"]), emit(&args(1))).await.unwrap();
        assert_eq!(streams(&store), 12);
        store.append("/", &rooms(&["busy"]), emit(&args(2))).await.unwrap();
        assert_eq!(streams(&store), 1);
        let entries: i64 = store.lock().conn.query_row("SELECT count(*) FROM entries", [], |row| row.get(0)).unwrap();
        assert_eq!(entries, 2);
        // A stream found idle and appended to before its turn stays.
        store.append("/", &idle[..2], emit(&args(3))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let store_ref = &store;
        {
            let mut guard = store_ref.lock();
            let now = now_ms();
            let oldest_kept = store_ref.oldest_kept(now);
            guard.streams.next_scan_ms = 0;
            guard.streams.scan(oldest_kept, now);
            assert_eq!(guard.streams.idle.len(), 3);
        }
        store.append("/", &idle[..1], emit(&args(4))).await.unwrap();
        assert_eq!(streams(&store), 1);
        assert_eq!(store.range("/", "idle_0", None).await.unwrap().len(), 1);
        assert_eq!(store.range("/", "idle_1", None).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn one_append_deletes_a_bounded_number_of_idle_entries() {
        let store = memory(5000, Duration::from_millis(300));
        let big = rooms(&["a", "b", "c"]);
        for n in 0..2100 {
            store.append("/", &big, emit(&args(n))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let left = || store.lock().streams.rooms.get("/").map_or(0, |rooms| rooms.len());
        store.append("/", &rooms(&["busy"]), emit(&args(0))).await.unwrap();
        // Two streams (4,200 entries, past PURGE_ENTRIES after the second) went; the third waits.
        assert_eq!(left(), 2);
        store.append("/", &rooms(&["busy"]), emit(&args(1))).await.unwrap();
        assert_eq!(left(), 1);
        let entries: i64 = store.lock().conn.query_row("SELECT count(*) FROM entries", [], |row| row.get(0)).unwrap();
        assert_eq!(entries, 2);
    }

    /// Queues `count` appends while the writer thread cannot take the database, so that (all
    /// but the first, which it may have taken already) they are committed as one group.
    #[tokio::test]
    async fn concurrent_appends_share_a_transaction_with_ids_increasing_and_keys_exact() {
        let store = memory(1000, MINUTE);
        let payloads: Vec<Args> = (0..50).map(args).collect();
        // Parts 10 and 20 repeat the keys of parts 5 and 15; the rest have keys of their own or
        // none.
        let keys: Vec<Option<String>> = (0..50)
            .map(|n| match n {
                10 => Some("k5".to_string()),
                20 => Some("k15".to_string()),
                n if n % 5 == 0 => Some(format!("k{n}")),
                _ => None,
            })
            .collect();
        let rooms: Vec<Vec<String>> = (0..50).map(|n| vec![format!("user_{}", n % 7)]).collect();
        let groups_before = store.groups.load(AtomicOrdering::Relaxed);
        let guard = store.lock();
        let queued: Vec<_> = (0..50)
            .map(|n| {
                let emit = match &keys[n] {
                    Some(key) => keyed(&payloads[n], key, MINUTE),
                    None => emit(&payloads[n]),
                };
                store.append("/", &rooms[n], emit)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        drop(guard);
        let answers: Vec<Appended> = futures_util::future::join_all(queued).await.into_iter().map(Result::unwrap).collect();
        let groups = store.groups.load(AtomicOrdering::Relaxed) - groups_before;
        assert!(groups <= 2, "50 appends queued together took {groups} commits");
        assert!(!answers[10].fresh && answers[10].nid == answers[5].nid, "a key stored earlier in the group: a duplicate");
        assert!(!answers[20].fresh && answers[20].nid == answers[15].nid);
        let fresh: Vec<StreamId> = answers.iter().filter(|a| a.fresh).map(|a| a.nid).collect();
        assert_eq!(fresh.len(), 48);
        assert!(fresh.windows(2).all(|w| w[0] < w[1]), "ids increase in the order queued: {fresh:?}");
        // What was answered is what is stored: each user's stream, in id order, without duplicates.
        for user in 0..7 {
            let room = format!("user_{user}");
            let expected: Vec<Args> = (0..50).filter(|n| n % 7 == user && *n != 10 && *n != 20).map(|n| args(n as i64)).collect();
            let read: Vec<Args> = store.range("/", &room, None).await.unwrap().into_iter().map(|e| e.args).collect();
            assert_eq!(read, expected, "{room}");
            assert!(stored_ids(&store, &room).1);
        }
        // A key of the group is a duplicate after it as well.
        assert!(!store.append("/", &rooms[0], keyed(&args(0), "k5", MINUTE)).await.unwrap().fresh);
    }

    #[tokio::test]
    async fn one_failing_append_of_a_group_fails_alone() {
        let store = memory(10, MINUTE);
        store
            .lock()
            .conn
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON streams WHEN NEW.room = 'b' BEGIN SELECT RAISE(ABORT, 'no'); END")
            .unwrap();
        let payloads: Vec<Args> = (0..4).map(args).collect();
        let rooms: Vec<Vec<String>> = [&["a"][..], &["c", "b"], &["a"], &["c"]].iter().map(|r| rooms(r)).collect();
        let groups_before = store.groups.load(AtomicOrdering::Relaxed);
        let guard = store.lock();
        let queued: Vec<_> =
            (0..4).map(|n| store.append("/", &rooms[n], keyed(&payloads[n], ["k0", "k1", "k2", "k1"][n], MINUTE))).collect();
        std::thread::sleep(Duration::from_millis(50));
        drop(guard);
        let answers = futures_util::future::join_all(queued).await;
        assert!(store.groups.load(AtomicOrdering::Relaxed) - groups_before <= 2);
        assert!(answers[1].is_err(), "the insert into b fails");
        let (a0, a2, a3) = (answers[0].as_ref().unwrap(), answers[2].as_ref().unwrap(), answers[3].as_ref().unwrap());
        assert!(a0.fresh && a2.fresh && a0.nid < a2.nid);
        assert!(a3.fresh && a3.nid > a2.nid, "the failed append's key was not kept: the next one with it is stored");
        // Nothing of the failed append stays, in the file or in memory; the others are there.
        assert_eq!(store.range("/", "a", None).await.unwrap().into_iter().map(|e| e.args).collect::<Vec<_>>(), vec![args(0), args(2)]);
        assert_eq!(store.range("/", "c", None).await.unwrap().into_iter().map(|e| e.args).collect::<Vec<_>>(), vec![args(3)]);
        assert_eq!(store.lock().streams.get("/", "b"), None);
        assert!(stored_ids(&store, "a").1 && stored_ids(&store, "c").1);
    }

    #[tokio::test]
    async fn a_failed_append_leaves_memory_as_the_database() {
        let store = memory(10, MINUTE);
        store.append("/", &rooms(&["a"]), emit(&args(1))).await.unwrap();
        let before = store.lock().streams.get("/", "a");
        // The second room's insert fails: nothing of the append stays, in the file or in memory.
        store
            .lock()
            .conn
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON streams WHEN NEW.room = 'b' BEGIN SELECT RAISE(ABORT, 'no'); END")
            .unwrap();
        assert!(store.append("/", &rooms(&["a", "b"]), emit(&args(2))).await.is_err());
        assert_eq!(store.lock().streams.get("/", "a"), before);
        assert_eq!(store.lock().streams.get("/", "b"), None);
        assert_eq!(stored_ids(&store, "a").0.len(), 1);
        assert!(stored_ids(&store, "a").1);
        store.lock().conn.execute_batch("DROP TRIGGER refuse").unwrap();
        store.append("/", &rooms(&["a", "b"]), emit(&args(3))).await.unwrap();
        let read: Vec<Args> = store.range("/", "a", None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(read, vec![args(1), args(3)]);
        assert_eq!(store.range("/", "b", None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reopening_knows_lengths_and_ages() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        for n in 0..13 {
            store.append("/", &rooms(&["a", "b"]), emit(&args(n))).await.unwrap();
        }
        store.append("/x", &rooms(&["a"]), emit(&args(0))).await.unwrap();
        let before: Vec<Option<Stream>> =
            [("/", "a"), ("/", "b"), ("/x", "a")].iter().map(|(ns, r)| store.lock().streams.get(ns, r)).collect();
        let last = store.lock().last_id;
        drop(store);
        let store = on_disk(&dir.db(), NODE);
        let after: Vec<Option<Stream>> =
            [("/", "a"), ("/", "b"), ("/x", "a")].iter().map(|(ns, r)| store.lock().streams.get(ns, r)).collect();
        assert_eq!(before, after);
        assert_eq!(store.lock().last_id, last);
    }

    #[tokio::test]
    async fn user_rooms_unchanged_are_not_written_again() {
        let store = memory(10, MINUTE);
        let granted = rooms(&["user_1", "role_a"]);
        store.set_user_rooms("1", &granted).await.unwrap();
        let changes = || store.lock().conn.total_changes();
        let written = changes();
        store.set_user_rooms("1", &granted).await.unwrap();
        assert_eq!(changes(), written);
        store.set_user_rooms("1", &granted[..1]).await.unwrap();
        assert_eq!(changes(), written + 1);
        assert_eq!(store.user_rooms("1").await.unwrap(), granted[..1]);
        // The cache is bounded; users it forgot are written again, and read right.
        for n in 0..USER_ROOMS_CACHE + 10 {
            store.set_user_rooms(&n.to_string(), &granted).await.unwrap();
        }
        assert_eq!(store.lock().user_rooms.len(), USER_ROOMS_CACHE);
        store.set_user_rooms("1", &granted).await.unwrap();
        assert_eq!(store.user_rooms("1").await.unwrap(), granted);
        assert_eq!(store.user_rooms("5").await.unwrap(), granted);
    }

    #[tokio::test]
    async fn hot_statements_are_compiled_once() {
        let store = memory(3, MINUTE);
        for n in 0..20 {
            store.append("/", &rooms(&["a", "b"]), keyed(&args(n), &format!("k{n}"), MINUTE)).await.unwrap();
            store.range("/", "a", None).await.unwrap();
            store.sessions("u").await.unwrap();
            store.set_sessions("u", NODE, 1, id(n as u64, 0)).await.unwrap();
            store.end_sessions("u", &[(NODE.to_string(), id(n as u64, 1))]).await.unwrap();
        }
        let guard = store.lock();
        let hot = [
            BEGIN,
            COMMIT,
            INSERT_ENTRY,
            FIRST_KEPT,
            TRIM,
            OLDEST,
            LIVE_KEY,
            PUT_KEY,
            PURGE_KEYS,
            SEEN,
            SESSIONS,
            SET_SESSIONS,
            END_SESSION,
            SET_SEEN,
        ];
        for sql in hot.iter().copied().chain([store.range_sql.as_str()]) {
            let statement = guard.conn.prepare_cached(sql).unwrap();
            assert!(statement.get_status(rusqlite::StatementStatus::Run) > 0, "not run: {sql}");
            assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0, "compiled again: {sql}");
        }
        assert!(PURGE_KEYS.ends_with(&format!("LIMIT {PURGE_BATCH})")));
    }

    #[tokio::test]
    async fn ids_strictly_increase_and_a_given_nid_is_kept() {
        let store = memory(1000, MINUTE);
        let rooms = rooms(&["a", "b", "c"]);
        let mut nids = Vec::new();
        for n in 0..200 {
            nids.push(store.append("/", &rooms, emit(&args(n))).await.unwrap().nid);
        }
        assert!(nids.windows(2).all(|w| w[0] < w[1]), "{nids:?}");
        let mut all: Vec<StreamId> = ["a", "b", "c"].iter().flat_map(|room| stored_ids(&store, room).0).collect();
        assert_eq!(all.len(), 600);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 600, "every entry has its own id");
        // Each nid is the id of its first room's entry, and every room's entry carries it.
        assert_eq!(stored_ids(&store, "a").0, nids);
        assert_eq!(store.range("/", "c", None).await.unwrap().into_iter().map(|e| e.nid).collect::<Vec<_>>(), nids);

        let given = id(5, 5);
        let appended = store.append("/", &rooms, Stored { nid: Some(given), ..emit(&args(0)) }).await.unwrap();
        assert_eq!(appended, Appended { nid: given, fresh: true });
        let b = store.range("/", "b", None).await.unwrap();
        assert_eq!(b.len(), 201);
        assert_eq!(b.last().unwrap().nid, given);
        // The stream's order is the entries' own ids, whatever the nid.
        assert!(stored_ids(&store, "b").0.last().unwrap() > nids.last().unwrap());
    }

    #[tokio::test]
    async fn ids_increase_across_reopen_even_when_the_clock_went_back() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        let before = store.append("/", &rooms(&["r"]), emit(&args(1))).await.unwrap().nid;
        drop(store);
        let store = on_disk(&dir.db(), NODE);
        let after = store.append("/", &rooms(&["r"]), emit(&args(2))).await.unwrap().nid;
        assert!(after > before);
        drop(store);
        // The last run's clock was an hour ahead of this one.
        let ahead = id(now_ms() + 3_600_000, 7);
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute(
            "UPDATE entries SET ms = ?1, seq = ?2 WHERE (ms, seq) = (SELECT ms, seq FROM entries ORDER BY ms DESC, seq DESC LIMIT 1)",
            [ahead.ms as i64, ahead.seq as i64],
        )
        .unwrap();
        drop(conn);
        let store = on_disk(&dir.db(), NODE);
        let first = store.append("/", &rooms(&["r"]), emit(&args(3))).await.unwrap().nid;
        let second = store.append("/", &rooms(&["r", "s"]), emit(&args(4))).await.unwrap().nid;
        assert_eq!((first, second), (id(ahead.ms, 8), id(ahead.ms, 9)));
        let read: Vec<Args> = store.range("/", "r", None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(read, vec![args(1), args(2), args(3), args(4)]);
        // An append to no room stores nothing, and its id is not handed out again.
        let nothing = store.append("/", &[], emit(&args(5))).await.unwrap();
        assert!(nothing.fresh && nothing.nid == id(ahead.ms, 11));
        drop(store);
        let store = on_disk(&dir.db(), NODE);
        assert_eq!(store.append("/", &rooms(&["r"]), emit(&args(6))).await.unwrap().nid, id(ahead.ms, 12));
    }

    #[test]
    fn next_ids_follow_the_clock_or_the_last_id() {
        assert_eq!(next_id(id(5, 3), 9), id(9, 0));
        assert_eq!(next_id(id(9, 3), 9), id(9, 4));
        assert_eq!(next_id(id(9, 3), 2), id(9, 4));
        assert_eq!(next_id(id(9, MAX_SEQ), 2), id(10, 0));
    }

    #[tokio::test]
    async fn an_idempotency_key_stores_once_within_its_window() {
        let store = memory(10, MINUTE);
        let rooms = rooms(&["a", "b"]);
        let first = store.append("/", &rooms, keyed(&args(1), "k", MINUTE)).await.unwrap();
        assert!(first.fresh);
        let again = store.append("/", &rooms, keyed(&args(2), "k", MINUTE)).await.unwrap();
        assert_eq!(again, Appended { nid: first.nid, fresh: false });
        let other = store.append("/", &rooms, keyed(&args(3), "other", MINUTE)).await.unwrap();
        assert!(other.fresh && other.nid > first.nid);
        let read: Vec<Args> = merged_range(&store, "/", &rooms, None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(read, vec![args(1), args(3)]);
        // Appends and claim_key share one key space, as in Redis.
        assert_eq!(store.claim_key("k", "x", MINUTE).await.unwrap(), Some(first.nid.to_string()));

        let short = Duration::from_millis(50);
        let kept = store.append("/", &rooms, keyed(&args(4), "brief", short)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let later = store.append("/", &rooms, keyed(&args(5), "brief", short)).await.unwrap();
        assert!(later.fresh && later.nid > kept.nid);
        assert_eq!(merged_range(&store, "/", &rooms, None).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn expired_keys_are_purged() {
        let store = memory(10, MINUTE);
        for n in 0..10 {
            store.claim_key(&format!("k{n}"), "v", Duration::ZERO).await.unwrap();
        }
        store.claim_key("last", "v", MINUTE).await.unwrap();
        let keys: Vec<String> = store
            .lock()
            .conn
            .prepare("SELECT key FROM idempotency_keys")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(keys, vec!["last".to_string()]);
    }

    #[tokio::test]
    async fn claim_key_keeps_the_first_value_until_it_expires() {
        let store = memory(10, MINUTE);
        assert_eq!(store.claim_key("k", "first", MINUTE).await.unwrap(), None);
        assert_eq!(store.claim_key("k", "second", MINUTE).await.unwrap(), Some("first".into()));
        assert_eq!(store.claim_key("k", "third", MINUTE).await.unwrap(), Some("first".into()));
        assert_eq!(store.claim_key("brief", "first", Duration::from_millis(30)).await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.claim_key("brief", "second", MINUTE).await.unwrap(), None);
        assert_eq!(store.claim_key("brief", "third", MINUTE).await.unwrap(), Some("second".into()));
    }

    #[tokio::test]
    async fn read_marks_only_move_forward() {
        let store = memory(10, MINUTE);
        assert_eq!(store.read_state("1").await.unwrap(), ReadState::default());
        store.mark_read("1", &[id(7, 0), id(2, 0)], Some(id(4, 0))).await.unwrap();
        let state = store.read_state("1").await.unwrap();
        assert_eq!(state, ReadState { up_to: Some(id(4, 0)), ids: vec![id(7, 0)] });
        store.mark_read("1", &[id(9, 0), id(3, 0), id(6, 0)], Some(id(1, 0))).await.unwrap();
        let state = store.read_state("1").await.unwrap();
        assert_eq!(state, ReadState { up_to: Some(id(4, 0)), ids: vec![id(6, 0), id(7, 0), id(9, 0)] });
        store.mark_read("1", &[], Some(id(7, u64::MAX))).await.unwrap();
        let state = store.read_state("1").await.unwrap();
        assert_eq!(state, ReadState { up_to: Some(id(7, u64::MAX)), ids: vec![id(9, 0)] });
        store.mark_read("2", &[id(3, 1), id(3, 0), id(10, 0)], None).await.unwrap();
        assert_eq!(store.read_state("2").await.unwrap(), ReadState { up_to: None, ids: vec![id(3, 0), id(3, 1), id(10, 0)] });
    }

    #[tokio::test]
    async fn user_rooms_are_replaced() {
        let store = memory(10, MINUTE);
        assert_eq!(store.user_rooms("1").await.unwrap(), Vec::<String>::new());
        store.set_user_rooms("1", &rooms(&["user_1", "role_a"])).await.unwrap();
        store.set_user_rooms("1", &rooms(&["user_1"])).await.unwrap();
        store.set_user_rooms("2", &[]).await.unwrap();
        assert_eq!(store.user_rooms("1").await.unwrap(), rooms(&["user_1"]));
        assert_eq!(store.user_rooms("2").await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn sessions_lifecycle() {
        let store = memory(10, MINUTE);
        let session = |node: &str, sockets, since| NodeSession { node: node.into(), sockets, since };
        assert_eq!(store.sessions("u").await.unwrap(), Sessions::default());
        store.set_sessions("u", NODE, 1, id(10, 0)).await.unwrap();
        // Another socket there: the count moves, `since` stays the first one.
        store.set_sessions("u", NODE, 2, id(20, 0)).await.unwrap();
        store.set_sessions("u", "node-b", 1, id(30, 0)).await.unwrap();
        store.set_sessions("v", NODE, 1, id(99, 0)).await.unwrap();
        let sessions = store.sessions("u").await.unwrap();
        assert_eq!(sessions, Sessions { seen: None, nodes: vec![session(NODE, 2, id(10, 0)), session("node-b", 1, id(30, 0))] });

        // Ending takes the largest of the seen mark, the row's `since` and the mark given.
        store.end_sessions("u", &[(NODE.to_string(), id(5, 0))]).await.unwrap();
        let sessions = store.sessions("u").await.unwrap();
        assert_eq!(sessions, Sessions { seen: Some(id(10, 0)), nodes: vec![session("node-b", 1, id(30, 0))] });
        store.end_sessions("u", &[("node-b".to_string(), id(40, u64::MAX))]).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap(), Sessions { seen: Some(id(40, u64::MAX)), nodes: vec![] });
        // Without a row, the mark alone counts, and only forward.
        store.end_sessions("u", &[("gone".to_string(), id(40, 3))]).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap().seen, Some(id(40, u64::MAX)));
        store.end_sessions("u", &[("gone".to_string(), id(41, 0)), (NODE.to_string(), id(1, 0))]).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap().seen, Some(id(41, 0)));
        store.end_sessions("u", &[]).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap().seen, Some(id(41, 0)));

        // Back after all sockets went: a new `since`.
        store.set_sessions("u", NODE, 1, id(50, 0)).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap(), Sessions { seen: Some(id(41, 0)), nodes: vec![session(NODE, 1, id(50, 0))] });
        assert_eq!(store.sessions("v").await.unwrap(), Sessions { seen: None, nodes: vec![session(NODE, 1, id(99, 0))] });
    }

    #[tokio::test]
    async fn node_marks_alive_only_for_this_node_and_delivered_only_forward() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        let nodes = rooms(&[NODE, "node-b"]);
        assert_eq!(store.node_marks(&nodes).await.unwrap(), vec![NodeMark { alive: true, delivered: None }, NodeMark::default()]);
        store.write_node_mark(NODE, id(5, 0)).await.unwrap();
        store.write_node_mark(NODE, id(3, 0)).await.unwrap();
        assert_eq!(store.node_marks(&nodes).await.unwrap()[0], NodeMark { alive: true, delivered: Some(id(5, 0)) });
        store.write_node_mark(NODE, id(5, u64::MAX)).await.unwrap();
        store.write_node_mark(NODE, id(5, 7)).await.unwrap();
        assert_eq!(store.node_marks(&nodes).await.unwrap()[0], NodeMark { alive: true, delivered: Some(id(5, u64::MAX)) });
        assert_eq!(store.node_marks(&[]).await.unwrap(), vec![]);
        drop(store);
        // Restarted under another name: the old node is dead, and its mark is still there.
        let store = on_disk(&dir.db(), "node-b");
        assert_eq!(
            store.node_marks(&nodes).await.unwrap(),
            vec![NodeMark { alive: false, delivered: Some(id(5, u64::MAX)) }, NodeMark { alive: true, delivered: None }]
        );
    }

    #[tokio::test]
    async fn marks_past_sqlite_integers_compare_as_numbers() {
        let store = memory(100, MINUTE);
        let mut nids = Vec::new();
        for n in 0..50 {
            nids.push(store.append("/", &rooms(&["r"]), emit(&args(n))).await.unwrap().nid);
        }
        let first = nids[0];
        let after = |mark| {
            let store = &store;
            async move { store.range("/", "r", Some(mark)).await.unwrap().into_iter().map(|e| e.nid).collect::<Vec<_>>() }
        };
        let later: Vec<StreamId> = nids.iter().copied().filter(|id| id.ms > first.ms).collect();
        assert_eq!(after(id(first.ms, u64::MAX)).await, later);
        assert_eq!(after(id(first.ms, i64::MAX as u64)).await, later);
        assert_eq!(after(id(first.ms - 1, u64::MAX)).await, nids);
        assert_eq!(after(id(u64::MAX, u64::MAX)).await, vec![]);
        assert_eq!(after(id(i64::MAX as u64 + 1, 0)).await, vec![]);
        assert_eq!(after(id(0, 0)).await, nids);

        let big = [id(3, u64::MAX), id(3, u64::MAX - 1), id(u64::MAX, 0), id(4, 0)];
        store.mark_read("u", &big, None).await.unwrap();
        assert_eq!(store.read_state("u").await.unwrap().ids, vec![id(3, u64::MAX - 1), id(3, u64::MAX), id(4, 0), id(u64::MAX, 0)]);
        store.mark_read("u", &[], Some(id(3, u64::MAX))).await.unwrap();
        assert_eq!(store.read_state("u").await.unwrap(), ReadState { up_to: Some(id(3, u64::MAX)), ids: vec![id(4, 0), id(u64::MAX, 0)] });
        store.set_sessions("u", NODE, u64::MAX, id(u64::MAX, u64::MAX)).await.unwrap();
        let sessions = store.sessions("u").await.unwrap();
        assert_eq!(sessions.nodes[0].since, id(u64::MAX, u64::MAX));
        store.end_sessions("u", &[(NODE.to_string(), id(1, 0))]).await.unwrap();
        assert_eq!(store.sessions("u").await.unwrap().seen, Some(id(u64::MAX, u64::MAX)));
    }

    #[tokio::test]
    async fn unreadable_entries_are_skipped() {
        let store = memory(10, MINUTE);
        for n in 1..=3 {
            store.append("/", &rooms(&["r"]), emit(&args(n))).await.unwrap();
        }
        let ids = stored_ids(&store, "r").0;
        {
            let guard = store.lock();
            let damage = |sql: &str, id: StreamId| guard.conn.execute(sql, [id.ms as i64, id.seq as i64]).unwrap();
            damage("UPDATE entries SET args = '{not json' WHERE ms = ?1 AND seq = ?2", ids[0]);
            damage("UPDATE entries SET nid = 'nid?' WHERE ms = ?1 AND seq = ?2", ids[1]);
        }
        let read: Vec<Args> = store.range("/", "r", None).await.unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(read, vec![args(3)]);
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        let rooms = rooms(&["user_1", "role_a"]);
        let blob = Args(vec![Value::Binary(vec![0u8, 1, 255].into()), Value::String("x".into())]);
        let first = store.append("/", &rooms, keyed(&args(1), "k", MINUTE)).await.unwrap().nid;
        let second = store.append("/admin", &rooms[..1], Stored { event: "other", ..emit(&blob) }).await.unwrap().nid;
        store.claim_key("claimed", "value", MINUTE).await.unwrap();
        store.set_sessions("1", NODE, 2, id(10, 0)).await.unwrap();
        store.set_sessions("2", NODE, 1, id(11, 0)).await.unwrap();
        store.end_sessions("2", &[(NODE.to_string(), id(12, 3))]).await.unwrap();
        store.write_node_mark(NODE, id(13, 0)).await.unwrap();
        store.set_user_rooms("1", &rooms).await.unwrap();
        store.mark_read("1", &[id(20, 0)], Some(id(14, 0))).await.unwrap();
        drop(store);

        let store = on_disk(&dir.db(), "node-b");
        let entries = merged_range(&store, "/", &rooms, None).await.unwrap();
        assert_eq!(entries, vec![Entry { nid: first, event: "notification".into(), args: args(1) }]);
        assert_eq!(store.range("/admin", "user_1", None).await.unwrap(), vec![Entry { nid: second, event: "other".into(), args: blob }]);
        assert_eq!(store.append("/", &rooms, keyed(&args(2), "k", MINUTE)).await.unwrap(), Appended { nid: first, fresh: false });
        assert_eq!(store.claim_key("claimed", "again", MINUTE).await.unwrap(), Some("value".into()));
        let sessions = store.sessions("1").await.unwrap();
        assert_eq!(sessions, Sessions { seen: None, nodes: vec![NodeSession { node: NODE.into(), sockets: 2, since: id(10, 0) }] });
        assert_eq!(store.sessions("2").await.unwrap(), Sessions { seen: Some(id(12, 3)), nodes: vec![] });
        assert_eq!(store.node_marks(&[NODE.to_string()]).await.unwrap(), vec![NodeMark { alive: false, delivered: Some(id(13, 0)) }]);
        assert_eq!(store.user_rooms("1").await.unwrap(), rooms);
        assert_eq!(store.read_state("1").await.unwrap(), ReadState { up_to: Some(id(14, 0)), ids: vec![id(20, 0)] });
        assert!(store.append("/", &rooms, emit(&args(3))).await.unwrap().nid > second);
    }

    /// Run in a child process by `a_killed_process_loses_nothing`: stores, then dies without
    /// closing anything, as under `kill -9`.
    #[tokio::test]
    async fn killed_child() {
        let Some(dir) = std::env::var_os("HERALD_SQLITE_KILLED_CHILD") else { return };
        let store = on_disk(&Path::new(&dir).join("herald.db"), NODE);
        for n in 0..100 {
            store.append("/", &rooms(&["r"]), keyed(&args(n), &format!("k{n}"), MINUTE)).await.unwrap();
        }
        store.set_sessions("u", NODE, 1, id(5, 0)).await.unwrap();
        store.end_sessions("v", &[(NODE.to_string(), id(7, 0))]).await.unwrap();
        store.mark_read("u", &[id(9, 0)], Some(id(8, 0))).await.unwrap();
        store.write_node_mark(NODE, id(6, 0)).await.unwrap();
        std::process::abort();
    }

    #[test]
    fn a_killed_process_loses_nothing() {
        let dir = TempDir::new();
        let path = module_path!().split_once("::").map_or(module_path!(), |(_, path)| path);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&format!("{path}::killed_child"), "--exact", "--test-threads=1"])
            .env("HERALD_SQLITE_KILLED_CHILD", &dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child ran to its end: {status}");
        // Not closed: what it stored is in the WAL, not yet in the database file.
        assert!(dir.0.join("herald.db-wal").exists());
        let store = on_disk(&dir.db(), NODE);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let kept: Vec<Args> = rt.block_on(store.range("/", "r", None)).unwrap().into_iter().map(|e| e.args).collect();
        assert_eq!(kept, (90..100).map(args).collect::<Vec<_>>());
        assert!(!rt.block_on(store.append("/", &rooms(&["r"]), keyed(&args(0), "k99", MINUTE))).unwrap().fresh);
        let sessions = rt.block_on(store.sessions("u")).unwrap();
        assert_eq!(sessions.nodes, vec![NodeSession { node: NODE.into(), sockets: 1, since: id(5, 0) }]);
        assert_eq!(rt.block_on(store.sessions("v")).unwrap().seen, Some(id(7, 0)));
        assert_eq!(rt.block_on(store.read_state("u")).unwrap(), ReadState { up_to: Some(id(8, 0)), ids: vec![id(9, 0)] });
        assert_eq!(rt.block_on(store.node_marks(&[NODE.to_string()])).unwrap()[0].delivered, Some(id(6, 0)));
    }

    #[tokio::test]
    async fn a_database_that_is_damaged_or_not_herald_s_is_refused() {
        let dir = TempDir::new();
        // Random bytes.
        let path = dir.0.join("random.db");
        let bytes: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let e = refused(SqliteStore::open(Some(&path), NODE, 10, MINUTE));
        assert!(e.contains("random.db is not a usable Herald database"), "{e}");

        // A Herald database whose pages were overwritten.
        let path = dir.db();
        let store = on_disk(&path, NODE);
        let big = Args::one(Value::String("x".repeat(2000)));
        for _ in 0..20 {
            store.append("/", &rooms(&["a", "b", "c"]), emit(&big)).await.unwrap();
        }
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 4096, "{}", bytes.len());
        for (i, byte) in bytes.iter_mut().enumerate().skip(4096) {
            *byte = (i % 251) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let e = refused(SqliteStore::open(Some(&path), NODE, 10, MINUTE));
        assert!(e.contains("herald.db is not a usable Herald database"), "{e}");

        // Another program's database.
        let path = dir.0.join("other.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE things (x); INSERT INTO things VALUES (1);").unwrap();
        let e = refused(SqliteStore::open(Some(&path), NODE, 10, MINUTE));
        assert!(e.contains("other.db is not a usable Herald database: it is a SQLite database of something else"), "{e}");

        // A newer Herald's.
        let path = dir.0.join("newer.db");
        drop(on_disk(&path, NODE));
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let e = refused(SqliteStore::open(Some(&path), NODE, 10, MINUTE));
        assert!(e.contains("newer.db is not a usable Herald database: it was written by a newer Herald"), "{e}");

        // An empty file is an empty database.
        let path = dir.0.join("empty.db");
        std::fs::write(&path, b"").unwrap();
        let store = on_disk(&path, NODE);
        assert!(store.append("/", &rooms(&["r"]), emit(&args(1))).await.unwrap().fresh);
    }

    #[test]
    fn a_path_that_cannot_be_written_is_refused() {
        let dir = TempDir::new();
        let missing = dir.0.join("missing").join("herald.db");
        let e = refused(SqliteStore::open(Some(&missing), NODE, 10, MINUTE));
        assert!(e.contains("cannot open") && e.contains("missing"), "{e}");
        let e = refused(SqliteStore::open(Some(&dir.0), NODE, 10, MINUTE));
        assert!(e.contains(&dir.0.display().to_string()), "{e}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let read_only = dir.0.join("read-only");
            std::fs::create_dir(&read_only).unwrap();
            std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
            // Root writes anyway: nothing to check then.
            if std::fs::write(read_only.join("probe"), b"").is_err() {
                let e = refused(SqliteStore::open(Some(&read_only.join("herald.db")), NODE, 10, MINUTE));
                assert!(e.contains("read-only"), "{e}");
            }
            std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused() {
        let dir = TempDir::new();
        let store = on_disk(&dir.db(), NODE);
        let e = refused(SqliteStore::open(Some(&dir.db()), "node-b", 10, MINUTE));
        assert!(e.contains("in use by another process"), "{e}");
        drop(store);
        drop(on_disk(&dir.db(), "node-b"));
    }
}

/// A measurement, not a check: `cargo test --release --lib store::sqlite::bench -- --ignored --nocapture`.
#[cfg(test)]
mod bench {
    use std::time::Instant;

    use super::*;
    use crate::payload::{Args, Value};

    const ROOMS: usize = 100;
    const ROUNDS: usize = 5;
    const ROUND: Duration = Duration::from_millis(300);

    fn ready<T>(future: BoxFuture<'_, T>) -> T {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        }
        // Appends are answered by the writer thread: one at a time here (no group to share).
        RUNTIME.with(|runtime| runtime.block_on(future))
    }

    fn payload() -> Args {
        Args::one(Value::Object(vec![
            ("title".into(), Value::String("A notification of a typical size".into())),
            ("body".into(), Value::String("x".repeat(120))),
            ("n".into(), Value::Int(42)),
        ]))
    }

    fn emit(args: &Args) -> Stored<'_> {
        Stored { event: "notification", args, dedup: None, nid: None, idempotency: None, relay: None }
    }

    /// This thread's time on a CPU so far (ns; Linux), which other work on the machine does not
    /// inflate as it does the time elapsed.
    fn cpu_ns() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
    }

    /// Microseconds per call of `f`, in rounds of [`ROUND`] (the CPU time is read at the
    /// scheduler's ticks: a round is long enough for them not to matter): the best and the
    /// median round, elapsed and on the CPU.
    fn measure(what: &str, mut f: impl FnMut(usize)) {
        let mut elapsed = Vec::with_capacity(ROUNDS);
        let mut cpu = Vec::with_capacity(ROUNDS);
        let mut i = 0;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let cpu_started = cpu_ns();
            let mut n = 0;
            while started.elapsed() < ROUND {
                for _ in 0..10 {
                    f(i);
                    i += 1;
                    n += 1;
                }
            }
            elapsed.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
            if let (Some(from), Some(to)) = (cpu_started, cpu_ns()) {
                cpu.push(to.saturating_sub(from) as f64 / 1e3 / n as f64);
            }
        }
        elapsed.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let cpu = if cpu.is_empty() { String::new() } else { format!("   cpu best {:>9.2} median {:>9.2}", cpu[0], cpu[cpu.len() / 2]) };
        println!("{what:<40} µs: best {:>9.2} median {:>9.2}{cpu}", elapsed[0], elapsed[ROUNDS / 2]);
    }

    fn run(label: &str, store: &SqliteStore, max_len: usize) {
        let args = payload();
        let rooms: Vec<Vec<String>> = (0..ROOMS).map(|n| vec![format!("user_{n}")]).collect();
        // Full streams: every append trims one entry, as in a long run.
        for _ in 0..max_len {
            for room in &rooms {
                ready(store.append("/", room, emit(&args))).unwrap();
            }
        }
        measure(&format!("{label}: append to 1 room"), |i| {
            ready(store.append("/", &rooms[i % ROOMS], emit(&args))).unwrap();
        });
        measure(&format!("{label}: 100 appends of 1 room (a batch)"), |_| {
            let mut nid = None;
            for room in &rooms {
                let appended = ready(store.append("/", room, Stored { nid, ..emit(&args) })).unwrap();
                nid = Some(appended.nid);
            }
        });
        let all: Vec<String> = rooms.iter().map(|r| r[0].clone()).collect();
        measure(&format!("{label}: 1 append to 100 rooms"), |_| {
            ready(store.append("/", &all, emit(&args))).unwrap();
        });
        let node = "node-a".to_string();
        measure(&format!("{label}: sessions + set + end"), |i| {
            let user = format!("u{}", i % 1000);
            let sessions = ready(store.sessions(&user)).unwrap();
            let since = sessions.seen.unwrap_or_default();
            store.set_sessions_now(&user, &node, 1, since).unwrap();
            store.end_sessions_now(&user, &[(node.clone(), StreamId::new(now_ms(), 0))]).unwrap();
        });
        measure(&format!("{label}: set_user_rooms (unchanged)"), |i| {
            let user = format!("u{}", i % 1000);
            ready(store.set_user_rooms(&user, &rooms[i % ROOMS])).unwrap();
        });
        measure(&format!("{label}: range of a full stream"), |i| {
            assert_eq!(ready(store.range("/", &rooms[i % ROOMS][0], None)).unwrap().len(), max_len);
        });
    }

    #[test]
    #[ignore]
    fn bench() {
        let max_len = 1000;
        let max_age = Duration::from_secs(7 * 24 * 3600);
        // `HERALD_BENCH=disk` or `memory`: only that one.
        let only = std::env::var("HERALD_BENCH").unwrap_or_default();
        if only != "memory" {
            let dir = std::env::temp_dir().join(format!("herald-sqlite-bench-{}-{}", std::process::id(), now_ms()));
            std::fs::create_dir_all(&dir).unwrap();
            let store = SqliteStore::open(Some(&dir.join("herald.db")), "node-a", max_len, max_age).unwrap();
            run("disk", &store, max_len);
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
        if only != "disk" {
            let store = SqliteStore::open(None, "node-a", max_len, max_age).unwrap();
            run("memory", &store, max_len);
        }
    }
}
