//! The local PostgreSQL for the Postgres tests (127.0.0.1:5432, trust auth), through `psql`:
//! statements, and a database of a test's own with its replication slot, dropped at the end.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `sql` in database `db`; its unaligned, tuples-only output, or psql's error text.
pub fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql])
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A fresh database, and the name of the replication slot the test's pipeline makes in it
/// (the same unique name); both are dropped when this is.
pub struct Database {
    /// The database, also the slot's and the publication's name.
    pub name: String,
    /// The slot.
    pub slot: String,
}

impl Database {
    /// Creates `gbx_<tag>_<pid>_<nanos>`.
    pub fn create(tag: &str) -> Database {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("gbx_{tag}_{}_{nanos}", std::process::id());
        psql("postgres", &format!("CREATE DATABASE {name}")).unwrap();
        Database {
            slot: name.clone(),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // The server is gone (killed) by now; its walsender may take a moment to notice.
        let deadline = Instant::now() + Duration::from_secs(20);
        while psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                self.slot
            ),
        )
        .is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
