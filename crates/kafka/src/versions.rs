//! The APIs and versions the listener implements, and nothing else: ApiVersions advertises
//! exactly this table (with the group coordinator's), and a request for anything outside it
//! closes the connection, as Kafka does with a request it cannot parse.

use crate::group::Groups;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;
use std::sync::OnceLock;

/// The ApiVersions versions implemented. A request above it is answered in v0 with
/// UNSUPPORTED_VERSION and this table (KIP-511), which every client understands.
pub const API_VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

/// The non-group APIs and their implemented version ranges.
const OWN: &[(ApiKey, i16, i16)] = &[
    // v3 is the first with RecordBatch v2 only; v9 is the first flexible one.
    (ApiKey::Produce, 3, 9),
    // v13 switches to topic ids, which Gearbox topics do not have.
    (ApiKey::Fetch, 4, 12),
    // v7 adds the max-timestamp lookup (-3), which is not implemented.
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    // v4 batches several keys in one request.
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::ApiVersions, API_VERSIONS.min, API_VERSIONS.max),
    (ApiKey::CreateTopics, 2, 7),
    // v6 names topics by id.
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Every implemented API with its range, sorted by key.
pub fn table() -> &'static [(ApiKey, VersionRange)] {
    static TABLE: OnceLock<Vec<(ApiKey, VersionRange)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Vec<(ApiKey, VersionRange)> = OWN
            .iter()
            .map(|&(k, min, max)| (k, VersionRange { min, max }))
            .chain(Groups::versions())
            .map(|(k, r)| {
                // Never advertise beyond what the codec can encode.
                let r = r.intersect(&k.valid_versions());
                assert!(!r.is_empty(), "{k:?}: no version left");
                (k, r)
            })
            .collect();
        t.sort_by_key(|(k, _)| *k as i16);
        t
    })
}

/// The implemented range of `key`, if it is implemented.
#[must_use]
pub fn range(key: ApiKey) -> Option<VersionRange> {
    table().iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// Whether `version` of `key` is implemented.
#[must_use]
pub fn supported(key: ApiKey, version: i16) -> bool {
    range(key).is_some_and(|r| r.min <= version && version <= r.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_within_the_codec() {
        for (k, r) in table() {
            let codec = k.valid_versions();
            assert!(
                codec.min <= r.min && r.max <= codec.max,
                "{k:?} {r} vs {codec}"
            );
        }
        assert!(supported(ApiKey::Produce, 9));
        assert!(!supported(ApiKey::Produce, 10));
        assert!(!supported(ApiKey::SaslHandshake, 0));
    }
}
