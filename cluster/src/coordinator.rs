//! The coordinator: one task per instance that decides which shards it leads.
//!
//! Leases are the truth and the rendezvous ranking a preference. The task
//! keeps the live member list, the ranking of every shard and the leases this
//! member holds, and tells the pipeline through a `watch` of [`Assignment`]:
//!
//! - **acquire** a free shard (see `AcquireRules`) when this member ranks
//!   first for it (at once, and at once again when a release is announced),
//!   when it ranks within the standbys and the shard stayed free for
//!   `standby_grace` while its preferred member had a chance to take it (so
//!   the preferred member wins races), or, whatever its rank, when the shard
//!   stayed free for a whole lease TTL (so no shard is ever orphaned by
//!   differing views);
//! - **settle** at start: for its first `standby_grace` a member takes no
//!   free shard on rank 1 alone (and its orphan TTL starts only after that),
//!   because it cannot know yet who else is starting with it; a standby
//!   likewise waits until it has known the preferred member for two graces.
//!   Instances started together then each take their own preferred shards,
//!   instead of the first one up taking every shard and handing them back
//!   one per `handoff_interval`;
//! - **renew** held leases every `renew_interval` ± jitter, together with the
//!   membership heartbeat; a renewal that finds another token means the shard
//!   is lost; when no renewal *sent* in the last `demote_after` succeeded
//!   (monotonic clock), the member demotes itself before the lease can expire
//!   on Redis;
//! - **hand off** voluntarily a held shard for which another live member now
//!   ranks first, once this member has known that member for `standby_grace`
//!   (so it has settled and takes the release at once, and its pipeline had
//!   the time to start tailing the shard, which is in its `standby`), at most
//!   one per `handoff_interval`, so a scale-out moves shards gradually
//!   instead of in a storm: the shard moves from `leading`
//!   to `draining`, the pipeline finishes its in-flight batches and final
//!   checkpoint and calls [`Coordinator::drained`], then the lease is released
//!   and announced (or after `drain_timeout`, whichever comes first; fencing
//!   keeps a late batch harmless);
//! - **step aside** on [`Coordinator::set_available`]`(false)` (its pipeline
//!   cannot read MongoDB): leave the membership and hand every shard over
//!   like a leave, but stay running, and join again (settling like a new
//!   member) once available;
//! - **leave** on [`Coordinator::shutdown`]: remove itself from the membership
//!   (announced, so the others re-rank before any release), drain and release
//!   every lease the same way, then stop.
//!
//! A shard leaves `leading` in the published assignment *before* its lease is
//! released or given up, so whenever the assignment says "lead", the lease is
//! (barring a process pause) still ours. The fenced publish script catches
//! the rest: a `FENCED` reply means stop at once, exactly like losing the
//! shard here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{ClusterError, Result};
use crate::keys::{ClusterKeys, MembershipEvent};
use crate::lease::{LeaseTiming, LeaseToken, ShardLease, read_leases};
use crate::member_id::MemberId;
use crate::membership::{Membership, live_members};
use crate::rendezvous::{rank, rank_of};
use crate::shard_map::{ShardId, ShardMap};

/// Everything the coordinator needs to know; defaults follow the design card.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// The Redis key prefix (`OTR_REDIS_METADATA_PREFIX`).
    pub prefix: String,
    /// The shard count; must match the one stored in Redis.
    pub shards: u16,
    /// Lease, heartbeat and poll timing.
    pub timing: LeaseTiming,
    /// Warm standbys per shard (ranks 2..=1+standbys).
    pub standbys: usize,
    /// How long a standby lets a free shard wait for its preferred leader;
    /// also how long a new member settles (takes no free shard on rank 1
    /// alone) so that members started together learn of each other first.
    pub standby_grace: Duration,
    /// At most one voluntary handoff per this interval and member. Short,
    /// because the receiver already tails the shard into a warm window (it
    /// is in its [`Assignment::standby`]), so a handoff costs it almost
    /// nothing; it only keeps a scale-out from moving every shard at once.
    pub handoff_interval: Duration,
    /// How long a draining shard waits for [`Coordinator::drained`].
    pub drain_timeout: Duration,
    /// Bound on every Redis call (connect and reply).
    pub request_timeout: Duration,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            prefix: "oplogtoredis::".to_string(),
            shards: ShardMap::DEFAULT_SHARDS,
            timing: LeaseTiming::default(),
            standbys: 1,
            standby_grace: Duration::from_secs(1),
            handoff_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(1),
        }
    }
}

