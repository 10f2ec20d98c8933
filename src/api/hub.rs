//! One reader of the event log for all SSE clients: it polls the log every
//! 100 ms and broadcasts new events; clients that join late or fall behind
//! (the broadcast buffer is bounded) read the log themselves at their own
//! pace until they are back at the head. 200 idle clients cost one query
//! per 100 ms, not 200, and a slow client never holds anyone up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::{EventRecord, Store};

const POLL: Duration = Duration::from_millis(100);
/// How long a missing id holds back the events after it. Postgres takes
/// ids when a row is inserted, so a transaction that commits late leaves a
/// hole that fills in; one that rolls back leaves it forever.
const GAP_WAIT: Duration = Duration::from_secs(2);
const BATCH: i64 = 1000;
/// Batches buffered per client before it lags (and reads the log itself).
const BUFFER: usize = 256;

#[derive(Clone)]
struct Batch {
    /// The head before these rows: a client behind it missed something.
    from: i64,
    rows: Arc<Vec<EventRecord>>,
}

pub struct EventHub {
    head: AtomicI64,
    tx: broadcast::Sender<Batch>,
    /// Ends every stream: open SSE connections must not hold up shutdown.
    shutdown: CancellationToken,
}

impl EventHub {
    /// Starts the poller at the log's current end; it stops with `shutdown`.
    pub async fn start(store: Store, shutdown: CancellationToken) -> Arc<EventHub> {
        EventHub::start_with(store, shutdown, BUFFER).await
    }

    async fn start_with(store: Store, shutdown: CancellationToken, buffer: usize) -> Arc<EventHub> {
        let head = store.last_event_id().await.unwrap_or(0);
        let (tx, _) = broadcast::channel(buffer);
        let hub = Arc::new(EventHub {
            head: AtomicI64::new(head),
            tx,
            shutdown: shutdown.clone(),
        });
        let h = hub.clone();
        tokio::spawn(async move {
            // Since when the next id has been missing (see `GAP_WAIT`).
            let mut gap_since: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
                loop {
                    let from = h.head.load(Ordering::Acquire);
                    let mut rows = match store.events_after(from, BATCH).await {
                        Ok(rows) if !rows.is_empty() => rows,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: cannot read the event log");
                            break;
                        }
                    };
                    let n = contiguous(from, &rows);
                    if n < rows.len() {
                        let since = *gap_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() < GAP_WAIT {
                            // A lower id may still commit: hold back what
                            // follows the gap (on Postgres ids are taken at
                            // insert, not at commit).
                            rows.truncate(n);
                        } else {
                            // Rolled back (sequences never reuse an id).
                            gap_since = None;
                        }
                    } else {
                        gap_since = None;
                    }
                    if rows.is_empty() {
                        break;
                    }
                    let partial = rows.len() as i64 != BATCH;
                    h.head.store(rows[rows.len() - 1].id, Ordering::Release);
                    let _ = h.tx.send(Batch {
                        from,
                        rows: Arc::new(rows),
                    });
                    if partial {
                        break;
                    }
                }
            }
        });
        hub
    }

    /// Events after `after`, oldest first, forever (until shutdown).
    pub fn follow(
        self: &Arc<Self>,
        store: Store,
        after: i64,
    ) -> impl futures_util::Stream<Item = EventRecord> + Send + use<> {
        let rx = self.tx.subscribe();
        let st = Follow {
            hub: self.clone(),
            store,
            last: after,
            rx,
            buf: VecDeque::new(),
        };
        futures_util::stream::unfold(st, |mut st| async move {
            let stop = st.hub.shutdown.clone();
            let e = tokio::select! {
                _ = stop.cancelled() => None,
                e = st.next() => e,
            }?;
            Some((e, st))
        })
    }
}

struct Follow {
    hub: Arc<EventHub>,
    store: Store,
    last: i64,
    rx: broadcast::Receiver<Batch>,
    buf: VecDeque<EventRecord>,
}

impl Follow {
    async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                self.last = e.id;
                return Some(e);
            }
            // Behind the hub: read the log directly.
            let head = self.hub.head.load(Ordering::Acquire);
            if self.last < head {
                // Only up to the head: past it the hub decides (gaps).
                match self.store.events_between(self.last, head, 200).await {
                    Ok(rows) if !rows.is_empty() => {
                        self.buf.extend(rows);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot read the event log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            match self.rx.recv().await {
                Ok(b) => {
                    if b.from > self.last {
                        // Missed rows before this batch: the log has them.
                        continue;
                    }
                    self.buf
                        .extend(b.rows.iter().filter(|r| r.id > self.last).cloned());
                }
                // Too slow: dropped from the buffer; catch up from the log.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// How many of `rows` continue `head` without a missing id.
fn contiguous(head: i64, rows: &[EventRecord]) -> usize {
    let mut expect = head + 1;
    rows.iter()
        .take_while(|r| {
            let ok = r.id == expect;
            expect += 1;
            ok
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewEvent, OpenOptions, now_millis};
    use futures_util::StreamExt;

    async fn append(store: &Store, i: usize) {
        let e = NewEvent {
            kind: format!("k{i}"),
            image: None,
            rollout_id: None,
            job_id: None,
            data: serde_json::json!({}),
        };
        store.append_event(&e, now_millis()).await.unwrap();
    }

    /// A client that does not read while more batches arrive than the
    /// buffer holds still gets every event once, in order, from the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_client_catches_up_from_the_log_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/h.db", dir.path().display());
        let store = Store::open(&url, &OpenOptions::default()).await.unwrap();
        append(&store, 0).await;
        let stop = CancellationToken::new();
        let hub = EventHub::start_with(store.clone(), stop.clone(), 2).await;
        let mut slow = Box::pin(hub.follow(store.clone(), 0));
        let mut fast = Box::pin(hub.follow(store.clone(), 1));
        // Eight batches (one per poll) while `slow` reads nothing.
        for i in 1..=8 {
            append(&store, i).await;
            assert_eq!(fast.next().await.unwrap().kind, format!("k{i}"));
        }
        let mut got = Vec::new();
        for _ in 0..9 {
            got.push(slow.next().await.unwrap().kind);
        }
        let want: Vec<String> = (0..=8).map(|i| format!("k{i}")).collect();
        assert_eq!(got, want);
        append(&store, 9).await;
        assert_eq!(slow.next().await.unwrap().kind, "k9", "live again");
        stop.cancel();
        assert!(slow.next().await.is_none(), "shutdown ends the stream");
    }
}
