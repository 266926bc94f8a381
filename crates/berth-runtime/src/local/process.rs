//! The operating-system side of a local replica: picking a port, building the explicit
//! environment, spawning the child in its own process group, signalling that group, and putting
//! an exit status into words.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::RuntimeError;

/// Parses the configured engine host.
pub(super) fn parse_host(host: &str) -> Result<IpAddr, RuntimeError> {
    host.parse::<IpAddr>().map_err(|e| {
        RuntimeError::NoPort(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("engine host `{host}` is not an IP address: {e}"),
        ))
    })
}

/// Picks a port that is free on `ip` now by binding port 0 and reading what the kernel chose.
///
/// The listener is dropped before the replica starts, so another process could take the port in
/// between; the window is a few milliseconds and the kernel hands out ephemeral ports in
/// rotation, so a clash is unlikely, and if it happens the replica fails to bind, exits, and is
/// reported `Exited` like any other crash, for the reconciler to replace.
pub(super) fn pick_port(ip: IpAddr) -> Result<u16, RuntimeError> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(RuntimeError::NoPort)?;
    let port = listener.local_addr().map_err(RuntimeError::NoPort)?.port();
    Ok(port)
}

/// Where the runtime reaches a replica that listens on `ip:port`: a wildcard address is probed
/// over loopback.
pub(super) fn probe_addr(ip: IpAddr, port: u16) -> SocketAddr {
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}

/// The replica's whole environment: `LANG=C.UTF-8`, then the configured base (PATH, HOME, ...),
/// then the replica's own variables, each layer overriding the one before.
pub(super) fn build_env(
    base: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]);
    env.extend(base.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The command line as one string, for logs and error messages.
pub(super) fn display_command(argv: &[String]) -> String {
    argv.join(" ")
}

/// Spawns `argv` as the leader of a new process group with exactly `env` as its environment,
/// stdin from /dev/null and stdout and stderr appended to `log`.
pub(super) fn spawn(
    argv: &[String],
    env: &BTreeMap<String, String>,
    log: std::fs::File,
) -> Result<Child, RuntimeError> {
    let (program, args) = argv.split_first().ok_or(RuntimeError::EmptyCommand)?;
    let log_err = log.try_clone().map_err(|source| RuntimeError::Spawn {
        command: display_command(argv),
        source,
    })?;
    Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // Its own group, so that stop reaches everything the engine starts and a Ctrl-C aimed
        // at berth's terminal group does not hit replicas behind the runtime's back.
        .process_group(0)
        // Not killed when the handle is dropped: the supervisor's group guard and `stop` do
        // that, and a detached runtime (an upgrade) leaves the replica running on purpose.
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            command: display_command(argv),
            source,
        })
}

/// Sends `signal` to the process group `pgid`. Returns `Ok(false)` when the group no longer
/// exists.
pub(super) fn signal_group(pgid: Pid, signal: Signal) -> Result<bool, nix::Error> {
    match killpg(pgid, signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends SIGKILL to the group, ignoring every error: used where nothing better can be done.
pub(super) fn kill_group(pgid: Pid) {
    let _ = signal_group(pgid, Signal::SIGKILL);
}

/// Why a replica process ended, in words.
pub(super) fn exit_reason(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("replica process exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(name) => format!("replica process was killed by signal {sig} ({name})"),
            Err(_) => format!("replica process was killed by signal {sig}"),
        },
        None => format!("replica process ended: {status}"),
    }
}

/// Why a replica that never passed its health check was killed.
pub(super) fn ready_timeout_reason(ready_timeout: Duration) -> String {
    format!(
        "replica did not become ready within {}s",
        ready_timeout.as_secs_f64()
    )
}

/// Kills what is left of a replica recorded by an earlier berth process that did not shut down
/// cleanly: the process `pid`, if it still runs and its command line names `--port <port>` (so a
/// reused pid of an unrelated program is never touched), and its process group. Returns whether
/// anything was signalled.
pub fn kill_leftover(pid: u32, port: u16) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let port = port.to_string();
    let ours = args
        .windows(2)
        .any(|w| w[0] == b"--port" && w[1] == port.as_bytes());
    if !ours {
        return false;
    }
    let pgid = Pid::from_raw(pid as i32);
    kill_group(pgid);
    let _ = nix::sys::signal::kill(pgid, Signal::SIGKILL);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_name_status_and_signal() {
        assert_eq!(
            exit_reason(ExitStatus::from_raw(1 << 8)),
            "replica process exited with status 1"
        );
        assert_eq!(
            exit_reason(ExitStatus::from_raw(9)),
            "replica process was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            exit_reason(ExitStatus::from_raw(15)),
            "replica process was killed by signal 15 (SIGTERM)"
        );
    }

    #[test]
    fn ready_timeout_reason_in_seconds() {
        assert_eq!(
            ready_timeout_reason(Duration::from_secs(120)),
            "replica did not become ready within 120s"
        );
        assert_eq!(
            ready_timeout_reason(Duration::from_millis(1500)),
            "replica did not become ready within 1.5s"
        );
    }

    #[test]
    fn env_layers_override_in_order() {
        let base = BTreeMap::from([
            ("PATH".to_owned(), "/bin".to_owned()),
            ("LANG".to_owned(), "en_US.UTF-8".to_owned()),
        ]);
        let extra = BTreeMap::from([("PATH".to_owned(), "/opt/bin".to_owned())]);
        let env = build_env(&base, &extra);
        assert_eq!(env.len(), 2);
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["LANG"], "en_US.UTF-8");
        assert_eq!(
            build_env(&BTreeMap::new(), &BTreeMap::new())["LANG"],
            "C.UTF-8"
        );
    }

    #[test]
    fn hosts_and_probe_addresses() {
        assert!(parse_host("localhost").is_err());
        let any = parse_host("0.0.0.0").unwrap();
        assert_eq!(probe_addr(any, 80).to_string(), "127.0.0.1:80");
        let v6 = parse_host("::").unwrap();
        assert_eq!(probe_addr(v6, 80).to_string(), "[::1]:80");
        let lo = parse_host("127.0.0.1").unwrap();
        assert_ne!(pick_port(lo).unwrap(), 0);
    }

    #[test]
    fn spawn_errors_carry_the_command() {
        let argv = vec![
            "/nonexistent/berth-engine".to_owned(),
            "--port".to_owned(),
            "1".to_owned(),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = || tempfile::tempfile().unwrap();
        let err = rt.block_on(async { spawn(&argv, &BTreeMap::new(), log()).unwrap_err() });
        assert!(
            err.to_string()
                .contains("/nonexistent/berth-engine --port 1"),
            "{err}"
        );
        let err = rt.block_on(async { spawn(&[], &BTreeMap::new(), log()).unwrap_err() });
        assert!(matches!(err, RuntimeError::EmptyCommand));
    }
}
