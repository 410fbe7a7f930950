//! Retention: which images a keep-last / daily / weekly / monthly policy keeps.
use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::image::Outcome;

/// `[retention]`. Unset fields keep nothing on their own; with every field
/// unset, retention is off and nothing is ever deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N images.
    pub keep_last: Option<u32>,
    /// Keep the newest image of each of the last N days that have one (UTC days).
    pub keep_daily: Option<u32>,
    /// Likewise per ISO week.
    pub keep_weekly: Option<u32>,
    /// Likewise per month.
    pub keep_monthly: Option<u32>,
}

impl RetentionPolicy {
    /// Whether any rule is set.
    pub fn is_enabled(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
    }
}

/// How much of a standard backup an image holds: a custom or partial backup
/// cannot stand in for a full one when older images are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// Every component a standard backup of this appliance takes now, each
    /// captured successfully (whether the backup was standard or custom).
    Full,
    /// A successful standard backup that lacks a component the standard set
    /// has gained since (a component added to the configuration, or one that
    /// became applicable): the fullest image there is until the next
    /// standard backup.
    EarlierStandard,
    /// Less than that: a custom backup of some components, or a backup in
    /// which a component failed.
    Partial,
    /// Not known: the image's sidecar manifest could not be read.
    Unknown,
}

/// An image as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetentionItem {
    /// Object name.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Outcome, if its manifest could be read.
    pub outcome: Option<Outcome>,
    /// How much of a standard backup it holds.
    pub coverage: Coverage,
}

/// The verdict on one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionDecision {
    /// Object name.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Kept?
    pub keep: bool,
    /// Why it is kept (rules that chose it), empty when it goes.
    pub reasons: Vec<String>,
}