impl CoordinatorSettings {
    /// Checks the timing, and that a Redis call can neither outlast a renewal
    /// period nor delay a self-demotion past the lease's expiry (the loop may
    /// be waiting on one call when the demotion falls due).
    pub fn validate(&self) -> Result<()> {
        self.timing.validate()?;
        let timeout = self.request_timeout;
        if timeout.is_zero()
            || timeout > self.timing.renew_interval
            || self.timing.demote_after + timeout >= self.timing.ttl
        {
            return Err(ClusterError::Settings(format!(
                "the Redis request timeout ({timeout:?}) must be positive, at most the renew \
                 interval ({:?}), and short enough that demotion ({:?}) plus one timeout \
                 stays under the lease TTL ({:?})",
                self.timing.renew_interval, self.timing.demote_after, self.timing.ttl
            )));
        }
        Ok(())
    }
}

/// What this member does, as the pipeline must follow it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Shards to publish, with the token the fenced publish needs.
    pub leading: BTreeMap<ShardId, LeaseToken>,
    /// Shards being handed off: finish in-flight batches and the final
    /// checkpoint with this token, then call [`Coordinator::drained`].
    pub draining: BTreeMap<ShardId, LeaseToken>,
    /// Shards to stand by for (this member ranks 1..=1+standbys and does not
    /// hold them): tail them into a window, ready to take over. Rank 1 is
    /// included because such a shard is about to come to this member: it is
    /// free (and taken after the start-up settle), or another member holds
    /// it and will hand it off, or has just released it.
    pub standby: BTreeSet<ShardId>,
}

