//! Signalling a command's whole process group (the command runs as the
//! leader of a new group, so its children are members too).

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The process group led by a command we spawned.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pgid: Pid,
    /// When set, dropping the value SIGKILLs the group (a task that ends
    /// abnormally must not leave a build running).
    armed: bool,
}

impl ProcessGroup {
    /// The group led by process `pid` (spawned with `process_group(0)`).
    pub fn led_by(pid: u32) -> Option<Self> {
        let pid = i32::try_from(pid).ok().filter(|p| *p > 1)?;
        Some(Self {
            pgid: Pid::from_raw(pid),
            armed: true,
        })
    }

    pub fn id(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Sends `signal` to every process in the group; false if none is left.
    pub fn signal(&self, signal: Signal) -> bool {
        killpg(self.pgid, signal).is_ok()
    }

    /// Whether any process of the group is still running. Zombies do not
    /// count: where nobody reaps orphans (some container inits) they linger
    /// forever but are already dead.
    pub fn is_alive(&self) -> bool {
        match killpg(self.pgid, None) {
            Err(Errno::ESRCH) => false,
            // Something answers (EPERM: something not ours to signal); it may
            // be only unreaped zombies, so look closer where /proc allows.
            _ => live_members(self.pgid.as_raw()).is_none_or(|n| n > 0),
        }
    }

    /// Leave the group alone when dropped.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Counts the non-zombie processes of group `pgid` by reading `/proc`;
/// `None` where `/proc` is not available.
fn live_members(pgid: i32) -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut live = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && !matches!(state, 'Z' | 'X' | 'x')
        {
            live += 1;
        }
    }
    Some(live)
}

/// State and process group from a `/proc/PID/stat` line. The command name is
/// in parentheses and may itself contain spaces or parentheses, so parse
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "1234 (my (odd) cmd) S 1 1230 1230 0 -1 4194560 100 0";
        assert_eq!(parse_stat(line), Some(('S', 1230)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn no_such_group_is_dead() {
        let mut g = ProcessGroup::led_by(i32::MAX as u32 - 7).unwrap();
        g.disarm();
        assert!(!g.is_alive());
    }
}
