//! The clock schedules are read by: the system's, or one the operator (or a test) sets.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A clock read from a file holding milliseconds since the epoch, re-read at every tick: it
/// lets a rehearsal (or a test) move a scheduler through days of fire times in seconds, with
/// the real binaries. While the file is missing or unreadable the system's time is used, and
/// the problem is logged once per change of it.
#[derive(Debug)]
pub struct FileClock {
    path: PathBuf,
    warned: std::sync::Mutex<Option<String>>,
}

impl FileClock {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            warned: std::sync::Mutex::new(None),
        }
    }

    fn read(&self) -> Result<i64, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|error| format!("read {}: {error}", self.path.display()))?;
        text.trim().parse::<i64>().map_err(|error| {
            format!(
                "{}: {:?} is not milliseconds since the epoch ({error})",
                self.path.display(),
                text.trim()
            )
        })
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> i64 {
        let result = self.read();
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(ms) => {
                *warned = None;
                ms
            }
            Err(problem) => {
                if warned.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(%problem, "scheduler clock file unusable; using the system time");
                    *warned = Some(problem);
                }
                system_now_ms()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_clock_reads_its_file_and_falls_back_to_the_system_time() {
        let folder = tempfile::tempdir().expect("tempdir");
        let path = folder.path().join("now");
        let clock = FileClock::new(path.clone());
        let before = system_now_ms();
        assert!(clock.now_ms() >= before, "missing file: system time");
        std::fs::write(&path, "1790000000000\n").expect("write");
        assert_eq!(clock.now_ms(), 1_790_000_000_000);
        std::fs::write(&path, "soon").expect("write");
        assert!(clock.now_ms() >= before, "garbage: system time");
    }
}
