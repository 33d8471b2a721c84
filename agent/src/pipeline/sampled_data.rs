//! SampledData slotting: building, decoding and merging the `data` string of an IoMT
//! SampledData value (upstream `SampledDataProcessor`; semantics doc §2.5).
//!
//! The window `[start, end]` is cut into slots of `period` starting at `start`; slots are walked
//! while `slotStart <= end`, so there are `floor((end - start) / period) + 1` of them (720 for an
//! hour at 5000 ms, 1 for a Single group). A slot holds the **last** value with
//! `slotStart <= t < slotStart + period`, else `E`; tokens are joined by one space. A value in
//! the last slot but after `end` still counts (as upstream); values at or after the end of the
//! last slot are dropped.
//!
//! Deviation from upstream (deliberate): a value *before* the current slot is skipped. In the
//! C# walk such a value is never consumed and stalls every later slot, turning the rest of the
//! window into `E` (it happens when a merge creates a new component over the existing,
//! narrower effective period). Skipping keeps the other values; it only changes output in that
//! corrupt case.
//!
//! Period arithmetic follows .NET 8 `DateTime.AddMilliseconds(double)` (upstream HEAD runs on
//! .NET 8): whole milliseconds are exact and the fractional part is truncated to whole 100 ns
//! ticks. A period that is not at least one tick (0, negative, NaN, tiny) would loop forever in
//! C#; here it is an error. The slot count is capped at [`MAX_SLOTS`].
//!
//! Invariants: pure, never panics, all time arithmetic in i64 ticks with overflow checks.

use crate::mapping::time::TICKS_PER_SECOND;
use crate::mapping::Timestamp;

/// Upper bound on the number of slots one `data` string may have (10 million: a whole day at
/// 10 ms). Beyond it the build is refused instead of allocating gigabytes.
pub const MAX_SLOTS: u64 = 10_000_000;

const TICKS_PER_MS: i64 = TICKS_PER_SECOND / 1000;
/// .NET's `DateTime.AddMilliseconds` range check (`MaxMillis`).
const MAX_MILLIS: f64 = 315_537_897_600_000.0;

/// Errors of the slot arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampledDataError {
    /// `defaultPeriod` is not a positive number of 100 ns ticks.
    #[error("sampled data period {period_ms} ms is not a positive number of 100 ns ticks")]
    InvalidPeriod { period_ms: String },
    /// The window would need more than [`MAX_SLOTS`] slots.
    #[error("sampled data would need {slots} slots, more than the limit of {MAX_SLOTS}")]
    TooManySlots { slots: u64 },
    /// A slot time fell outside the representable range.
    #[error("sampled data slot time out of range")]
    TimeOutOfRange,
}

/// Slot length in ticks for a period in milliseconds, as .NET 8 `AddMilliseconds` computes it.
pub fn period_ticks(period_ms: f64) -> Result<i64, SampledDataError> {
    let invalid = || SampledDataError::InvalidPeriod {
        period_ms: period_ms.to_string(),
    };
    if !period_ms.is_finite() || period_ms <= 0.0 || period_ms > MAX_MILLIS {
        return Err(invalid());
    }
    let integral = period_ms.trunc();
    let fraction = period_ms - integral;
    // Both casts are in range: integral <= MAX_MILLIS and fraction * 10_000 < 10_000.
    let ticks = (integral as i64)
        .checked_mul(TICKS_PER_MS)
        .and_then(|t| t.checked_add((fraction * TICKS_PER_MS as f64) as i64))
        .ok_or_else(invalid)?;
    if ticks <= 0 {
        return Err(invalid());
    }
    Ok(ticks)
}

/// Number of slots of `[start, end]` at `period` ticks (0 when `end < start`).
pub fn slot_count(start: Timestamp, end: Timestamp, period: i64) -> Result<u64, SampledDataError> {
    if period <= 0 {
        return Err(SampledDataError::InvalidPeriod {
            period_ms: format!("{} ticks", period),
        });
    }
    let span = end
        .unix_ticks()
        .checked_sub(start.unix_ticks())
        .ok_or(SampledDataError::TimeOutOfRange)?;
    if span < 0 {
        return Ok(0);
    }
    // span >= 0 and period > 0, so the quotient is a non-negative i64.
    Ok((span / period) as u64 + 1)
}

