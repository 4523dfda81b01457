//! Wall-clock times as RFC 3339 UTC with nanoseconds, the JSON schema's `time`.

use std::fmt::Write as _;

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// RFC 3339, UTC, nine fractional digits: `2026-11-23T22:01:02.123456789Z`.
pub fn format_ns(ns: i128) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ns) {
        Ok(t) => {
            let mut s = String::with_capacity(30);
            let _ = write_seconds(&mut s, t);
            let _ = write!(s, ".{:09}Z", t.nanosecond());
            s
        }
        Err(_) => "1970-01-01T00:00:00.000000000Z".to_owned(),
    }
}

/// [`format_ns`] up to the seconds (`2026-11-23T22:01:02`), for writers
/// that add the fraction themselves.
pub fn write_seconds(w: &mut impl std::fmt::Write, t: OffsetDateTime) -> std::fmt::Result {
    let (date, clock) = (t.date(), t.time());
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        clock.hour(),
        clock.minute(),
        clock.second()
    )
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

/// How a date is shown to a person: in local time, or in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// Local time, at this offset from UTC.
    Local(time::UtcOffset),
    Utc,
}

impl Zone {
    /// This machine's local time (UTC when the offset cannot be known).
    pub fn local() -> Self {
        Zone::Local(time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC))
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` with its zone marked: `+01:00` (or `-05:00`,
/// `+00:00`) for local time, `Z` for UTC. [`DATE_MS_MARKED_WIDTH`] wide at most.
pub fn date_ms_marked(ns: i128, zone: Zone) -> String {
    match zone {
        Zone::Utc => format!("{}Z", date_ms(ns, time::UtcOffset::UTC)),
        Zone::Local(offset) => {
            let (h, m, _) = offset.as_hms();
            let sign = if offset.is_negative() { '-' } else { '+' };
            format!(
                "{}{sign}{:02}:{:02}",
                date_ms(ns, offset),
                h.unsigned_abs(),
                m.unsigned_abs()
            )
        }
    }
}

/// The widest [`date_ms_marked`].
pub const DATE_MS_MARKED_WIDTH: usize = 29;

/// Local `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn date_ms(ns: i128, offset: time::UtcOffset) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ns) {
        Ok(t) => {
            let t = t.to_offset(offset);
            format!(
                "{:04}-{:02}-{:02} {}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                clock_ms(ns, offset)
            )
        }
        Err(_) => "????-??-?? ??:??:??.???".to_owned(),
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

/// [`rfc3339_ns`] for an optional time (absent or null: None).
pub mod rfc3339_ns_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &Option<i128>, s: S) -> Result<S::Ok, S::Error> {
        match ns {
            Some(ns) => s.serialize_str(&super::format_ns(*ns)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i128>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_ns(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_people_say_their_zone() {
        let ns = 1_795_471_262_123_456_789i128;
        assert_eq!(date_ms_marked(ns, Zone::Utc), "2026-11-23 22:01:02.123Z");
        let cet = time::UtcOffset::from_hms(1, 0, 0).expect("offset");
        assert_eq!(
            date_ms_marked(ns, Zone::Local(cet)),
            "2026-11-23 23:01:02.123+01:00"
        );
        let nst = time::UtcOffset::from_hms(-3, -30, 0).expect("offset");
        let s = date_ms_marked(ns, Zone::Local(nst));
        assert_eq!(s, "2026-11-23 18:31:02.123-03:30");
        assert_eq!(s.len(), DATE_MS_MARKED_WIDTH);
        assert_eq!(
            date_ms_marked(ns, Zone::Local(time::UtcOffset::UTC)),
            "2026-11-23 22:01:02.123+00:00"
        );
    }

    #[test]
    fn formats_and_parses_with_nanoseconds() {
        let ns = 1_795_471_262_123_456_789i128;
        let s = format_ns(ns);
        assert_eq!(s, "2026-11-23T22:01:02.123456789Z");
        assert_eq!(parse_ns(&s).ok(), Some(ns));
    }
}

/// A point in time given on the command line: RFC 3339
/// (`2026-11-23T08:00:00Z`) or how long ago (`90s`, `15m`, `2h`, `3d`).
pub fn parse_when(s: &str, now: i128) -> Result<i128, String> {
    if let Ok(t) = parse_ns(s) {
        return Ok(t);
    }
    let s = s.trim().trim_end_matches(" ago");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i128 = num.parse().map_err(|_| {
        format!("`{s}` is neither RFC 3339 (2026-11-23T08:00:00Z) nor a duration like 15m, 2h, 3d")
    })?;
    let unit_ns: i128 = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use s, m, h or d")),
    } * 1_000_000_000;
    // Only times a date can show: a year from -9999 to 9999.
    n.checked_mul(unit_ns)
        .and_then(|ago| now.checked_sub(ago))
        .filter(|t| OffsetDateTime::from_unix_timestamp_nanos(*t).is_ok())
        .ok_or_else(|| {
            format!(
                "`{s}` reaches back before the year -9999; give at most {} days",
                (now - MIN_DATE_NS) / (86400 * 1_000_000_000)
            )
        })
}

/// The earliest time `time` can show: -9999-01-01T00:00:00Z.
const MIN_DATE_NS: i128 = -377_705_116_800 * 1_000_000_000;

#[cfg(test)]
mod when_tests {
    use super::*;

    #[test]
    fn accepts_rfc3339_and_relative_times() {
        let now = 10_000 * 1_000_000_000;
        assert_eq!(parse_when("15m", now), Ok(now - 900 * 1_000_000_000));
        assert_eq!(parse_when("2h ago", now), Ok(now - 7200 * 1_000_000_000));
        assert_eq!(parse_when("1970-01-01T00:00:01Z", now), Ok(1_000_000_000));
        assert!(parse_when("yesterday", now).is_err());
        // Too far back for any date, or for the arithmetic: said, not a panic.
        for huge in [
            "99999999999999999999d",
            "99999999999999999999999999999999999999d",
            "999999999999999999999999999999999999d",
            "400000000d",
        ] {
            let e = parse_when(huge, now).unwrap_err();
            assert!(e.contains("give at most"), "{huge}: {e}");
        }
        assert!(parse_when("3650000d", now).is_ok());
        assert_eq!(
            OffsetDateTime::from_unix_timestamp_nanos(MIN_DATE_NS).map(|t| t.year()),
            Ok(-9999)
        );
        assert!(parse_when("5w", now).is_err());
    }
}
