//! Telling one process from another through `/proc`: its start time (which, with the pid, names
//! one process for the life of the machine) and the identity berth put in its environment at
//! spawn. This is how a restarted berth proves that a recorded replica is still the process it
//! started, and never touches a process that merely reuses a recorded pid.

use std::path::Path;

/// The environment variable that carries a replica's id.
pub const REPLICA_ID_ENV: &str = "BERTH_REPLICA_ID";
/// The environment variable that carries a replica's secret.
pub const REPLICA_SECRET_ENV: &str = "BERTH_REPLICA_SECRET";
/// The environment variable that tells a replica how long to outlive its supervisor's checks.
pub const ORPHAN_TIMEOUT_ENV: &str = "BERTH_ORPHAN_TIMEOUT_SECS";

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Start time in clock ticks after boot (field 22).
    pub start: u64,
    /// Process group (field 5).
    pub pgrp: i32,
    /// A zombie: exited, not yet reaped by its parent.
    pub zombie: bool,
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(ProcStat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of a live process, or `None` when there is no such process.
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The start time of process `pid` (see [`ProcStat::start`]), when it runs.
pub fn proc_start(pid: u32) -> Option<u64> {
    stat(pid).filter(|s| !s.zombie).map(|s| s.start)
}

/// Whether process `pid` still is the one that started at `start` and has not exited.
pub(crate) fn is_same_process(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|s| !s.zombie && s.start == start)
}

/// Whether `environ` (the NUL-separated text of `/proc/PID/environ`) holds `name=value`.
pub(crate) fn environ_has(environ: &[u8], name: &str, value: &str) -> bool {
    let want = format!("{name}={value}");
    environ.split(|b| *b == 0).any(|e| e == want.as_bytes())
}

/// Whether process `pid` was started with `name=value` in its environment.
pub(crate) fn process_has_env(pid: u32, name: &str, value: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| environ_has(&env, name, value))
}

/// The live process group leader that carries replica id `id` in its environment, if any:
/// how a replica recorded before its spawn finished (pid still 0) is found again.
pub(crate) fn find_replica_process(proc_dir: &Path, id: &str) -> Option<(u32, u64)> {
    let entries = std::fs::read_dir(proc_dir).ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(st) = stat(pid) else { continue };
        if st.zombie || st.pgrp != pid as i32 {
            continue;
        }
        if process_has_env(pid, REPLICA_ID_ENV, id) {
            return Some((pid, st.start));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_the_command_name() {
        let text = "4242 (berth (engine) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 \
                    4 0 987654 1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                start: 987_654,
                pgrp: 4242,
                zombie: false
            })
        );
        let zombie = text.replace(") S ", ") Z ");
        assert!(parse_stat(&zombie).unwrap().zombie);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_itself_and_not_another() {
        let me = std::process::id();
        let start = proc_start(me).expect("own start time");
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(!is_same_process(u32::MAX - 1, start));
    }

    #[test]
    fn environ_matches_whole_entries_only() {
        let env = b"PATH=/bin\0BERTH_REPLICA_ID=m-1\0X=1";
        assert!(environ_has(env, REPLICA_ID_ENV, "m-1"));
        assert!(!environ_has(env, REPLICA_ID_ENV, "m"));
        assert!(!environ_has(env, REPLICA_ID_ENV, "m-10"));
        assert!(!environ_has(b"", REPLICA_ID_ENV, "m-1"));
    }
}
