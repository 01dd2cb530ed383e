//! The state behind the gRPC service: the tiered store, the mirror of its host-tier block set,
//! the numbered event log, and the pins.
//!
//! **Events are set differences, not call records.** After every mutation of the host tier, the
//! hashes it may have touched (inserted, evicted, promoted) are *reconciled*: a hash the host
//! tier now holds and the mirror lacks yields `BlockStored`; the reverse yields `BlockRemoved`.
//! Reconciliation runs under the state lock, after the mutation, so whatever the interleaving
//! (a `Get` promotes without that lock, because it awaits the shared tier), the last
//! reconciliation of a hash sees its last mutation, and a subscriber that applies the events in
//! order ends with exactly the host tier's set. The mirror also answers snapshots, which the
//! host tier cannot list.
//!
//! Lock order: state, then the host tier's own lock (inside `TieredStore`); never the reverse.

use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lcserve_common::SequenceHash;
use lcserve_proto::hash_to_bytes;
use lcserve_proto::v1::{self, kv_event::Kind};
use tokio::sync::broadcast;

use crate::host_cache::PinGuard;
use crate::redis_tier::RedisTier;
use crate::tenant_quota::TenantQuotas;
use crate::tier::Blocks;
use crate::tiered::{TierKind, TieredStore};

/// Why a subscription cannot start where it asked to (and did not ask for a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReplayable {
    /// The events after `from` have left the log.
    Gap { from: u64, oldest: u64, last: u64 },
    /// `from` is a sequence number of another epoch: the server restarted since.
    OtherEpoch { asked: u64, current: u64 },
}

/// What a subscriber receives first, and the live feed that follows it without a gap.
pub(crate) struct Subscription {
    pub backlog: Vec<v1::KvEvent>,
    pub live: broadcast::Receiver<v1::KvEvent>,
}

struct State {
    /// The host tier's block set as published so far.
    mirror: HashSet<SequenceHash>,
    /// The last `log_len` events, oldest first, for resuming subscribers.
    log: VecDeque<v1::KvEvent>,
    log_len: usize,
    /// Sequence number of the latest event; 0 before the first. Monotonic for the server's life.
    last: u64,
    /// Random per server start: names the sequence numbering.
    epoch: u64,
    live: broadcast::Sender<v1::KvEvent>,
    /// Per-tenant byte quotas of the host tier, when configured.
    quotas: Option<TenantQuotas>,
    /// Events published since start, by kind: the metrics' `events_total`.
    published: EventCounts,
}

/// Events published since start, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EventCounts {
    pub stored: u64,
    pub removed: u64,
    pub cleared: u64,
}

impl State {
    fn push(&mut self, kind: Kind) {
        match &kind {
            Kind::Stored(_) => self.published.stored += 1,
            Kind::Removed(_) => self.published.removed += 1,
            Kind::Cleared(_) => self.published.cleared += 1,
        }
        self.last += 1;
        let event = v1::KvEvent { sequence: self.last, kind: Some(kind), epoch: self.epoch };
        if self.log.len() >= self.log_len {
            self.log.pop_front();
        }
        self.log.push_back(event.clone());
        // No receiver is not an error: nobody is subscribed right now.
        let _ = self.live.send(event);
    }

    fn oldest(&self) -> u64 {
        self.log.front().map_or(self.last + 1, |event| event.sequence)
    }
}

/// Quota settings and counters, for `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QuotaStats {
    pub quota_bytes: u64,
    pub evictions: u64,
    pub tenants: u64,
}

type Pins = Mutex<HashMap<u64, Vec<PinGuard>>>;

/// Shared by every request handler (behind an `Arc`).
pub(crate) struct Store {
    pub tiered: TieredStore<RedisTier>,
    state: Mutex<State>,
    pins: Arc<Pins>,
    next_pin: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here do not panic between related updates; see HostCache's note.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// A store whose events are numbered in `epoch` (random per start, see `random_epoch`).
    pub fn new(
        tiered: TieredStore<RedisTier>,
        log_len: usize,
        subscriber_buffer: usize,
        epoch: u64,
        quotas: Option<TenantQuotas>,
    ) -> Self {
        let (live, _) = broadcast::channel(subscriber_buffer.max(1));
        let log = VecDeque::new();
        let state = State {
            mirror: HashSet::new(),
            log,
            log_len: log_len.max(1),
            last: 0,
            epoch,
            live,
            quotas,
            published: EventCounts::default(),
        };
        Store { tiered, state: Mutex::new(state), pins: Arc::default(), next_pin: AtomicU64::new(1) }
    }

    /// Publishes the difference between the host tier and the mirror for `hashes`.
    fn reconcile(&self, state: &mut State, hashes: impl IntoIterator<Item = SequenceHash>) {
        let host = self.tiered.host();
        for hash in hashes {
            let held = host.contains(&hash);
            if held && state.mirror.insert(hash) {
                state.push(Kind::Stored(v1::BlockStored { hash: hash_to_bytes(hash) }));
            } else if !held && state.mirror.remove(&hash) {
                state.push(Kind::Removed(v1::BlockRemoved { hash: hash_to_bytes(hash) }));
            }
        }
    }

