//! An ordered string-to-string mapping for params: written as a YAML mapping (order kept), stored
//! in canonical params as a list of pairs so that the order survives JSON.

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `{from: to, ...}` with the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderedMap(pub Vec<(String, String)>);

impl OrderedMap {
    /// Builds one from pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        OrderedMap(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Serialize for OrderedMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of names, e.g. {base: leaf_base, tip: leaf_tip}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _): &(String, String)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("`{k}` appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = s.next_element::<(String, String)>()? {
                    out.push(pair);
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_through_json() {
        let m: OrderedMap = serde_json::from_str(r#"{"z": "a", "b": "c"}"#).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json, serde_json::json!([["z", "a"], ["b", "c"]]));
        let back: OrderedMap = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<OrderedMap>(r#"{"a": "x", "a": "y"}"#).is_err());
    }
}
