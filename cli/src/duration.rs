//! Reading durations from flags ("10s", "1m30s", "500ms", "90") and writing them for humans.

use std::time::Duration;

/// Parses a duration flag. A bare number means seconds, so `--wait-timeout 60` works as
/// expected; otherwise a sequence of `<number><unit>` with units ms, s, m, h, d.
/// Zero is refused: every use of a duration here is a deadline, and a zero deadline
/// would fail before anything could happen.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let total = if let Ok(secs) = text.parse::<f64>() {
        seconds(secs, text)?
    } else {
        parse_with_units(text)?
    };
    if total.is_zero() {
        return Err(format!("duration `{text}` must be greater than zero"));
    }
    Ok(total)
}

fn parse_with_units(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` ends without a unit (ms, s, m, h, d)"))?;
        if number_len == 0 {
            return Err(format!(
                "invalid duration `{text}`: expected a number, e.g. 10s, 1m30s, 500ms"
            ));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid number `{number}` in duration `{text}`"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => {
                return Err(format!(
                    "unknown unit `{unit}` in duration `{text}` (use ms, s, m, h, d)"
                ))
            }
        };
        total += seconds(value * scale, text)?;
        rest = next;
    }
    Ok(total)
}

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration `{text}` is out of range"))
}

/// Short human form: "340ms", "2.5s", "4m05s", "3h12m", "2d04h". Precision drops as the
/// value grows because nobody reading an age of hours cares about the seconds.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86400 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_seconds_and_units() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn refuses_nonsense_and_zero() {
        assert!(parse("").is_err());
        assert!(parse("0").is_err());
        assert!(parse("0s").is_err());
        assert!(parse("-5").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("s").is_err());
        assert!(parse("1m30").is_err());
        assert!(parse("1..2s").is_err());
    }

    #[test]
    fn human_form_loses_precision_as_it_grows() {
        assert_eq!(human(Duration::from_millis(340)), "340ms");
        assert_eq!(human(Duration::from_millis(2500)), "2.5s");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 12 * 60 + 7)), "3h12m");
        assert_eq!(human(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d04h");
    }
}