/// Builds the `data` string for `values` (time-sorted; unsorted input is sorted stably first)
/// over `[start, end]`.
pub fn build<S: AsRef<str>>(
    values: &[(Timestamp, S)],
    start: Timestamp,
    end: Timestamp,
    period: i64,
) -> Result<String, SampledDataError> {
    let slots = slot_count(start, end, period)?;
    if slots > MAX_SLOTS {
        return Err(SampledDataError::TooManySlots { slots });
    }
    let mut sorted: Vec<(i64, &str)> = values
        .iter()
        .map(|(t, v)| (t.unix_ticks(), v.as_ref()))
        .collect();
    if !sorted.windows(2).all(|w| w[0].0 <= w[1].0) {
        sorted.sort_by_key(|(t, _)| *t);
    }

    let mut out = String::with_capacity(slots as usize * 2);
    let mut i = 0;
    let mut slot_start = start.unix_ticks();
    for k in 0..slots {
        let slot_end = slot_start
            .checked_add(period)
            .ok_or(SampledDataError::TimeOutOfRange)?;
        while i < sorted.len() && sorted[i].0 < slot_start {
            i += 1; // before this slot: skipped (see module doc)
        }
        let mut value = None;
        while i < sorted.len() && sorted[i].0 < slot_end {
            value = Some(sorted[i].1);
            i += 1;
        }
        if k > 0 {
            out.push(' ');
        }
        out.push_str(value.unwrap_or("E"));
        slot_start = slot_end;
    }
    Ok(out)
}

/// Decodes a `data` string into `(slot start, token)` pairs, dropping `E` tokens. Tokens are
/// split on single spaces exactly as upstream (`Split(' ')`), so an empty token from a double
/// space is kept as an empty value. A blank string decodes to nothing.
pub fn decode(
    data: &str,
    start: Timestamp,
    period: i64,
) -> Result<Vec<(Timestamp, String)>, SampledDataError> {
    if period <= 0 {
        return Err(SampledDataError::InvalidPeriod {
            period_ms: format!("{} ticks", period),
        });
    }
    if data.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut t = start.unix_ticks();
    for token in data.split(' ') {
        if token != "E" {
            let ts = Timestamp::from_unix_ticks(t).ok_or(SampledDataError::TimeOutOfRange)?;
            out.push((ts, token.to_owned()));
        }
        t = t
            .checked_add(period)
            .ok_or(SampledDataError::TimeOutOfRange)?;
    }
    Ok(out)
}

