//! RFC 3339 timestamps with any UTC offset (`2099-06-27T13:21:21+08:00`),
//! as signers write them in their local zone. humantime reads only UTC.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};

/// Parses `date "T" time [fraction] ("Z" / ("+" / "-") hh ":" mm)`.
pub fn parse(text: &str) -> Result<SystemTime> {
    let s = text.trim();
    let bad = |why: &str| anyhow!("'{text}' is not an RFC 3339 time: {why}");
    // The offset starts after the seconds: past "YYYY-MM-DDTHH:MM:SS".
    let tail_at = s.get(19..).map(|_| 19).ok_or_else(|| bad("too short"))?;
    let (local, offset_secs) = if s.ends_with(['Z', 'z']) {
        (&s[..s.len() - 1], 0i64)
    } else if let Some(pos) = s[tail_at..].find(['+', '-']).map(|p| p + tail_at) {
        let (hh, mm) = s[pos + 1..]
            .split_once(':')
            .ok_or_else(|| bad("the offset is not ±hh:mm"))?;
        let num = |v: &str, max: i64| -> Result<i64> {
            match v.parse::<i64>() {
                Ok(n) if v.len() == 2 && (0..=max).contains(&n) => Ok(n),
                _ => Err(bad("the offset is not ±hh:mm")),
            }
        };
        let secs = num(hh, 23)? * 3600 + num(mm, 59)? * 60;
        (
            &s[..pos],
            if &s[pos..pos + 1] == "-" { -secs } else { secs },
        )
    } else {
        bail!(bad("it has no time zone (Z or ±hh:mm)"));
    };
    let local = humantime::parse_rfc3339_weak(local).map_err(|e| bad(&e.to_string()))?;
    // Local time minus its offset is UTC.
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    let utc = if offset_secs >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    utc.ok_or_else(|| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse(s)
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn offsets_shift_to_utc() {
        let utc = secs("2099-06-27T05:21:21Z");
        assert_eq!(secs("2099-06-27T13:21:21+08:00"), utc);
        assert_eq!(secs("2099-06-26T23:51:21-05:30"), utc);
        assert_eq!(secs("2099-06-27T05:21:21+00:00"), utc);
        assert_eq!(secs("2099-06-27T05:21:21.123456z"), utc);
        assert_eq!(secs("2099-06-27T07:21:21.5+02:00"), utc);
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2099-06-27",
            "2099-06-27T05:21:21",
            "2099-06-27T05:21:21+8:00",
            "2099-06-27T05:21:21+08",
            "2099-06-27T05:21:21+24:00",
            "2099-13-27T05:21:21Z",
            "2099-06-27T05:21:21+08:60",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
