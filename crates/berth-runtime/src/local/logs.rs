//! Forwarding a replica's stdout and stderr into `tracing`, line by line.
//!
//! The pipes are drained continuously whatever the lines contain (invalid UTF-8, very long lines
//! without a newline), so a chatty replica never blocks on a full pipe.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest line forwarded as one event; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// Which pipe a line came from: stdout is logged at INFO, stderr at WARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// Spawns a task that forwards `reader` into `tracing` until end of file.
pub(super) fn forward<R>(reader: R, stream: Stream, deployment: String, replica: String)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        pump(reader, |line| match stream {
            Stream::Stdout => {
                tracing::info!(target: "berth::replica", deployment = %deployment, replica = %replica, "{line}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "berth::replica", deployment = %deployment, replica = %replica, "{line}")
            }
        })
        .await;
    });
}

/// Reads `reader` to its end, handing each line (without its `\n` or `\r\n`) to `emit`.
/// Invalid UTF-8 is replaced; a line longer than [`MAX_LINE`] is handed over in pieces. A read
/// error ends forwarding as if the pipe had closed.
pub(super) async fn pump<R, F>(reader: R, mut emit: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(&str),
{
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    let mut flush = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        emit(&String::from_utf8_lossy(line));
        line.clear();
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (taken, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                (i + 1, true)
            }
            None => {
                line.extend_from_slice(buf);
                (buf.len(), false)
            }
        };
        reader.consume(taken);
        if complete || line.len() >= MAX_LINE {
            flush(&mut line);
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        pump(input, |l| out.push(l.to_owned())).await;
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