/// Merge-sorts two time-sorted series; on an identical time the `new` value wins (#262).
pub fn merge(
    existing: &[(Timestamp, String)],
    new: &[(Timestamp, String)],
) -> Vec<(Timestamp, String)> {
    let mut out = Vec::with_capacity(existing.len() + new.len());
    let (mut e, mut n) = (0, 0);
    while e < existing.len() || n < new.len() {
        let take_new = match (existing.get(e), new.get(n)) {
            (None, _) => true,
            (_, None) => false,
            (Some(a), Some(b)) => {
                if a.0 == b.0 {
                    e += 1; // collision: drop the existing value
                    true
                } else {
                    b.0 < a.0
                }
            }
        };
        if take_new {
            out.push(new[n].clone());
            n += 1;
        } else {
            out.push(existing[e].clone());
            e += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("test timestamp")
    }

    fn at(base: Timestamp, ms: i64) -> Timestamp {
        base.add_ticks(ms * TICKS_PER_MS).expect("in range")
    }

    fn series(base: Timestamp, items: &[(i64, &str)]) -> Vec<(Timestamp, String)> {
        items
            .iter()
            .map(|(ms, v)| (at(base, *ms), v.to_string()))
            .collect()
    }

    #[test]
    fn period_ticks_follow_dotnet8_add_milliseconds() {
        assert_eq!(period_ticks(5000.0).unwrap(), 50_000_000);
        assert_eq!(period_ticks(1000.5).unwrap(), 10_005_000);
        assert_eq!(
            period_ticks(0.00015).unwrap(),
            1,
            "fraction truncated to ticks"
        );
        for bad in [0.0, -1.0, 0.00001, f64::NAN, f64::INFINITY, 1e300] {
            assert!(period_ticks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worked_example_hour_at_5000ms_has_720_slots_and_slot_220() {
        let start = ts("2023-10-09T19:00:00Z");
        let end = start.add_ticks(3600 * TICKS_PER_SECOND - 1).unwrap();
        let p = period_ticks(5000.0).unwrap();
        let data = build(&[(ts("2023-10-09T19:18:23Z"), "72")], start, end, p).unwrap();
        let tokens: Vec<&str> = data.split(' ').collect();
        assert_eq!(tokens.len(), 720);
        assert_eq!(tokens[220], "72");
        assert_eq!(tokens.iter().filter(|t| **t == "E").count(), 719);
        assert!(!data.contains("  ") && !data.ends_with(' '));
    }

    #[test]
    fn excess_past_end_is_discarded() {
        // 11 values a minute apart, window of 10 minutes minus 1 ms.
        let base = ts("2019-01-01T00:00:00Z");
        let vals: Vec<_> = (0..11)
            .map(|i| (at(base, i * 60_000), i.to_string()))
            .collect();
        let end = at(base, 600_000 - 1);
        assert_eq!(
            build(&vals, base, end, period_ticks(60_000.0).unwrap()).unwrap(),
            "0 1 2 3 4 5 6 7 8 9"
        );
    }

    #[test]
    fn missing_slots_are_e_and_last_value_in_a_slot_wins() {
        let base = ts("2019-01-01T00:00:00Z");
        let p = period_ticks(1000.0).unwrap();
        let vals = series(base, &[(0, "a"), (5, "b"), (999, "c"), (2500, "d")]);
        assert_eq!(build(&vals, base, at(base, 3000), p).unwrap(), "c E d E");
    }

    #[test]
    fn value_in_last_slot_after_end_counts_like_upstream() {
        let base = ts("2019-01-01T00:00:00Z");
        let p = period_ticks(1000.0).unwrap();
        let vals = series(base, &[(1500, "late")]);
        // end = 1.2 s: two slots [0,1) [1,2); the value at 1.5 s is after end but in slot 1.
        assert_eq!(build(&vals, base, at(base, 1200), p).unwrap(), "E late");
    }

    #[test]
    fn values_before_start_are_skipped_not_stalling() {
        let base = ts("2019-01-01T00:00:10Z");
        let p = period_ticks(1000.0).unwrap();
        let vals = series(base, &[(-5000, "early"), (0, "a"), (2000, "c")]);
        // Upstream C# would give "E E E" here.
        assert_eq!(build(&vals, base, at(base, 2000), p).unwrap(), "a E c");
    }

    #[test]
    fn unsorted_input_is_sorted_first() {
        let base = ts("2019-01-01T00:00:00Z");
        let p = period_ticks(1000.0).unwrap();
        let vals = series(base, &[(2000, "c"), (0, "a")]);
        assert_eq!(build(&vals, base, at(base, 2000), p).unwrap(), "a E c");
    }

    #[test]
    fn single_window_has_one_slot_and_empty_window_no_slot() {
        let t = ts("2023-10-09T19:18:23.5Z");
        let p = period_ticks(5000.0).unwrap();
        assert_eq!(build(&[(t, "1")], t, t, p).unwrap(), "1");
        assert_eq!(build::<&str>(&[], t, t, p).unwrap(), "E");
        assert_eq!(build::<&str>(&[], t, at(t, -1), p).unwrap(), "");
    }

    #[test]
    fn too_many_slots_is_an_error() {
        let start = ts("2023-10-09T00:00:00Z");
        let end = start.add_ticks(86_400 * TICKS_PER_SECOND - 1).unwrap();
        let err = build::<&str>(&[], start, end, period_ticks(1.0).unwrap()).unwrap_err();
        assert_eq!(err, SampledDataError::TooManySlots { slots: 86_400_000 });
    }

    #[test]
    fn decode_drops_e_and_keeps_slot_times() {
        let base = ts("2019-01-01T00:00:00Z");
        let p = period_ticks(1000.0).unwrap();
        let got = decode("1 E 3 L", base, p).unwrap();
        assert_eq!(got, series(base, &[(0, "1"), (2000, "3"), (3000, "L")]));
        assert!(decode("  ", base, p).unwrap().is_empty());
        // Double space: an empty token is a value, as upstream's Split(' ').
        assert_eq!(decode("1  2", base, p).unwrap().len(), 3);
    }

    #[test]
    fn build_then_decode_normalizes_times_to_slot_starts() {
        let base = ts("2019-01-01T00:00:00Z");
        let p = period_ticks(1000.0).unwrap();
        let vals = series(base, &[(5, "1"), (1005, "2"), (3005, "4")]);
        let data = build(&vals, base, at(base, 3999), p).unwrap();
        assert_eq!(data, "1 2 E 4");
        assert_eq!(
            decode(&data, base, p).unwrap(),
            series(base, &[(0, "1"), (1000, "2"), (3000, "4")])
        );
    }

    #[test]
    fn merge_interleaves_and_new_wins_collisions() {
        let base = ts("2019-01-01T00:30:00Z");
        let existing = series(base, &[(0, "1"), (60_000, "1"), (180_000, "1")]);
        let new = series(base, &[(60_000, "2"), (120_000, "2"), (240_000, "2")]);
        let got = merge(&existing, &new);
        let flat: Vec<(i64, &str)> = got
            .iter()
            .map(|(t, v)| {
                (
                    (t.unix_ticks() - base.unix_ticks()) / TICKS_PER_MS,
                    v.as_str(),
                )
            })
            .collect();
        assert_eq!(
            flat,
            [
                (0, "1"),
                (60_000, "2"),
                (120_000, "2"),
                (180_000, "1"),
                (240_000, "2")
            ]
        );
        assert_eq!(merge(&[], &new), new);
        assert_eq!(merge(&existing, &[]), existing);
    }
}
