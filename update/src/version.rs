//! Image versions and their order, for the anti-rollback floor.
//!
//! Versions are dotted, semver-like (`1.2.10`, `0.3.0-rc.1`): numeric parts compare as numbers,
//! others as text, and a pre-release (`-…`) sorts before its release. Build metadata (`+…`)
//! does not take part, as in semver.

use std::cmp::Ordering;

/// Compares two image versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split(a);
    let (b_core, b_pre) = split(b);
    compare_parts(a_core, b_core).then_with(|| match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => compare_parts(x, y),
    })
}

/// Whether `version` may be installed on a device whose floor is `floor`.
pub fn at_least(version: &str, floor: &str) -> bool {
    compare(version, floor) != Ordering::Less
}

fn split(v: &str) -> (&str, Option<&str>) {
    let v = v.split_once('+').map_or(v, |(core, _build)| core);
    match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    }
}

fn compare_parts(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            // `1.2` is `1.2.0`.
            (Some(x), None) => {
                if x.chars().all(|c| c == '0') {
                    continue;
                }
                return Ordering::Greater;
            }
            (None, Some(y)) => {
                if y.chars().all(|c| c == '0') {
                    continue;
                }
                return Ordering::Less;
            }
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_parts_compare_as_numbers() {
        assert_eq!(compare("0.10.0", "0.9.9"), Ordering::Greater);
        assert_eq!(compare("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare("1.2.1", "1.2"), Ordering::Greater);
        assert_eq!(compare("2", "10"), Ordering::Less);
    }

    #[test]
    fn a_pre_release_sorts_before_its_release_and_build_metadata_is_ignored() {
        assert_eq!(compare("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(compare("1.0.0-rc.2", "1.0.0-rc.10"), Ordering::Less);
        assert_eq!(compare("1.0.0+b7", "1.0.0+b9"), Ordering::Equal);
        assert!(at_least("0.2.0", "0.2.0"));
        assert!(!at_least("0.1.9", "0.2.0"));
    }
}
