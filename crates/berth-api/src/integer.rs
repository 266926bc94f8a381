//! Integers as JSON Schema counts them: `5` and `5.0` are the same integer. serde reads `5.0` as a
//! float and refuses it for an integer field; fields read with [`integer`] take either, and refuse
//! a fractional or out-of-range number as before.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The integer a JSON number stands for, if it is one (`5`, `5.0`, `5e0`).
pub fn of(n: &serde_json::Number) -> Option<i128> {
    if let Some(v) = n.as_i64() {
        return Some(i128::from(v));
    }
    if let Some(v) = n.as_u64() {
        return Some(i128::from(v));
    }
    let f = n.as_f64()?;
    // Beyond 2^64 no float is an integer a field can hold; below, the conversion is exact.
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 1.9e19).then_some(f as i128)
}

/// Deserializes an optional integer field of type `T`, taking integral floats.
pub fn integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    of(&n)
        .and_then(|v| T::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!("invalid value: {n}, expected an integer in range"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "integer")]
        n: Option<u32>,
    }

    #[test]
    fn integral_floats_are_integers() {
        let n = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n);
        assert_eq!(n(r#"{"n": 5}"#).unwrap(), Some(5));
        assert_eq!(n(r#"{"n": 5.0}"#).unwrap(), Some(5));
        assert_eq!(n(r#"{"n": 5e2}"#).unwrap(), Some(500));
        assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(n(r#"{}"#).unwrap(), None);
        for bad in [
            r#"{"n": 5.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 4294967296}"#,
            r#"{"n": "5"}"#,
            r#"{"n": 1e300}"#,
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }
}
