//! The HTTP poller in the conformance suite, against the local test API.

#[path = "support/poll_api.rs"]
mod poll_api;

use gearbox_connect::testkit::{SourceGear, source_suite};
use gearbox_connectors::http_poll::{HttpPoll, HttpPollConfig};
use poll_api::{Pagination, PollApi};
use serde_json::json;

struct Api {
    api: PollApi,
}

impl SourceGear for Api {
    type Source = HttpPoll;

    async fn connect(&mut self) -> HttpPoll {
        let config: HttpPollConfig = serde_json::from_value(json!({
            "url": self.api.url(Pagination::CursorField),
            "interval_ms": 100,
            "records": "records",
            "cursor": {"param": "updated_since", "field": "updated_at", "kind": "timestamp"},
            "pagination": {"style": "cursor_field", "next_field": "next", "page_param": "cursor",
                           "page_size_param": "page_size", "page_size": 2},
            "id": {"key": "id", "version": "updated_at"},
            "event": {"source": "https://api.test/records", "type": "test.record"},
        }))
        .unwrap();
        HttpPoll::new(config).unwrap()
    }

    async fn emit(&mut self, keys: &[String], poison: bool) -> Vec<String> {
        keys.iter()
            .map(|k| self.api.upsert(k, json!({"poison": poison})).event_id())
            .collect()
    }

    fn buffers_while_down(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_poller_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = Api {
        api: PollApi::start(),
    };
    source_suite(&mut api, dir.path()).await;
}
