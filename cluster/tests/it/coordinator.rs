//! Three (and four) coordinators in one process against one Redis, with
//! short timings: every shard gets one leader, leaders follow the ranking,
//! members started together settle on it without handoffs, graceful leaves
//! and crashes hand shards over in time, voluntary handoffs are rate-limited
//! and announced to the receiver through its standby set, and no two members
//! ever publish one shard at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use cluster::{
    Assignment, ClusterError, ClusterKeys, Coordinator, CoordinatorSettings, FencedPublisher,
    LeaseTiming, LeaseToken, MemberId, Membership, PublishItem, ShardId, ShardMap, rank,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{Recorder, RedisServer, eventually};

const PREFIX: &str = "t::";
const SHARDS: u16 = 64;

/// Short timings: TTL 1 s, renew 200 ms, demote 700 ms, poll 200 ms.
fn fast_settings() -> CoordinatorSettings {
    CoordinatorSettings {
        prefix: PREFIX.to_string(),
        shards: SHARDS,
        timing: LeaseTiming {
            ttl: Duration::from_secs(1),
            renew_interval: Duration::from_millis(200),
            renew_jitter: 0.1,
            demote_after: Duration::from_millis(700),
            poll_interval: Duration::from_millis(200),
        },
        standbys: 1,
        standby_grace: Duration::from_millis(200),
        handoff_interval: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(200),
    }
}

/// A coordinator plus a stand-in for redtail's pipeline: it publishes a
/// fenced message per lead shard every 50 ms (when asked to), and on a
/// handoff publishes a final batch with the draining token, then reports
/// the shard drained.
struct Node {
    member: MemberId,
    coordinator: Option<Coordinator>,
    pipeline: JoinHandle<()>,
    fenced: Arc<AtomicU64>,
}

impl Node {
    async fn start(
        server: &RedisServer,
        member: MemberId,
        settings: CoordinatorSettings,
        publish: bool,
    ) -> Result<Self> {
        let coordinator = Coordinator::start(server.client(), member.clone(), settings).await?;
        let fenced = Arc::new(AtomicU64::new(0));
        let pipeline = tokio::spawn(run_pipeline(
            server.connection().await?,
            coordinator.assignment(),
            coordinator.releaser(),
            member.clone(),
            publish,
            Arc::clone(&fenced),
        ));
        Ok(Self {
            member,
            coordinator: Some(coordinator),
            pipeline,
            fenced,
        })
    }

    fn assignment(&self) -> Assignment {
        self.coordinator
            .as_ref()
            .expect("running")
            .assignment()
            .borrow()
            .clone()
    }

    fn leading(&self) -> BTreeSet<ShardId> {
        self.assignment().leading.keys().copied().collect()
    }

    async fn shutdown(&mut self) -> Result<()> {
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.shutdown().await?;
        }
        self.pipeline.abort();
        Ok(())
    }

    /// Reports every lead shard drained, as redtail's stage does when its
    /// source stops, and waits until the coordinator released them all.
    async fn release_all(&self) -> Result<()> {
        let coordinator = self.coordinator.as_ref().expect("running");
        for shard in self.leading() {
            coordinator.drained(shard);
        }
        eventually(Duration::from_secs(2), "every shard released", || async {
            Ok(self.leading().is_empty().then_some(()))
        })
        .await?;
        Ok(())
    }

    fn set_available(&self, available: bool) {
        self.coordinator
            .as_ref()
            .expect("running")
            .set_available(available);
    }

    fn crash(&mut self) {
        self.pipeline.abort();
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.abort();
        }
    }
}

