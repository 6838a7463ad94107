//! The JSON-lines file sink: one event per line, its stored canonical JSON followed by `\n`
//! (RFC 8785 output never holds a raw newline), appended in seq order and synced before the
//! position moves. When the next line would take the file past its size bound it is rotated:
//! `PATH.1` becomes `PATH.2` and so on, `PATH` becomes `PATH.1`, the oldest beyond the number
//! kept is dropped, and a new `PATH` is started. A line longer than the bound alone is written
//! whole in a file of its own: an event is never split or dropped.
//!
//! The file itself says how far it got: on opening (and after a failed write) a last line a
//! crash cut short is removed, and the seq of the last complete line (in `PATH`, or in `PATH.1`
//! when `PATH` was just started) is where delivery continues. So a restart never writes an
//! event twice into the file, even when the position kept in the store is older.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How much of a file's end is read to find its last complete line (events are a few KiB at
/// most).
const TAIL_WINDOW: u64 = 1 << 20;

/// A JSON-lines file with size-based rotation.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    /// The file state, used from blocking threads (writes and syncs are blocking calls).
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// `None` after a failure: reopened (and repaired) before the next write.
    file: Option<File>,
    size: u64,
    /// The seq of the last complete line in the files.
    last_seq: Option<u64>,
}

impl FileSink {
    /// Opens (creating, mode 0640) `path` for appending, rotated at `max_bytes` with `keep`
    /// rotated files kept. Fails when the file cannot be opened for writing.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<FileSink> {
        let path = std::path::absolute(path)?;
        let mut inner = Inner { path: path.clone(), max_bytes, keep, file: None, size: 0, last_seq: None };
        inner.reopen()?;
        Ok(FileSink { path, inner: Arc::new(Mutex::new(inner)) })
    }

    /// The file's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq after the last complete line in the files, if there is one.
    pub fn next_seq(&self) -> Option<u64> {
        self.lock().last_seq.map(|s| s + 1)
    }

    /// Appends `events` (seq, canonical JSON), skipping any the file already holds, and syncs
    /// the file. On error nothing is known about the batch; the next call repairs the file first.
    pub async fn deliver(&self, events: Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = inner.append(&events);
            if result.is_err() {
                inner.file = None;
            }
            result
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Closes the file after a failure; the next delivery reopens and repairs it.
    pub async fn reset(&self) {
        self.lock().file = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Opens `path` for appending, cuts a partial last line, and reads the last seq held.
    fn reopen(&mut self) -> io::Result<()> {
        let mut file = open_append(&self.path)?;
        let (complete, last) = last_line(&mut file)?;
        if complete < file.metadata()?.len() {
            tracing::warn!(file = %self.path.display(), "audit stream: removed a last line a crash cut short");
            file.set_len(complete)?;
            file.sync_data()?;
        }
        self.size = complete;
        self.last_seq = match last {
            Some(line) => seq_of(&line),
            None => self.previous_file_last_seq(),
        };
        self.file = Some(file);
        Ok(())
    }

    /// The last seq in `PATH.1`, for a `PATH` that was just started.
    fn previous_file_last_seq(&self) -> Option<u64> {
        let mut file = File::open(rotated(&self.path, 1)).ok()?;
        last_line(&mut file).ok()?.1.and_then(|line| seq_of(&line))
    }

    fn append(&mut self, events: &[(u64, Vec<u8>)]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut pending = Vec::new();
        let mut last = self.last_seq;
        for (seq, bytes) in events {
            if last.is_some_and(|l| *seq <= l) {
                continue;
            }
            let line_len = bytes.len() as u64 + 1;
            let filled = self.size + pending.len() as u64;
            if filled > 0 && filled + line_len > self.max_bytes {
                self.write(&pending)?;
                pending.clear();
                self.rotate()?;
            }
            pending.extend_from_slice(bytes);
            pending.push(b'\n');
            last = Some(*seq);
        }
        self.write(&pending)?;
        self.last_seq = last;
        Ok(())
    }

    /// Appends `bytes` and syncs them.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("the stream file is not open"))?;
        file.write_all(bytes)?;
        file.sync_data()?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Shifts `PATH.i` to `PATH.i+1` (dropping the oldest kept), `PATH` to `PATH.1`, and starts
    /// an empty `PATH`; the directory is synced so the renames survive a crash.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                match std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// `PATH.i`.
fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// The length of the file up to and including its last `\n`, and its last complete line (if
/// one ends within the last [`TAIL_WINDOW`] bytes and starts there too).
fn last_line(file: &mut File) -> io::Result<(u64, Option<Vec<u8>>)> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    Read::by_ref(file).take(len - start).read_to_end(&mut tail)?;
    let Some(end) = tail.iter().rposition(|b| *b == b'\n') else {
        // No line end in the window: nothing complete (or a line longer than the window).
        return Ok((if start == 0 { 0 } else { len }, None));
    };
    let begin = tail[..end].iter().rposition(|b| *b == b'\n').map(|i| i + 1);
    let line = match begin {
        Some(b) => Some(tail[b..end].to_vec()),
        None if start == 0 => Some(tail[..end].to_vec()),
        None => None,
    };
    Ok((start + end as u64 + 1, line))
}

fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(line).ok()?.get("seq")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> (u64, Vec<u8>) {
        (seq, format!("{{\"action\":\"customer.read\",\"seq\":{seq}}}").into_bytes())
    }

    fn seqs(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| seq_of(l.as_bytes()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rotates_at_the_bound_and_skips_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = FileSink::open(&path, 100, 2).unwrap();
        sink.deliver((0..10).map(event).collect()).await.unwrap();
        // Each line is 35 bytes: two per file.
        assert_eq!(seqs(&path), vec![8, 9]);
        assert_eq!(seqs(&rotated(&path, 1)), vec![6, 7]);
        assert_eq!(seqs(&rotated(&path, 2)), vec![4, 5]);
        assert!(!rotated(&path, 3).exists());
        // Reopened, it knows where it is and writes nothing twice.
        let sink = FileSink::open(&path, 100, 2).unwrap();
        assert_eq!(sink.next_seq(), Some(10));
        sink.deliver((8..11).map(event).collect()).await.unwrap();
        assert_eq!(seqs(&path), vec![10]);
        assert_eq!(seqs(&rotated(&path, 1)), vec![8, 9]);
    }

    #[tokio::test]
    async fn a_line_cut_short_is_removed_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"seq\":0}\n{\"seq\":1}\n{\"se").unwrap();
        let sink = FileSink::open(&path, 1 << 20, 1).unwrap();
        assert_eq!(sink.next_seq(), Some(2));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"seq\":0}\n{\"seq\":1}\n");
        std::fs::write(&path, "{\"se").unwrap();
        let sink = FileSink::open(&path, 1 << 20, 1).unwrap();
        assert_eq!(sink.next_seq(), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn an_unwritable_path_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileSink::open(&dir.path().join("missing/audit.jsonl"), 100, 1).is_err());
        assert!(FileSink::open(dir.path(), 100, 1).is_err());
    }
}
