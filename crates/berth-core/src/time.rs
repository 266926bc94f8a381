//! Timestamps: milliseconds since the Unix epoch, rendered the way Model Studio does.

use chrono::{DateTime, Utc};

/// A UTC instant with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// `YYYY-MM-DDTHH:MM:SS.fff`, UTC, no zone suffix (the upstream `gmt_*` format).
    pub fn to_gmt_string(self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_without_zone() {
        // 2025-06-17T11:00:38.680 UTC
        let t = Timestamp(1_750_158_038_680);
        assert_eq!(t.to_gmt_string(), "2025-06-17T11:00:38.680");
    }
}
