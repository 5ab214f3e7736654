//! The classic consumer-group coordinator: JoinGroup, SyncGroup, Heartbeat and LeaveGroup as a
//! Kafka broker runs them, and OffsetCommit / OffsetFetch / DescribeGroups / ListGroups over the
//! broker's cursor subscriptions.
//!
//! Membership lives in memory only: after a restart, clients see `UNKNOWN_MEMBER_ID` or
//! `ILLEGAL_GENERATION` and rejoin, as they do when a Kafka coordinator moves. Offsets are
//! durable: a group's committed offsets for a topic are the cursor subscription `topic/group`,
//! written (and fsynced) through [`Broker::commit_group_offsets`] before the commit is answered.
//! Commit metadata strings are checked against [`COMMIT_METADATA_BYTES_MAX`] but not stored;
//! OffsetFetch returns them empty.
//!
//! A group moves through Kafka's states: `Empty` → `PreparingRebalance` (members join) →
//! `CompletingRebalance` (the leader's SyncGroup is awaited) → `Stable`. A join, a leave or an
//! expired session sends a group back to `PreparingRebalance`; the rebalance completes when
//! every member has rejoined or when the largest rebalance timeout elapses, and members that
//! did not rejoin are removed. Each group has one driver task that sleeps until the group's
//! next deadline (a session, a pending member id, the rebalance timeout, the initial delay).
//!
//! Invariants: every member of a group supports at least one protocol that all the others
//! support (a join that would break this is refused with `INCONSISTENT_GROUP_PROTOCOL`); a
//! group with no members and no pending member ids is removed from memory at once, so the map
//! holds only live groups, at most [`GroupConfig::groups_max`] of them, each with at most
//! [`GroupConfig::group_members_max`] members and pending ids. A group with no live members
//! but with committed offsets is still listed and described (as `Empty`), from the broker's
//! subscriptions.
//!
//! Static membership (`group.instance.id`, KIP-345) is accepted minimally: the instance id is
//! kept and echoed, a join with a known instance id replaces the old member (which triggers a
//! rebalance, unlike Kafka), and a request naming an instance id held by another member id is
//! fenced with `FENCED_INSTANCE_ID`.

use bytes::Bytes;
use gearbox_core::broker::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{StrBytes, VersionRange};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Default for [`GroupConfig::groups_max`]: live groups (with members) held in memory.
pub const GROUPS_MAX: usize = 10_000;
/// Default for [`GroupConfig::group_members_max`]: members plus pending member ids per group.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// A member's protocol names and metadata, summed, in bytes.
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// One member's assignment, as the leader's SyncGroup gives it, in bytes.
pub const MEMBER_ASSIGNMENT_BYTES_MAX: usize = 1 << 20;
/// A group id's length in bytes (a group id is also a subscription name, which is bounded so).
pub const GROUP_ID_BYTES_MAX: usize = 249;
/// A commit's metadata string, in bytes (Kafka's `offset.metadata.max.bytes` default).
pub const COMMIT_METADATA_BYTES_MAX: usize = 4_096;
/// The protocol type reported for groups known only through their committed offsets.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Group settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for.
    pub session_timeout_ms_min: i32,
    /// Largest session timeout a member may ask for.
    pub session_timeout_ms_max: i32,
    /// How long the first rebalance of an empty group waits for more members.
    pub initial_rebalance_delay_ms: u64,
    /// Live groups held at once; a join that would create one more gets
    /// `COORDINATOR_NOT_AVAILABLE` (retriable, so clients back off and retry).
    pub groups_max: usize,
    /// Members plus pending member ids per group; beyond it a join gets
    /// `GROUP_MAX_SIZE_REACHED`.
    pub group_members_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms_min: 1_000,
            session_timeout_ms_max: 300_000,
            initial_rebalance_delay_ms: 0,
            groups_max: GROUPS_MAX,
            group_members_max: GROUP_MEMBERS_MAX,
        }
    }
}

/// Who sent a JoinGroup, from the request header and the connection (for member ids and
/// DescribeGroups).
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    /// The request header's client id.
    pub client_id: String,
    /// The peer, as Kafka shows it (`/127.0.0.1`).
    pub client_host: String,
}

