//! Durations written as `250ms`, `30s`, `5m`, `4h` or `5d`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in the config file's notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// The standard library duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a whole number followed by ms, s, m, h or d, like \"30s\""
)]
pub struct DurationError(String);

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(text.to_string());
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| err())?;
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        let millis = number.checked_mul(millis).ok_or_else(err)?;
        Ok(Duration(std::time::Duration::from_millis(millis)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if millis > 0 && millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        write!(f, "{millis}ms")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("4h", 14_400), ("5d", 432_000)] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d, Duration::secs(secs));
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("250ms".parse::<Duration>().unwrap().to_string(), "250ms");
        for bad in ["", "5", "m", "5x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }
}
