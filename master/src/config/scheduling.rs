//! Validation of what makes builds happen: schedulers (a nightly's cron
//! expression and time zone, a dependent's upstream, a periodic's interval),
//! step kinds (a trigger step's schedulers) and change sources. Each error
//! names the key and the scheduler, step or change source at fault.

use std::collections::HashSet;
use std::path::Path;

use super::{CHANGE_SOURCE_KINDS, ClusterConfig, ConfigError, STEP_KINDS};
use crate::cron::CronExpr;

impl ClusterConfig {
    pub(super) fn validate_scheduling(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let names: HashSet<&str> = self.schedulers.iter().map(|s| s.name.as_str()).collect();
        for (i, s) in self.schedulers.iter().enumerate() {
            let n = &s.name;
            match s.kind.as_str() {
                "single-branch" if s.branch.is_none() => {
                    return Err(invalid(
                        format!("schedulers[{i}].branch"),
                        format!("single-branch scheduler {n:?} needs a `branch`"),
                    ));
                }
                "periodic" if s.interval.is_none_or(|d| d.get().is_zero()) => {
                    return Err(invalid(
                        format!("schedulers[{i}].interval"),
                        format!("periodic scheduler {n:?} needs an `interval` of more than 0"),
                    ));
                }
                "nightly" => {
                    let Some(cron) = &s.cron else {
                        return Err(invalid(
                            format!("schedulers[{i}].cron"),
                            format!("nightly scheduler {n:?} needs a `cron` expression"),
                        ));
                    };
                    if let Err(e) = CronExpr::parse(cron) {
                        return Err(invalid(
                            format!("schedulers[{i}].cron"),
                            format!(
                                "scheduler {n:?}: cron expression {cron:?} does not parse: {e}"
                            ),
                        ));
                    }
                }
                "dependent" => match &s.upstream {
                    Some(u) if names.contains(u.as_str()) && u != n => {}
                    Some(u) => {
                        return Err(invalid(
                            format!("schedulers[{i}].upstream"),
                            format!(
                                "dependent scheduler {n:?} names upstream {u:?}, which no other [[schedulers]] entry defines"
                            ),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            format!("schedulers[{i}].upstream"),
                            format!("dependent scheduler {n:?} needs an `upstream` scheduler"),
                        ));
                    }
                },
                _ => {}
            }
            if let Some(tz) = &s.timezone
                && tz.parse::<chrono_tz::Tz>().is_err()
            {
                return Err(invalid(
                    format!("schedulers[{i}].timezone"),
                    format!("scheduler {n:?}: unknown time zone {tz:?}"),
                ));
            }
        }
        for (i, b) in self.builders.iter().enumerate() {
            for (j, st) in b.steps.iter().enumerate() {
                if !STEP_KINDS.contains(&st.kind.as_str()) {
                    return Err(invalid(
                        format!("builders[{i}].steps[{j}].kind"),
                        format!(
                            "unknown step kind {:?}; expected one of {}",
                            st.kind,
                            STEP_KINDS.join(", ")
                        ),
                    ));
                }
                if st.kind != "trigger" {
                    continue;
                }
                if st.schedulers.is_empty() {
                    return Err(invalid(
                        format!("builders[{i}].steps[{j}].schedulers"),
                        format!("trigger step {:?} names no scheduler", st.name),
                    ));
                }
                for t in &st.schedulers {
                    let ok = self
                        .schedulers
                        .iter()
                        .any(|s| &s.name == t && s.kind == "triggerable");
                    if !ok {
                        return Err(invalid(
                            format!("builders[{i}].steps[{j}].schedulers"),
                            format!(
                                "trigger step {:?} names {t:?}, which is not a triggerable scheduler",
                                st.name
                            ),
                        ));
                    }
                }
            }
        }
        let mut sources = HashSet::new();
        for (i, c) in self.change_sources.iter().enumerate() {
            if c.name.trim().is_empty() || !sources.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("change_sources[{i}].name"),
                    format!("change source name {:?} is empty or defined twice", c.name),
                ));
            }
            if !CHANGE_SOURCE_KINDS.contains(&c.kind.as_str()) {
                return Err(invalid(
                    format!("change_sources[{i}].kind"),
                    format!(
                        "unknown kind {:?}; expected one of {}",
                        c.kind,
                        CHANGE_SOURCE_KINDS.join(", ")
                    ),
                ));
            }
            if c.repository.trim().is_empty() {
                return Err(invalid(
                    format!("change_sources[{i}].repository"),
                    format!("change source {:?} needs a repository", c.name),
                ));
            }
            if c.poll_interval.is_some_and(|d| d.get().is_zero()) {
                return Err(invalid(
                    format!("change_sources[{i}].poll_interval"),
                    "must be more than 0".into(),
                ));
            }
        }
        Ok(())
    }
}