/// A group's state, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Members are (re)joining.
    PreparingRebalance,
    /// Joined; the leader's assignment is awaited.
    CompletingRebalance,
    /// Assigned.
    Stable,
    /// Unknown or gone.
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup waiter receives when its rebalance completes.
#[derive(Debug, Clone)]
struct JoinOutcome {
    error: i16,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    member_id: String,
    /// `(member id, group instance id, metadata)`, for the leader only.
    members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    fn error(error: ResponseError, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error: error.code(),
            generation: -1,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup waiter receives when the leader's assignment is in.
#[derive(Debug, Clone)]
struct SyncOutcome {
    error: i16,
    protocol_type: String,
    protocol: String,
    assignment: Bytes,
}

impl SyncOutcome {
    fn error(error: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: error.code(),
            protocol_type: String::new(),
            protocol: String::new(),
            assignment: Bytes::new(),
        }
    }
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// `(protocol name, metadata)` in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Join order: the first member becomes the leader when there is none.
    seq: u64,
    join_tx: Option<oneshot::Sender<JoinOutcome>>,
    sync_tx: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// A member waiting on a join or a sync is kept alive by the rebalance, not by heartbeats.
    fn session_deadline(&self) -> Option<Instant> {
        if self.join_tx.is_some() || self.sync_tx.is_some() {
            None
        } else {
            Some(self.last_seen + self.session_timeout)
        }
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED`, until their session timeout.
    pending: HashMap<String, Instant>,
    seq_next: u64,
    rebalance_deadline: Option<Instant>,
    initial_delay_until: Option<Instant>,
    /// Identifies this group's driver task, so a stale driver of a removed group exits.
    driver: u64,
    wake: Arc<Notify>,
}

impl Group {
    fn new(driver: u64) -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: HashMap::new(),
            pending: HashMap::new(),
            seq_next: 0,
            rebalance_deadline: None,
            initial_delay_until: None,
            driver,
            wake: Arc::new(Notify::new()),
        }
    }

    fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    fn is_removable(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    fn member_for_instance(&self, instance_id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| id.as_str())
    }

    /// Whether `instance_id` belongs to a member other than `member_id`.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.member_for_instance(i))
            .is_some_and(|owner| owner != member_id)
    }

    /// Whether a member with these protocols may be in the group alongside the other members.
    fn supports(
        &self,
        member_id: &str,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .map(|(_, m)| m)
            .collect();
        if others.is_empty() {
            return true;
        }
        protocol_type == self.protocol_type
            && protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// Kafka's choice: among the protocols every member supports, each member votes for the
    /// one it prefers most; the most votes win, ties going to the earliest member's preference.
    fn select_protocol(&self) -> Option<String> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        let first = members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|name| {
                members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in &members {
            let vote = m
                .protocols
                .iter()
                .map(|(n, _)| n.as_str())
                .find(|n| candidates.contains(n));
            if let Some(vote) = vote {
                *votes.entry(vote).or_default() += 1;
            }
        }
        let best = candidates
            .iter()
            .map(|c| votes.get(c).copied().unwrap_or(0))
            .max()?;
        candidates
            .into_iter()
            .find(|c| votes.get(c).copied().unwrap_or(0) == best)
            .map(str::to_owned)
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Sends the group into `PreparingRebalance`: waiting syncs are told to rejoin.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync_tx.take() {
                    let _ = tx.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self.rebalance_timeout();
        if self.state == GroupState::Empty && !initial_delay.is_zero() {
            self.initial_delay_until = Some(now + initial_delay.min(timeout));
        }
        self.rebalance_deadline = Some(now + timeout);
        self.state = GroupState::PreparingRebalance;
        self.wake.notify_one();
    }

    /// What a member learns of the current generation when it joins without a rebalance.
    fn outcome_for(&self, member_id: &str) -> JoinOutcome {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.member_list()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone().unwrap_or_default(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn member_list(&self) -> Vec<(String, Option<String>, Bytes)> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut members: Vec<(&String, &Member)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.seq);
        members
            .into_iter()
            .map(|(id, m)| (id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
            .collect()
    }

    /// Completes the rebalance if every member has rejoined, or if its deadline has passed
    /// (then the members that did not rejoin are removed).
    fn try_complete(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if let Some(until) = self.initial_delay_until {
            if now < until {
                return;
            }
            self.initial_delay_until = None;
        }
        let all_joined = self.members.values().all(|m| m.join_tx.is_some());
        let expired = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all_joined && !expired {
            return;
        }
        self.members.retain(|_, m| m.join_tx.is_some());
        self.rebalance_deadline = None;
        if self
            .leader
            .as_ref()
            .is_some_and(|l| !self.members.contains_key(l))
        {
            self.leader = None;
        }
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        let Some(protocol) = self.select_protocol() else {
            // Joins keep a common protocol; should that ever fail, nobody is left waiting.
            for (id, m) in self.members.drain() {
                if let Some(tx) = m.join_tx {
                    let _ = tx.send(JoinOutcome::error(
                        ResponseError::InconsistentGroupProtocol,
                        &id,
                    ));
                }
            }
            self.become_empty();
            return;
        };
        self.generation = self.generation.wrapping_add(1).max(1);
        self.protocol = Some(protocol);
        if self.leader.is_none() {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.seq)
                .map(|(id, _)| id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.outcome_for(&id);
            let m = self.members.get_mut(&id).expect("listed above");
            m.last_seen = now;
            if let Some(tx) = m.join_tx.take() {
                let _ = tx.send(outcome);
            }
        }
        self.wake.notify_one();
    }

    fn become_empty(&mut self) {
        self.state = GroupState::Empty;
        self.leader = None;
        self.protocol = None;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
    }

    /// Removes a member; its waiters are dropped (so they answer `UNKNOWN_MEMBER_ID`).
    fn remove_member(&mut self, member_id: &str) -> bool {
        let removed = self.members.remove(member_id).is_some();
        if removed && self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        removed
    }

    /// After members left: rebalance the rest, or become empty.
    fn membership_changed(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, Duration::ZERO);
            }
            GroupState::PreparingRebalance => self.try_complete(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Expires sessions and pending member ids, and completes a timed-out rebalance.
    fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::debug!(member = %id, "group member session expired");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.membership_changed(now);
        }
        self.try_complete(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self.members.values().filter_map(Member::session_deadline);
        let pending = self.pending.values().copied();
        sessions
            .chain(pending)
            .chain(self.rebalance_deadline)
            .chain(self.initial_delay_until)
            .min()
    }
}

/// The coordinator of every group (this node coordinates them all).
#[derive(Debug)]
pub struct Groups {
    broker: Arc<Broker>,
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    drivers: AtomicU64,
}

/// What a join does once the lock is released.
enum JoinStep {
    Done(JoinOutcome),
    Wait(String, oneshot::Receiver<JoinOutcome>),
}

impl Groups {
    /// A coordinator over `broker`'s subscriptions.
    #[must_use]
    pub fn new(broker: Arc<Broker>, config: GroupConfig) -> Arc<Groups> {
        Arc::new(Groups {
            broker,
            config,
            groups: Mutex::new(HashMap::new()),
            drivers: AtomicU64::new(0),
        })
    }

    /// The group APIs and the versions this coordinator implements.
    #[must_use]
    pub fn versions() -> Vec<(ApiKey, VersionRange)> {
        let range = |min, max| VersionRange { min, max };
        vec![
            (ApiKey::JoinGroup, range(0, 9)),
            (ApiKey::SyncGroup, range(0, 5)),
            (ApiKey::Heartbeat, range(0, 4)),
            (ApiKey::LeaveGroup, range(0, 5)),
            (ApiKey::OffsetCommit, range(2, 8)),
            (ApiKey::OffsetFetch, range(1, 7)),
            (ApiKey::DescribeGroups, range(0, 5)),
            (ApiKey::ListGroups, range(0, 4)),
        ]
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes a group once it has neither members nor pending member ids.
    fn cleanup(groups: &mut HashMap<String, Group>, group_id: &str) {
        if groups.get(group_id).is_some_and(Group::is_removable)
            && let Some(mut g) = groups.remove(group_id)
        {
            g.state = GroupState::Dead;
            g.wake.notify_one();
        }
    }

    /// JoinGroup: completes when the rebalance does.
    pub async fn join(self: &Arc<Self>, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
        self.join_as(req, version, ClientMeta::default()).await
    }

    /// JoinGroup with the client's id and host, which name the member id and show in
    /// DescribeGroups. Completes when the rebalance does (or fails).
    pub async fn join_as(
        self: &Arc<Self>,
        req: JoinGroupRequest,
        version: i16,
        client: ClientMeta,
    ) -> JoinGroupResponse {
        let outcome = match self.join_step(&req, version, &client) {
            JoinStep::Done(outcome) => outcome,
            JoinStep::Wait(member_id, rx) => rx
                .await
                .unwrap_or_else(|_| JoinOutcome::error(ResponseError::UnknownMemberId, &member_id)),
        };
        join_response(&outcome, version)
    }

    fn join_step(
        self: &Arc<Self>,
        req: &JoinGroupRequest,
        version: i16,
        client: &ClientMeta,
    ) -> JoinStep {
        let member_id = req.member_id.to_string();
        let fail = |e: ResponseError| JoinStep::Done(JoinOutcome::error(e, &member_id));
        let group_id = req.group_id.as_str();
        if !valid_group_id(group_id) {
            return fail(ResponseError::InvalidGroupId);
        }
        let session_ms = req.session_timeout_ms;
        if session_ms < self.config.session_timeout_ms_min
            || session_ms > self.config.session_timeout_ms_max
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let rebalance_ms = if version >= 1 && req.rebalance_timeout_ms > 0 {
            req.rebalance_timeout_ms
        } else {
            session_ms
        };
        let protocols: Vec<(String, Bytes)> = req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        if req.protocol_type.is_empty() || protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let metadata_bytes: usize = protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if metadata_bytes > MEMBER_METADATA_BYTES_MAX {
            return fail(ResponseError::InvalidRequest);
        }
        let instance_id = if version >= 5 {
            req.group_instance_id.as_ref().map(ToString::to_string)
        } else {
            None
        };
        let now = Instant::now();
        let session = ms(session_ms);
        let mut groups = self.lock();
        if !groups.contains_key(group_id) {
            if !member_id.is_empty() {
                return fail(ResponseError::UnknownMemberId);
            }
            if groups.len() >= self.config.groups_max {
                return fail(ResponseError::CoordinatorNotAvailable);
            }
            let driver = self.drivers.fetch_add(1, Ordering::Relaxed);
            let group = Group::new(driver);
            let wake = group.wake.clone();
            groups.insert(group_id.to_owned(), group);
            tokio::spawn(drive(
                Arc::downgrade(self),
                group_id.to_owned(),
                driver,
                wake,
            ));
        }
        let group = groups.get_mut(group_id).expect("inserted above");
        let step = self.join_group(
            group,
            JoinArgs {
                member_id,
                instance_id,
                client,
                version,
                session,
                rebalance: ms(rebalance_ms),
                protocol_type: req.protocol_type.to_string(),
                protocols,
                now,
            },
        );
        Self::cleanup(&mut groups, group_id);
        step
    }

    fn join_group(&self, group: &mut Group, a: JoinArgs<'_>) -> JoinStep {
        let fail = |e: ResponseError| JoinStep::Done(JoinOutcome::error(e, &a.member_id));
        if !a.member_id.is_empty() && group.fenced(&a.member_id, a.instance_id.as_deref()) {
            return fail(ResponseError::FencedInstanceId);
        }
        if !group.supports(&a.member_id, &a.protocol_type, &a.protocols) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if a.member_id.is_empty() {
            let replaced = a
                .instance_id
                .as_deref()
                .and_then(|i| group.member_for_instance(i))
                .map(str::to_owned);
            if replaced.is_none() && group.size() >= self.config.group_members_max {
                return fail(ResponseError::GroupMaxSizeReached);
            }
            let new_id = new_member_id(&a.client.client_id);
            if a.version >= 4 && a.instance_id.is_none() {
                group.pending.insert(new_id.clone(), a.now + a.session);
                group.wake.notify_one();
                return JoinStep::Done(JoinOutcome::error(
                    ResponseError::MemberIdRequired,
                    &new_id,
                ));
            }
            if let Some(old) = replaced {
                group.remove_member(&old);
            }
            return self.add_member(group, new_id, a);
        }
        if group.pending.remove(&a.member_id).is_some() {
            let id = a.member_id.clone();
            return self.add_member(group, id, a);
        }
        if group.members.contains_key(&a.member_id) {
            return self.rejoin(group, a);
        }
        fail(ResponseError::UnknownMemberId)
    }

    fn add_member(&self, group: &mut Group, member_id: String, a: JoinArgs<'_>) -> JoinStep {
        let (tx, rx) = oneshot::channel();
        if group.members.is_empty() {
            group.protocol_type = a.protocol_type.clone();
        }
        let seq = group.seq_next;
        group.seq_next += 1;
        group.members.insert(
            member_id.clone(),
            Member {
                instance_id: a.instance_id,
                client_id: a.client.client_id.clone(),
                client_host: a.client.client_host.clone(),
                session_timeout: a.session,
                rebalance_timeout: a.rebalance,
                protocols: a.protocols,
                assignment: Bytes::new(),
                last_seen: a.now,
                seq,
                join_tx: Some(tx),
                sync_tx: None,
            },
        );
        if group.state != GroupState::PreparingRebalance {
            group.prepare_rebalance(a.now, self.initial_delay());
        }
        group.try_complete(a.now);
        JoinStep::Wait(member_id, rx)
    }

    fn rejoin(&self, group: &mut Group, a: JoinArgs<'_>) -> JoinStep {
        let id = a.member_id.clone();
        let is_leader = group.leader.as_deref() == Some(id.as_str());
        let member = group.members.get_mut(&id).expect("checked by the caller");
        member.last_seen = a.now;
        member.session_timeout = a.session;
        member.rebalance_timeout = a.rebalance;
        let same = member.same_protocols(&a.protocols);
        let current = match group.state {
            GroupState::CompletingRebalance => same,
            GroupState::Stable => same && !is_leader,
            _ => false,
        };
        if current {
            return JoinStep::Done(group.outcome_for(&id));
        }
        member.protocols = a.protocols;
        let (tx, rx) = oneshot::channel();
        // A join still waiting from this member is superseded; it answers UNKNOWN_MEMBER_ID.
        member.join_tx = Some(tx);
        if group.state != GroupState::PreparingRebalance {
            group.prepare_rebalance(a.now, Duration::ZERO);
        }
        group.try_complete(a.now);
        JoinStep::Wait(id, rx)
    }

    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.config.initial_rebalance_delay_ms)
    }

    /// SyncGroup: completes when the leader's assignment is in.
    pub async fn sync(self: &Arc<Self>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let outcome = match self.sync_step(&req, version) {
            Ok(outcome) => outcome,
            Err(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::UnknownMemberId)),
        };
        let mut resp = SyncGroupResponse::default();
        resp.error_code = outcome.error;
        resp.assignment = outcome.assignment;
        if version >= 5 && outcome.error == 0 {
            resp.protocol_type = Some(StrBytes::from_string(outcome.protocol_type));
            resp.protocol_name = Some(StrBytes::from_string(outcome.protocol));
        }
        resp
    }

    fn sync_step(
        &self,
        req: &SyncGroupRequest,
        version: i16,
    ) -> Result<SyncOutcome, oneshot::Receiver<SyncOutcome>> {
        let fail = |e| Ok(SyncOutcome::error(e));
        if !valid_group_id(&req.group_id) {
            return fail(ResponseError::InvalidGroupId);
        }
        let now = Instant::now();
        let member_id = req.member_id.as_str();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            return fail(ResponseError::UnknownMemberId);
        };
        let instance_id = if version >= 3 {
            req.group_instance_id.as_deref()
        } else {
            None
        };
        if group.fenced(member_id, instance_id) {
            return fail(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(member_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        let type_mismatch = req
            .protocol_type
            .as_ref()
            .is_some_and(|t| t.as_str() != group.protocol_type);
        let name_mismatch = req
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n.as_str()) != group.protocol.as_deref());
        if version >= 5 && (type_mismatch || name_mismatch) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let ok = |group: &Group, assignment: Bytes| SyncOutcome {
            error: 0,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone().unwrap_or_default(),
            assignment,
        };
        match group.state {
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let m = group.members.get_mut(member_id).expect("checked above");
                m.last_seen = now;
                let assignment = m.assignment.clone();
                Ok(ok(group, assignment))
            }
            GroupState::CompletingRebalance => {
                let is_leader = group.leader.as_deref() == Some(member_id);
                let m = group.members.get_mut(member_id).expect("checked above");
                m.last_seen = now;
                if !is_leader {
                    let (tx, rx) = oneshot::channel();
                    m.sync_tx = Some(tx);
                    return Err(rx);
                }
                if req
                    .assignments
                    .iter()
                    .any(|a| a.assignment.len() > MEMBER_ASSIGNMENT_BYTES_MAX)
                {
                    // As Kafka does when it cannot store an assignment: everyone rejoins.
                    group.prepare_rebalance(now, Duration::ZERO);
                    return fail(ResponseError::InvalidRequest);
                }
                Ok(Self::complete_sync(group, req, now, member_id, ok))
            }
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
        }
    }

    /// Stores the leader's assignment, answers every waiting member and makes the group stable.
    fn complete_sync(
        group: &mut Group,
        req: &SyncGroupRequest,
        now: Instant,
        leader: &str,
        ok: impl Fn(&Group, Bytes) -> SyncOutcome,
    ) -> SyncOutcome {
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
        }
        for a in &req.assignments {
            if let Some(m) = group.members.get_mut(a.member_id.as_str()) {
                m.assignment = a.assignment.clone();
            }
        }
        group.state = GroupState::Stable;
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let assignment = group.members[&id].assignment.clone();
            let outcome = ok(group, assignment);
            let m = group.members.get_mut(&id).expect("listed above");
            if let Some(tx) = m.sync_tx.take() {
                m.last_seen = now;
                let _ = tx.send(outcome);
            }
        }
        group.wake.notify_one();
        let assignment = group.members[leader].assignment.clone();
        ok(group, assignment)
    }

    /// Heartbeat.
    #[must_use]
    pub fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = self.heartbeat_code(&req, version).map_or(0, |e| e.code());
        resp
    }

    fn heartbeat_code(&self, req: &HeartbeatRequest, version: i16) -> Option<ResponseError> {
        if !valid_group_id(&req.group_id) {
            return Some(ResponseError::InvalidGroupId);
        }
        let member_id = req.member_id.as_str();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let instance_id = if version >= 3 {
            req.group_instance_id.as_deref()
        } else {
            None
        };
        if group.fenced(member_id, instance_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let generation = group.generation;
        let Some(m) = group.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if req.generation_id != generation {
            return Some(ResponseError::IllegalGeneration);
        }
        m.last_seen = Instant::now();
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => None,
            GroupState::Empty | GroupState::Dead => Some(ResponseError::UnknownMemberId),
        }
    }

    /// LeaveGroup: v0-2 name one member, v3+ a batch with an error per member.
    #[must_use]
    pub fn leave(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut resp = LeaveGroupResponse::default();
        if !valid_group_id(&req.group_id) {
            resp.error_code = ResponseError::InvalidGroupId.code();
            return resp;
        }
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(ToString::to_string),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let now = Instant::now();
        let mut groups = self.lock();
        let codes: Vec<i16> = match groups.get_mut(req.group_id.as_str()) {
            None => vec![ResponseError::UnknownMemberId.code(); leaving.len()],
            Some(group) => {
                let codes: Vec<i16> = leaving
                    .iter()
                    .map(|(id, instance)| leave_one(group, id, instance.as_deref()))
                    .collect();
                if codes.contains(&0) {
                    group.membership_changed(now);
                }
                codes
            }
        };
        Self::cleanup(&mut groups, req.group_id.as_str());
        if version >= 3 {
            resp.members = leaving
                .into_iter()
                .zip(codes)
                .map(|((id, instance), code)| {
                    let mut m = MemberResponse::default();
                    m.member_id = StrBytes::from_string(id);
                    m.group_instance_id = instance.map(StrBytes::from_string);
                    m.error_code = code;
                    m
                })
                .collect();
        } else {
            resp.error_code = codes[0];
        }
        resp
    }

    /// OffsetCommit (durable before it answers).
    pub async fn offset_commit(
        self: &Arc<Self>,
        req: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let group_id = req.group_id.to_string();
        let refused = if valid_group_id(&group_id) {
            self.commit_check(&req, version)
        } else {
            Some(ResponseError::InvalidGroupId)
        };
        let topics: Vec<(String, Vec<CommitPartition>)> = req
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| CommitPartition {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        metadata_bytes: p.committed_metadata.as_ref().map_or(0, |m| m.len()),
                    })
                    .collect();
                (t.name.to_string(), partitions)
            })
            .collect();
        let codes: Vec<Vec<i16>> = if let Some(e) = refused {
            topics
                .iter()
                .map(|(_, ps)| vec![e.code(); ps.len()])
                .collect()
        } else {
            let broker = self.broker.clone();
            let work = topics.clone();
            tokio::task::spawn_blocking(move || {
                work.iter()
                    .map(|(topic, ps)| commit_topic(&broker, topic, &group_id, ps))
                    .collect()
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "offset commit task failed");
                topics
                    .iter()
                    .map(|(_, ps)| vec![ResponseError::UnknownServerError.code(); ps.len()])
                    .collect()
            })
        };
        let mut resp = OffsetCommitResponse::default();
        resp.topics = topics
            .into_iter()
            .zip(codes)
            .map(|((name, ps), codes)| {
                let mut t = OffsetCommitResponseTopic::default();
                t.name = TopicName(StrBytes::from_string(name));
                t.partitions = ps
                    .iter()
                    .zip(codes)
                    .map(|(p, code)| {
                        let mut r = OffsetCommitResponsePartition::default();
                        r.partition_index = p.partition;
                        r.error_code = code;
                        r
                    })
                    .collect();
                t
            })
            .collect();
        resp
    }

    /// Whether the committer may commit for the group (Kafka's order of checks).
    fn commit_check(&self, req: &OffsetCommitRequest, version: i16) -> Option<ResponseError> {
        let generation = req.generation_id_or_member_epoch;
        let member_id = req.member_id.as_str();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            // No live group: a "simple" commit (manual assignment) needs no membership.
            return (generation >= 0).then_some(ResponseError::IllegalGeneration);
        };
        let instance_id = if version >= 7 {
            req.group_instance_id.as_deref()
        } else {
            None
        };
        if group.fenced(member_id, instance_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let current = group.generation;
        let Some(m) = group.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if generation != current {
            return Some(ResponseError::IllegalGeneration);
        }
        if state == GroupState::CompletingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        m.last_seen = Instant::now();
        None
    }

    /// OffsetFetch (v1-7: one group).
    pub async fn offset_fetch(
        self: &Arc<Self>,
        req: OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        let mut resp = OffsetFetchResponse::default();
        let group_id = req.group_id.as_str();
        let group_error = (!valid_group_id(group_id)).then_some(ResponseError::InvalidGroupId);
        if let (Some(e), true) = (group_error, version >= 2) {
            resp.error_code = e.code();
            return resp;
        }
        let wanted: Vec<(String, Option<Vec<i32>>)> = match &req.topics {
            Some(topics) => topics
                .iter()
                .map(|t| (t.name.to_string(), Some(t.partition_indexes.clone())))
                .collect(),
            None => {
                let topics: BTreeSet<String> = self
                    .broker
                    .subscription_names()
                    .into_iter()
                    .filter(|(_, name)| name == group_id)
                    .map(|(topic, _)| topic)
                    .collect();
                topics.into_iter().map(|t| (t, None)).collect()
            }
        };
        resp.topics = wanted
            .into_iter()
            .map(|(topic, partitions)| {
                let committed = match group_error {
                    Some(e) => Err(e.code()),
                    None => self
                        .broker
                        .group_offsets(&topic, group_id)
                        .map_err(|e| crate::errors::code_for(&e)),
                };
                fetch_topic(topic, partitions, committed)
            })
            .collect();
        resp
    }

    /// DescribeGroups.
    #[must_use]
    pub fn describe(&self, req: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
        let stored = self.stored_groups();
        let groups = self.lock();
        let mut resp = DescribeGroupsResponse::default();
        resp.groups = req
            .groups
            .iter()
            .map(|id| {
                describe_one(
                    id,
                    groups.get(id.as_str()),
                    stored.contains(id.as_str()),
                    version,
                )
            })
            .collect();
        resp
    }

    /// ListGroups: live groups and groups known by their committed offsets.
    #[must_use]
    pub fn list(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let mut listed: BTreeMap<String, (String, GroupState)> = self
            .stored_groups()
            .into_iter()
            .map(|id| (id, (CONSUMER_PROTOCOL_TYPE.to_owned(), GroupState::Empty)))
            .collect();
        for (id, g) in self.lock().iter() {
            listed.insert(id.clone(), (g.protocol_type.clone(), g.state));
        }
        let filter: Vec<String> = if version >= 4 {
            req.states_filter
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        let mut resp = ListGroupsResponse::default();
        resp.groups = listed
            .into_iter()
            .filter(|(_, (_, state))| {
                filter.is_empty() || filter.contains(&state.name().to_ascii_lowercase())
            })
            .map(|(id, (protocol_type, state))| {
                let mut g = ListedGroup::default();
                g.group_id = GroupId(StrBytes::from_string(id));
                g.protocol_type = StrBytes::from_string(protocol_type);
                if version >= 4 {
                    g.group_state = StrBytes::from_static_str(state.name());
                }
                g
            })
            .collect();
        resp
    }

    /// Group ids that have committed offsets (cursor subscriptions of any topic).
    fn stored_groups(&self) -> HashSet<String> {
        self.broker
            .subscription_names()
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    /// The state of a live group, or `None` (for tests and diagnostics).
    #[must_use]
    pub fn state(&self, group_id: &str) -> Option<GroupState> {
        self.lock().get(group_id).map(|g| g.state)
    }

    /// Live groups held in memory.
    #[must_use]
    pub fn live_groups(&self) -> usize {
        self.lock().len()
    }
}

struct JoinArgs<'a> {
    member_id: String,
    instance_id: Option<String>,
    client: &'a ClientMeta,
    version: i16,
    session: Duration,
    rebalance: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    now: Instant,
}

#[derive(Debug, Clone)]
struct CommitPartition {
    partition: i32,
    offset: i64,
    metadata_bytes: usize,
}

/// Sleeps until the group's next deadline, or until woken, and applies what is due; exits
/// when the group is gone (or is another incarnation) or the coordinator is dropped.
async fn drive(groups: Weak<Groups>, group_id: String, driver: u64, wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(groups) = groups.upgrade() else {
                return;
            };
            let mut map = groups.lock();
            let Some(group) = map.get_mut(&group_id).filter(|g| g.driver == driver) else {
                return;
            };
            group.tick(Instant::now());
            let deadline = group.next_deadline();
            Groups::cleanup(&mut map, &group_id);
            deadline
        };
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep_until(d) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

fn leave_one(group: &mut Group, member_id: &str, instance_id: Option<&str>) -> i16 {
    let target = match (member_id.is_empty(), instance_id) {
        (true, Some(instance)) => group.member_for_instance(instance).map(str::to_owned),
        _ if group.fenced(member_id, instance_id) => {
            return ResponseError::FencedInstanceId.code();
        }
        _ => Some(member_id.to_owned()),
    };
    match target {
        Some(id) if group.remove_member(&id) => 0,
        _ => ResponseError::UnknownMemberId.code(),
    }
}

/// Commits one topic's partitions, with an error code per partition. Partitions are checked
/// first, so one bad partition does not fail the others.
fn commit_topic(
    broker: &Broker,
    topic: &str,
    group: &str,
    partitions: &[CommitPartition],
) -> Vec<i16> {
    let bounds = match broker.partition_bounds(topic) {
        Ok(b) => b,
        Err(e) => return vec![crate::errors::code_for(&e); partitions.len()],
    };
    let mut codes: Vec<i16> = partitions
        .iter()
        .map(|p| commit_partition_code(p, &bounds).map_or(0, |e| e.code()))
        .collect();
    let valid: Vec<(u32, u64)> = partitions
        .iter()
        .zip(&codes)
        .filter(|(_, code)| **code == 0)
        .map(|(p, _)| (p.partition.unsigned_abs(), p.offset.unsigned_abs()))
        .collect();
    if valid.is_empty() {
        return codes;
    }
    if let Err(e) = broker.commit_group_offsets(topic, group, &valid) {
        tracing::warn!(topic, group, error = %e, "group offset commit failed");
        let code = crate::errors::code_for(&e);
        for c in codes.iter_mut().filter(|c| **c == 0) {
            *c = code;
        }
    }
    codes
}

fn commit_partition_code(p: &CommitPartition, bounds: &[(u64, u64)]) -> Option<ResponseError> {
    let Some(&(_, high_watermark)) = usize::try_from(p.partition)
        .ok()
        .and_then(|i| bounds.get(i))
    else {
        return Some(ResponseError::UnknownTopicOrPartition);
    };
    if p.metadata_bytes > COMMIT_METADATA_BYTES_MAX {
        return Some(ResponseError::OffsetMetadataTooLarge);
    }
    match u64::try_from(p.offset) {
        Err(_) => Some(ResponseError::InvalidCommitOffsetSize),
        Ok(offset) if offset > high_watermark => Some(ResponseError::OffsetOutOfRange),
        Ok(_) => None,
    }
}

/// One topic of an OffsetFetch answer: `partitions` `None` means every partition committed.
fn fetch_topic(
    topic: String,
    partitions: Option<Vec<i32>>,
    committed: Result<Option<Vec<Option<u64>>>, i16>,
) -> OffsetFetchResponseTopic {
    let offsets = match &committed {
        Ok(Some(offsets)) => offsets.as_slice(),
        _ => &[],
    };
    let indexes: Vec<i32> = partitions.unwrap_or_else(|| {
        (0..offsets.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect()
    });
    let mut t = OffsetFetchResponseTopic::default();
    t.name = TopicName(StrBytes::from_string(topic));
    t.partitions = indexes
        .into_iter()
        .map(|index| {
            let mut p = OffsetFetchResponsePartition::default();
            p.partition_index = index;
            p.committed_offset = usize::try_from(index)
                .ok()
                .and_then(|i| offsets.get(i).copied().flatten())
                .and_then(|o| i64::try_from(o).ok())
                .unwrap_or(-1);
            p.metadata = Some(StrBytes::new());
            if let Err(code) = committed {
                p.error_code = code;
            }
            p
        })
        .collect();
    t
}

fn describe_one(id: &GroupId, group: Option<&Group>, stored: bool, version: i16) -> DescribedGroup {
    let mut d = DescribedGroup::default();
    d.group_id = id.clone();
    if !valid_group_id(id) {
        d.error_code = ResponseError::InvalidGroupId.code();
        d.group_state = StrBytes::from_static_str(GroupState::Dead.name());
        return d;
    }
    let Some(group) = group else {
        let state = if stored {
            GroupState::Empty
        } else {
            GroupState::Dead
        };
        d.group_state = StrBytes::from_static_str(state.name());
        if stored {
            d.protocol_type = StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE);
        }
        return d;
    };
    d.group_state = StrBytes::from_static_str(group.state.name());
    d.protocol_type = StrBytes::from_string(group.protocol_type.clone());
    // As Kafka: the protocol, metadata and assignments only once the group is stable.
    let stable = group.state == GroupState::Stable;
    let protocol = group.protocol.clone().unwrap_or_default();
    if stable {
        d.protocol_data = StrBytes::from_string(protocol.clone());
    }
    let mut members: Vec<(&String, &Member)> = group.members.iter().collect();
    members.sort_by_key(|(_, m)| m.seq);
    d.members = members
        .into_iter()
        .map(|(mid, m)| {
            let mut dm = DescribedGroupMember::default();
            dm.member_id = StrBytes::from_string(mid.clone());
            if version >= 4 {
                dm.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
            }
            dm.client_id = StrBytes::from_string(m.client_id.clone());
            dm.client_host = StrBytes::from_string(m.client_host.clone());
            if stable {
                dm.member_metadata = m.metadata(&protocol);
                dm.member_assignment = m.assignment.clone();
            }
            dm
        })
        .collect();
    d
}

fn join_response(o: &JoinOutcome, version: i16) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default();
    resp.error_code = o.error;
    resp.generation_id = o.generation;
    resp.member_id = StrBytes::from_string(o.member_id.clone());
    resp.leader = StrBytes::from_string(o.leader.clone());
    if o.error == 0 {
        if version >= 7 {
            resp.protocol_type = Some(StrBytes::from_string(o.protocol_type.clone()));
        }
        resp.protocol_name = Some(StrBytes::from_string(o.protocol.clone()));
    } else if version >= 7 {
        resp.protocol_name = None;
    }
    resp.members = o
        .members
        .iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = StrBytes::from_string(id.clone());
            if version >= 5 {
                m.group_instance_id = instance.clone().map(StrBytes::from_string);
            }
            m.metadata = metadata.clone();
            m
        })
        .collect();
    resp
}

/// A group id Kafka clients may use here: 1 to [`GROUP_ID_BYTES_MAX`] bytes, and valid as a
/// subscription name (no `/`, no control characters).
fn valid_group_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= GROUP_ID_BYTES_MAX
        && !id.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'/')
}

/// Kafka's member id: `{client_id}-{uuid}`.
fn new_member_id(client_id: &str) -> String {
    let client_id = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearbox_core::broker::BrokerConfig;
    use gearbox_core::event::CloudEvent;
    use gearbox_log::Retention;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::protocol::Encodable;
    use std::future::Future;
    use tokio::task::JoinHandle;

    const G: &str = "g";
    const SESSION_MS: i32 = 10_000;
    const REBALANCE_MS: i32 = 2_000;
    const WAIT: Duration = Duration::from_secs(5);

    struct Fixture {
        groups: Arc<Groups>,
        broker: Arc<Broker>,
        _dir: tempfile::TempDir,
    }

    fn config() -> GroupConfig {
        GroupConfig {
            session_timeout_ms_min: 10,
            ..GroupConfig::default()
        }
    }

    fn fixture(config: GroupConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut broker_config = BrokerConfig::durable();
        broker_config.background = false;
        let broker = Arc::new(Broker::open(dir.path(), broker_config).unwrap());
        Fixture {
            groups: Groups::new(broker.clone(), config),
            broker,
            _dir: dir,
        }
    }

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    /// Fails the test if `m` does not encode at `version` (a field set that the version lacks).
    fn encodes<T: Encodable>(m: &T, version: i16) {
        let mut buf = bytes::BytesMut::new();
        if let Err(e) = m.encode(&mut buf, version) {
            panic!("does not encode at v{version}: {e}");
        }
    }

    fn join_req(member: &str, session_ms: i32, protocols: &[(&str, &[u8])]) -> JoinGroupRequest {
        let mut r = JoinGroupRequest::default();
        r.group_id = GroupId(s(G));
        r.session_timeout_ms = session_ms;
        r.rebalance_timeout_ms = REBALANCE_MS;
        r.member_id = s(member);
        r.protocol_type = s("consumer");
        r.protocols = protocols
            .iter()
            .map(|(name, meta)| {
                let mut p = JoinGroupRequestProtocol::default();
                p.name = s(name);
                p.metadata = Bytes::copy_from_slice(meta);
                p
            })
            .collect();
        r
    }

    const RANGE: &[(&str, &[u8])] = &[("range", b"meta")];

    /// Spawns a join; on v4+ with no member id, it first takes the MEMBER_ID_REQUIRED round.
    fn spawn_join(
        g: &Arc<Groups>,
        mut req: JoinGroupRequest,
        version: i16,
    ) -> JoinHandle<JoinGroupResponse> {
        let g = g.clone();
        tokio::spawn(async move {
            let client = ClientMeta {
                client_id: "rdkafka".into(),
                client_host: "/127.0.0.1".into(),
            };
            if version >= 4 && req.member_id.is_empty() && req.group_instance_id.is_none() {
                let first = g.join_as(req.clone(), version, client.clone()).await;
                encodes(&first, version);
                assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
                req.member_id = first.member_id;
            }
            let resp = g.join_as(req, version, client).await;
            encodes(&resp, version);
            resp
        })
    }

    async fn done<T>(h: impl Future<Output = Result<T, tokio::task::JoinError>>) -> T {
        tokio::time::timeout(WAIT, h)
            .await
            .expect("completes in time")
            .unwrap()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn sync_req(generation: i32, member: &str, assignments: &[(&str, &[u8])]) -> SyncGroupRequest {
        let mut r = SyncGroupRequest::default();
        r.group_id = GroupId(s(G));
        r.generation_id = generation;
        r.member_id = s(member);
        r.assignments = assignments
            .iter()
            .map(|(m, a)| {
                let mut x = SyncGroupRequestAssignment::default();
                x.member_id = s(m);
                x.assignment = Bytes::copy_from_slice(a);
                x
            })
            .collect();
        r
    }

    fn spawn_sync(
        g: &Arc<Groups>,
        req: SyncGroupRequest,
        version: i16,
    ) -> JoinHandle<SyncGroupResponse> {
        let g = g.clone();
        tokio::spawn(async move {
            let resp = g.sync(req, version).await;
            encodes(&resp, version);
            resp
        })
    }

    fn heartbeat(g: &Groups, generation: i32, member: &StrBytes) -> i16 {
        let mut r = HeartbeatRequest::default();
        r.group_id = GroupId(s(G));
        r.generation_id = generation;
        r.member_id = member.clone();
        let resp = g.heartbeat(r, 4);
        encodes(&resp, 4);
        resp.error_code
    }

    /// Two members join together (the initial delay gathers them) and sync: (leader, follower).
    async fn stable_pair(g: &Arc<Groups>, version: i16) -> (JoinGroupResponse, JoinGroupResponse) {
        let a = spawn_join(g, join_req("", SESSION_MS, PROTOCOLS_A), version);
        let b = spawn_join(g, join_req("", SESSION_MS, PROTOCOLS_B), version);
        let (a, b) = (done(a).await, done(b).await);
        assert_eq!((a.error_code, b.error_code), (0, 0));
        assert_eq!((a.generation_id, b.generation_id), (1, 1));
        assert_eq!(a.leader, b.leader);
        // "sticky" is the only protocol both support.
        assert_eq!(a.protocol_name.as_deref(), Some("sticky"));
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let follower_meta = leader
            .members
            .iter()
            .find(|m| m.member_id == follower.member_id)
            .map(|m| m.metadata.clone())
            .unwrap();
        assert!(
            follower_meta == Bytes::from_static(b"a2") || follower_meta == Bytes::from_static(b"b")
        );

        let waiting = spawn_sync(g, sync_req(1, &follower.member_id, &[]), 5);
        wait_for("the follower's sync to wait", || {
            g.lock()[G].members[follower.member_id.as_str()]
                .sync_tx
                .is_some()
        })
        .await;
        let assignments = [
            (leader.member_id.as_str(), &b"A"[..]),
            (follower.member_id.as_str(), &b"B"[..]),
        ];
        let lead = done(spawn_sync(
            g,
            sync_req(1, &leader.member_id, &assignments),
            5,
        ))
        .await;
        let follow = done(waiting).await;
        assert_eq!((lead.error_code, follow.error_code), (0, 0));
        assert_eq!(lead.assignment, Bytes::from_static(b"A"));
        assert_eq!(follow.assignment, Bytes::from_static(b"B"));
        assert_eq!(follow.protocol_name.as_deref(), Some("sticky"));
        assert_eq!(follow.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(g.state(G), Some(GroupState::Stable));
        (leader, follower)
    }

    const PROTOCOLS_A: &[(&str, &[u8])] = &[("range", b"a"), ("sticky", b"a2")];
    const PROTOCOLS_B: &[(&str, &[u8])] = &[("sticky", b"b")];

    /// Which of [`stable_pair`]'s members `id` is, told by its metadata in the leader's list.
    fn protocols_of(
        leader: &JoinGroupResponse,
        id: &StrBytes,
    ) -> &'static [(&'static str, &'static [u8])] {
        let meta = leader
            .members
            .iter()
            .find(|m| &m.member_id == id)
            .map(|m| m.metadata.clone());
        if meta == Some(Bytes::from_static(b"a2")) {
            PROTOCOLS_A
        } else {
            PROTOCOLS_B
        }
    }

    fn gathering() -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: 100,
            ..config()
        }
    }

    #[test]
    fn versions_lie_within_the_codec() {
        let versions = Groups::versions();
        assert_eq!(versions.len(), 8);
        for (key, range) in versions {
            let valid = key.valid_versions();
            assert!(range.min >= valid.min && range.max <= valid.max, "{key:?}");
        }
    }

    #[test]
    fn default_config_uses_the_named_limits() {
        let c = GroupConfig::default();
        assert_eq!(
            (c.groups_max, c.group_members_max),
            (GROUPS_MAX, GROUP_MEMBERS_MAX)
        );
        assert_eq!(
            (c.session_timeout_ms_min, c.session_timeout_ms_max),
            (1_000, 300_000)
        );
        assert_eq!(c.initial_rebalance_delay_ms, 0);
    }

    #[tokio::test]
    async fn two_members_join_elect_a_leader_and_receive_assignments() {
        let f = fixture(gathering());
        let (leader, follower) = stable_pair(&f.groups, 7).await;
        assert_eq!(heartbeat(&f.groups, 1, &leader.member_id), 0);
        assert_eq!(heartbeat(&f.groups, 1, &follower.member_id), 0);
        // A Stable follower's sync is answered from the stored assignment.
        let again = done(spawn_sync(
            &f.groups,
            sync_req(1, &follower.member_id, &[]),
            5,
        ))
        .await;
        assert_eq!(again.assignment, Bytes::from_static(b"B"));
        // A follower rejoining with the same metadata learns the current generation.
        let rejoin = join_req(
            &follower.member_id,
            SESSION_MS,
            protocols_of(&leader, &follower.member_id),
        );
        let current = done(spawn_join(&f.groups, rejoin, 7)).await;
        assert_eq!((current.error_code, current.generation_id), (0, 1));
        assert_eq!(f.groups.state(G), Some(GroupState::Stable));
    }

    #[tokio::test]
    async fn a_third_member_triggers_a_rebalance_and_the_generation_increments() {
        let f = fixture(gathering());
        let (leader, follower) = stable_pair(&f.groups, 5).await;
        let third = spawn_join(&f.groups, join_req("", SESSION_MS, &[("sticky", b"c")]), 5);
        wait_for("the rebalance", || {
            f.groups.state(G) == Some(GroupState::PreparingRebalance)
        })
        .await;
        let rebalancing = ResponseError::RebalanceInProgress.code();
        assert_eq!(heartbeat(&f.groups, 1, &leader.member_id), rebalancing);
        assert_eq!(heartbeat(&f.groups, 1, &follower.member_id), rebalancing);
        // A sync of the old generation during the rebalance is told to rejoin too.
        let stale = done(spawn_sync(
            &f.groups,
            sync_req(1, &leader.member_id, &[]),
            5,
        ))
        .await;
        assert_eq!(stale.error_code, rebalancing);

        let mut rejoins = Vec::new();
        for m in [&leader, &follower] {
            let protocols = protocols_of(&leader, &m.member_id);
            rejoins.push(spawn_join(
                &f.groups,
                join_req(&m.member_id, SESSION_MS, protocols),
                5,
            ));
        }
        let third = done(third).await;
        let mut all = vec![third];
        for r in rejoins {
            all.push(done(r).await);
        }
        for r in &all {
            assert_eq!((r.error_code, r.generation_id), (0, 2));
            // The previous leader stays the leader.
            assert_eq!(r.leader, leader.member_id);
        }
        let new_leader = all
            .iter()
            .find(|r| r.member_id == leader.member_id)
            .unwrap();
        assert_eq!(new_leader.members.len(), 3);
        assert_eq!(f.groups.state(G), Some(GroupState::CompletingRebalance));
        // The old generation is now illegal.
        assert_eq!(
            heartbeat(&f.groups, 1, &follower.member_id),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(heartbeat(&f.groups, 2, &follower.member_id), 0);
    }

    #[tokio::test]
    async fn a_member_that_stops_heartbeating_is_expelled() {
        let f = fixture(config());
        let a = done(spawn_join(&f.groups, join_req("", 150, RANGE), 4)).await;
        let b = spawn_join(&f.groups, join_req("", 150, RANGE), 4);
        // a must rejoin for b's rebalance.
        let a_again = spawn_join(&f.groups, join_req(&a.member_id, 150, RANGE), 4);
        let (b, a2) = (done(b).await, done(a_again).await);
        assert_eq!((a2.generation_id, b.generation_id), (2, 2));
        let leader = if a2.leader == a2.member_id { &a2 } else { &b };
        let assignments = [
            (a2.member_id.as_str(), &b"A"[..]),
            (b.member_id.as_str(), &b"B"[..]),
        ];
        let follower_sync = spawn_sync(
            &f.groups,
            sync_req(
                2,
                if leader.member_id == a2.member_id {
                    &b.member_id
                } else {
                    &a2.member_id
                },
                &[],
            ),
            3,
        );
        wait_for("the follower's sync", || {
            f.groups.lock()[G]
                .members
                .values()
                .any(|m| m.sync_tx.is_some())
        })
        .await;
        done(spawn_sync(
            &f.groups,
            sync_req(2, &leader.member_id, &assignments),
            3,
        ))
        .await;
        done(follower_sync).await;
        assert_eq!(f.groups.state(G), Some(GroupState::Stable));
        // Only a keeps heartbeating; b's session (150 ms) runs out.
        let deadline = Instant::now() + WAIT;
        loop {
            let code = heartbeat(&f.groups, 2, &a2.member_id);
            if code == ResponseError::RebalanceInProgress.code() {
                break;
            }
            assert_eq!(code, 0);
            assert!(Instant::now() < deadline, "b was never expelled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            heartbeat(&f.groups, 2, &b.member_id),
            ResponseError::UnknownMemberId.code()
        );
        let alone = done(spawn_join(
            &f.groups,
            join_req(&a2.member_id, 150, RANGE),
            4,
        ))
        .await;
        assert_eq!((alone.error_code, alone.generation_id), (0, 3));
        assert_eq!(alone.members.len(), 1);
        // Then a stops too: the group empties and leaves memory.
        wait_for("the group to be dropped", || f.groups.live_groups() == 0).await;
    }

    #[tokio::test]
    async fn a_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
        let f = fixture(config());
        let mut req = join_req("", SESSION_MS, RANGE);
        req.rebalance_timeout_ms = 100;
        let a = done(spawn_join(&f.groups, req.clone(), 3)).await;
        let b = done(spawn_join(&f.groups, req, 3)).await;
        // b's join started a rebalance that a never rejoins: b completes alone.
        assert_eq!((b.error_code, b.generation_id), (0, 2));
        assert_eq!(b.leader, b.member_id);
        assert_eq!(
            heartbeat(&f.groups, 2, &a.member_id),
            ResponseError::UnknownMemberId.code()
        );
    }

    #[tokio::test]
    async fn leave_triggers_a_rebalance_and_the_last_leave_empties_the_group() {
        let f = fixture(gathering());
        let (leader, follower) = stable_pair(&f.groups, 5).await;
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s(G));
        leave.members = [follower.member_id.clone(), s("nobody")]
            .into_iter()
            .map(|id| {
                let mut m = MemberIdentity::default();
                m.member_id = id;
                m
            })
            .collect();
        let resp = f.groups.leave(leave, 3);
        encodes(&resp, 3);
        let codes: Vec<i16> = resp.members.iter().map(|m| m.error_code).collect();
        assert_eq!(codes, [0, ResponseError::UnknownMemberId.code()]);
        assert_eq!(
            heartbeat(&f.groups, 1, &leader.member_id),
            ResponseError::RebalanceInProgress.code()
        );
        assert_eq!(
            heartbeat(&f.groups, 1, &follower.member_id),
            ResponseError::UnknownMemberId.code()
        );

        let mut last = LeaveGroupRequest::default();
        last.group_id = GroupId(s(G));
        last.member_id = leader.member_id.clone();
        let resp = f.groups.leave(last.clone(), 0);
        encodes(&resp, 0);
        assert_eq!(resp.error_code, 0);
        assert_eq!(f.groups.live_groups(), 0);
        assert_eq!(
            f.groups.leave(last, 1).error_code,
            ResponseError::UnknownMemberId.code()
        );
        let mut d = DescribeGroupsRequest::default();
        d.groups = vec![GroupId(s(G))];
        let described = f.groups.describe(d, 5);
        assert_eq!(described.groups[0].group_state.as_str(), "Dead");
        assert_eq!(described.groups[0].error_code, 0);
    }

    #[tokio::test]
    async fn member_id_required_from_v4_and_direct_admission_before() {
        let f = fixture(config());
        let first = f
            .groups
            .join_as(
                join_req("", SESSION_MS, RANGE),
                4,
                ClientMeta {
                    client_id: "kcat".into(),
                    client_host: String::new(),
                },
            )
            .await;
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        assert!(
            first.member_id.starts_with("kcat-"),
            "{:?}",
            first.member_id
        );
        encodes(&first, 4);
        // A made-up member id is refused.
        let bogus = f
            .groups
            .join(join_req("kcat-made-up", SESSION_MS, RANGE), 4)
            .await;
        assert_eq!(bogus.error_code, ResponseError::UnknownMemberId.code());
        let joined = f
            .groups
            .join(join_req(&first.member_id, SESSION_MS, RANGE), 4)
            .await;
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!(joined.member_id, first.member_id);

        let other = fixture(config());
        let direct = other.groups.join(join_req("", SESSION_MS, RANGE), 3).await;
        assert_eq!((direct.error_code, direct.generation_id), (0, 1));
        assert!(!direct.member_id.is_empty());
        // An unknown group does not accept a member id it never gave.
        let mut stale = join_req("stale", SESSION_MS, RANGE);
        stale.group_id = GroupId(s("other"));
        let r = other.groups.join(stale, 3).await;
        assert_eq!(r.error_code, ResponseError::UnknownMemberId.code());
        assert_eq!(other.groups.state("other"), None);
    }

    /// A topic of `partitions` partitions holding `events` events.
    fn topic(f: &Fixture, name: &str, partitions: u32, events: usize) -> Vec<(u64, u64)> {
        f.broker
            .create_topic(name, partitions, Retention::FOREVER)
            .unwrap();
        let batch: Vec<CloudEvent> = (0..events)
            .map(|i| CloudEvent {
                id: format!("e{i}"),
                source: "/test".into(),
                ty: "t".into(),
                specversion: "1.0".into(),
                datacontenttype: None,
                dataschema: None,
                subject: None,
                time: None,
                extensions: BTreeMap::new(),
                data: None,
            })
            .collect();
        f.broker.publish(name, &batch).unwrap();
        f.broker.partition_bounds(name).unwrap()
    }

    fn commit_req(
        generation: i32,
        member: &str,
        topics: &[(&str, &[(i32, i64)])],
    ) -> OffsetCommitRequest {
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(s(G));
        r.generation_id_or_member_epoch = generation;
        r.member_id = s(member);
        r.topics = topics
            .iter()
            .map(|(name, ps)| {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(s(name));
                t.partitions = ps
                    .iter()
                    .map(|&(p, o)| {
                        let mut x = OffsetCommitRequestPartition::default();
                        x.partition_index = p;
                        x.committed_offset = o;
                        x
                    })
                    .collect();
                t
            })
            .collect();
        r
    }

    async fn commit(f: &Fixture, req: OffsetCommitRequest, version: i16) -> Vec<Vec<i16>> {
        let resp = f.groups.offset_commit(req, version).await;
        encodes(&resp, version);
        resp.topics
            .iter()
            .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
            .collect()
    }

    /// `(topic, [(partition, offset, error)])` per topic answered.
    async fn fetch(
        f: &Fixture,
        topics: Option<&[(&str, &[i32])]>,
        version: i16,
    ) -> Vec<(String, Vec<(i32, i64, i16)>)> {
        let mut r = OffsetFetchRequest::default();
        r.group_id = GroupId(s(G));
        r.topics = topics.map(|ts| {
            ts.iter()
                .map(|(name, ps)| {
                    let mut t = OffsetFetchRequestTopic::default();
                    t.name = TopicName(s(name));
                    t.partition_indexes = ps.to_vec();
                    t
                })
                .collect()
        });
        let resp = f.groups.offset_fetch(r, version).await;
        encodes(&resp, version);
        assert_eq!(resp.error_code, 0);
        resp.topics
            .iter()
            .map(|t| {
                let ps = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.committed_offset, p.error_code))
                    .collect();
                (t.name.to_string(), ps)
            })
            .collect()
    }

    #[tokio::test]
    async fn commit_then_fetch_round_trips_through_the_broker() {
        let f = fixture(config());
        let bounds = topic(&f, "orders", 2, 20);
        let (hw0, hw1) = (
            i64::try_from(bounds[0].1).unwrap(),
            i64::try_from(bounds[1].1).unwrap(),
        );
        assert!(hw0 + hw1 == 20 && hw0 >= 2);
        let m = done(spawn_join(&f.groups, join_req("", SESSION_MS, RANGE), 8)).await;
        assert_eq!(m.generation_id, 1);
        // Before the leader's sync the group is completing: no commits yet.
        let early = commit(&f, commit_req(1, &m.member_id, &[("orders", &[(0, 1)])]), 8).await;
        assert_eq!(early, [[ResponseError::RebalanceInProgress.code()]]);
        done(spawn_sync(
            &f.groups,
            sync_req(1, &m.member_id, &[(m.member_id.as_str(), b"x")]),
            5,
        ))
        .await;

        let codes = commit(
            &f,
            commit_req(1, &m.member_id, &[("orders", &[(0, 2), (1, hw1)])]),
            8,
        )
        .await;
        assert_eq!(codes, [[0, 0]]);
        let info = f.broker.subscription("orders", G).unwrap();
        assert_eq!(info.positions, [2, u64::try_from(hw1).unwrap()]);

        let got = fetch(&f, Some(&[("orders", &[0, 1, 7])]), 7).await;
        assert_eq!(
            got,
            [(
                "orders".to_owned(),
                vec![(0, 2, 0), (1, hw1, 0), (7, -1, 0)]
            )]
        );
        // Null topics: every topic the group has offsets for.
        let all = fetch(&f, None, 2).await;
        assert_eq!(all, [("orders".to_owned(), vec![(0, 2, 0), (1, hw1, 0)])]);
        // v1: the same, without the top-level error field.
        assert_eq!(
            fetch(&f, Some(&[("orders", &[0])]), 1).await[0].1,
            [(0, 2, 0)]
        );
        // A topic with no commits, and an unknown topic.
        topic(&f, "quiet", 1, 0);
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        let got = fetch(&f, Some(&[("quiet", &[0]), ("nope", &[0, 1])]), 5).await;
        assert_eq!(got[0].1, [(0, -1, 0)]);
        assert_eq!(got[1].1, [(0, -1, unknown), (1, -1, unknown)]);

        // Wrong generation, unknown member.
        let illegal = commit(&f, commit_req(9, &m.member_id, &[("orders", &[(0, 3)])]), 8).await;
        assert_eq!(illegal, [[ResponseError::IllegalGeneration.code()]]);
        let stranger = commit(&f, commit_req(1, "stranger", &[("orders", &[(0, 3)])]), 8).await;
        assert_eq!(stranger, [[ResponseError::UnknownMemberId.code()]]);
        // A simple commit into a group with live members is refused, as Kafka does.
        let simple = commit(&f, commit_req(-1, "", &[("orders", &[(0, 3)])]), 2).await;
        assert_eq!(simple, [[ResponseError::UnknownMemberId.code()]]);
        assert_eq!(f.broker.subscription("orders", G).unwrap().positions[0], 2);
    }

    #[tokio::test]
    async fn simple_commits_rewinds_and_bad_partitions() {
        let f = fixture(config());
        let bounds = topic(&f, "t", 1, 10);
        assert_eq!(bounds, [(0, 10)]);
        assert_eq!(
            commit(&f, commit_req(-1, "", &[("t", &[(0, 8)])]), 2).await,
            [[0]]
        );
        // A rewind (a consumer seeking back) is accepted.
        assert_eq!(
            commit(&f, commit_req(-1, "", &[("t", &[(0, 3)])]), 5).await,
            [[0]]
        );
        assert_eq!(f.broker.group_offsets("t", G).unwrap(), Some(vec![Some(3)]));
        assert_eq!(fetch(&f, Some(&[("t", &[0])]), 3).await[0].1, [(0, 3, 0)]);

        // One bad partition does not fail the good one.
        let mut req = commit_req(
            -1,
            "",
            &[
                ("t", &[(0, 5), (-1, 1), (4, 1), (0, -2), (0, 11)]),
                ("missing", &[(0, 1)]),
            ],
        );
        req.topics[0].partitions[0].committed_metadata = Some(s("fine"));
        let codes = commit(&f, req, 8).await;
        use ResponseError as E;
        assert_eq!(
            codes,
            [
                vec![
                    0,
                    E::UnknownTopicOrPartition.code(),
                    E::UnknownTopicOrPartition.code(),
                    E::InvalidCommitOffsetSize.code(),
                    E::OffsetOutOfRange.code()
                ],
                vec![E::UnknownTopicOrPartition.code()],
            ]
        );
        assert_eq!(f.broker.group_offsets("t", G).unwrap(), Some(vec![Some(5)]));
        // Metadata beyond the bound (not stored, but bounded as Kafka does).
        let mut req = commit_req(-1, "", &[("t", &[(0, 6)])]);
        req.topics[0].partitions[0].committed_metadata = Some(StrBytes::from_string(
            "m".repeat(COMMIT_METADATA_BYTES_MAX + 1),
        ));
        assert_eq!(
            commit(&f, req, 8).await,
            [[E::OffsetMetadataTooLarge.code()]]
        );
        let mut req = commit_req(-1, "", &[("t", &[(0, 6)])]);
        req.topics[0].partitions[0].committed_metadata =
            Some(StrBytes::from_string("m".repeat(COMMIT_METADATA_BYTES_MAX)));
        assert_eq!(commit(&f, req, 8).await, [[0]]);
        // A generation with no live group is stale.
        assert_eq!(
            commit(&f, commit_req(3, "old", &[("t", &[(0, 1)])]), 8).await,
            [[E::IllegalGeneration.code()]]
        );
    }

    #[tokio::test]
    async fn describe_and_list_show_live_and_stored_groups() {
        let f = fixture(gathering());
        topic(&f, "t", 1, 4);
        let mut stored = commit_req(-1, "", &[("t", &[(0, 2)])]);
        stored.group_id = GroupId(s("offsets-only"));
        assert_eq!(commit(&f, stored, 8).await, [[0]]);
        let (leader, follower) = stable_pair(&f.groups, 6).await;

        let mut d = DescribeGroupsRequest::default();
        d.groups = ["g", "offsets-only", "unknown"]
            .iter()
            .map(|id| GroupId(s(id)))
            .collect();
        let resp = f.groups.describe(d, 5);
        encodes(&resp, 5);
        let [live, only, unknown] = &resp.groups[..] else {
            panic!("three groups")
        };
        assert_eq!(
            (
                live.group_state.as_str(),
                live.protocol_type.as_str(),
                live.protocol_data.as_str()
            ),
            ("Stable", "consumer", "sticky")
        );
        assert_eq!(live.members.len(), 2);
        let lm = live
            .members
            .iter()
            .find(|m| m.member_id == leader.member_id)
            .unwrap();
        assert_eq!(
            (lm.client_id.as_str(), lm.client_host.as_str()),
            ("rdkafka", "/127.0.0.1")
        );
        assert_eq!(lm.member_assignment, Bytes::from_static(b"A"));
        let fm = live
            .members
            .iter()
            .find(|m| m.member_id == follower.member_id)
            .unwrap();
        assert_eq!(fm.member_assignment, Bytes::from_static(b"B"));
        assert!(!fm.member_metadata.is_empty());
        assert_eq!(
            (
                only.group_state.as_str(),
                only.protocol_type.as_str(),
                only.error_code
            ),
            ("Empty", "consumer", 0)
        );
        assert_eq!(
            (unknown.group_state.as_str(), unknown.error_code),
            ("Dead", 0)
        );

        let listed = |version, filter: &[&str]| {
            let mut r = ListGroupsRequest::default();
            if version >= 4 {
                r.states_filter = filter.iter().map(|x| s(x)).collect();
            }
            let resp = f.groups.list(r, version);
            encodes(&resp, version);
            resp.groups
                .iter()
                .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(0, &[]),
            [
                ("g".to_owned(), String::new()),
                ("offsets-only".to_owned(), String::new())
            ]
        );
        assert_eq!(
            listed(4, &[]),
            [
                ("g".to_owned(), "Stable".to_owned()),
                ("offsets-only".to_owned(), "Empty".to_owned())
            ]
        );
        assert_eq!(
            listed(4, &["stable"]),
            [("g".to_owned(), "Stable".to_owned())]
        );
        // Once the live group also has offsets, it is still listed once.
        let c = commit(&f, commit_req(1, &leader.member_id, &[("t", &[(0, 1)])]), 8).await;
        assert_eq!(c, [[0]]);
        assert_eq!(listed(3, &[]).len(), 2);
    }

    #[tokio::test]
    async fn inconsistent_protocols_and_bad_session_timeouts_are_refused() {
        let f = fixture(config());
        let a = done(spawn_join(&f.groups, join_req("", SESSION_MS, RANGE), 3)).await;
        assert_eq!(a.error_code, 0);
        let other = f
            .groups
            .join(join_req("", SESSION_MS, &[("roundrobin", b"")]), 3)
            .await;
        assert_eq!(
            other.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let none = f.groups.join(join_req("", SESSION_MS, &[]), 3).await;
        assert_eq!(
            none.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let mut wrong_type = join_req("", SESSION_MS, RANGE);
        wrong_type.protocol_type = s("connect");
        let r = f.groups.join(wrong_type, 3).await;
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        for ms in [9, 300_001] {
            let r = f.groups.join(join_req("", ms, RANGE), 3).await;
            assert_eq!(r.error_code, ResponseError::InvalidSessionTimeout.code());
        }
        assert_eq!(f.groups.lock()[G].members.len(), 1);
    }

    #[test]
    fn protocol_choice_follows_the_members_votes() {
        let mut g = Group::new(0);
        let now = Instant::now();
        for (id, protocols) in [
            ("a", &["range", "sticky", "rr"][..]),
            ("b", &["sticky", "rr"]),
            ("c", &["rr", "sticky", "range"]),
        ] {
            let seq = g.seq_next;
            g.seq_next += 1;
            g.members.insert(
                id.into(),
                Member {
                    instance_id: None,
                    client_id: String::new(),
                    client_host: String::new(),
                    session_timeout: Duration::from_secs(1),
                    rebalance_timeout: Duration::from_secs(1),
                    protocols: protocols
                        .iter()
                        .map(|p| ((*p).to_owned(), Bytes::new()))
                        .collect(),
                    assignment: Bytes::new(),
                    last_seen: now,
                    seq,
                    join_tx: None,
                    sync_tx: None,
                },
            );
        }
        // Common: sticky and rr; a and b vote sticky, c votes rr.
        assert_eq!(g.select_protocol().as_deref(), Some("sticky"));
        g.members.remove("b");
        // All three are common now; a tie (a: range, c: rr) goes to the earliest member's
        // preference.
        assert_eq!(g.select_protocol().as_deref(), Some("range"));
    }

    #[tokio::test]
    async fn bound_live_groups() {
        let f = fixture(GroupConfig {
            groups_max: 2,
            ..config()
        });
        for id in ["g1", "g2"] {
            let mut r = join_req("", SESSION_MS, RANGE);
            r.group_id = GroupId(s(id));
            assert_eq!(done(spawn_join(&f.groups, r, 3)).await.error_code, 0);
        }
        let mut r = join_req("", SESSION_MS, RANGE);
        r.group_id = GroupId(s("g3"));
        assert_eq!(
            f.groups.join(r, 3).await.error_code,
            ResponseError::CoordinatorNotAvailable.code()
        );
        assert_eq!(f.groups.live_groups(), 2);
    }

    #[tokio::test]
    async fn bound_members_per_group_counts_pending_ids() {
        let f = fixture(GroupConfig {
            group_members_max: 2,
            ..gathering()
        });
        let a = f.groups.join(join_req("", SESSION_MS, RANGE), 4).await;
        let b = f.groups.join(join_req("", SESSION_MS, RANGE), 4).await;
        assert_eq!((a.error_code, b.error_code), (79, 79));
        let c = f.groups.join(join_req("", SESSION_MS, RANGE), 4).await;
        assert_eq!(c.error_code, ResponseError::GroupMaxSizeReached.code());
        // The pending ids still get in.
        let a = spawn_join(&f.groups, join_req(&a.member_id, SESSION_MS, RANGE), 4);
        let b = spawn_join(&f.groups, join_req(&b.member_id, SESSION_MS, RANGE), 4);
        let (a, b) = (done(a).await, done(b).await);
        assert_eq!((a.error_code, b.error_code), (0, 0));
        assert_eq!((a.generation_id, b.generation_id), (1, 1));
        let c = f.groups.join(join_req("", SESSION_MS, RANGE), 3).await;
        assert_eq!(c.error_code, ResponseError::GroupMaxSizeReached.code());
    }

    #[tokio::test]
    async fn pending_member_ids_expire_and_the_group_is_dropped() {
        let f = fixture(config());
        let r = f.groups.join(join_req("", 50, RANGE), 4).await;
        assert_eq!(r.error_code, 79);
        assert_eq!(f.groups.live_groups(), 1);
        wait_for("the pending id to expire", || f.groups.live_groups() == 0).await;
        let late = f.groups.join(join_req(&r.member_id, 50, RANGE), 4).await;
        assert_eq!(late.error_code, ResponseError::UnknownMemberId.code());
    }

    #[tokio::test]
    async fn bound_metadata_assignment_and_group_id_sizes() {
        let f = fixture(config());
        let big = vec![0u8; MEMBER_METADATA_BYTES_MAX];
        let r = f
            .groups
            .join(join_req("", SESSION_MS, &[("range", &big)]), 3)
            .await;
        assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
        let fits = vec![0u8; MEMBER_METADATA_BYTES_MAX - "range".len()];
        let m = done(spawn_join(
            &f.groups,
            join_req("", SESSION_MS, &[("range", &fits)]),
            3,
        ))
        .await;
        assert_eq!(m.error_code, 0);

        let too_big = vec![0u8; MEMBER_ASSIGNMENT_BYTES_MAX + 1];
        let s1 = done(spawn_sync(
            &f.groups,
            sync_req(1, &m.member_id, &[(m.member_id.as_str(), &too_big)]),
            3,
        ))
        .await;
        assert_eq!(s1.error_code, ResponseError::InvalidRequest.code());
        assert_eq!(f.groups.state(G), Some(GroupState::PreparingRebalance));
        let m = done(spawn_join(
            &f.groups,
            join_req(&m.member_id, SESSION_MS, &[("range", &fits)]),
            3,
        ))
        .await;
        assert_eq!(m.generation_id, 2);
        let max = vec![1u8; MEMBER_ASSIGNMENT_BYTES_MAX];
        let s2 = done(spawn_sync(
            &f.groups,
            sync_req(2, &m.member_id, &[(m.member_id.as_str(), &max)]),
            3,
        ))
        .await;
        assert_eq!(
            (s2.error_code, s2.assignment.len()),
            (0, MEMBER_ASSIGNMENT_BYTES_MAX)
        );

        let mut long = join_req("", SESSION_MS, RANGE);
        long.group_id = GroupId(StrBytes::from_string("x".repeat(GROUP_ID_BYTES_MAX + 1)));
        assert_eq!(
            f.groups.join(long.clone(), 3).await.error_code,
            ResponseError::InvalidGroupId.code()
        );
        long.group_id = GroupId(StrBytes::from_string("x".repeat(GROUP_ID_BYTES_MAX)));
        assert_eq!(done(spawn_join(&f.groups, long, 3)).await.error_code, 0);
        for bad in ["", "a/b", "tab\t"] {
            let mut r = join_req("", SESSION_MS, RANGE);
            r.group_id = GroupId(s(bad));
            assert_eq!(
                f.groups.join(r, 3).await.error_code,
                ResponseError::InvalidGroupId.code(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn sync_and_heartbeat_check_member_and_generation() {
        let f = fixture(config());
        let m = done(spawn_join(&f.groups, join_req("", SESSION_MS, RANGE), 5)).await;
        let e = |r: ResponseError| r.code();
        assert_eq!(
            heartbeat(&f.groups, 2, &m.member_id),
            e(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            heartbeat(&f.groups, 1, &s("who")),
            e(ResponseError::UnknownMemberId)
        );
        // Heartbeats while the leader's sync is awaited are fine.
        assert_eq!(heartbeat(&f.groups, 1, &m.member_id), 0);
        let bad_gen = done(spawn_sync(&f.groups, sync_req(0, &m.member_id, &[]), 4)).await;
        assert_eq!(bad_gen.error_code, e(ResponseError::IllegalGeneration));
        let stranger = done(spawn_sync(&f.groups, sync_req(1, "who", &[]), 4)).await;
        assert_eq!(stranger.error_code, e(ResponseError::UnknownMemberId));
        let mut wrong_protocol = sync_req(1, &m.member_id, &[]);
        wrong_protocol.protocol_name = Some(s("sticky"));
        let r = done(spawn_sync(&f.groups, wrong_protocol, 5)).await;
        assert_eq!(r.error_code, e(ResponseError::InconsistentGroupProtocol));
        let mut other_group = sync_req(1, &m.member_id, &[]);
        other_group.group_id = GroupId(s("elsewhere"));
        let r = done(spawn_sync(&f.groups, other_group, 4)).await;
        assert_eq!(r.error_code, e(ResponseError::UnknownMemberId));
    }

    #[tokio::test]
    async fn static_members_are_admitted_replaced_and_fenced() {
        let f = fixture(config());
        let mut req = join_req("", SESSION_MS, RANGE);
        req.group_instance_id = Some(s("host-1"));
        // No MEMBER_ID_REQUIRED round for a static member.
        let first = f.groups.join(req.clone(), 5).await;
        assert_eq!((first.error_code, first.generation_id), (0, 1));
        encodes(&first, 5);
        assert_eq!(
            first.members[0].group_instance_id.as_deref(),
            Some("host-1")
        );
        // The same instance restarting replaces the old member id.
        let second = f.groups.join(req, 5).await;
        assert_eq!((second.error_code, second.generation_id), (0, 2));
        assert_ne!(second.member_id, first.member_id);
        let mut hb = HeartbeatRequest::default();
        hb.group_id = GroupId(s(G));
        hb.generation_id = 2;
        hb.member_id = first.member_id.clone();
        hb.group_instance_id = Some(s("host-1"));
        assert_eq!(
            f.groups.heartbeat(hb.clone(), 3).error_code,
            ResponseError::FencedInstanceId.code()
        );
        hb.member_id = second.member_id.clone();
        assert_eq!(f.groups.heartbeat(hb, 3).error_code, 0);
        // Leaving by instance id alone.
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s(G));
        let mut who = MemberIdentity::default();
        who.group_instance_id = Some(s("host-1"));
        leave.members = vec![who];
        let resp = f.groups.leave(leave, 4);
        encodes(&resp, 4);
        assert_eq!(resp.members[0].error_code, 0);
        assert_eq!(f.groups.live_groups(), 0);
    }

    /// One member through join, sync, heartbeat, commit, fetch, describe, list and leave, at
    /// every version advertised: each response must encode at its version.
    #[tokio::test]
    async fn every_advertised_version_encodes() {
        let f = fixture(config());
        topic(&f, "t", 1, 3);
        let range = |key: ApiKey| {
            Groups::versions()
                .into_iter()
                .find(|(k, _)| *k == key)
                .unwrap()
                .1
        };
        for join_v in range(ApiKey::JoinGroup).min..=range(ApiKey::JoinGroup).max {
            let m = done(spawn_join(
                &f.groups,
                join_req("", SESSION_MS, RANGE),
                join_v,
            ))
            .await;
            assert_eq!((m.error_code, m.generation_id), (0, 1), "v{join_v}");
            let sync_v = join_v.min(range(ApiKey::SyncGroup).max);
            let sy = done(spawn_sync(
                &f.groups,
                sync_req(1, &m.member_id, &[(m.member_id.as_str(), b"x")]),
                sync_v,
            ))
            .await;
            assert_eq!(sy.error_code, 0);
            for hb_v in 0..=range(ApiKey::Heartbeat).max {
                let mut hb = HeartbeatRequest::default();
                hb.group_id = GroupId(s(G));
                hb.generation_id = 1;
                hb.member_id = m.member_id.clone();
                let r = f.groups.heartbeat(hb, hb_v);
                encodes(&r, hb_v);
                assert_eq!(r.error_code, 0);
            }
            for v in range(ApiKey::OffsetCommit).min..=range(ApiKey::OffsetCommit).max {
                assert_eq!(
                    commit(&f, commit_req(1, &m.member_id, &[("t", &[(0, 2)])]), v).await,
                    [[0]]
                );
            }
            for v in range(ApiKey::OffsetFetch).min..=range(ApiKey::OffsetFetch).max {
                assert_eq!(fetch(&f, Some(&[("t", &[0])]), v).await[0].1, [(0, 2, 0)]);
            }
            for v in 0..=range(ApiKey::DescribeGroups).max {
                let mut d = DescribeGroupsRequest::default();
                d.groups = vec![GroupId(s(G))];
                let r = f.groups.describe(d, v);
                encodes(&r, v);
                assert_eq!(r.groups[0].group_state.as_str(), "Stable");
            }
            for v in 0..=range(ApiKey::ListGroups).max {
                let r = f.groups.list(ListGroupsRequest::default(), v);
                encodes(&r, v);
                assert_eq!(r.groups.len(), 1);
            }
            let leave_v = join_v.min(range(ApiKey::LeaveGroup).max);
            let mut leave = LeaveGroupRequest::default();
            leave.group_id = GroupId(s(G));
            if leave_v >= 3 {
                let mut who = MemberIdentity::default();
                who.member_id = m.member_id.clone();
                leave.members = vec![who];
            } else {
                leave.member_id = m.member_id.clone();
            }
            let r = f.groups.leave(leave, leave_v);
            encodes(&r, leave_v);
            assert_eq!(f.groups.live_groups(), 0, "v{join_v}");
        }
    }
}
