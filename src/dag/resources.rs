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
    /// Wall-time limit for cluster executors, e.g. `2h` (default: unstated).
    #[serde(default)]
    pub time: Option<String>,
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

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(mb) => Ok(Memory { bytes: mb << 20 }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
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
}
