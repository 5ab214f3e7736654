//! `gearbox.yaml`: what the server sets up at start. For now, topics; pipelines come later.
//!
//! ```yaml
//! topics:
//!   - name: orders
//!     partitions: 3
//!     retention: { ms: 604800000 }
//! ```

use anyhow::Context as _;
use gearbox_log::Retention;
use serde::Deserialize;
use std::path::Path;

/// Largest config file read.
const CONFIG_BYTES_MAX: u64 = 4 << 20;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Topics to create if missing.
    #[serde(default)]
    pub topics: Vec<TopicDecl>,
}

/// One topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    /// The name.
    pub name: String,
    /// Partition count.
    #[serde(default = "one")]
    pub partitions: u32,
    /// Retention; absent keeps everything.
    #[serde(default)]
    pub retention: Option<RetentionDecl>,
}

/// Retention limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDecl {
    /// Keep at most this many milliseconds.
    pub ms: Option<u64>,
    /// Keep at most this many bytes per partition.
    pub bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

impl TopicDecl {
    /// The retention this declaration asks for.
    #[must_use]
    pub fn retention(&self) -> Retention {
        self.retention
            .as_ref()
            .map_or(Retention::FOREVER, |r| Retention {
                bytes_max: r.bytes,
                ms_max: r.ms,
            })
    }
}

impl Config {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// The file cannot be read, is too large, or does not parse (the error names the place).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(
            len <= CONFIG_BYTES_MAX,
            "{} is larger than {CONFIG_BYTES_MAX} bytes",
            path.display()
        );
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}