/// Applies a policy. Never deletes the newest successful image, nor a partial
/// (or unreadable) image younger than the newest success; never deletes the
/// newest full image (the newest that holds every standard component, or,
/// when none does, the newest successful standard backup), nor an unreadable
/// image younger than it, which might be a full one.
pub(crate) fn plan(items: &[RetentionItem], policy: &RetentionPolicy) -> Vec<RetentionDecision> {
    let mut sorted: Vec<&RetentionItem> = items.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    if !policy.is_enabled() {
        for r in &mut reasons {
            r.push("retention is off".into());
        }
    }
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last".into());
        }
    }
    let mut bucket = |n: Option<u32>, label: &str, key: &dyn Fn(&DateTime<Utc>) -> (i32, u32)| {
        let Some(n) = n else { return };
        let mut seen = BTreeSet::new();
        for (i, item) in sorted.iter().enumerate() {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(key(&item.created)) {
                reasons[i].push(label.to_string());
            }
        }
    };
    bucket(policy.keep_daily, "daily", &|t| (t.year(), t.ordinal()));
    bucket(policy.keep_weekly, "weekly", &|t| {
        (t.iso_week().year(), t.iso_week().week())
    });
    bucket(policy.keep_monthly, "monthly", &|t| (t.year(), t.month()));
    let newest_success = sorted
        .iter()
        .position(|i| i.outcome == Some(Outcome::Success));
    for (i, item) in sorted.iter().enumerate() {
        if Some(i) == newest_success {
            reasons[i].push("newest successful".into());
        } else if item.outcome != Some(Outcome::Success) && newest_success.is_none_or(|n| i < n) {
            reasons[i].push("newer than the newest success".into());
        }
    }
    let newest_full = sorted
        .iter()
        .position(|i| i.coverage == Coverage::Full)
        .or_else(|| {
            sorted
                .iter()
                .position(|i| i.coverage == Coverage::EarlierStandard)
        });
    for (i, item) in sorted.iter().enumerate() {
        if Some(i) == newest_full {
            reasons[i].push("newest full".into());
        } else if item.coverage == Coverage::Unknown
            && newest_full.is_none_or(|n| i < n)
            && reasons[i].is_empty()
        {
            reasons[i].push("contents unknown, newer than the newest full".into());
        }
    }
    sorted
        .iter()
        .zip(reasons)
        .map(|(item, reasons)| RetentionDecision {
            name: item.name.clone(),
            created: item.created,
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn item(day: u32, hour: u32, outcome: Outcome) -> RetentionItem {
        let coverage = if outcome == Outcome::Success {
            Coverage::Full
        } else {
            Coverage::Partial
        };
        covering(day, hour, outcome, coverage)
    }

    fn covering(day: u32, hour: u32, outcome: Outcome, coverage: Coverage) -> RetentionItem {
        let created = Utc.with_ymd_and_hms(2026, 10, day, hour, 0, 0).unwrap();
        RetentionItem {
            name: format!("gw-{day:02}-{hour:02}"),
            created,
            outcome: (coverage != Coverage::Unknown).then_some(outcome),
            coverage,
        }
    }

    fn keep_last(n: u32) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    fn kept(d: &[RetentionDecision]) -> Vec<&str> {
        let mut k: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn daily_weekly_monthly_over_spread_images() {
        // Two images a day, 1–31 October 2026.
        let items: Vec<_> = (1..=31)
            .flat_map(|d| [item(d, 2, Outcome::Success), item(d, 14, Outcome::Success)])
            .collect();
        let policy = RetentionPolicy {
            keep_last: Some(3),
            keep_daily: Some(4),
            ..Default::default()
        };
        let d = plan(&items, &policy);
        // last 3: 31-14, 31-02, 30-14; daily 4: 31-14, 30-14, 29-14, 28-14.
        assert_eq!(
            kept(&d),
            ["gw-28-14", "gw-29-14", "gw-30-14", "gw-31-02", "gw-31-14"]
        );
        let policy = RetentionPolicy {
            keep_weekly: Some(2),
            keep_monthly: Some(1),
            ..Default::default()
        };
        // ISO weeks: Oct 26–Nov 1 (newest 31-14) and Oct 19–25 (newest 25-14).
        assert_eq!(kept(&plan(&items, &policy)), ["gw-25-14", "gw-31-14"]);
    }

    #[test]
    fn never_deletes_the_newest_success_or_newer_partials() {
        let items = vec![
            item(1, 0, Outcome::Success),
            item(2, 0, Outcome::Success),
            item(3, 0, Outcome::Partial),
            item(4, 0, Outcome::Partial),
        ];
        let d = plan(
            &items,
            &RetentionPolicy {
                keep_last: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(kept(&d), ["gw-02-00", "gw-03-00", "gw-04-00"]);
        assert!(
            plan(&items, &RetentionPolicy::default())
                .iter()
                .all(|d| d.keep),
            "off keeps everything"
        );
    }

    #[test]
    fn custom_backups_never_push_out_the_newest_full_image() {
        let items = vec![
            item(1, 0, Outcome::Success),
            item(2, 0, Outcome::Success),
            covering(3, 0, Outcome::Success, Coverage::Partial),
            covering(4, 0, Outcome::Success, Coverage::Partial),
        ];
        let d = plan(&items, &keep_last(2));
        assert_eq!(kept(&d), ["gw-02-00", "gw-03-00", "gw-04-00"]);
        let full = d.iter().find(|d| d.name == "gw-02-00").unwrap();
        assert_eq!(full.reasons, ["newest full"]);
    }

    #[test]
    fn a_partial_standard_image_is_not_the_full_one() {
        // A standard backup in which a component failed, then a custom one.
        let items = vec![
            item(1, 0, Outcome::Success),
            item(2, 0, Outcome::Partial),
            covering(3, 0, Outcome::Success, Coverage::Partial),
        ];
        assert_eq!(kept(&plan(&items, &keep_last(1))), ["gw-01-00", "gw-03-00"]);
    }

    #[test]
    fn unreadable_images_newer_than_the_newest_full_are_kept() {
        let items = vec![
            covering(1, 0, Outcome::Success, Coverage::Unknown),
            item(2, 0, Outcome::Success),
            covering(3, 0, Outcome::Success, Coverage::Unknown),
            covering(4, 0, Outcome::Success, Coverage::Partial),
            covering(5, 0, Outcome::Success, Coverage::Partial),
        ];
        // Day 3 might be a full image; day 1 is older than a known full one.
        assert_eq!(
            kept(&plan(&items, &keep_last(1))),
            ["gw-02-00", "gw-03-00", "gw-05-00"]
        );
        // With no full image known, no unreadable image goes.
        let unknown_only = vec![
            covering(1, 0, Outcome::Success, Coverage::Unknown),
            covering(2, 0, Outcome::Success, Coverage::Partial),
            covering(3, 0, Outcome::Success, Coverage::Partial),
        ];
        assert_eq!(
            kept(&plan(&unknown_only, &keep_last(1))),
            ["gw-01-00", "gw-03-00"]
        );
    }

    #[test]
    fn without_a_full_image_the_newest_earlier_standard_one_stays() {
        // The standard set gained a component after days 1 and 2.
        let items = vec![
            covering(1, 0, Outcome::Success, Coverage::EarlierStandard),
            covering(2, 0, Outcome::Success, Coverage::EarlierStandard),
            covering(3, 0, Outcome::Success, Coverage::Partial),
            covering(4, 0, Outcome::Success, Coverage::Partial),
        ];
        assert_eq!(kept(&plan(&items, &keep_last(1))), ["gw-02-00", "gw-04-00"]);
        // Once a full image exists, it is the one kept.
        let mut with_full = items.clone();
        with_full.push(item(5, 0, Outcome::Success));
        with_full.push(covering(6, 0, Outcome::Success, Coverage::Partial));
        assert_eq!(
            kept(&plan(&with_full, &keep_last(1))),
            ["gw-05-00", "gw-06-00"]
        );
    }
}
