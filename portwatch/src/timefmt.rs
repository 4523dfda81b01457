//! Wall-clock times as RFC 3339 UTC with nanoseconds, the JSON schema's `time`.

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// RFC 3339, UTC, nine fractional digits: `2026-11-23T22:01:02.123456789Z`.
pub fn format_ns(ns: i128) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ns) {
        Ok(t) => {
            let date = t.date();
            let clock = t.time();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
                date.year(),
                u8::from(date.month()),
                date.day(),
                clock.hour(),
                clock.minute(),
                clock.second(),
                clock.nanosecond()
            )
        }
        Err(_) => "1970-01-01T00:00:00.000000000Z".to_owned(),
    }
}

pub fn parse_ns(s: &str) -> Result<i128, time::error::Parse> {
    Ok(OffsetDateTime::parse(s, &Rfc3339)?.unix_timestamp_nanos())
}

/// Local `HH:MM:SS.mmm` for the terminal.
pub fn clock_ms(ns: i128, offset: time::UtcOffset) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ns) {
        Ok(t) => {
            let t = t.to_offset(offset);
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        }
        Err(_) => "??:??:??.???".to_owned(),
    }
}

pub fn now_ns() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos()
}

pub mod rfc3339_ns {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ns(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_ns(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_with_nanoseconds() {
        let ns = 1_795_471_262_123_456_789i128;
        let s = format_ns(ns);
        assert_eq!(s, "2026-11-23T22:01:02.123456789Z");
        assert_eq!(parse_ns(&s).ok(), Some(ns));
    }
}
