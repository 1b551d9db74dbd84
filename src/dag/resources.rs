//! What a job asks of the machine: threads, GPUs, memory and (for clusters) time.

use serde::{Deserialize, Serialize};

/// A stage's `resources:`; they guide scheduling and never enter the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Threads the job uses (default 1).
    #[serde(default = "one")]
    pub threads: usize,
    /// GPUs the job wants (default 0).
    #[serde(default)]
    pub gpus: usize,
    /// Memory the job needs, e.g. `4G`, `512M` (default: unstated).
    #[serde(default)]
    pub memory: Option<Memory>,
    /// Wall-time limit for cluster executors, e.g. `2h`, `90m`, `1d 12h` or Slurm's own
    /// `D-HH:MM:SS` (default: unstated, the partition's default).
    #[serde(default)]
    pub time: Option<TimeLimit>,
    /// The Slurm partition for this stage's jobs, over `--partition` (default: unstated).
    #[serde(default)]
    pub partition: Option<String>,
    /// On a cluster, up to this many of the stage's ready jobs run one after another in one
    /// Slurm job (default 1): for fan-outs of jobs shorter than Slurm's own cost of a job.
    #[serde(default = "one")]
    pub bundle: usize,
    /// How many of a bundle's jobs run at once (default 1: one after another); the Slurm job
    /// then asks for that many times the stage's threads and memory.
    #[serde(default = "one")]
    pub bundle_parallel: usize,
}

fn one() -> usize {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            threads: 1,
            gpus: 0,
            memory: None,
            time: None,
            partition: None,
            bundle: 1,
            bundle_parallel: 1,
        }
    }
}

/// An amount of memory, written `512M`, `4G`, `1T` or a number of megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Memory {
    /// Bytes.
    pub bytes: u64,
}

impl From<Memory> for String {
    fn from(m: Memory) -> String {
        format!("{}M", m.bytes.div_ceil(1 << 20))
    }
}

impl std::str::FromStr for Memory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("memory {s:?}: expected a number and a unit, e.g. 4G or 512M"))?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "M" | "MB" | "MIB" => 1 << 20,
            "K" | "KB" | "KIB" => 1 << 10,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            other => {
                return Err(format!(
                    "memory {s:?}: unknown unit {other:?} (use K, M, G or T)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(|bytes| Memory { bytes })
            .ok_or_else(|| format!("memory {s:?} is too large"))
    }
}

/// A YAML number or string, as text: a bare number then means the default unit (megabytes for
/// memory, minutes for time).
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Num(n) => n.to_string(),
        Raw::Text(s) => s,
    })
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A wall-time limit, kept in whole minutes (Slurm's unit; a part of a minute counts as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TimeLimit {
    /// Minutes.
    pub minutes: u64,
}

impl From<TimeLimit> for String {
    fn from(t: TimeLimit) -> String {
        format!("{}m", t.minutes)
    }
}

impl std::str::FromStr for TimeLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || {
            format!(
                "time {s:?}: expected a duration such as 2h, 90m or 1d 12h, minutes, or Slurm's D-HH:MM:SS"
            )
        };
        let seconds = if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
            // A bare number is minutes, as in Slurm.
            t.parse::<u64>().map_err(|_| bad())? * 60
        } else if t
            .chars()
            .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
        {
            slurm_seconds(t).ok_or_else(bad)?
        } else {
            humantime::parse_duration(t).map_err(|_| bad())?.as_secs()
        };
        if seconds == 0 {
            return Err(format!("time {s:?}: must be longer than zero"));
        }
        Ok(TimeLimit {
            minutes: seconds.div_ceil(60),
        })
    }
}

/// Seconds in Slurm's time formats: MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
fn slurm_seconds(t: &str) -> Option<u64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, sec) = match (t.contains('-'), parts.as_slice()) {
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        (_, [h, m, sec]) => (*h, *m, *sec),
        (false, [m, sec]) => (0, *m, *sec),
        _ => return None,
    };
    Some(((days * 24 + h) * 60 + m) * 60 + sec)
}

impl<'de> Deserialize<'de> for TimeLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!("4G".parse::<Memory>().unwrap().bytes, 4 << 30);
        assert_eq!("512 MB".parse::<Memory>().unwrap().bytes, 512 << 20);
        assert!("4X".parse::<Memory>().is_err());
        assert!("G".parse::<Memory>().is_err());
        let r: Resources = serde_yaml::from_str("{threads: 4, memory: 100}").unwrap();
        assert_eq!(r.memory.unwrap().bytes, 100 << 20);
        assert!(serde_yaml::from_str::<Resources>("{cpus: 4}").is_err());
    }

    #[test]
    fn time_limits_in_human_and_slurm_forms() {
        let minutes = |s: &str| s.parse::<TimeLimit>().map(|t| t.minutes);
        assert_eq!(minutes("2h"), Ok(120));
        assert_eq!(minutes("1h 30m"), Ok(90));
        assert_eq!(minutes("1d 12h"), Ok(2160));
        assert_eq!(minutes("45s"), Ok(1));
        assert_eq!(minutes("30"), Ok(30));
        assert_eq!(minutes("01:30:00"), Ok(90));
        assert_eq!(minutes("10:30"), Ok(11));
        assert_eq!(minutes("2-12"), Ok(3600));
        assert_eq!(minutes("1-00:30:00"), Ok(1470));
        for bad in ["soon", "0", "1:2:3:4", "-5", "0m", ""] {
            assert!(minutes(bad).is_err(), "{bad}");
        }
        let r: Resources = serde_yaml::from_str("{time: 90, partition: gpu}").unwrap();
        assert_eq!(r.time.unwrap().minutes, 90);
        assert_eq!(r.partition.as_deref(), Some("gpu"));
        let e = serde_yaml::from_str::<Resources>("{time: soon}").unwrap_err();
        assert!(e.to_string().contains("expected a duration"), "{e}");
    }
}
