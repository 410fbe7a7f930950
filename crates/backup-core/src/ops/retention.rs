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

/// An image as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionItem {
    /// Object name.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Outcome, if its manifest could be read.
    pub outcome: Option<Outcome>,
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
/// (or unreadable) image younger than the newest success.
pub fn plan(items: &[RetentionItem], policy: &RetentionPolicy) -> Vec<RetentionDecision> {
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
        let created = Utc.with_ymd_and_hms(2026, 10, day, hour, 0, 0).unwrap();
        RetentionItem {
            name: format!("gw-{day:02}-{hour:02}"),
            created,
            outcome: Some(outcome),
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
}