async fn run_pipeline(
    mut conn: redis::aio::MultiplexedConnection,
    mut assignment: tokio::sync::watch::Receiver<Assignment>,
    releaser: cluster::ShardReleaser,
    member: MemberId,
    publish: bool,
    fenced: Arc<AtomicU64>,
) {
    let publisher = FencedPublisher::new(ClusterKeys::new(PREFIX).unwrap(), 150);
    let mut seq = 0u64;
    let mut released = BTreeSet::new();
    loop {
        let current = assignment.borrow_and_update().clone();
        let mut send = async |shard: ShardId, token: &LeaseToken, seq: u64| {
            let item = PublishItem {
                dedup_key: format!("{PREFIX}test::{member}::{seq}"),
                message: format!("{}:{}:{seq}", token.epoch, member),
                channels: vec![format!("shard.{}", shard.0)],
            };
            let result = publisher
                .publish(&mut conn, shard, token, &[item], Some(seq))
                .await;
            if let Err(ClusterError::Fenced { .. }) = result {
                fenced.fetch_add(1, Ordering::Relaxed);
            }
        };
        if publish {
            for (shard, token) in &current.leading {
                seq += 1;
                send(*shard, token, seq).await;
            }
        }
        for (shard, token) in &current.draining {
            if released.insert((*shard, token.epoch)) {
                if publish {
                    seq += 1;
                    send(*shard, token, seq).await;
                }
                releaser.drained(*shard);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), assignment.changed()).await;
    }
}

/// Who holds each shard's lease in Redis, by holder key.
async fn holders(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<BTreeMap<ShardId, (String, u64)>> {
    let keys = ClusterKeys::new(PREFIX)?;
    let mut pipe = redis::pipe();
    for shard in 0..SHARDS {
        let k = keys.shard(ShardId(shard));
        pipe.cmd("MGET").arg(k.lease).arg(k.holder);
    }
    let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(conn).await?;
    Ok(rows
        .into_iter()
        .enumerate()
        .filter_map(|(i, (lease, holder))| {
            let epoch = LeaseToken::parse(lease.as_deref()?)?.epoch;
            Some((ShardId(i as u16), (holder?, epoch)))
        })
        .collect())
}

/// Samples every shard's lease every 10 ms while the test runs and checks,
/// on Redis's own state, that a shard's epoch never goes back and that an
/// epoch always belongs to one holder: leadership is one chain per shard.
struct LeaseAuditor {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<usize>>,
}

impl LeaseAuditor {
    async fn start(server: &RedisServer) -> Result<Self> {
        let mut conn = server.connection().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut order = EpochOrder::default();
            let mut samples = 0;
            while !flag.load(Ordering::Relaxed) {
                for (shard, (holder, epoch)) in holders(&mut conn).await? {
                    order.observe(format!("shard {shard}"), epoch, holder)?;
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(samples)
        });
        Ok(Self { stop, task })
    }

    async fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await??;
        ensure!(samples > 10, "only {samples} samples");
        Ok(())
    }
}

/// On the recorded publications (in Redis's order), each shard's epochs never
/// go back and each epoch is one member's: no two members published one
/// shard interleaved.
fn check_publications(recorder: &Recorder) -> Result<usize> {
    let mut order = EpochOrder::default();
    let mut count = 0;
    for (channel, message) in recorder.messages() {
        if !channel.starts_with("shard.") {
            continue;
        }
        let mut parts = message.splitn(3, ':');
        let epoch: u64 = parts.next().unwrap_or_default().parse()?;
        let member = parts.next().unwrap_or_default().to_string();
        order.observe(channel, epoch, member)?;
        count += 1;
    }
    Ok(count)
}

/// The fencing invariant, per key (a shard, or its channel), over what is
/// observed in order: the epoch never goes back, and one epoch belongs to
/// one member.
#[derive(Default)]
struct EpochOrder {
    last: HashMap<String, (u64, String)>,
}

impl EpochOrder {
    fn observe(&mut self, key: String, epoch: u64, member: String) -> Result<()> {
        if let Some((last_epoch, last_member)) = self.last.get(&key) {
            ensure!(
                epoch >= *last_epoch,
                "{key}: epoch went back {last_epoch} -> {epoch}"
            );
            ensure!(
                epoch != *last_epoch || member == *last_member,
                "{key}: epoch {epoch} from two members ({last_member}, {member})"
            );
        }
        self.last.insert(key, (epoch, member));
        Ok(())
    }
}

