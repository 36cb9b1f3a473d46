//! Sizes on the command line: `4096`, `4K`, `10G`, `1.5T`, `512KiB`;
//! suffixes are powers of 1024.

use std::str::FromStr;

/// A byte count parsed from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(format!("{s:?} is not a size; use e.g. 4096, 4K, 10G or 1T")),
        };
        let bad = || format!("{s:?} is not a size; use e.g. 4096, 4K, 10G or 1T");
        if num.is_empty() {
            return Err(bad());
        }
        let bytes = if num.contains('.') {
            let f: f64 = num.parse().map_err(|_| bad())?;
            let v = f * (1u64 << shift) as f64;
            if v.fract() != 0.0 || v > u64::MAX as f64 {
                return Err(format!("{s:?} is not a whole number of bytes"));
            }
            v as u64
        } else {
            let n: u64 = num.parse().map_err(|_| bad())?;
            n.checked_mul(1u64 << shift)
                .ok_or_else(|| format!("{s:?} is too large"))?
        };
        Ok(Size(bytes))
    }
}

/// A duration from the command line: `30s`, `5m`, `1h`, `90` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub u64);

impl FromStr for Secs {
    type Err = String;

    fn from_str(s: &str) -> Result<Secs, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not a duration; use e.g. 30s, 5m or 1h");
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Secs).ok_or_else(bad)
    }
}

/// A duration to the millisecond: `100ms`, `1s`, `1.5s`, `5m`, `1h`,
/// `2` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Millis, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not a duration; use e.g. 500ms, 1s, 1.5s or 1m");
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let per = match unit {
            "ms" => 1.0,
            "" | "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return Err(bad()),
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        let ms = n * per;
        if !ms.is_finite() || ms.fract() != 0.0 || ms < 0.0 || ms > u64::MAX as f64 {
            return Err(format!("{s:?} is not a whole number of milliseconds"));
        }
        Ok(Millis(ms as u64))
    }
}

/// An interval that may be turned off: a duration (`1h`, `30m`, `3600`)
/// or `0` / `off` (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(pub u64);

impl FromStr for Every {
    type Err = String;

    fn from_str(s: &str) -> Result<Every, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Every(0));
        }
        s.parse::<Secs>()
            .map(|d| Every(d.0))
            .map_err(|_| format!("{s:?} is not a duration; use e.g. 1h or 30m, or off"))
    }
}

/// A point in time for `--at`: RFC 3339 (`2026-12-07T08:15:30Z`, any
/// offset) or relative to now (`now`, `90s ago`, `10m ago`, `2h ago`,
/// `1d ago`). Held as the absolute RFC 3339 time (UTC) sent to the API, so
/// a relative time means the moment the command line was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At(pub String);

impl FromStr for At {
    type Err = String;

    fn from_str(s: &str) -> Result<At, String> {
        At::parse(s, time::OffsetDateTime::now_utc())
    }
}

impl At {
    /// `s` read at instant `now`.
    pub fn parse(s: &str, now: time::OffsetDateTime) -> Result<At, String> {
        use time::format_description::well_known::Rfc3339;
        let bad = || {
            format!(
                "{s:?} is not a time; give an RFC 3339 time such as 2026-12-07T08:15:30Z (or with an offset, 2026-12-07T09:15:30+01:00) or a relative one such as now, 90s ago, 10m ago, 2h ago or 1d ago"
            )
        };
        let t = s.trim();
        let when = if t.eq_ignore_ascii_case("now") {
            now
        } else if let Some(ago) = t.strip_suffix("ago") {
            let secs: Secs = ago.trim().parse().map_err(|_| bad())?;
            let secs = i64::try_from(secs.0).map_err(|_| bad())?;
            now.checked_sub(time::Duration::seconds(secs))
                .ok_or_else(bad)?
        } else {
            time::OffsetDateTime::parse(t, &Rfc3339).map_err(|_| bad())?
        };
        when.to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .map(At)
            .map_err(|_| bad())
    }
}

/// Bytes for people: `10 GiB`, `4 KiB`, `1.5 MiB`, `123 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_takes_rfc3339_and_relative_times() {
        let now = time::macros::datetime!(2026-12-07 08:30:00 UTC);
        let at = |s: &str| At::parse(s, now).map(|a| a.0);
        assert_eq!(at("now").unwrap(), "2026-12-07T08:30:00Z");
        assert_eq!(at("90s ago").unwrap(), "2026-12-07T08:28:30Z");
        assert_eq!(at("10m ago").unwrap(), "2026-12-07T08:20:00Z");
        assert_eq!(at(" 2h ago ").unwrap(), "2026-12-07T06:30:00Z");
        assert_eq!(at("1d ago").unwrap(), "2026-12-06T08:30:00Z");
        assert_eq!(at("2026-12-07T08:15:30Z").unwrap(), "2026-12-07T08:15:30Z");
        assert_eq!(
            at("2026-12-07T09:15:30.5+01:00").unwrap(),
            "2026-12-07T08:15:30.5Z"
        );
        for bad in [
            "",
            "yesterday",
            "10 minutes ago",
            "ago",
            "-5m ago",
            "2026-12-07 08:15",
            "12:00",
        ] {
            let e = at(bad).unwrap_err();
            assert!(
                e.contains("RFC 3339") && e.contains("10m ago"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn millis_take_units_down_to_the_millisecond() {
        for (text, ms) in [
            ("100ms", 100),
            ("1s", 1000),
            ("1.5s", 1500),
            ("2", 2000),
            ("1m", 60_000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(text.parse::<Millis>(), Ok(Millis(ms)), "{text}");
        }
        for bad in ["", "1x", "0.5ms", "ms", "-1s"] {
            assert!(bad.parse::<Millis>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!("4096".parse(), Ok(Size(4096)));
        assert_eq!("4K".parse(), Ok(Size(4096)));
        assert_eq!("4k".parse(), Ok(Size(4096)));
        assert_eq!("10G".parse(), Ok(Size(10 << 30)));
        assert_eq!("1.5M".parse(), Ok(Size(3 << 19)));
        assert_eq!("2TiB".parse(), Ok(Size(2 << 40)));
        for bad in ["", "G", "10X", "-1", "1.0000001K", "99999999999T"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!("30s".parse(), Ok(Secs(30)));
        assert_eq!("5m".parse(), Ok(Secs(300)));
        assert_eq!("2h".parse(), Ok(Secs(7200)));
        assert_eq!("45".parse(), Ok(Secs(45)));
        for bad in ["", "m", "5x", "-1s", "1.5m"] {
            assert!(bad.parse::<Secs>().is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_that_may_be_off() {
        assert_eq!("1h".parse(), Ok(Every(3600)));
        assert_eq!("off".parse(), Ok(Every(0)));
        assert_eq!("OFF".parse(), Ok(Every(0)));
        assert_eq!("0".parse(), Ok(Every(0)));
        for bad in ["", "never", "1.5h", "-1h"] {
            assert!(bad.parse::<Every>().is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(123), "123 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
    }
}
