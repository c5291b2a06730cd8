//! Durations as Istio's YAML writes them (`connectTimeout: 10s`, `baseEjectionTime: 1m`):
//! Go's form, a number and a unit, several in a row (`1m30s`), fractions allowed (`1.5s`).
//! Held in whole milliseconds, what the agent counts in: a duration finer than that, or
//! longer than a `uint32` of milliseconds (49 days), is refused rather than rounded.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u32,
}

/// The units Istio's examples use; Go's `us` and `ns` would only ever give fractions of a
/// millisecond, which nothing here can hold.
const UNITS: [(&str, u128); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
/// Decimals in one number: Go's precision (nanoseconds); more say nothing a duration needs.
const MAX_DECIMALS: usize = 9;

impl Duration {
    pub const fn from_millis(millis: u32) -> Self {
        Self { millis }
    }

    pub fn millis(self) -> u32 {
        self.millis
    }

    /// `1h`, `1m30s`, `10s`, `1.5s`, `500ms`; also `0`, as Go allows.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not a duration such as 10s, 500ms or 1m: {why}");
        let too_long = || bad("longer than 49 days");
        if text == "0" {
            return Ok(Self::default());
        }
        if text.starts_with('-') {
            return Err(bad("it is negative"));
        }
        let mut rest = text.strip_prefix('+').unwrap_or(text);
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        // Milliseconds; each number's fraction is checked to come out whole.
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_len);
            let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            rest = next;
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() && fraction.is_empty() {
                return Err(bad("a number must come before each unit"));
            }
            if fraction.contains('.') {
                return Err(bad(&format!("{number:?} is not a number")));
            }
            if fraction.len() > MAX_DECIMALS {
                return Err(bad(&format!("{number:?} has more than {MAX_DECIMALS} decimals")));
            }
            let Some((_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                let why = if unit.is_empty() {
                    "a unit (h, m, s or ms) must follow each number".to_owned()
                } else {
                    format!("{unit:?} is not one of the units h, m, s, ms")
                };
                return Err(bad(&why));
            };
            // Digits only, so a number that does not parse is too long for any arithmetic.
            let digits =
                |s: &str| if s.is_empty() { Ok(0) } else { s.parse::<u128>().map_err(|_| too_long()) };
            let denominator = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(0));
            let numerator = digits(whole)?
                .checked_mul(denominator)
                .and_then(|n| n.checked_add(digits(fraction).ok()?))
                .and_then(|n| n.checked_mul(*scale))
                .ok_or_else(too_long)?;
            if numerator % denominator != 0 {
                return Err(bad("finer than a millisecond"));
            }
            total = total.checked_add(numerator / denominator).ok_or_else(too_long)?;
            if total > u128::from(u32::MAX) {
                return Err(too_long());
            }
        }
        Ok(Self { millis: u32::try_from(total).map_err(|_| too_long())? })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.millis)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 10s, 500ms or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            // A bare number has no unit: seconds to one reader, milliseconds to another.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!("{v} has no unit; write it as {v}s or {v}ms")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!("{v} has no unit; write it as {v}s or {v}ms")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!("{v} has no unit; write it as {v}s")))
            }
        }
        d.deserialize_any(Text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Result<u32, String> {
        Duration::parse(text).map(Duration::millis)
    }

    #[test]
    fn istio_forms() {
        for (text, want) in [
            ("1h", 3_600_000),
            ("1m", 60_000),
            ("10s", 10_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("0.25m", 15_000),
            (".5s", 500),
            ("1m30s", 90_000),
            ("1h0m0.001s", 3_600_001),
            ("0", 0),
            ("0s", 0),
        ] {
            assert_eq!(ms(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn what_is_refused_says_why() {
        for (text, why) in [
            ("10", "a unit"),
            ("-1s", "negative"),
            ("", "empty"),
            ("+", "empty"),
            ("1d", "\"d\" is not one of the units"),
            ("100us", "\"us\" is not one of the units"),
            ("1.0001s", "finer than a millisecond"),
            ("1.2.3s", "not a number"),
            ("s", "a number must come before"),
            ("50000h", "longer than 49 days"),
            ("99999999999999999999s", "longer than 49 days"),
            ("999999999999999999999999999999999999999999s", "longer than 49 days"),
            ("1.0000000001s", "more than 9 decimals"),
        ] {
            let e = ms(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn yaml_numbers_are_refused_with_a_hint() {
        let e = serde_yaml::from_str::<Duration>("30").expect_err("no unit");
        assert!(e.to_string().contains("write it as 30s or 30ms"), "{e}");
        assert_eq!(serde_yaml::from_str::<Duration>("\"2s\"").expect("text").millis(), 2_000);
        assert_eq!(serde_yaml::to_string(&Duration::from_millis(7)).expect("yaml"), "7ms\n");
    }
}