/// The running coordinator of this member. Dropping it starts a graceful
/// leave in the background; [`Coordinator::shutdown`] also waits for it.
pub struct Coordinator {
    member: MemberId,
    assignment: watch::Receiver<Assignment>,
    drained: mpsc::UnboundedSender<ShardId>,
    available: watch::Sender<bool>,
    cancel: CancellationToken,
    engine: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Coordinator {
    /// Connects, agrees on the shard count (refusing another one), joins the
    /// membership and starts the task. The first acquisitions follow at once.
    pub async fn start(
        client: redis::Client,
        member: MemberId,
        settings: CoordinatorSettings,
    ) -> Result<Self> {
        settings.validate()?;
        let keys = ClusterKeys::new(&settings.prefix)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.request_timeout))
            .set_response_timeout(Some(settings.request_timeout))
            .set_number_of_retries(2);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| ClusterError::redis("connecting the cluster coordinator", e))?;
        let map = ShardMap::agree(&mut conn, &keys, settings.shards).await?;

        let cancel = CancellationToken::new();
        let (notify_tx, notify_rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let listener = tokio::spawn(listen(
            client,
            keys.clone(),
            notify_tx,
            cancel.child_token(),
            ready_tx,
            settings.timing.poll_interval,
        ));
        // Subscribed before joining, so no release announced after our join
        // is missed; polling covers us if Redis is slow to confirm.
        let _ = tokio::time::timeout(settings.request_timeout, ready_rx).await;

        let membership = Membership::new(keys.clone(), member.clone(), settings.timing.ttl);
        // Taken before the join, so no other member can have seen us joined
        // earlier than we count our own settle from.
        let joined_at = Instant::now();
        membership.join(&mut conn).await?;
        let (assignment_tx, assignment_rx) = watch::channel(Assignment::default());
        let (drained_tx, drained_rx) = mpsc::unbounded_channel();
        let (available_tx, available_rx) = watch::channel(true);
        let mut engine = Engine {
            conn,
            keys,
            map,
            membership,
            me: member.clone(),
            members: vec![member.clone()],
            joined_at,
            known_since: HashMap::new(),
            held: BTreeMap::new(),
            free_since: HashMap::new(),
            released_at: HashMap::new(),
            last_handoff: None,
            leaving: false,
            aside: false,
            want_available: true,
            assignment: assignment_tx,
            settings,
        };
        engine.refresh_members().await;
        info!(member = %member, shards = map.shards(), "joined the redtail cluster");
        let engine = tokio::spawn(engine.run(cancel.clone(), notify_rx, drained_rx, available_rx));
        Ok(Self {
            member,
            assignment: assignment_rx,
            drained: drained_tx,
            available: available_tx,
            cancel,
            engine: Some(engine),
            listener: Some(listener),
        })
    }

    /// This member's id.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    /// The assignment, updated whenever it changes. A shard leaving
    /// `leading` means stop publishing it now.
    pub fn assignment(&self) -> watch::Receiver<Assignment> {
        self.assignment.clone()
    }

    /// "I stopped publishing `shard` (final checkpoint written): release it
    /// now." Also valid for a shard still in `leading`, e.g. when this
    /// instance's source is unhealthy and another should take over.
    pub fn drained(&self, shard: ShardId) {
        let _ = self.drained.send(shard);
    }

    /// Whether this member can do its work (its pipeline can read MongoDB).
    /// `false` steps it aside: it leaves the membership (announced, so the
    /// others re-rank without it and its standbys take over), drains and
    /// releases every shard it leads, and takes none while aside. `true`
    /// joins again, settling like a new member. Repeating a value is a no-op.
    pub fn set_available(&self, available: bool) {
        self.available.send_if_modified(|current| {
            let changed = *current != available;
            *current = available;
            changed
        });
    }

    /// A clonable handle for [`Coordinator::drained`], for the tasks that
    /// run each shard's publishing.
    pub fn releaser(&self) -> ShardReleaser {
        ShardReleaser(self.drained.clone())
    }

    /// Graceful leave: stops acquiring, leaves the membership, moves every
    /// lead shard to `draining`, releases each once drained (or after the
    /// drain timeout), and returns when all are released or given up.
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(engine) = self.engine.take() {
            engine
                .await
                .map_err(|e| ClusterError::Settings(format!("the coordinator task failed: {e}")))?;
        }
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
        }
        Ok(())
    }

    /// Stops at once without releasing or leaving, as a crash would: the
    /// leases and the membership entry expire after their TTL. For tests and
    /// for a process that must stop touching Redis immediately.
    pub fn abort(mut self) {
        for task in [self.engine.take(), self.listener.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Tells the coordinator that a shard's publishing stopped and its lease may
/// be released; see [`Coordinator::drained`].
#[derive(Debug, Clone)]
pub struct ShardReleaser(mpsc::UnboundedSender<ShardId>);

impl ShardReleaser {
    /// Same as [`Coordinator::drained`]. Harmless after the coordinator stopped.
    pub fn drained(&self, shard: ShardId) {
        let _ = self.0.send(shard);
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A pub/sub event that calls for a reaction before the next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Notification {
    Released(ShardId),
    MembershipChanged,
}

/// What this member knows about one free shard when deciding to take it.
#[derive(Debug, Clone, Copy)]
struct FreeShard {
    /// This member's 1-based rank for the shard (`usize::MAX`: unranked).
    rank: usize,
    /// How long this member has seen the shard free.
    free_for: Duration,
    /// How long ago this member joined.
    joined_for: Duration,
    /// How long this member has known the shard's preferred (rank 1) member.
    preferred_known_for: Duration,
    /// Whether this member released the shard less than a TTL ago.
    gave_it_up: bool,
}

/// When a member takes a free shard: pure, so the races it arbitrates are
/// table-tested without Redis.
#[derive(Debug, Clone, Copy)]
struct AcquireRules {
    standbys: usize,
    grace: Duration,
    ttl: Duration,
}

impl From<&CoordinatorSettings> for AcquireRules {
    fn from(settings: &CoordinatorSettings) -> Self {
        Self {
            standbys: settings.standbys,
            grace: settings.standby_grace,
            ttl: settings.timing.ttl,
        }
    }
}

impl AcquireRules {
    /// - A shard free for a whole TTL is orphaned: anyone takes it, so
    ///   differing views of the membership never leave it unpublished. A
    ///   settling member's TTL counts from the end of its settle: otherwise,
    ///   with a TTL not much longer than the grace, members started together
    ///   would all take every shard as an orphan just as they settle.
    /// - A shard this member gave up less than a TTL ago is taken back only
    ///   when orphaned, so a handoff or an unhealthy release really moves it.
    /// - The preferred member takes it at once, once it has settled (joined
    ///   a grace ago): a newcomer's view may still miss members started at
    ///   the same time, whose shards it would otherwise take and hand back
    ///   one per handoff interval. A shard free for a grace needs no settle.
    /// - A standby takes it after a grace, and only once the preferred
    ///   member has had a grace of its own after its settle (known for two
    ///   graces): the preferred member, settling or not, wins the race.
    fn allow(&self, shard: &FreeShard) -> bool {
        // The shard was first seen free after the join, so this is "free for
        // a TTL since max(first seen free, end of the settle)".
        let orphaned = shard.free_for >= self.ttl && shard.joined_for >= self.grace + self.ttl;
        if shard.gave_it_up {
            return orphaned;
        }
        let preferred =
            shard.rank == 1 && (shard.joined_for >= self.grace || shard.free_for >= self.grace);
        let standby = shard.rank <= 1 + self.standbys
            && shard.free_for >= self.grace
            && shard.preferred_known_for >= self.grace * 2;
        preferred || standby || orphaned
    }
}

/// A lease this member holds.
struct Held {
    lease: ShardLease,
    /// When the last successful acquire or renewal was *sent*: the lease
    /// lasts at least a TTL from then, on any clock that does not jump.
    confirmed_at: Instant,
    /// Set while the pipeline drains the shard before the release.
    draining_since: Option<Instant>,
}

struct Engine {
    conn: ConnectionManager,
    keys: ClusterKeys,
    map: ShardMap,
    settings: CoordinatorSettings,
    membership: Membership,
    me: MemberId,
    /// The live members, this one included while it has not left.
    members: Vec<MemberId>,
    /// When this member joined: it settles for `standby_grace` from then.
    joined_at: Instant,
    /// When each other live member first appeared in `members`: one that
    /// appeared less than `standby_grace` ago may still be settling.
    known_since: HashMap<MemberId, Instant>,
    held: BTreeMap<ShardId, Held>,
    /// When each free shard was first seen free.
    free_since: HashMap<ShardId, Instant>,
    /// When this member last released each shard: it does not take a shard
    /// back within a TTL of giving it up (unless nobody else does), so a
    /// handoff or an unhealthy instance's release really moves the shard.
    released_at: HashMap<ShardId, Instant>,
    last_handoff: Option<Instant>,
    leaving: bool,
    /// Stepped aside (see [`Coordinator::set_available`]): out of the
    /// membership, taking nothing, until available again.
    aside: bool,
    /// The availability last asked for: a failed rejoin is retried.
    want_available: bool,
    assignment: watch::Sender<Assignment>,
}

impl Engine {
    async fn run(
        mut self,
        cancel: CancellationToken,
        mut notifications: mpsc::Receiver<Notification>,
        mut drained: mpsc::UnboundedReceiver<ShardId>,
        mut available: watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(self.settings.timing.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew = tokio::time::sleep(self.settings.timing.next_renewal());
        tokio::pin!(renew);
        loop {
            let demotion = self.next_demotion();
            tokio::select! {
                _ = cancel.cancelled(), if !self.leaving => self.begin_leaving().await,
                _ = tokio::time::sleep_until(demotion.unwrap_or_else(Instant::now)), if demotion.is_some() => {}
                _ = poll.tick() => self.poll().await,
                _ = &mut renew => {
                    self.renew_all().await;
                    renew.as_mut().reset(Instant::now() + self.settings.timing.next_renewal());
                }
                Some(notification) = notifications.recv() => self.on_notification(notification).await,
                Some(shard) = drained.recv() => self.release(shard, "drained").await,
                Ok(()) = available.changed() => {
                    let now_available = *available.borrow_and_update();
                    self.follow_availability(now_available).await;
                }
            }
            self.demote_stale();
            self.publish_assignment();
            if self.leaving && self.held.is_empty() {
                break;
            }
        }
        info!(member = %self.me, "left the redtail cluster");
    }

    async fn begin_leaving(&mut self) {
        self.leaving = true;
        if !self.aside {
            self.withdraw().await;
        }
        info!(member = %self.me, shards = self.held.len(), "leaving: draining every lead shard");
    }

    /// Out of the membership (announced first, so the others re-rank before
    /// any release), every held shard draining.
    async fn withdraw(&mut self) {
        if let Err(e) = self.membership.leave(&mut self.conn).await {
            warn!(member = %self.me, error = %e, "could not leave the membership; it expires by itself");
        }
        let me = self.me.clone();
        self.members.retain(|m| *m != me);
        let now = Instant::now();
        for held in self.held.values_mut() {
            held.draining_since.get_or_insert(now);
        }
    }

    /// Whether this member is out of the membership (leaving or aside).
    fn withdrawn(&self) -> bool {
        self.leaving || self.aside
    }

    async fn follow_availability(&mut self, available: bool) {
        self.want_available = available;
        if self.leaving {
            return;
        }
        if !available && !self.aside {
            self.aside = true;
            self.withdraw().await;
            warn!(member = %self.me, shards = self.held.len(),
                "stepping aside: handing every lead shard over until this instance can work again");
        } else if available && self.aside {
            self.rejoin().await;
        }
    }

    /// Joins again after stepping aside, settling like a new member. The
    /// shards it gave up were not handoffs, so it may take them back at once.
    async fn rejoin(&mut self) {
        let joined_at = Instant::now();
        if let Err(e) = self.membership.join(&mut self.conn).await {
            warn!(member = %self.me, error = %e, "could not join the membership again; retrying at the next poll");
            return;
        }
        self.aside = false;
        self.joined_at = joined_at;
        self.released_at.clear();
        self.refresh_members().await;
        info!(member = %self.me, "available again: joined the membership");
    }

    async fn refresh_members(&mut self) {
        let listed = live_members(&mut self.conn, &self.keys).await;
        self.apply_members(listed);
    }

    fn apply_members(&mut self, listed: Result<Vec<MemberId>>) {
        match listed {
            Ok(mut members) => {
                if !self.withdrawn() && !members.contains(&self.me) {
                    members.push(self.me.clone());
                }
                if !self.withdrawn() && members != self.members {
                    debug!(member = %self.me, live = members.len(), "membership changed");
                }
                let now = Instant::now();
                self.known_since.retain(|m, _| members.contains(m));
                for m in &members {
                    self.known_since.entry(m.clone()).or_insert(now);
                }
                self.members = members;
            }
            Err(e) => warn!(member = %self.me, error = %e, "could not list live members"),
        }
    }

    /// The periodic scan: membership, drain timeouts, free shards, handoffs.
    async fn poll(&mut self) {
        self.release_overdue_drains().await;
        if self.aside && self.want_available && !self.leaving {
            self.rejoin().await;
        }
        if self.withdrawn() {
            return;
        }
        // Both reads at once: a slow Redis delays the loop (and with it a
        // self-demotion) by one request timeout, not two.
        let (mut members_conn, mut leases_conn) = (self.conn.clone(), self.conn.clone());
        let (listed, leases) = tokio::join!(
            live_members(&mut members_conn, &self.keys),
            read_leases(&mut leases_conn, &self.keys, self.map)
        );
        self.apply_members(listed);
        let leases = match leases {
            Ok(leases) => leases,
            Err(e) => {
                warn!(member = %self.me, error = %e, "could not read the leases");
                return;
            }
        };
        let now = Instant::now();
        let mut candidates = Vec::new();
        for (shard, value) in self.map.all().zip(leases) {
            let ours = self.held.get(&shard).map(|h| h.lease.token().token.clone());
            match value {
                Some(value) => {
                    self.free_since.remove(&shard);
                    if ours.is_some_and(|token| token != value) {
                        self.lose(shard, "another member holds its lease");
                    }
                }
                None => {
                    if ours.is_some() {
                        self.lose(shard, "its lease expired");
                    }
                    let since = *self.free_since.entry(shard).or_insert(now);
                    if self.may_acquire(shard, since, now) {
                        candidates.push(shard);
                    }
                }
            }
        }
        self.acquire(candidates).await;
        self.maybe_hand_off();
    }

    /// Whether this member should take `shard`, seen free since `free_since`.
    fn may_acquire(&self, shard: ShardId, free_since: Instant, now: Instant) -> bool {
        if self.withdrawn() || self.held.contains_key(&shard) {
            return false;
        }
        let ranking = rank(shard, &self.members);
        let rank = ranking
            .iter()
            .position(|m| *m == self.me)
            .map_or(usize::MAX, |i| i + 1);
        let view = FreeShard {
            rank,
            free_for: now.saturating_duration_since(free_since),
            joined_for: now.saturating_duration_since(self.joined_at),
            preferred_known_for: ranking
                .first()
                .map_or(Duration::ZERO, |m| self.known_for(m, now)),
            gave_it_up: self
                .released_at
                .get(&shard)
                .is_some_and(|at| now.saturating_duration_since(*at) < self.settings.timing.ttl),
        };
        AcquireRules::from(&self.settings).allow(&view)
    }

    /// How long this member has known `member` as live (itself: since it
    /// joined).
    fn known_for(&self, member: &MemberId, now: Instant) -> Duration {
        let since = if *member == self.me {
            Some(self.joined_at)
        } else {
            self.known_since.get(member).copied()
        };
        since.map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    async fn acquire(&mut self, shards: Vec<ShardId>) {
        if shards.is_empty() {
            return;
        }
        let sent = Instant::now();
        let ttl = self.settings.timing.ttl;
        let attempts = shards.iter().map(|&shard| {
            let mut conn = self.conn.clone();
            let keys = &self.keys;
            let me = &self.me;
            async move {
                (
                    shard,
                    ShardLease::acquire(&mut conn, keys, shard, me, ttl).await,
                )
            }
        });
        for (shard, result) in join_all(attempts).await {
            match result {
                Ok(Some(lease)) => {
                    info!(member = %self.me, shard = shard.0, epoch = lease.token().epoch, "leading shard");
                    self.free_since.remove(&shard);
                    self.held.insert(
                        shard,
                        Held {
                            lease,
                            confirmed_at: sent,
                            draining_since: None,
                        },
                    );
                }
                Ok(None) => {
                    self.free_since.remove(&shard);
                }
                Err(e) => {
                    warn!(member = %self.me, shard = shard.0, error = %e, "could not acquire")
                }
            }
        }
    }

    /// Starts draining one held shard that another live member now prefers,
    /// unless a handoff started less than `handoff_interval` ago. A member
    /// known for less than `standby_grace` may still be settling, and would
    /// leave the released shard free until its next poll: it waits.
    fn maybe_hand_off(&mut self) {
        if self
            .last_handoff
            .is_some_and(|at| at.elapsed() < self.settings.handoff_interval)
        {
            return;
        }
        let now = Instant::now();
        let grace = self.settings.standby_grace;
        let candidate = self
            .held
            .iter()
            .filter(|(_, held)| held.draining_since.is_none())
            .map(|(&shard, _)| shard)
            .find(|&shard| {
                rank(shard, &self.members)
                    .first()
                    .is_some_and(|p| *p != self.me && self.known_for(p, now) >= grace)
            });
        if let Some(shard) = candidate {
            if let Some(held) = self.held.get_mut(&shard) {
                held.draining_since = Some(now);
            }
            self.last_handoff = Some(now);
            info!(member = %self.me, shard = shard.0, "handing shard off to its preferred member");
        }
    }

    async fn release_overdue_drains(&mut self) {
        let overdue: Vec<ShardId> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.draining_since
                    .is_some_and(|at| at.elapsed() >= self.settings.drain_timeout)
            })
            .map(|(&shard, _)| shard)
            .collect();
        for shard in overdue {
            self.release(shard, "drain timed out").await;
        }
    }

    /// Stops leading `shard` (published first), then deletes and announces
    /// its lease.
    async fn release(&mut self, shard: ShardId, why: &str) {
        let Some(held) = self.held.remove(&shard) else {
            return;
        };
        self.released_at.insert(shard, Instant::now());
        self.publish_assignment();
        match held.lease.release(&mut self.conn, &self.keys).await {
            Ok(true) => info!(member = %self.me, shard = shard.0, why, "released shard"),
            Ok(false) => {
                warn!(member = %self.me, shard = shard.0, "the lease had already moved on")
            }
            Err(e) => warn!(member = %self.me, shard = shard.0, error = %e,
                "could not release; the lease expires by itself"),
        }
    }

    fn lose(&mut self, shard: ShardId, why: &str) {
        if self.held.remove(&shard).is_some() {
            warn!(member = %self.me, shard = shard.0, why, "lost shard");
        }
    }

    /// Renews every held lease and sends the heartbeat, all concurrently,
    /// so the loop waits one request timeout at most.
    async fn renew_all(&mut self) {
        let sent = Instant::now();
        let ttl = self.settings.timing.ttl;
        let renewals = self.held.iter().map(|(&shard, held)| {
            let mut conn = self.conn.clone();
            let lease = held.lease.clone();
            async move { (shard, lease.renew(&mut conn, ttl).await) }
        });
        let mut heartbeat_conn = self.conn.clone();
        let heartbeat = async {
            if self.withdrawn() {
                Ok(())
            } else {
                self.membership.heartbeat(&mut heartbeat_conn).await
            }
        };
        let (heartbeat, renewed) = tokio::join!(heartbeat, join_all(renewals));
        if let Err(e) = heartbeat {
            warn!(member = %self.me, error = %e, "heartbeat failed");
        }
        for (shard, result) in renewed {
            match result {
                Ok(true) => {
                    if let Some(held) = self.held.get_mut(&shard) {
                        held.confirmed_at = sent;
                    }
                }
                Ok(false) => self.lose(shard, "its renewal found another token"),
                Err(e) => warn!(member = %self.me, shard = shard.0, error = %e, "renewal failed"),
            }
        }
    }

    /// Gives up every shard whose last confirmed renewal was sent
    /// `demote_after` ago: its lease may expire on Redis soon, and another
    /// member may take it; better stop first.
    fn next_demotion(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.confirmed_at + self.settings.timing.demote_after)
            .min()
    }

    fn demote_stale(&mut self) {
        let limit = self.settings.timing.demote_after;
        let stale: Vec<ShardId> = self
            .held
            .iter()
            .filter(|(_, h)| h.confirmed_at.elapsed() >= limit)
            .map(|(&shard, _)| shard)
            .collect();
        for shard in stale {
            self.lose(shard, "no renewal succeeded in time (self-demotion)");
        }
    }

    async fn on_notification(&mut self, notification: Notification) {
        match notification {
            Notification::MembershipChanged => {
                if !self.withdrawn() {
                    self.refresh_members().await;
                    self.acquire_known_free().await;
                }
            }
            Notification::Released(shard) => {
                if shard.0 >= self.map.shards() || self.held.contains_key(&shard) {
                    return;
                }
                let now = Instant::now();
                let since = *self.free_since.entry(shard).or_insert(now);
                // A settling member does not take it here; its next poll
                // after the settle does.
                if self.may_acquire(shard, since, now) {
                    self.acquire(vec![shard]).await;
                }
            }
        }
    }

    /// Takes the shards known to be free that the new ranking now gives
    /// this member. A stopping instance releases its shards while it is
    /// still a member and leaves right after: ranked with it, nobody took
    /// them at the release, and waiting for the next poll would leave them
    /// unpublished that long.
    async fn acquire_known_free(&mut self) {
        let now = Instant::now();
        let candidates: Vec<ShardId> = self
            .free_since
            .iter()
            .filter(|&(&shard, &since)| self.may_acquire(shard, since, now))
            .map(|(&shard, _)| shard)
            .collect();
        self.acquire(candidates).await;
    }

    fn publish_assignment(&self) {
        let mut next = Assignment::default();
        for (&shard, held) in &self.held {
            let token = held.lease.token().clone();
            if held.draining_since.is_some() {
                next.draining.insert(shard, token);
            } else {
                next.leading.insert(shard, token);
            }
        }
        if !self.withdrawn() {
            let standby_ranks = 1..=1 + self.settings.standbys;
            next.standby = self
                .map
                .all()
                .filter(|shard| !self.held.contains_key(shard))
                .filter(|&shard| {
                    rank_of(shard, &self.me, &self.members)
                        .is_some_and(|r| standby_ranks.contains(&r))
                })
                .collect();
        }
        self.assignment.send_if_modified(|current| {
            let changed = *current != next;
            if changed {
                *current = next;
            }
            changed
        });
    }
}

/// Forwards release and membership announcements to the engine, and
/// resubscribes after a lost connection. Missed announcements only delay a
/// reaction until the next poll, so failures here are logged, not fatal.
async fn listen(
    client: redis::Client,
    keys: ClusterKeys,
    notifications: mpsc::Sender<Notification>,
    cancel: CancellationToken,
    ready: oneshot::Sender<()>,
    retry_after: Duration,
) {
    let released = keys.released_channel();
    let membership = keys.membership_channel();
    let mut ready = Some(ready);
    while !cancel.is_cancelled() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&released, &membership]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            result = tokio::time::timeout(retry_after.max(Duration::from_secs(1)), subscribed) => result,
        };
        match connected {
            Ok(Ok(mut pubsub)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                let mut stream = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = cancel.cancelled() => return,
                        message = stream.next() => message,
                    };
                    let Some(message) = message else { break };
                    let payload: String = message.get_payload().unwrap_or_default();
                    let notification = if message.get_channel_name() == released {
                        payload
                            .parse()
                            .ok()
                            .map(|s| Notification::Released(ShardId(s)))
                    } else {
                        MembershipEvent::decode(&payload).map(|_| Notification::MembershipChanged)
                    };
                    if let Some(notification) = notification
                        && notifications.send(notification).await.is_err()
                    {
                        return;
                    }
                }
                debug!("cluster notifications connection closed; resubscribing");
            }
            Ok(Err(e)) => debug!(error = %e, "could not subscribe to cluster notifications"),
            Err(_) => debug!("subscribing to cluster notifications timed out"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry_after) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquisition_follows_rank_settle_grace_and_orphaning() {
        let rules = AcquireRules {
            standbys: 1,
            grace: Duration::from_secs(1),
            ttl: Duration::from_secs(10),
        };
        let ms = Duration::from_millis;
        // (rank, free_for, joined_for, preferred_known_for, gave_it_up, take)
        let cases = [
            // Settled preferred member: at once.
            (1, ms(0), ms(1000), ms(1000), false, true),
            (1, ms(0), ms(60_000), ms(60_000), false, true),
            // Settling preferred member: waits for the settle...
            (1, ms(0), ms(999), ms(999), false, false),
            (1, ms(500), ms(500), ms(500), false, false),
            // ...unless the shard has been free for a grace already.
            (1, ms(1000), ms(200), ms(200), false, true),
            // Standby: a grace free, and the preferred member known for two.
            (2, ms(999), ms(60_000), ms(60_000), false, false),
            (2, ms(1000), ms(60_000), ms(60_000), false, true),
            (2, ms(1000), ms(60_000), ms(1999), false, false),
            (2, ms(1500), ms(60_000), ms(2000), false, true),
            // A standby started with the others: they are new to it too.
            (2, ms(1000), ms(1000), ms(1000), false, false),
            // Beyond the standbys: only orphans.
            (3, ms(9999), ms(60_000), ms(60_000), false, false),
            (3, ms(10_000), ms(60_000), ms(60_000), false, true),
            (usize::MAX, ms(10_000), ms(60_000), ms(0), false, true),
            // A newcomer counts the TTL of an orphan from its settle.
            (3, ms(10_000), ms(10_999), ms(10_999), false, false),
            (3, ms(10_000), ms(11_000), ms(11_000), false, true),
            // Given up: only orphans, even at rank 1.
            (1, ms(9999), ms(60_000), ms(60_000), true, false),
            (1, ms(10_000), ms(60_000), ms(60_000), true, true),
            (1, ms(10_000), ms(10_999), ms(10_999), true, false),
        ];
        for (rank, free_for, joined_for, preferred_known_for, gave_it_up, take) in cases {
            let shard = FreeShard {
                rank,
                free_for,
                joined_for,
                preferred_known_for,
                gave_it_up,
            };
            assert_eq!(rules.allow(&shard), take, "{shard:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let base = CoordinatorSettings::default();
        assert!(base.validate().is_ok());
        let bad = [
            CoordinatorSettings {
                request_timeout: Duration::ZERO,
                ..base.clone()
            },
            CoordinatorSettings {
                request_timeout: Duration::from_secs(3),
                ..base.clone()
            },
            CoordinatorSettings {
                timing: LeaseTiming {
                    demote_after: Duration::from_millis(9500),
                    ..base.timing
                },
                ..base.clone()
            },
            CoordinatorSettings {
                timing: LeaseTiming {
                    ttl: Duration::from_secs(5),
                    ..base.timing
                },
                ..base.clone()
            },
        ];
        for settings in bad {
            assert!(settings.validate().is_err(), "{settings:?}");
        }
    }
}
