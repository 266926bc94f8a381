//! A replica's output: its stdout and stderr go to a log file of its own (not to a pipe to
//! berth, so the replica is unaffected when berth stops or dies, and a restarted berth follows
//! the same file), and that file is followed into `tracing`, line by line.
//!
//! Lines are forwarded whatever they contain (invalid UTF-8, very long lines without a newline).
//! The file is kept below [`MAX_FILE`]: once everything in it has been forwarded and it is larger,
//! it is emptied (the replica writes with `O_APPEND`, so its next write lands at the new end).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

/// Longest line forwarded as one event; longer output is split.
const MAX_LINE: usize = 16 * 1024;
/// A log file larger than this is emptied once it has been forwarded.
const MAX_FILE: u64 = 16 * 1024 * 1024;
/// How often the follower looks for new output.
const POLL: Duration = Duration::from_millis(200);

/// The log file of replica `id` under `dir`.
pub(super) fn log_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// Opens (creating, appending) the file a replica's stdout and stderr are written to.
pub(super) fn open_for_replica(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Spawns a task that forwards new lines of `path` into `tracing` until `stop` is cancelled,
/// then forwards what is left. `from_end` skips what the file already holds (a replica adopted
/// after a restart: the earlier berth forwarded that).
pub(super) fn follow(
    path: PathBuf,
    from_end: bool,
    stop: CancellationToken,
    deployment: String,
    replica: String,
) {
    tokio::spawn(async move {
        let emit = |line: &str| tracing::info!(target: "berth::replica", deployment = %deployment, replica = %replica, "{line}");
        if let Err(e) = follow_file(&path, from_end, &stop, emit).await {
            tracing::debug!(replica = %replica, error = %e, "replica log not followed");
        }
    });
}

async fn follow_file<F: FnMut(&str)>(
    path: &Path,
    from_end: bool,
    stop: &CancellationToken,
    mut emit: F,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut pos = if from_end {
        file.seek(std::io::SeekFrom::End(0)).await?
    } else {
        0
    };
    let mut lines = LineSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            pos += n as u64;
            lines.feed(&buf[..n], &mut emit);
            continue;
        }
        if pos > MAX_FILE {
            // Everything is forwarded: start the file over.
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.set_len(0)?;
            file.seek(std::io::SeekFrom::Start(0)).await?;
            pos = 0;
        }
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // One last read after the stop, for what was written just before it.
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        lines.feed(&buf[..n], &mut emit);
    }
    lines.finish(&mut emit);
    Ok(())
}

/// Cuts a byte stream into lines (without their `\n` or `\r\n`). Invalid UTF-8 is replaced; a
/// line longer than [`MAX_LINE`] is handed over in pieces.
#[derive(Default)]
pub(super) struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    pub(super) fn feed<F: FnMut(&str)>(&mut self, mut data: &[u8], emit: &mut F) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&data[..i]);
                    self.flush(emit);
                    data = &data[i + 1..];
                }
                None => {
                    self.line.extend_from_slice(data);
                    data = &[];
                }
            }
            while self.line.len() >= MAX_LINE {
                let rest = self.line.split_off(MAX_LINE);
                self.flush(emit);
                self.line = rest;
            }
        }
    }

    pub(super) fn finish<F: FnMut(&str)>(&mut self, emit: &mut F) {
        if !self.line.is_empty() {
            self.flush(emit);
        }
    }

    fn flush<F: FnMut(&str)>(&mut self, emit: &mut F) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        emit(&String::from_utf8_lossy(&self.line));
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut emit = |l: &str| out.push(l.to_owned());
        let mut split = LineSplitter::default();
        // Fed in odd pieces, as reads of a growing file come.
        for piece in input.chunks(7) {
            split.feed(piece, &mut emit);
        }
        split.finish(&mut emit);
        out
    }

    #[tokio::test]
    async fn splits_lines() {
        assert_eq!(lines_of(b"a\nb\r\n\nlast").await, ["a", "b", "", "last"]);
        assert!(lines_of(b"").await.is_empty());
    }

    #[tokio::test]
    async fn survives_invalid_utf8_and_long_lines() {
        assert_eq!(
            lines_of(b"ok \xff\xfe\nnext\n").await,
            ["ok \u{fffd}\u{fffd}", "next"]
        );
        let long = vec![b'x'; MAX_LINE * 3 + 10];
        let lines = lines_of(&long).await;
        assert!(lines.len() >= 3, "{}", lines.len());
        assert_eq!(lines.iter().map(String::len).sum::<usize>(), long.len());
    }
}

#[cfg(test)]
mod follow_tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn follows_a_growing_file_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "r-1");
        let mut f = open_for_replica(&path).unwrap();
        f.write_all(b"old line\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = CancellationToken::new();
        let task = {
            let (seen, stop, path) = (seen.clone(), stop.clone(), path.clone());
            tokio::spawn(async move {
                follow_file(&path, true, &stop, |l| {
                    seen.lock().unwrap().push(l.to_owned())
                })
                .await
                .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.write_all(b"first\nsec").unwrap();
        tokio::time::sleep(POLL * 2).await;
        f.write_all(b"ond\nlast").unwrap();
        stop.cancel();
        task.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["first", "second", "last"]);
    }
}
