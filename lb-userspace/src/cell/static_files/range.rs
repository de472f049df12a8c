//! `Range: bytes=...` parsing (RFC 9110 section 14), shared by static routes and
//! `wsgi.file_wrapper` responses.

/// More ranges than this in one request are answered with the whole file.
pub const MAX_RANGES: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Not a bytes range we understand, or too many: serve the whole file.
    Ignore,
    Unsatisfiable,
    /// Inclusive (first, last) pairs.
    Ranges(Vec<(u64, u64)>),
}

pub fn parse_ranges(header: &str, len: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Ignore;
    };
    let mut out = Vec::new();
    let mut count = 0;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeOutcome::Ignore;
        }
        let Some((a, b)) = part.split_once('-') else {
            return RangeOutcome::Ignore;
        };
        let (a, b) = (a.trim(), b.trim());
        let range = if a.is_empty() {
            let Ok(n) = b.parse::<u64>() else {
                return RangeOutcome::Ignore;
            };
            if n == 0 || len == 0 {
                None
            } else {
                Some((len.saturating_sub(n), len - 1))
            }
        } else {
            let Ok(first) = a.parse::<u64>() else {
                return RangeOutcome::Ignore;
            };
            let last = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                let Ok(l) = b.parse::<u64>() else {
                    return RangeOutcome::Ignore;
                };
                if l < first {
                    return RangeOutcome::Ignore;
                }
                l.min(len.saturating_sub(1))
            };
            if first >= len {
                None
            } else {
                Some((first, last))
            }
        };
        if let Some(r) = range {
            out.push(r);
        }
    }
    if count == 0 {
        return RangeOutcome::Ignore;
    }
    if out.is_empty() {
        RangeOutcome::Unsatisfiable
    } else {
        RangeOutcome::Ranges(coalesce(out))
    }
}

/// Ranges that overlap are merged (RFC 9110 section 14.2 lets a server coalesce them): else
/// `bytes=0-,0-,...` would send the file once per range from one small request. Without an
/// overlap the client's order is kept; with one, the merged ranges go in ascending order.
fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    if sorted.windows(2).all(|w| w[0].1 < w[1].0) {
        return ranges;
    }
    ranges.clear();
    for (first, last) in sorted {
        match ranges.last_mut() {
            Some(prev) if first <= prev.1 => prev.1 = prev.1.max(last),
            _ => ranges.push((first, last)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_ranges("bytes=0-9", 100),
            RangeOutcome::Ranges(vec![(0, 9)])
        );
        assert_eq!(
            parse_ranges("bytes=-10", 100),
            RangeOutcome::Ranges(vec![(90, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=95-", 100),
            RangeOutcome::Ranges(vec![(95, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=90-200", 100),
            RangeOutcome::Ranges(vec![(90, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=0-1, 5-6", 100),
            RangeOutcome::Ranges(vec![(0, 1), (5, 6)])
        );
        assert_eq!(parse_ranges("bytes=100-", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=-0", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=5-1", 100), RangeOutcome::Ignore);
        assert_eq!(parse_ranges("items=0-1", 100), RangeOutcome::Ignore);
        assert_eq!(
            parse_ranges("bytes=-500", 100),
            RangeOutcome::Ranges(vec![(0, 99)])
        );
        let many = format!("bytes={}", vec!["0-0"; 40].join(","));
        assert_eq!(parse_ranges(&many, 100), RangeOutcome::Ignore);
    }

    #[test]
    fn overlapping_ranges_are_coalesced() {
        // Found by the `range` fuzz target: each range was sent in full, overlaps included.
        assert_eq!(
            parse_ranges("bytes=0-50,25-75", 100),
            RangeOutcome::Ranges(vec![(0, 75)])
        );
        assert_eq!(
            parse_ranges("bytes=0-,0-,0-,0-", 100),
            RangeOutcome::Ranges(vec![(0, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=10-20,0-5,15-30,-1", 100),
            RangeOutcome::Ranges(vec![(0, 5), (10, 30), (99, 99)])
        );
        // Disjoint ranges (adjacent ones too) keep the client's order.
        assert_eq!(
            parse_ranges("bytes=5-6,0-1,2-4", 100),
            RangeOutcome::Ranges(vec![(5, 6), (0, 1), (2, 4)])
        );
    }
}
