//! Value parsers shared by the flags: each refuses nonsense with a
//! message clap shows next to the flag.

use std::time::Duration;

pub(crate) fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn aspect_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if r.is_finite() && r >= 1.0 {
        Ok(r)
    } else {
        Err("must be a finite number of at least 1".into())
    }
}

pub(crate) fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
    } else {
        Err("must be a positive number of seconds".into())
    }
}

pub(crate) fn name_uri(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, uri)) if !name.is_empty() && !uri.is_empty() => {
            Ok((name.to_string(), uri.to_string()))
        }
        _ => Err("expected NAME=URI".into()),
    }
}
