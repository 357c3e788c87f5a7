//! Resolving the secret references of one step just before its command is
//! sent: its arguments, its `env` values, a git step's `repository`, and
//! the builder's `env` values. Only text from the cluster file is resolved;
//! what comes from outside (changes, forced builds, properties) never is,
//! so no request can make the master fill a secret into a place it chose.

use std::collections::BTreeMap;

use super::{SecretError, Secrets};
use crate::config::StepConfig;

/// A step and its builder's environment with every reference resolved.
#[derive(Clone, Debug)]
pub struct ResolvedStep {
    pub step: StepConfig,
    pub builder_env: BTreeMap<String, String>,
}

/// Resolves `step` and `builder_env`; every value used is added to `used`.
pub fn resolve_step(
    secrets: &Secrets,
    step: &StepConfig,
    builder_env: &BTreeMap<String, String>,
    used: &mut Vec<String>,
) -> Result<ResolvedStep, SecretError> {
    let env_of = |m: &BTreeMap<String, String>, used: &mut Vec<String>| {
        m.iter()
            .map(|(k, v)| Ok((k.clone(), secrets.substitute(v, used)?)))
            .collect::<Result<BTreeMap<_, _>, SecretError>>()
    };
    let builder_env = env_of(builder_env, used)?;
    let mut out = step.clone();
    out.env = env_of(&step.env, used)?;
    out.command = step
        .command
        .iter()
        .map(|a| secrets.substitute(a, used))
        .collect::<Result<_, _>>()?;
    out.repository = step
        .repository
        .as_deref()
        .map(|r| secrets.substitute(r, used))
        .transpose()?;
    Ok(ResolvedStep {
        step: out,
        builder_env,
    })
}