/// The shards `member` ranks first for among `members`.
fn preferred(member: &MemberId, members: &[MemberId]) -> BTreeSet<ShardId> {
    ShardMap::new(SHARDS)
        .unwrap()
        .all()
        .filter(|&s| rank(s, members).first() == Some(member))
        .collect()
}

/// Registers the members before their coordinators start, so every
/// coordinator ranks with the full list from its first poll.
async fn announce(server: &RedisServer, members: &[MemberId]) -> Result<()> {
    let mut conn = server.connection().await?;
    for member in members {
        Membership::new(
            ClusterKeys::new(PREFIX)?,
            member.clone(),
            Duration::from_secs(2),
        )
        .heartbeat(&mut conn)
        .await?;
    }
    Ok(())
}

async fn wait_settled(nodes: &[&Node], timeout: Duration) -> Result<()> {
    let members: Vec<MemberId> = nodes.iter().map(|n| n.member.clone()).collect();
    eventually(timeout, "leaders to follow the ranking", || async {
        Ok(nodes
            .iter()
            .all(|n| {
                n.leading() == preferred(&n.member, &members) && n.assignment().draining.is_empty()
            })
            .then_some(()))
    })
    .await
}

/// Starts members a, b and c, announced to each other before any starts (so
/// none takes the others' shards first), and waits until they settle.
async fn start_announced_trio(
    server: &RedisServer,
    settings: &CoordinatorSettings,
    publish: bool,
    settle_within: Duration,
) -> Result<([MemberId; 3], Vec<Node>)> {
    let members = [
        MemberId::generate("a"),
        MemberId::generate("b"),
        MemberId::generate("c"),
    ];
    announce(server, &members).await?;
    let mut nodes = Vec::new();
    for member in &members {
        nodes.push(Node::start(server, member.clone(), settings.clone(), publish).await?);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_settled(&refs, settle_within).await?;
    Ok((members, nodes))
}

#[tokio::test]
async fn three_members_settle_on_the_ranking_with_one_leader_per_shard() -> Result<()> {
    let server = RedisServer::start().await?;
    let recorder = Recorder::start(&server).await?;
    let auditor = LeaseAuditor::start(&server).await?;
    // Started one by one: the first takes everything, then hands shards
    // over as the others join, which is the path worth auditing.
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(Node::start(&server, MemberId::generate(name), fast_settings(), true).await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_settled(&refs, Duration::from_secs(30)).await?;

    // Every shard has exactly one leader, and Redis agrees with each node.
    let mut conn = server.connection().await?;
    let in_redis = holders(&mut conn).await?;
    assert_eq!(in_redis.len(), usize::from(SHARDS));
    let mut led = BTreeSet::new();
    for node in &nodes {
        let assignment = node.assignment();
        for (shard, token) in &assignment.leading {
            assert!(led.insert(*shard), "shard {shard} led twice");
            assert_eq!(in_redis[shard], (node.member.to_string(), token.epoch));
        }
        // Standbys: ranks 1 and 2 not held; settled, every rank-1 shard is
        // held, so the rank-2 shards, none of them led by this node.
        let members: Vec<MemberId> = nodes.iter().map(|n| n.member.clone()).collect();
        let rank2: BTreeSet<ShardId> = (0..SHARDS)
            .map(ShardId)
            .filter(|&s| rank(s, &members).get(1) == Some(&node.member))
            .collect();
        assert_eq!(assignment.standby, rank2);
    }
    assert_eq!(led.len(), usize::from(SHARDS));

    // Keep publishing a little after settling, then audit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in &mut nodes {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    let published = check_publications(&recorder)?;
    assert!(published > 200, "only {published} publications recorded");

    // A graceful stop of everyone leaves no lease and no member behind.
    assert!(holders(&mut conn).await?.is_empty());
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(ClusterKeys::new(PREFIX)?.members())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    assert!(members.is_empty(), "{members:?}");
    Ok(())
}

#[tokio::test]
async fn members_started_together_take_their_preferred_shards_without_handoffs() -> Result<()> {
    let server = RedisServer::start().await?;
    let auditor = LeaseAuditor::start(&server).await?;
    // The default handoff interval: had the first member up taken every
    // shard, spreading ~40 of them back would take over a minute.
    let settings = CoordinatorSettings {
        handoff_interval: Duration::from_secs(2),
        ..fast_settings()
    };
    // Not announced, and no pause between the starts: each member learns of
    // the others only from their joins, a few milliseconds apart, as with
    // instances started by one deployment.
    let started = Instant::now();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(Node::start(&server, MemberId::generate(name), settings.clone(), true).await?);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let bound = Duration::from_secs(5);
    wait_settled(&refs, bound).await?;
    let settled = started.elapsed();
    assert!(
        settled < bound,
        "settled after {settled:?}, 64 handoffs take {:?}",
        settings.handoff_interval * u32::from(SHARDS)
    );

    // Every lease is its shard's first (epoch 1): each shard went straight
    // to its preferred member, none had to be handed over. Still true a
    // while later: no straggler takes a shard from its preferred member.
    let mut conn = server.connection().await?;
    for wait in [Duration::ZERO, Duration::from_secs(1)] {
        tokio::time::sleep(wait).await;
        let in_redis = holders(&mut conn).await?;
        assert_eq!(in_redis.len(), usize::from(SHARDS));
        for (shard, (holder, epoch)) in &in_redis {
            assert_eq!(*epoch, 1, "shard {shard} changed hands (now {holder})");
        }
        for node in &nodes {
            for shard in node.leading() {
                assert_eq!(in_redis[&shard].0, node.member.to_string());
            }
        }
    }
    for node in &mut nodes {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    Ok(())
}

#[tokio::test]
async fn a_newcomer_stands_by_for_the_shards_it_is_about_to_be_handed() -> Result<()> {
    let server = RedisServer::start().await?;
    let auditor = LeaseAuditor::start(&server).await?;
    // One handoff per member, then none for a minute: the newcomer's
    // preferred shards stay with the old members while we look.
    let settings = CoordinatorSettings {
        handoff_interval: Duration::from_secs(60),
        ..fast_settings()
    };
    let (members, mut nodes) =
        start_announced_trio(&server, &settings, false, Duration::from_secs(5)).await?;

    let newcomer = MemberId::generate("d");
    let mut grown = members.to_vec();
    grown.push(newcomer.clone());
    let wanted = preferred(&newcomer, &grown);
    let rank2: BTreeSet<ShardId> = (0..SHARDS)
        .map(ShardId)
        .filter(|&s| rank(s, &grown).get(1) == Some(&newcomer))
        .collect();
    // More than the (at most 3) shards the first handoffs move.
    assert!(wanted.len() >= 4, "only {} preferred shards", wanted.len());
    nodes.push(Node::start(&server, newcomer.clone(), settings.clone(), false).await?);
    let node = &nodes[3];
    let mut conn = server.connection().await?;

    // Each old member holding some of the newcomer's shards hands one off,
    // then waits a minute. Before that, and after it, the newcomer stands by
    // for every shard it ranks 1 or 2 for and does not hold (held in Redis
    // by the others, or being released to it at this very moment).
    let givers: BTreeSet<MemberId> = wanted
        .iter()
        .map(|&s| rank(s, &members)[0].clone())
        .collect();
    let phases = [
        ("the newcomer's standby before any handoff", 0),
        ("one handoff per old member", givers.len()),
    ];
    for (what, handed) in phases {
        let assignment = eventually(Duration::from_secs(3), what, || async {
            let assignment = node.assignment();
            let held: BTreeSet<ShardId> = assignment.leading.keys().copied().collect();
            let expected: BTreeSet<ShardId> = wanted.union(&rank2).copied().collect();
            let expected: BTreeSet<ShardId> = expected.difference(&held).copied().collect();
            let reached = held.len() == handed && assignment.draining.is_empty();
            Ok((reached && assignment.standby == expected).then_some(assignment))
        })
        .await?;
        let in_redis = holders(&mut conn).await?;
        // Read after Redis: a shard taken since the snapshot is skipped.
        let leading_now = node.leading();
        let mut held_by_others = 0;
        for shard in &wanted {
            if assignment.leading.contains_key(shard) {
                assert!(!assignment.standby.contains(shard), "shard {shard}");
                continue;
            }
            assert!(assignment.standby.contains(shard), "shard {shard}");
            if leading_now.contains(shard) {
                continue;
            }
            if let Some((holder, _)) = in_redis.get(shard) {
                assert_ne!(*holder, newcomer.to_string(), "shard {shard}");
                held_by_others += 1;
            }
        }
        assert!(
            held_by_others >= wanted.len() - givers.len(),
            "{what}: only {held_by_others} of {} preferred shards held by others",
            wanted.len()
        );
    }
    for node in &mut nodes {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    Ok(())
}

#[tokio::test]
async fn a_graceful_leave_hands_shards_over_at_once() -> Result<()> {
    leave_and_check_the_handover(false).await
}

/// redtail's pipeline stops first: it releases every shard while the
/// member is still in the ranking, then the member leaves. The others take
/// the shards at the leave announcement, not at their next poll.
#[tokio::test]
async fn shards_released_just_before_a_leave_are_taken_at_the_leave() -> Result<()> {
    leave_and_check_the_handover(true).await
}

async fn leave_and_check_the_handover(release_first: bool) -> Result<()> {
    let server = RedisServer::start().await?;
    let recorder = Recorder::start(&server).await?;
    let auditor = LeaseAuditor::start(&server).await?;
    // Polls every 3 s: only the announcements can make the handover fast.
    let settings = CoordinatorSettings {
        timing: LeaseTiming {
            ttl: Duration::from_secs(3),
            renew_interval: Duration::from_millis(300),
            renew_jitter: 0.1,
            demote_after: Duration::from_secs(2),
            poll_interval: Duration::from_secs(3),
        },
        standby_grace: Duration::from_secs(3),
        ..fast_settings()
    };
    // Widened from 5 s: a member settles for `standby_grace` (3 s here)
    // before taking its preferred shards, and then acts on its next poll
    // (3 s ticks), so the first leases come about 3 s after the start.
    let (members, mut nodes) =
        start_announced_trio(&server, &settings, true, Duration::from_secs(10)).await?;
    let moving = nodes[0].leading();
    assert!(!moving.is_empty());

    let started = Instant::now();
    if release_first {
        nodes[0].release_all().await?;
    }
    nodes[0].shutdown().await?;
    let shutdown_took = started.elapsed();
    let mut conn = server.connection().await?;
    wait_handed_to_survivors(&nodes, &members, &moving, &mut conn).await?;
    let handover = started.elapsed();
    assert!(
        shutdown_took < Duration::from_secs(1),
        "shutdown took {shutdown_took:?}"
    );
    assert!(
        handover < Duration::from_secs(1),
        "handover took {handover:?} (poll is 3 s)"
    );
    for node in &mut nodes[1..] {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    check_publications(&recorder)?;
    Ok(())
}

#[tokio::test]
async fn a_crashed_members_shards_are_taken_over_within_ttl_plus_poll() -> Result<()> {
    let server = RedisServer::start().await?;
    let recorder = Recorder::start(&server).await?;
    let auditor = LeaseAuditor::start(&server).await?;
    let settings = fast_settings();
    let (members, mut nodes) =
        start_announced_trio(&server, &settings, true, Duration::from_secs(5)).await?;
    let orphaned = nodes[0].leading();

    let crashed = Instant::now();
    nodes[0].crash();
    eventually(
        Duration::from_secs(5),
        "the survivors to lead every shard",
        || async {
            let all_led =
                nodes[1].leading().len() + nodes[2].leading().len() == usize::from(SHARDS);
            Ok(all_led.then_some(()))
        },
    )
    .await?;
    let takeover = crashed.elapsed();
    let bound = settings.timing.ttl + settings.timing.poll_interval + settings.standby_grace;
    assert!(
        takeover <= bound + Duration::from_millis(500),
        "takeover took {takeover:?}"
    );
    // Not before the crashed member's lease could have expired.
    assert!(
        takeover >= Duration::from_millis(500),
        "taken over after only {takeover:?}"
    );
    let mut conn = server.connection().await?;
    let in_redis = holders(&mut conn).await?;
    for shard in &orphaned {
        assert_ne!(in_redis[shard].0, members[0].to_string());
    }
    for node in &mut nodes[1..] {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    check_publications(&recorder)?;
    Ok(())
}

#[tokio::test]
async fn a_scale_out_moves_shards_at_the_handoff_rate() -> Result<()> {
    let server = RedisServer::start().await?;
    let auditor = LeaseAuditor::start(&server).await?;
    let interval = Duration::from_secs(1);
    let settings = CoordinatorSettings {
        handoff_interval: interval,
        ..fast_settings()
    };
    let (members, mut nodes) =
        start_announced_trio(&server, &settings, false, Duration::from_secs(5)).await?;
    let mut conn = server.connection().await?;
    let before = holders(&mut conn).await?;

    let newcomer = MemberId::generate("d");
    let mut grown = members.to_vec();
    grown.push(newcomer.clone());
    let wanted = preferred(&newcomer, &grown);
    assert!(
        wanted.len() >= 8,
        "the newcomer should be preferred for many shards"
    );
    let started = Instant::now();
    nodes.push(Node::start(&server, newcomer.clone(), settings.clone(), false).await?);

    // Watch for 2.5 handoff intervals: each old member may hand off at most
    // one shard per interval, so at most 3 * 3 moves, far fewer than wanted.
    let mut moved_at: BTreeMap<ShardId, (String, Duration)> = BTreeMap::new();
    while started.elapsed() < interval.mul_f64(2.5) {
        for (shard, (holder, _)) in holders(&mut conn).await? {
            if holder != before[&shard].0 && !moved_at.contains_key(&shard) {
                moved_at.insert(shard, (before[&shard].0.clone(), started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!moved_at.is_empty(), "no shard moved to the newcomer");
    assert!(
        moved_at.len() <= 9,
        "{} shards moved in 2.5 intervals",
        moved_at.len()
    );
    assert!(moved_at.len() < wanted.len());
    for shard in moved_at.keys() {
        assert!(
            wanted.contains(shard),
            "shard {shard} moved but the newcomer is not preferred"
        );
    }
    // Per old member, moves are at least an interval apart (less the poll).
    let mut per_member: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (from, at) in moved_at.values() {
        per_member.entry(from.as_str()).or_default().push(*at);
    }
    for (from, mut times) in per_member {
        times.sort();
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= interval - settings.timing.poll_interval,
                "{from} handed off twice within {gap:?}"
            );
        }
    }

    // Eventually the newcomer leads exactly its preferred shards.
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_settled(&refs, Duration::from_secs(20)).await?;
    for node in &mut nodes {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_redis_demotes_itself_before_its_lease_expires() -> Result<()> {
    let server = RedisServer::start().await?;
    let settings = fast_settings();
    let mut node =
        Node::start(&server, MemberId::generate("solo"), settings.clone(), false).await?;
    eventually(Duration::from_secs(3), "all shards led", || async {
        Ok((node.leading().len() == usize::from(SHARDS)).then_some(()))
    })
    .await?;

    server.pause()?;
    let paused = Instant::now();
    let demoted = eventually(Duration::from_secs(3), "self-demotion", || async {
        Ok(node.leading().is_empty().then(|| paused.elapsed()))
    })
    .await;
    server.resume()?;
    let demoted = demoted?;
    // The last confirmed renewal was sent at most one renew interval (plus
    // jitter) before the pause; demotion falls due 700 ms after it, and the
    // loop may be waiting on one call (200 ms) then: before the 1 s TTL.
    let latest =
        settings.timing.demote_after + settings.request_timeout + Duration::from_millis(50);
    assert!(demoted <= latest, "{demoted:?}");
    assert!(demoted < settings.timing.ttl);
    assert!(
        demoted >= settings.timing.demote_after - settings.timing.renew_interval.mul_f64(1.2),
        "{demoted:?}"
    );
    assert_eq!(node.fenced.load(Ordering::Relaxed), 0);

    // Once Redis answers again the member takes its shards back.
    eventually(Duration::from_secs(5), "leadership regained", || async {
        Ok((node.leading().len() == usize::from(SHARDS)).then_some(()))
    })
    .await?;
    node.shutdown().await?;
    Ok(())
}

/// Waits (2 s) until nodes 1 and 2 together lead every shard, then checks
/// that Redis gives each of `moving` (node 0's shards) to its first-ranked
/// survivor.
async fn wait_handed_to_survivors(
    nodes: &[Node],
    members: &[MemberId; 3],
    moving: &BTreeSet<ShardId>,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<()> {
    eventually(
        Duration::from_secs(2),
        "the survivors to lead every shard",
        || async {
            let all_led =
                nodes[1].leading().len() + nodes[2].leading().len() == usize::from(SHARDS);
            Ok(all_led.then_some(()))
        },
    )
    .await?;
    let survivors = [members[1].clone(), members[2].clone()];
    let in_redis = holders(conn).await?;
    for shard in moving {
        let expected = rank(*shard, &survivors)[0].to_string();
        assert_eq!(in_redis[shard].0, expected, "shard {shard}");
    }
    Ok(())
}

/// The member ids in Redis's membership set.
async fn listed_members(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<String>> {
    Ok(redis::cmd("ZRANGE")
        .arg(ClusterKeys::new(PREFIX)?.members())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?)
}

#[tokio::test]
async fn a_member_that_cannot_work_steps_aside_and_comes_back() -> Result<()> {
    let server = RedisServer::start().await?;
    let recorder = Recorder::start(&server).await?;
    let auditor = LeaseAuditor::start(&server).await?;
    let settings = fast_settings();
    let (members, mut nodes) =
        start_announced_trio(&server, &settings, true, Duration::from_secs(5)).await?;
    let moving = nodes[0].leading();
    assert!(!moving.is_empty());
    let mut conn = server.connection().await?;

    // Unavailable: out of the membership, every shard handed over, and
    // nothing taken back while aside (well past a TTL and several polls).
    let started = Instant::now();
    nodes[0].set_available(false);
    wait_handed_to_survivors(&nodes, &members, &moving, &mut conn).await?;
    let handover = started.elapsed();
    assert!(
        handover < settings.timing.ttl,
        "handover took {handover:?}, as long as an expiry"
    );
    tokio::time::sleep(settings.timing.ttl * 2).await;
    assert_eq!(nodes[0].assignment(), Assignment::default());
    let listed = listed_members(&mut conn).await?;
    assert!(!listed.contains(&members[0].to_string()), "{listed:?}");
    wait_handed_to_survivors(&nodes, &members, &moving, &mut conn).await?;

    // Available again: back in the membership and, once settled, leading
    // its preferred shards again.
    nodes[0].set_available(true);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_settled(&refs, Duration::from_secs(10)).await?;
    assert!(
        listed_members(&mut conn)
            .await?
            .contains(&members[0].to_string())
    );
    for node in &mut nodes {
        node.shutdown().await?;
    }
    auditor.finish().await?;
    check_publications(&recorder)?;
    Ok(())
}
