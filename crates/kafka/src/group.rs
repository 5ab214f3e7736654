//! The classic consumer-group coordinator (stub: replaced by the real one).

use gearbox_core::broker::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

/// Group settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for.
    pub session_timeout_ms_min: i32,
    /// Largest session timeout a member may ask for.
    pub session_timeout_ms_max: i32,
    /// How long the first rebalance of an empty group waits for more members.
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms_min: 1_000,
            session_timeout_ms_max: 300_000,
            initial_rebalance_delay_ms: 0,
        }
    }
}

/// The coordinator of every group (this node coordinates them all).
#[derive(Debug)]
pub struct Groups {
    broker: Arc<Broker>,
    config: GroupConfig,
}

impl Groups {
    /// A coordinator over `broker`'s subscriptions.
    #[must_use]
    pub fn new(broker: Arc<Broker>, config: GroupConfig) -> Arc<Groups> {
        Arc::new(Groups { broker, config })
    }

    /// The group APIs and the versions this coordinator implements.
    #[must_use]
    pub fn versions() -> Vec<(ApiKey, VersionRange)> {
        Vec::new()
    }

    /// JoinGroup: completes when the rebalance does.
    pub async fn join(
        self: &Arc<Self>,
        _req: JoinGroupRequest,
        _version: i16,
    ) -> JoinGroupResponse {
        let _ = (&self.broker, &self.config);
        JoinGroupResponse::default()
    }

    /// SyncGroup: completes when the leader's assignment is in.
    pub async fn sync(
        self: &Arc<Self>,
        _req: SyncGroupRequest,
        _version: i16,
    ) -> SyncGroupResponse {
        SyncGroupResponse::default()
    }

    /// Heartbeat.
    #[must_use]
    pub fn heartbeat(&self, _req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        HeartbeatResponse::default()
    }

    /// LeaveGroup.
    #[must_use]
    pub fn leave(&self, _req: LeaveGroupRequest, _version: i16) -> LeaveGroupResponse {
        LeaveGroupResponse::default()
    }

    /// OffsetCommit (durable before it answers).
    pub async fn offset_commit(
        self: &Arc<Self>,
        _req: OffsetCommitRequest,
        _version: i16,
    ) -> OffsetCommitResponse {
        OffsetCommitResponse::default()
    }

    /// OffsetFetch.
    pub async fn offset_fetch(
        self: &Arc<Self>,
        _req: OffsetFetchRequest,
        _version: i16,
    ) -> OffsetFetchResponse {
        OffsetFetchResponse::default()
    }

    /// DescribeGroups.
    #[must_use]
    pub fn describe(&self, _req: DescribeGroupsRequest, _version: i16) -> DescribeGroupsResponse {
        DescribeGroupsResponse::default()
    }

    /// ListGroups.
    #[must_use]
    pub fn list(&self, _req: ListGroupsRequest, _version: i16) -> ListGroupsResponse {
        ListGroupsResponse::default()
    }
}
