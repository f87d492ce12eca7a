//! The seeded shuffles of examples and conversations.

use super::*;

/// The shuffle's generator: one stream per `stream` id from the same seed.
pub(super) fn shuffle_rng(seed: u64, stream: u64) -> SplitMix64 {
    let mut r = SplitMix64::new(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64();
    r
}

/// Fisher-Yates.
pub(super) fn shuffle<T>(items: &mut [T], mut rng: SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_scanner_reports_lines() {
        let text = b"[\n {\"a\": 1},\n\n {\"b\":\n 2}\n]\n";
        let mut s = ArrayScanner::new(text);
        assert_eq!(s.next_element().unwrap().unwrap().0, 2);
        assert_eq!(s.next_element().unwrap().unwrap().0, 4);
        assert!(s.next_element().unwrap().is_none());
        let mut bad = ArrayScanner::new(b"[1,\n2\n3]");
        bad.next_element().unwrap();
        bad.next_element().unwrap();
        assert_eq!(bad.next_element().unwrap_err().0, 3);
    }

    #[test]
    fn labels_must_mask_a_prefix() {
        let ids = serde_json::json!([5, 6, 7]);
        assert_eq!(
            parse_pretokenized(ids.clone(), Some(serde_json::json!([-100, 6, 7])), 10)
                .unwrap()
                .1,
            1
        );
        assert_eq!(parse_pretokenized(ids.clone(), None, 10).unwrap().1, 0);
        let e = parse_pretokenized(ids.clone(), Some(serde_json::json!([-100, 6, -100])), 10)
            .unwrap_err();
        assert_eq!(e.reason, "labels_not_prefix_mask");
        assert_eq!(
            parse_pretokenized(ids, None, 7).unwrap_err().reason,
            "invalid_input_ids"
        );
    }

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let mut a: Vec<u32> = (0..10).collect();
        shuffle(&mut a, shuffle_rng(0, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let mut b: Vec<u32> = (0..10).collect();
        shuffle(&mut b, shuffle_rng(0, 1));
        assert_eq!(a, b);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Vec<u64> = (1..=100).collect();
        let s = length_stats(&mut l);
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.max), (1, 50, 90, 99, 100));
    }
}