    /// Stores validated blocks of `tenant` (host tier now, shared tier behind), evicting the
    /// tenant's own oldest blocks if it is over its quota; returns how many of them the host
    /// tier holds afterwards.
    pub fn put(&self, tenant: &str, blocks: Blocks) -> usize {
        if blocks.is_empty() {
            return 0;
        }
        let charged: Vec<(SequenceHash, usize)> = blocks.iter().map(|(hash, block)| (*hash, block.len())).collect();
        let mut state = lock(&self.state);
        let stored = self.tiered.put_for(tenant, blocks);
        let mut touched: Vec<SequenceHash> = stored.evicted.iter().map(|removed| removed.hash).collect();
        if let Some(quotas) = &mut state.quotas {
            quotas.forget(touched.iter().copied());
            touched.extend(quotas.charge(self.tiered.host(), tenant, &charged).iter().map(|removed| removed.hash));
        }
        self.reconcile(&mut state, touched.into_iter().chain(charged.iter().map(|(hash, _)| *hash)));
        let host = self.tiered.host();
        charged.iter().filter(|(hash, _)| host.contains(hash)).count()
    }

    /// The quota settings and counters (zeros without quotas).
    pub fn quota_stats(&self) -> QuotaStats {
        let state = lock(&self.state);
        state.quotas.as_ref().map_or_else(QuotaStats::default, |quotas| QuotaStats {
            quota_bytes: quotas.quota() as u64,
            evictions: quotas.evictions(),
            tenants: quotas.tenants() as u64,
        })
    }

    /// The longest servable prefix of `hashes`, promoting shared-tier hits into RAM.
    pub async fn get(&self, hashes: &[SequenceHash]) -> Vec<Bytes> {
        let fetched = self.tiered.get(hashes).await;
        let promoted = hashes.iter().zip(&fetched.sources).filter(|(_, source)| **source == TierKind::Shared);
        let touched: Vec<SequenceHash> =
            fetched.evicted.iter().map(|removed| removed.hash).chain(promoted.map(|(hash, _)| *hash)).collect();
        let mut state = lock(&self.state);
        if let Some(quotas) = &mut state.quotas {
            // Promoted blocks are charged to no one: a Get names no tenant.
            quotas.forget(fetched.evicted.iter().map(|removed| removed.hash));
            let read = hashes.iter().zip(&fetched.sources).filter(|(_, source)| **source == TierKind::Host);
            quotas.touch(&read.map(|(hash, _)| *hash).collect::<Vec<_>>());
        }
        if !touched.is_empty() {
            self.reconcile(&mut state, touched);
        }
        fetched.blocks
    }

    /// Drops every host-tier block; one `Cleared` event stands for all of them.
    pub fn clear(&self) -> usize {
        let mut state = lock(&self.state);
        let removed = self.tiered.host().clear().len();
        state.mirror.clear();
        if let Some(quotas) = &mut state.quotas {
            quotas.clear();
        }
        state.push(Kind::Cleared(v1::Cleared {}));
        removed
    }

    /// Pins the held prefix of `hashes` for `lease`; returns the pin id and the pinned count.
    /// The lease is enforced by a timer task, so the caller must be inside a tokio runtime.
    pub fn pin(&self, hashes: &[SequenceHash], lease: Duration) -> (u64, usize) {
        let guards = self.tiered.host().pin_prefix(hashes);
        let pinned = guards.len();
        let id = self.next_pin.fetch_add(1, Ordering::Relaxed);
        lock(&self.pins).insert(id, guards);
        let pins = Arc::clone(&self.pins);
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            lock(&pins).remove(&id);
        });
        (id, pinned)
    }

    /// Releases a pin; false when it was already released.
    pub fn unpin(&self, id: u64) -> bool {
        lock(&self.pins).remove(&id).is_some()
    }

    pub fn active_pins(&self) -> usize {
        lock(&self.pins).len()
    }

    /// Events published so far by kind, and the subscribers listening live now.
    pub fn event_stats(&self) -> (EventCounts, usize) {
        let state = lock(&self.state);
        (state.published, state.live.receiver_count())
    }

    /// `(oldest replayable, last)` sequence numbers, and the epoch they belong to.
    pub fn sequences(&self) -> (u64, u64, u64) {
        let state = lock(&self.state);
        (state.oldest(), state.last, state.epoch)
    }

    /// Starts a subscription: replay after `from` if it is of this epoch (when `epoch` is
    /// given) and the log still has it, else (or with no `from`) a snapshot when asked, else
    /// live events only. The live receiver is taken under the same lock as the backlog, so
    /// nothing falls between them.
    pub fn subscribe(
        &self,
        from: Option<u64>,
        epoch: Option<u64>,
        snapshot: bool,
    ) -> Result<Subscription, NotReplayable> {
        let state = lock(&self.state);
        let live = state.live.subscribe();
        if let Some(from) = from {
            let oldest = state.oldest();
            let gap = match epoch {
                Some(asked) if asked != state.epoch => NotReplayable::OtherEpoch { asked, current: state.epoch },
                _ if from <= state.last && from + 1 >= oldest => {
                    let backlog = state.log.iter().filter(|event| event.sequence > from).cloned().collect();
                    return Ok(Subscription { backlog, live });
                }
                _ => NotReplayable::Gap { from, oldest, last: state.last },
            };
            if !snapshot {
                return Err(gap);
            }
        }
        let mut backlog = Vec::new();
        if snapshot {
            let at = |kind| v1::KvEvent { sequence: state.last, kind: Some(kind), epoch: state.epoch };
            backlog.reserve(state.mirror.len() + 1);
            backlog.push(at(Kind::Cleared(v1::Cleared {})));
            backlog.extend(
                state.mirror.iter().map(|hash| at(Kind::Stored(v1::BlockStored { hash: hash_to_bytes(*hash) }))),
            );
        }
        Ok(Subscription { backlog, live })
    }
}

/// A random, nonzero epoch for a server start: a restarted server numbers its events from 1
/// again, and the epoch tells a resuming subscriber that its sequence number means nothing here.
pub(crate) fn random_epoch() -> u64 {
    rand::random::<u64>().max(1)
}
